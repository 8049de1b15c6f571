"""Bad inputs of checkpoint save (atomic writes) and load (+ learner_from, as every command that reads a
run does)."""

import errno
import io
import json
import os
from unittest import mock

import numpy as np
import torch

from ._common import (
    CKPT,
    _a_file,
    _ckpt_error,
    _copy_run,
    _cuda_cli,
    _cwd,
    _disk_full,
    _resaved,
    _shared_run,
    _succeeds,
)
from ._framework import behaves, fixed, raises


def _in_dir(ctx, fn):
    with _cwd(ctx.tmp):
        return fn()


def _load_learner(path):
    """What the commands that read a run checkpoint do (conure.commands.load_run): load, verify, rebuild the learner."""
    from conure import checkpoint as ckpt

    tensors, meta = ckpt.load(path, kind="run")
    return ckpt.learner_from(tensors, meta["learner"])


def _load_file(make):
    """run(ctx): write ``make(ctx)`` (bytes) as ``c.safetensors`` and load it as a run checkpoint."""

    def run(ctx):
        ctx.write("c.safetensors", make(ctx), binary=True)
        with _cwd(ctx.tmp):
            return _load_learner("c.safetensors")

    return run


def _ckpt_bytes(ctx) -> bytes:
    return (_shared_run("conure") / "checkpoints" / "conure.safetensors").read_bytes()


def _torch_save_bytes(ctx) -> bytes:
    buf = io.BytesIO()
    torch.save({"learner/backbone.embedding.weight": torch.zeros(31, 8)}, buf)
    return buf.getvalue()


def _plain_safetensors_bytes(ctx) -> bytes:
    from safetensors.torch import save

    return save({"w": torch.ones(2)})


def _with_header(edit):
    """run(ctx): the run's checkpoint with its safetensors header metadata edited (format, version: fields outside
    the checksum), loaded."""

    def make(ctx):
        data = _ckpt_bytes(ctx)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        edit(header["__metadata__"])
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        return len(raw).to_bytes(8, "little") + raw + data[8 + n :]

    return _load_file(make)


def _flip_bit(ctx) -> bytes:
    data = bytearray(_ckpt_bytes(ctx))
    data[-5] ^= 0x01  # a bit of the last tensor
    return bytes(data)


def _load_resaved(tensors=None, meta=None):
    def run(ctx):
        path = _resaved(ctx, tensors, meta)
        with _cwd(ctx.tmp):
            return _load_learner(path.name)

    return run


OWNER = "learner/backbone.blocks.0.conv1.owner"


EMBEDDING = "learner/backbone.embedding.weight"


def _set(name, fn):
    """A tensors-edit: replace tensor ``name`` by ``fn(tensor)``."""

    def edit(t):
        t[name] = fn(t[name])

    return edit


def _owner_9(owner):
    return torch.where(owner == 0, torch.full_like(owner, 9), owner)  # the free weights "owned by task 9"


def _probe_items():
    return torch.randint(1, 31, (6, 8), generator=torch.Generator().manual_seed(4))


def _load_pair(tensors=None, meta=None):
    """run(ctx): (the re-saved checkpoint's learner, the original's learner)."""

    def run(ctx):
        return _load_resaved(tensors, meta)(ctx), _load_learner(
            _shared_run("conure") / "checkpoints" / "conure.safetensors"
        )

    return run


def _check_same_learner(pair, ctx):
    got, want = pair
    a, b = got.state_tensors(), want.state_tensors()
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(got.predict(1, _probe_items()), want.predict(1, _probe_items()))


def _export_owner_int64(ctx):
    from conure import checkpoint as ckpt

    learner = _load_learner(_shared_run("conure") / "checkpoints" / "conure.safetensors")
    _, meta = ckpt.load(_shared_run("conure") / "checkpoints" / "conure.safetensors")
    with _cwd(ctx.tmp):
        ckpt.export_task(learner, 1, "e.safetensors", meta["vocab"])
        tensors, emeta = ckpt.load("e.safetensors", kind="export")
        name = "backbone/blocks.0.conv1.owner"
        tensors[name] = tensors[name].long()
        ckpt.save("e.safetensors", tensors, emeta)
        return ckpt.load_inference("e.safetensors")


