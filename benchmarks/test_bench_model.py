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


@pytest.mark.parametrize("impl", ["ours", "reference"])
def test_e2e_ml100k_one_epoch(benchmark, impl):
    """One epoch of task 1 on MovieLens-100K (benchmarks/e2e_ml100k.py; a fresh process per round, the reference
    forced with CONURE_FORCE_REFERENCE=1); the benchmark records the epoch time measured inside the process."""
    from benchmarks import e2e_ml100k

    if not (e2e_ml100k.DEFAULT_DATA / "u.data").exists():
        pytest.skip(f"no MovieLens-100K at {e2e_ml100k.DEFAULT_DATA} (its licence forbids shipping it)")
    result = benchmark.pedantic(
        e2e_ml100k.measure, args=(e2e_ml100k.DEFAULT_DATA, impl == "reference", 1, "cpu"), rounds=1, iterations=1
    )
    benchmark.extra_info.update(epoch_ms=result["ms"], peak_mib=result["peak_mib"])
