"""Print the bad-input table, or write it into docs/BAD_INPUTS.md: ``python tests/bad_inputs/doc.py --write-doc``."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bad_inputs._framework import DOC, load_areas, render_table, rows, write_doc

    load_areas()
    if "--write-doc" in sys.argv:
        write_doc()
        print(f"wrote {len(rows())} rows into {DOC}")
    else:
        print(render_table())