def _export_as_run(ctx):
    from conure import checkpoint as ckpt

    learner = _load_learner(_shared_run("conure") / "checkpoints" / "conure.safetensors")
    _, meta = ckpt.load(_shared_run("conure") / "checkpoints" / "conure.safetensors")
    with _cwd(ctx.tmp):
        ckpt.export_task(learner, 1, "e.safetensors", meta["vocab"])
        return _load_learner("e.safetensors")


def _save_disk_full(ctx):
    """Overwrite the run's checkpoint on a full disk: the old file must stay as it was, no partial file left."""
    from conure import checkpoint as ckpt

    _copy_run(ctx)
    folder = ctx.tmp / "run" / "checkpoints"
    before = (folder / "conure.safetensors").read_bytes()
    tensors, meta = ckpt.load(folder / "conure.safetensors")
    meta["progress"]["completed"] = 2
    try:
        with _cwd(ctx.tmp), _disk_full():
            return ckpt.save(CKPT, tensors, meta)
    finally:
        assert (folder / "conure.safetensors").read_bytes() == before, "the previous checkpoint changed"
        assert [p.name for p in folder.iterdir()] == ["conure.safetensors"], "a partial or temp file was left"
        _load_learner(folder / "conure.safetensors")


def _save_to(rel, prepare=None):
    """run(ctx): checkpoint.save to ``rel`` (relative to the row's directory) after ``prepare(ctx)``."""

    def run(ctx):
        from conure import checkpoint as ckpt

        if prepare is not None:
            prepare(ctx)
        with _cwd(ctx.tmp):
            return ckpt.save(rel, {"w": torch.ones(3)}, {"kind": "run"})

    return run


def _a_dir(ctx):
    (ctx.tmp / "adir").mkdir()


def _save_no_permission(ctx):
    """A directory the user may not write to. Simulated (the tests may run as root, whom chmod does not stop):
    creating the temp file fails with EACCES, as the kernel answers a user without write permission."""
    from conure import checkpoint as ckpt

    (ctx.tmp / "ro").mkdir()
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(ctx.tmp / "ro" / ".c.safetensors.x.tmp"))
    with _cwd(ctx.tmp), mock.patch.object(ckpt.tempfile, "mkstemp", side_effect=denied):
        try:
            return ckpt.save("ro/c.safetensors", {"w": torch.ones(3)}, {"kind": "run"})
        finally:
            assert not list((ctx.tmp / "ro").iterdir())


@fixed(
    "checkpoint.save_parent_is_file",
    "checkpoint.save",
    "a path below a regular file (afile/c.safetensors)",
    "FileExistsError '[Errno 17] File exists: ...afile' (the CLI called it a bug)",
    "NotADirectoryError naming the file",
    error=NotADirectoryError,
    fragment="[Errno 20] Not a directory: 'afile'",
)
def test_checkpoint_save_parent_is_file(ctx):
    return _save_to("afile/c.safetensors", _a_file)(ctx)


@raises(
    "checkpoint.save_grandparent_is_file",
    "checkpoint.save",
    "a path two levels below a regular file",
    NotADirectoryError,
    "[Errno 20] Not a directory: 'afile/sub'",
)
def test_checkpoint_save_grandparent_is_file(ctx):
    return _save_to("afile/sub/c.safetensors", _a_file)(ctx)


@fixed(
    "checkpoint.save_over_directory",
    "checkpoint.save",
    "the path of an existing directory",
    "IsADirectoryError \"[Errno 21] Is a directory: '/.../.adir.k2x9.tmp' -> 'adir'\" (the temp file first)",
    "IsADirectoryError naming the directory",
    error=IsADirectoryError,
    fragment="[Errno 21] Is a directory: 'adir'",
)
def test_checkpoint_save_over_directory(ctx):
    return _save_to("adir", _a_dir)(ctx)


@fixed(
    "checkpoint.save_no_permission",
    "checkpoint.save",
    "a directory without write permission (simulated: the temp file's creation fails with EACCES; the tests "
    "may run as root, whom chmod does not stop)",
    "PermissionError naming the temp file (/.../ro/.c.safetensors.x.tmp)",
    "PermissionError naming the checkpoint; nothing written",
    error=PermissionError,
    fragment="[Errno 13] Permission denied: 'ro/c.safetensors'",
)
def test_checkpoint_save_no_permission(ctx):
    return _save_no_permission(ctx)


