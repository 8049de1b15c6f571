"""Model-level benchmarks (pytest-benchmark): every case of benchmarks/model_cases.py, ours and the reference.

    pytest benchmarks/test_bench_model.py --benchmark-only --benchmark-group-by=param:name

Ratios and peak memory in one table: python benchmarks/run.py --suite model
"""
import pytest

from benchmarks import model_cases

CASES = model_cases.cases()


@pytest.fixture(scope="module")
def built():
    """Each case's (ours, reference) pair, built once per module run (the paper-shaped models take a moment)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = CASES[name]()
        return cache[name]

    return get


@pytest.mark.parametrize("impl", ["ours", "reference"])
@pytest.mark.parametrize("name", list(CASES))
def test_model_case(benchmark, built, name, impl):
    ours, ref = built(name)
    fn = ours if impl == "ours" else ref
    fn()  # warm up (allocator, oneDNN primitive cache)
    benchmark.pedantic(fn, rounds=5, iterations=1)
