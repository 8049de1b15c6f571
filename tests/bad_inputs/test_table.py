"""The bad-input matrix as a whole: the doc shows every row, and no child-process row crashed natively."""

import dataclasses
import os
import re

import pytest

from ._framework import (
    DOC,
    REGISTRY,
    Ctx,
    Row,
    _check_in_process,
    _check_isolated,
    load_areas,
    render_row,
    rows,
    run_isolated,
)

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


# ---- the machinery itself: a row whose outcome differs fails, and a native crash in the child is caught


def _raise_value_error(ctx=None):
    raise ValueError("the message")


def _abort():
    os.abort()


_raise_value_error.row = Row("self.raises", "", "", "raises", ValueError, "the message", run=_raise_value_error)
_abort.row = Row("self.abort", "", "", "raises", ValueError, "", run=_abort)


def test_a_row_fails_when_the_outcome_differs(tmp_path):
    ctx, row = Ctx(tmp_path), _raise_value_error.row
    _check_in_process(row, ctx)
    for wrong in (
        dataclasses.replace(row, fragment="another message"),
        dataclasses.replace(row, error=TypeError),
        dataclasses.replace(row, run=lambda ctx: None),
        dataclasses.replace(row, kind="behaves", error=None, run=lambda ctx: 1, check=lambda r, ctx: r == 2 or 1 / 0),
    ):
        with pytest.raises((AssertionError, ZeroDivisionError, pytest.fail.Exception)):
            _check_in_process(wrong, ctx)


def test_isolated_rows_report_exceptions_and_crashes():
    rows = [
        dataclasses.replace(_raise_value_error.row, module=__name__),
        dataclasses.replace(_abort.row, module=__name__),
    ]
    results = run_isolated(rows)
    assert results["self.raises"]["types"][0] == "ValueError" and results["self.raises"]["msg"] == "the message"
    assert "crashed" in results["self.abort"], results
    _check_isolated(rows[0], results)
    with pytest.raises(AssertionError, match="the child process died"):
        _check_isolated(rows[1], results)