@fixed(
    "checkpoint.save_disk_full",
    "checkpoint.save",
    "a full disk: ENOSPC half-way through overwriting the run's checkpoint",
    "OSError '[Errno 28] No space left on device' without the file name (old file intact, temp file removed)",
    "OSError naming the checkpoint; the old checkpoint intact and loadable, no partial or temp file left",
    error=OSError,
    fragment=f"[Errno 28] No space left on device: '{CKPT}'",
)
def test_checkpoint_save_disk_full(ctx):
    return _save_disk_full(ctx)


@raises(
    "checkpoint.load_missing",
    "checkpoint.load",
    "a file that does not exist",
    _ckpt_error(),
    "checkpoint not found: nope.safetensors",
)
def test_checkpoint_load_missing(ctx):
    return _in_dir(ctx, lambda: _load_learner("nope.safetensors"))


@raises(
    "checkpoint.load_directory",
    "checkpoint.load",
    "a directory",
    _ckpt_error(),
    "cdir is a directory, not a checkpoint file",
)
def test_checkpoint_load_directory(ctx):
    return ((ctx.tmp / "cdir").mkdir(), _in_dir(ctx, lambda: _load_learner("cdir")))[1]


@raises(
    "checkpoint.truncated_half",
    "checkpoint.load",
    "the run's checkpoint cut at 50%",
    _ckpt_error(),
    "c.safetensors: truncated checkpoint (",
)
def test_checkpoint_truncated_half(ctx):
    return _load_file(lambda c: _ckpt_bytes(c)[: len(_ckpt_bytes(c)) // 2])(ctx)


@fixed(
    "checkpoint.truncated_1_byte",
    "checkpoint.load",
    "the run's checkpoint cut to 1 byte",
    "the message said '(1 bytes; ...'",
    "CheckpointError 'truncated'",
    error=_ckpt_error(),
    fragment="c.safetensors: truncated checkpoint (1 byte; not even a header)",
)
def test_checkpoint_truncated_1_byte(ctx):
    return _load_file(lambda c: _ckpt_bytes(c)[:1])(ctx)


@raises(
    "checkpoint.truncated_last_byte",
    "checkpoint.load",
    "the run's checkpoint without its last byte",
    _ckpt_error(),
    "c.safetensors: truncated checkpoint (",
)
def test_checkpoint_truncated_last_byte(ctx):
    return _load_file(lambda c: _ckpt_bytes(c)[:-1])(ctx)


@raises(
    "checkpoint.trailing_bytes",
    "checkpoint.load",
    "the run's checkpoint with 16 bytes appended",
    _ckpt_error(),
    "corrupt checkpoint (16 unexpected bytes after the data)",
)
def test_checkpoint_trailing_bytes(ctx):
    return _load_file(lambda c: _ckpt_bytes(c) + b"\0" * 16)(ctx)


@raises(
    "checkpoint.flipped_bit",
    "checkpoint.load",
    "one bit of a tensor flipped",
    _ckpt_error(),
    "checksum mismatch: the checkpoint was modified or corrupted after it was written",
)
def test_checkpoint_flipped_bit(ctx):
    return _load_file(_flip_bit)(ctx)


@raises(
    "checkpoint.empty_file",
    "checkpoint.load",
    "an empty file",
    _ckpt_error(),
    "c.safetensors: truncated checkpoint (0 bytes; not even a header)",
)
def test_checkpoint_empty_file(ctx):
    return _load_file(lambda c: b"")(ctx)


@raises(
    "checkpoint.random_bytes",
    "checkpoint.load",
    "4 KiB of random bytes",
    _ckpt_error(),
    "c.safetensors: not a conure checkpoint (no safetensors header)",
)
def test_checkpoint_random_bytes(ctx):
    return _load_file(lambda c: np.random.default_rng(0).bytes(4096))(ctx)


@raises(
    "checkpoint.json_file",
    "checkpoint.load",
    "a JSON file",
    _ckpt_error(),
    "c.safetensors: not a conure checkpoint (no safetensors header)",
)
def test_checkpoint_json_file(ctx):
    return _load_file(lambda c: json.dumps({"kind": "run", "learner": {"format": "conure.learner"}}).encode())(ctx)


@raises(
    "checkpoint.torch_save_file",
    "checkpoint.load",
    "a torch.save (pickle) file",
    _ckpt_error(),
    "c.safetensors: not a conure checkpoint (no safetensors header)",
)
def test_checkpoint_torch_save_file(ctx):
    return _load_file(_torch_save_bytes)(ctx)


@raises(
    "checkpoint.plain_safetensors",
    "checkpoint.load",
    "a safetensors file that is not conure's",
    _ckpt_error(),
    "not a conure checkpoint (a safetensors file without conure's metadata)",
)
def test_checkpoint_plain_safetensors(ctx):
    return _load_file(_plain_safetensors_bytes)(ctx)


@raises(
    "checkpoint.format_other",
    "checkpoint.load",
    "header format field 'other.checkpoint'",
    _ckpt_error(),
    "not a conure checkpoint (a safetensors file without conure's metadata)",
)
def test_checkpoint_format_other(ctx):
    return _with_header(lambda m: m.update(format="other.checkpoint"))(ctx)


@raises(
    "checkpoint.version_newer",
    "checkpoint.load",
    "format version 2 (newer than this code)",
    _ckpt_error(),
    "checkpoint format version 2 was written by a newer conure",
)
def test_checkpoint_version_newer(ctx):
    return _with_header(lambda m: m.update(version="2"))(ctx)


@raises(
    "checkpoint.version_zero",
    "checkpoint.load",
    "format version 0",
    _ckpt_error(),
    "unsupported checkpoint format version 0 (this conure reads version 1)",
)
def test_checkpoint_version_zero(ctx):
    return _with_header(lambda m: m.update(version="0"))(ctx)


@raises(
    "checkpoint.version_not_int",
    "checkpoint.load",
    "format version 'one'",
    _ckpt_error(),
    "unreadable checkpoint format version 'one'",
)
def test_checkpoint_version_not_int(ctx):
    return _with_header(lambda m: m.update(version="one"))(ctx)


@raises(
    "checkpoint.version_missing",
    "checkpoint.load",
    "no version field",
    _ckpt_error(),
    "unreadable checkpoint format version None",
)
def test_checkpoint_version_missing(ctx):
    return _with_header(lambda m: m.pop("version"))(ctx)


@raises(
    "checkpoint.export_for_run",
    "checkpoint.load(kind='run')",
    "an exported task model",
    _ckpt_error(),
    "e.safetensors: expected a training run's checkpoint, found an exported task model (use the run's "
    "checkpoint, not an export)",
)
def test_checkpoint_export_for_run(ctx):
    return _export_as_run(ctx)


@raises(
    "checkpoint.learner_format",
    "checkpoint.learner_from",
    "learner state format 'x' (re-saved)",
    _ckpt_error(),
    "checkpoint does not hold a usable learner: from_state: meta is not a conure learner state",
)
def test_checkpoint_learner_format(ctx):
    return _load_resaved(meta=lambda m: m["learner"].update(format="x"))(ctx)


@fixed(
    "checkpoint.tensor_missing",
    "checkpoint.learner_from",
    "the embedding tensor missing (re-saved)",
    "CheckpointError cut to 'Error(s) in loading state_dict for ModuleDict:' (the key was on the next line)",
    "CheckpointError naming the key",
    error=_ckpt_error(),
    fragment='Missing key(s) in state_dict: "backbone.embedding.weight"',
)
def test_checkpoint_tensor_missing(ctx):
    return _load_resaved(tensors=lambda t: t.pop(EMBEDDING))(ctx)


@fixed(
    "checkpoint.tensor_unexpected",
    "checkpoint.learner_from",
    "an unexpected tensor (re-saved)",
    "CheckpointError cut to 'Error(s) in loading state_dict for ModuleDict:'",
    "CheckpointError naming the key",
    error=_ckpt_error(),
    fragment='Unexpected key(s) in state_dict: "extra"',
)
def test_checkpoint_tensor_unexpected(ctx):
    return _load_resaved(tensors=lambda t: t.update({"learner/extra": torch.zeros(1)}))(ctx)


@fixed(
    "checkpoint.tensor_shape",
    "checkpoint.learner_from",
    "the embedding with 3 of 31 rows (re-saved)",
    "CheckpointError cut to 'Error(s) in loading state_dict for ModuleDict:'",
    "CheckpointError naming the tensor and both shapes",
    error=_ckpt_error(),
    fragment="size mismatch for backbone.embedding.weight: copying a param with shape torch.Size([3, 8])",
)
def test_checkpoint_tensor_shape(ctx):
    return _load_resaved(tensors=_set(EMBEDDING, lambda x: x[:3]))(ctx)


@fixed(
    "checkpoint.owner_int64",
    "checkpoint.learner_from",
    "an owner map stored as int64 (re-saved)",
    "accepted: load_state_dict cast it to uint8 silently (a stored 256 became task 0)",
    "CheckpointError naming the tensor and the dtypes",
    error=_ckpt_error(),
    fragment="tensor backbone.blocks.0.conv1.owner has dtype torch.int64, the model needs torch.uint8",
)
def test_checkpoint_owner_int64(ctx):
    return _load_resaved(tensors=_set(OWNER, lambda o: o.long()))(ctx)


@fixed(
    "checkpoint.owner_float",
    "checkpoint.learner_from",
    "an owner map stored as float32 (re-saved)",
    "accepted: cast to uint8 silently (1.7 became task 1)",
    "CheckpointError naming the tensor and the dtypes",
    error=_ckpt_error(),
    fragment="tensor backbone.blocks.0.conv1.owner has dtype torch.float32, the model needs torch.uint8",
)
def test_checkpoint_owner_float(ctx):
    return _load_resaved(tensors=_set(OWNER, lambda o: o.float() + 0.7))(ctx)


@fixed(
    "checkpoint.weight_int64",
    "checkpoint.learner_from",
    "the embedding stored as int64 (re-saved)",
    "accepted: cast to float32 silently",
    "CheckpointError naming the tensor and the dtypes",
    error=_ckpt_error(),
    fragment="tensor backbone.embedding.weight has dtype torch.int64, the model needs torch.float32",
)
def test_checkpoint_weight_int64(ctx):
    return _load_resaved(tensors=_set(EMBEDDING, lambda w: w.long()))(ctx)


@behaves(
    "checkpoint.weight_float64",
    "checkpoint.learner_from",
    "the embedding stored as float64 (re-saved)",
    "accepted: floating tensors are cast to the model's dtype (float32), the learner is the original's",
    _check_same_learner,
)
def test_checkpoint_weight_float64(ctx):
    return _load_pair(tensors=_set(EMBEDDING, lambda w: w.double()))(ctx)


@fixed(
    "checkpoint.export_owner_int64",
    "checkpoint.load_inference",
    "an export whose owner map is int64",
    "accepted: cast to uint8 silently",
    "CheckpointError naming the tensor and the dtypes",
    error=_ckpt_error(),
    fragment="export does not hold a usable model: backbone: tensor blocks.0.conv1.owner has dtype torch.int64",
)
def test_checkpoint_export_owner_int64(ctx):
    return _export_owner_int64(ctx)


@fixed(
    "checkpoint.owner_beyond_learned",
    "checkpoint.learner_from",
    "an owner map holding task 9 when only task 1 was learned (re-saved)",
    "accepted (see learner.from_state.owner_beyond_learned)",
    "CheckpointError naming the map and the task id",
    error=_ckpt_error(),
    fragment="the owner map backbone.blocks.0.conv1.owner holds task id 9, but the state has learned tasks [1] only",
)
def test_checkpoint_owner_beyond_learned(ctx):
    return _load_resaved(tensors=_set(OWNER, _owner_9))(ctx)


@behaves(
    "checkpoint.other_torch_version",
    "checkpoint.load + learner_from",
    "written by another torch and conure (meta torch_version 1.13.1, conure_version 0.0.1)",
    "accepted: the versions are recorded, not checked (safetensors + JSON do not depend on them); the learner "
    "is the original's",
    _check_same_learner,
)
def test_checkpoint_other_torch_version(ctx):
    return _load_pair(meta=lambda m: m.update(torch_version="1.13.1", conure_version="0.0.1"))(ctx)


@behaves(
    "checkpoint.cuda_run_on_cpu",
    "conure.cli.main (eval)",
    "the checkpoint of a device: cuda run, on a machine without CUDA",
    "works: checkpoint.save copies every tensor to the CPU and the file records no device; eval, inspect, "
    "predict and export load on the CPU whatever the config's device",
    _succeeds("method conure, test split", "next_item"),
)
def test_checkpoint_cuda_run_on_cpu(ctx):
    return _cuda_cli("eval", "--checkpoint", "run")(ctx)
