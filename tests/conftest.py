import atexit
import copy
import os
import shutil
import tempfile
from pathlib import Path

# The tests' CPU GEMM plan (csrc/gemm.cpp): a fresh file for the session, inherited by every subprocess, instead of
# the one in the user's cache. Set before conure loads its extension, which reads the plan file then. CONURE_CACHE
# itself is left alone: moving it would recompile a just-in-time build for every session.
if not os.environ.get("CONURE_GEMM_PLAN"):
    _plan_dir = tempfile.mkdtemp(prefix="conure-tests-gemm-plan-")
    atexit.register(shutil.rmtree, _plan_dir, True)
    os.environ["CONURE_GEMM_PLAN"] = os.path.join(_plan_dir, "plan.txt")

import pytest  # noqa: E402
import torch  # noqa: E402

import conure  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
REPO = Path(conure.__file__).resolve().parents[1]

# A run small enough for subprocess tests of `conure train`: synthetic data, 16 channels, 2 blocks.
_TINY_RUN = {
    "seed": 3,
    "threads": 1,
    "data": {
        "kind": "synthetic",
        "max_len": 12,
        "options": {"num_users": 300, "num_items": 60, "seq_len": 12, "num_target_items": 30, "num_topics": 4},
    },
    "tasks": [
        {"name": "next_item", "kind": "next_item"},
        {"name": "service2", "kind": "item", "split": "stream", "stream": "service2"},
        {"name": "gender", "kind": "profile", "attribute": "gender"},
    ],
    "model": {"channels": 16, "dilations": [1, 2]},
    "method": {"name": "conure", "keep_ratios": [0.5]},
    "train": {"epochs": 2, "retrain_epochs": 1, "lr": 0.01, "batch_size": 32, "eval_batch_size": 128},
    "output": {"plots": False, "tensorboard": False},
}

# The same sizes as --set overrides of a shipped config (the demo's, or any synthetic one).
TINY_SETS = [
    "threads=1",
    "data.options.num_users=300",
    "data.options.num_items=60",
    "data.options.seq_len=12",
    "data.options.num_target_items=30",
    "data.options.num_topics=4",
    "data.max_len=12",
    "model.channels=16",
    "model.dilations=[1,2]",
    "train.epochs=2",
    "train.retrain_epochs=1",
]


def tiny_run(tasks=None, **train) -> dict:
    """A fresh copy of the tiny run config; ``tasks`` replaces its three tasks, ``train`` updates its train section."""
    cfg = copy.deepcopy(_TINY_RUN)
    if tasks is not None:
        cfg["tasks"] = tasks
    cfg["train"].update(train)
    return cfg


def cli_env() -> dict:
    """The environment of a `conure` subprocess: this checkout's conure first, no progress bars."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["CONURE_PROGRESS"] = "0"
    return e


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CONURE_SLOW_TESTS", "") in ("", "0"):
        skip = pytest.mark.skip(reason="slow test: set CONURE_SLOW_TESTS=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


requires_compiled = pytest.mark.skipif(
    conure.backend() != "compiled", reason=f"compiled extension not in use: {conure.ops.extension_error()}"
)


# ---------------------------------------------------------------------------------------------------------------
# Hypothesis profiles (tests/ops/test_fuzz.py and every other @given test): pick one with CONURE_HYPOTHESIS_PROFILE.
#   ci   (default) ~200 examples per property, derandomized: the same examples every run, stable in CI
#   long 2000 examples per property, random: run by hand (CONURE_HYPOTHESIS_PROFILE=long pytest tests/ops/test_fuzz.py)
#   dev  25 examples, for a quick local loop
# Tests that pin max_examples themselves (e.g. data/test_data.py) keep their count; the other settings still apply.
try:
    from hypothesis import HealthCheck as _HealthCheck
    from hypothesis import settings as _hyp_settings
except ImportError:  # hypothesis is a test extra; tests that need it import it themselves
    _hyp_settings = None

if _hyp_settings is not None:
    _SLOW_OK = [_HealthCheck.too_slow, _HealthCheck.data_too_large]
    _hyp_settings.register_profile(
        "ci", max_examples=200, deadline=None, derandomize=True, print_blob=True, suppress_health_check=_SLOW_OK
    )
    _hyp_settings.register_profile(
        "long", max_examples=2000, deadline=None, derandomize=False, print_blob=True, suppress_health_check=_SLOW_OK
    )
    _hyp_settings.register_profile(
        "dev", max_examples=25, deadline=None, derandomize=True, print_blob=True, suppress_health_check=_SLOW_OK
    )
    _hyp_settings.load_profile(os.environ.get("CONURE_HYPOTHESIS_PROFILE", "ci"))
