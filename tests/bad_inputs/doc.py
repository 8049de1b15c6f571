"""The bad-input table of docs/BAD_INPUTS.md, generated from the tests of tests/bad_inputs/.

python tests/bad_inputs/doc.py              print the table
python tests/bad_inputs/doc.py --write-doc  write it into docs/BAD_INPUTS.md
python tests/bad_inputs/doc.py --check      exit 1 if docs/BAD_INPUTS.md holds another table
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bad_inputs._framework import BEGIN, DOC, END, load_areas, render_table, rows, write_doc

    load_areas()
    if "--write-doc" in sys.argv:
        write_doc()
        print(f"wrote {len(rows())} rows into {DOC}")
    elif "--check" in sys.argv:
        text = DOC.read_text()
        if text[text.index(BEGIN) + len(BEGIN) : text.index(END)] != "\n" + render_table() + "\n":
            print(f"{DOC} differs from the tests: run python tests/bad_inputs/doc.py --write-doc", file=sys.stderr)
            sys.exit(1)
    else:
        print(render_table())
