import os

import pytest
import torch

import conure

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


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
