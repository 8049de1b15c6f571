import pytest

from ._framework import isolated_rows, run_isolated


@pytest.fixture(scope="session")
def isolated_results():
    """The outcome of every isolated row of the collected area modules, run in one child process (restarted after
    a crash) the first time a test asks."""
    return run_isolated(isolated_rows())
