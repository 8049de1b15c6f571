"""The bad-input matrix as a whole: the doc shows every row, and no child-process row crashed natively."""

import re

from ._framework import DOC, REGISTRY, load_areas, render_row, rows

load_areas()


def test_doc_matches_table():
    doc = DOC.read_text()
    missing = [r.id for r in rows() if render_row(r) not in doc]
    assert not missing, (
        f"docs/BAD_INPUTS.md lacks or differs on rows {missing}: run python tests/bad_inputs/doc.py --write-doc"
    )
    in_doc = re.findall(r"^\| `([^`]+)` \|", doc, re.M)
    assert sorted(in_doc) == sorted(REGISTRY), (
        f"rows in the doc that the tests do not have: {sorted(set(in_doc) - set(REGISTRY))}"
    )


def test_every_area_has_rows():
    by_area = {r.module.rsplit(".", 1)[-1] for r in rows()}
    from ._framework import AREAS

    assert by_area == set(AREAS), sorted(set(AREAS) - by_area)


def test_no_native_crash(isolated_results):
    """Every child-process case, bug or not, ends in a Python result or exception, never a signal or hang."""
    assert isolated_results, "no isolated row ran"
    crashed = {k: v for k, v in isolated_results.items() if "crashed" in v}
    assert not crashed, crashed
