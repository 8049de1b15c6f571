"""Helpers that more than one bad-input area uses: files, runs, checkpoints and the command line."""

import atexit
import contextlib
import errno
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import torch

from ._framework import Ctx


def _nan_at(shape, index):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    t[index] = math.nan
    return t


def _expect_equal_pair(pair, ctx):
    a, b = pair
    assert torch.equal(a, b)


def _close_pair(pair, ctx):
    torch.testing.assert_close(pair[0], pair[1])


RUN_CFG = {
    "seed": 3,
    "threads": 1,
    "data": {
        "kind": "synthetic",
        "max_len": 8,
        "options": {"num_users": 200, "num_items": 30, "seq_len": 8, "num_target_items": 20, "num_topics": 3},
    },
    "tasks": [
        {"name": "next_item", "kind": "next_item"},
        {"name": "service2", "kind": "item", "split": "stream", "stream": "service2"},
        {"name": "gender", "kind": "profile", "attribute": "gender"},
    ],
    "model": {"channels": 8, "dilations": [1]},
    "method": {"name": "conure", "keep_ratios": [0.5]},
    "train": {"epochs": 0, "retrain_epochs": 0, "batch_size": 64},
    "output": {"plots": False, "tensorboard": False},
}


CKPT = "run/checkpoints/conure.safetensors"  # the run's checkpoint, relative to the row's directory


@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _config_error():
    from conure.config import ConfigError

    return ConfigError


def _ckpt_error():
    from conure.checkpoint import CheckpointError

    return CheckpointError


def _shared_run(method: str) -> Path:
    """A real run directory of RUN_CFG with ``method`` that stopped after task 1 (built once per test session)."""
    key = f"run/{method}"
    if key not in Ctx._shared:
        from conure.config import parse_config
        from conure.run import Run

        root = Path(tempfile.mkdtemp(prefix="conure-bad-inputs-"))
        atexit.register(shutil.rmtree, root, True)
        cfg = parse_config({**RUN_CFG, "method": {**RUN_CFG["method"], "name": method}})
        Run(cfg, root / "run", echo=lambda text: None, stop_after=1).execute()
        Ctx._shared[key] = root / "run"
    return Ctx._shared[key]


def _copy_run(ctx, method: str = "conure") -> Path:
    """The shared run, copied into the row's directory as ``run`` (with its config file as ``run.yaml``)."""
    import yaml

    shutil.copytree(_shared_run(method), ctx.tmp / "run")
    ctx.write("run.yaml", yaml.safe_dump({**RUN_CFG, "method": {**RUN_CFG["method"], "name": method}}))
    return ctx.tmp / "run"


def cli(ctx, *argv):
    """``conure.cli.main(argv)`` in this process, in the row's directory: (exit code, stdout, stderr)."""
    from conure.cli import main

    out, err = io.StringIO(), io.StringIO()
    with _cwd(ctx.tmp), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _succeeds(*fragments):
    def check(res, ctx):
        rc, out, err = res
        assert rc == 0, f"exit {rc}; stderr: {err[-2000:]}"
        for f in fragments:
            assert f in out, f"{f!r} not in the output {out[-2000:]!r}"

    return check


def _config(text: str, *sets: str, name: str = "bad.yaml"):
    """run(ctx): write ``text`` as the config file ``name`` and load it (with ``--set`` overrides ``sets``)."""

    def run(ctx):
        from conure.config import load_config

        path = ctx.write(name, text) if isinstance(text, str) else ctx.write(name, text, binary=True)
        with _cwd(ctx.tmp):
            return load_config(path.name, list(sets))

    return run


def _check_defaults(res, ctx):
    from conure.config import ModelConfig
    from conure.data import default_specs

    cfg, _ = res
    assert cfg.data.kind == "synthetic" and cfg.model == ModelConfig() and cfg.method.name == "conure"
    assert cfg.tasks == default_specs("synthetic"), cfg.tasks


def _resaved(ctx, tensors=None, meta=None, name="c.safetensors") -> Path:
    """The run's checkpoint loaded, edited by ``tensors(dict)`` / ``meta(dict)`` and written again with
    ``checkpoint.save`` (so with a valid checksum: what a writer with that defect would produce)."""
    from conure import checkpoint as ckpt

    t, m = ckpt.load(_shared_run("conure") / "checkpoints" / "conure.safetensors")
    if tensors is not None:
        tensors(t)
    if meta is not None:
        meta(m)
    return ckpt.save(ctx.tmp / name, t, m)


class _DiskFull:
    """A file whose write stores half the data and then fails as a full disk does (ENOSPC)."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


@contextlib.contextmanager
def _disk_full():
    """Every file that conure.checkpoint writes (atomic_write_bytes: os.fdopen) hits a full disk half-way."""
    from conure import checkpoint as ckpt

    real = os.fdopen
    with mock.patch.object(ckpt.os, "fdopen", lambda *a, **k: _DiskFull(real(*a, **k))):
        yield


def _a_file(ctx):
    ctx.write("afile", "not a directory\n")


def _cuda_run(ctx) -> Path:
    """The run as a ``device: cuda`` run writes it: its config.yaml and its checkpoint's config say cuda; the tensors
    are the same CPU bytes (checkpoint.save copies every tensor to the CPU; the file records no device)."""
    import yaml

    from conure import checkpoint as ckpt

    run = _copy_run(ctx)
    ctx.write("cuda.yaml", yaml.safe_dump({**RUN_CFG, "device": "cuda"}))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "device": "cuda"}))
    tensors, meta = ckpt.load(run / "checkpoints" / "conure.safetensors")
    meta["config"]["device"] = "cuda"
    ckpt.save(run / "checkpoints" / "conure.safetensors", tensors, meta)
    data = (run / "checkpoints" / "conure.safetensors").read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert not any("device" in k for v in header.values() if isinstance(v, dict) and "dtype" in v for k in v)
    return run


def _no_cuda():
    """This machine as one without CUDA."""
    return mock.patch.object(torch.cuda, "is_available", lambda: False)


def _cuda_cli(*argv):
    def run(ctx):
        _cuda_run(ctx)
        with _no_cuda():
            return cli(ctx, *argv)

    return run


def raw_conv_inputs():
    """Valid raw operator inputs (unseeded, as any valid values do): x [2, 5, 4], w [3, 4, 3], o all task 1."""
    return torch.randn(2, 5, 4), torch.randn(3, 4, 3), torch.ones(3, 4, 3, dtype=torch.uint8)
