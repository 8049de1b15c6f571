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


requires_compiled = pytest.mark.skipif(conure.backend() != "compiled",
                                       reason=f"compiled extension not in use: {conure.ops.extension_error()}")
