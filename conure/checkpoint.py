"""Checkpoints: safetensors for tensors, JSON for everything else, one file, written atomically, verified on load.

File layout: a standard ``.safetensors`` file whose header metadata holds

* ``format`` = ``"conure.checkpoint"`` and ``version`` (this module writes and reads :data:`VERSION`);
* ``meta``: a JSON document (config, vocabularies, task specs, history, progress...);
* ``sha256``: a checksum over every tensor (sorted by name: name, dtype, shape, raw bytes) and the ``meta`` text.

Loading never unpickles: the header is parsed as JSON, the tensors by safetensors. A truncated file, a file with
extra bytes, a header that is not conure's, a checksum mismatch (any tensor byte or metadata character changed)
or a format version this code does not read raise :class:`CheckpointError` with a one-line reason.

Writes go to a temporary file in the same directory, are flushed and fsync'ed, then ``os.replace``'d over the
target (and the directory fsync'ed): a reader sees the old file or the new one, never half of one, even if the
writer is killed.

Two kinds of checkpoint share the container:

* ``kind: "run"`` (:mod:`conure.run`): a learner after its last completed task, plus, mid-task, the state
  needed to resume at the next epoch;
* ``kind: "export"`` (:func:`export_task`): one task's inference model (its backbone weights masked to the owners
  1..N, owner maps, embedding, head N, vocabularies); :func:`load_inference` gives an :class:`InferenceModel`.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from conure.learner import ContinualLearner, check_state_dtypes
from conure.models import NextItNet, build_module, module_config
from conure.version import __version__

__all__ = [
    "CheckpointError",
    "FORMAT",
    "VERSION",
    "save",
    "load",
    "checksum",
    "atomic_write_bytes",
    "atomic_write_text",
    "learner_tensors",
    "learner_meta",
    "learner_from",
    "vocab_meta",
    "export_task",
    "inference_model",
    "load_inference",
    "InferenceModel",
    "resolve_checkpoint",
]

FORMAT = "conure.checkpoint"
VERSION = 1
PathLike = Union[str, os.PathLike]


class CheckpointError(Exception):
    """A checkpoint that cannot be used: missing, truncated, tampered with, of another format or version."""


# ------------------------------------------------------------------------------------------------ low level
def checksum(tensors: Mapping[str, torch.Tensor], meta_text: str) -> str:
    """sha256 over the tensors in name order (name, dtype, shape, raw bytes) and then the metadata JSON text."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(
            name.encode("utf-8") + b"\0" + str(t.dtype).encode() + b"\0" + json.dumps(list(t.shape)).encode() + b"\0"
        )
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(b"meta\0" + meta_text.encode("utf-8"))
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


class AtomicWriter:
    """A file written atomically, whole or piece by piece: a temp file ``.NAME.XXXX.tmp`` in the same directory (with
    the mode ``open`` would give), fsynced and renamed onto ``path`` (``os.replace``) when the ``with`` block ends.
    On any exception in the block or while writing (a bad input line, Ctrl-C, a full disk) the temp file is removed
    and ``path`` is left as it was; an ``OSError`` names ``path``, not the temp file.

    ``binary=False``: ``write`` takes ``str``, encoded as UTF-8, no newline translation.
    """

    def __init__(self, path: PathLike, binary: bool = True) -> None:
        self.path = Path(path)
        self.tmp: Optional[str] = None
        self._f: Any = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where a directory is needed
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.path.parent)) from None
        if self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self.path))
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; give the file the mode open() would
                self._f = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")
            except BaseException:
                os.close(fd)
                raise
        except BaseException as e:
            self.discard()
            raise self._named(e)  # noqa: B904 - the same error, or an OSError naming the file (cause kept)

    def _named(self, e: BaseException) -> BaseException:
        if isinstance(e, OSError) and e.errno is not None:
            named = OSError(e.errno, e.strerror or str(e), str(self.path))
            named.__cause__ = e
            return named
        return e

    def write(self, data: Union[bytes, str]) -> None:
        try:
            self._f.write(data)
        except BaseException as e:
            self.discard()
            raise self._named(e)  # noqa: B904 - the same error, or an OSError naming the file (cause kept)

    def commit(self) -> Path:
        """Flush, fsync and rename onto ``path``."""
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self.tmp, self.path)
        except BaseException as e:
            self.discard()
            raise self._named(e)  # noqa: B904 - the same error, or an OSError naming the file (cause kept)
        self.tmp = None
        _fsync_dir(self.path.parent)
        return self.path

    def discard(self) -> None:
        """Close and remove the temp file (``path`` untouched); nothing to do once committed or discarded."""
        if self._f is not None and not self._f.closed:
            try:
                self._f.close()
            except OSError:
                pass
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:class:`AtomicWriter`): temp file in the same directory, fsync,
    ``os.replace``; on failure the temp file is removed, ``path`` is left as it was, and the ``OSError`` names
    ``path``."""
    with AtomicWriter(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(path: PathLike) -> int:
    """Delete temp files an interrupted :func:`atomic_write_bytes` of ``path`` left behind; returns the count."""
    path = Path(path)
    n = 0
    if path.parent.is_dir():
        for p in path.parent.glob(f".{path.name}.*.tmp"):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
    return n


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def save(path: PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically (see the module docstring). ``meta`` must be JSON-able (NaN allowed)."""
    from safetensors.torch import save as st_save

    clean: Dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"checkpoint tensor {name!r} is a {type(t).__name__}, not a tensor")
        clean[name] = t.detach().to("cpu").contiguous().clone()
    meta = dict(meta)
    meta.setdefault("format", FORMAT)
    meta.setdefault("version", VERSION)
    meta.setdefault("conure_version", __version__)
    meta.setdefault("torch_version", torch.__version__)
    meta.setdefault("written", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta_text = json.dumps(meta, sort_keys=True, default=_json_default, allow_nan=True)
    header = {"format": FORMAT, "version": str(VERSION), "meta": meta_text, "sha256": checksum(clean, meta_text)}
    return atomic_write_bytes(path, st_save(clean, metadata=header))


def load(path: PathLike, *, kind: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read and verify a checkpoint; returns ``(tensors, meta)`` (tensors on CPU). ``kind`` ("run" or "export"),
    if given, must match. Raises :class:`CheckpointError` with the reason."""
    from safetensors.torch import load as st_load

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if len(data) < 8:
        raise CheckpointError(
            f"{path}: truncated checkpoint ({len(data)} byte{'' if len(data) == 1 else 's'}; not even a header)"
        )
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        if n > 1 << 30:
            raise CheckpointError(f"{path}: not a conure checkpoint (no safetensors header)")
        raise CheckpointError(f"{path}: truncated checkpoint (header claims {n} bytes, file has {len(data) - 8})")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{path}: not a conure checkpoint (unreadable safetensors header)") from None
    info = header.get("__metadata__") or {}
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a conure checkpoint (a safetensors file without conure's metadata)")
    try:
        version = int(info.get("version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: unreadable checkpoint format version {info.get('version')!r}") from None
    if version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} was written by a newer conure; this "
            f"conure ({__version__}) reads version {VERSION}: upgrade conure"
        )
    if version < 1 or version != VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint format version {version} (this conure reads version {VERSION})"
        )
    try:
        end = max([int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"], default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise CheckpointError(f"{path}: corrupt checkpoint header (bad tensor offsets)") from None
    expected = 8 + n + end
    if len(data) < expected:
        raise CheckpointError(f"{path}: truncated checkpoint ({len(data)} of {expected} bytes)")
    if len(data) > expected:
        raise CheckpointError(f"{path}: corrupt checkpoint ({len(data) - expected} unexpected bytes after the data)")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: corrupt checkpoint ({str(e).splitlines()[0]})") from None
    meta_text = info.get("meta")
    if not isinstance(meta_text, str) or "sha256" not in info:
        raise CheckpointError(f"{path}: corrupt checkpoint (metadata or checksum missing)")
    if checksum(tensors, meta_text) != info["sha256"]:
        raise CheckpointError(
            f"{path}: checksum mismatch: the checkpoint was modified or corrupted after it was "
            f"written; refusing to use it"
        )
    try:
        meta = json.loads(meta_text)
    except ValueError:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (not JSON)") from None
    if kind is not None and meta.get("kind") != kind:
        what = {"run": "a training run's checkpoint", "export": "an exported task model"}
        found = what.get(meta.get("kind"), "another kind")
        raise CheckpointError(
            f"{path}: expected {what.get(kind, kind)}, found {found}"
            + (" (use the run's checkpoint, not an export)" if kind == "run" else "")
        )
    return tensors, meta


def resolve_checkpoint(path: PathLike) -> Path:
    """A checkpoint file from a path that may be a run directory (``DIR`` -> ``DIR/checkpoints/<method>.safetensors``
    when the run has exactly one method, or the first method of its config)."""
    p = Path(path)
    if p.is_dir():
        folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        found = sorted(folder.glob("*.safetensors"))
        if not found:
            raise CheckpointError(
                f"{p}: no checkpoint in this directory (looked for *.safetensors"
                f"{' under checkpoints/' if folder != p else ''})"
            )
        if len(found) > 1:
            order = _methods_of_run(p)
            for m in order:
                if folder / f"{m}.safetensors" in found:
                    return folder / f"{m}.safetensors"
            raise CheckpointError(f"{p}: several checkpoints ({', '.join(f.name for f in found)}); name one")
        return found[0]
    return p


def _methods_of_run(run_dir: Path) -> List[str]:
    try:
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        method = cfg.get("method", {})
        return [method.get("name")] + list(method.get("compare", []))
    except Exception:
        return []


# ------------------------------------------------------------------------------------------------ learners
def learner_tensors(learner: ContinualLearner, prefix: str = "learner/") -> Dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in learner.state_tensors().items()}


def learner_meta(learner: ContinualLearner) -> Dict[str, Any]:
    return learner.state_meta()


def learner_from(
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    prefix: str = "learner/",
    device: Union[str, torch.device] = "cpu",
) -> ContinualLearner:
    """Rebuild a learner from a checkpoint's ``prefix`` tensors and its ``state_meta`` dict."""
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        learner = ContinualLearner.from_state(state, dict(meta))
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint does not hold a usable learner: {_reason(e)}") from None
    learner.store.to(device)
    return learner


def _reason(e: BaseException, limit: int = 500) -> str:
    """An exception as one line (``load_state_dict`` puts the missing / unexpected keys on its later lines)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, KeyError):
        text = f"missing {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _raw(x: Any) -> Optional[str]:
    return None if x is None else str(x.item() if hasattr(x, "item") else x)


def vocab_meta(tasks: Sequence[Any]) -> Dict[str, Any]:
    """Vocabularies of a task sequence as JSON: raw id (as a string) of every dense id, per task its targets
    (``"source"`` for next-item tasks: the source vocabulary) or class names."""
    if not tasks:
        return {"source": [None], "tasks": []}
    source = [_raw(x) for x in tasks[0].meta.get("source_vocab", [None] * tasks[0].num_items)]
    out = []
    for t in tasks:
        entry: Dict[str, Any] = {"name": t.name, "kind": t.kind, "num_targets": int(t.num_targets)}
        if t.kind == "next_item":
            entry["targets"] = "source"
        elif t.kind == "item":
            tv = t.meta.get("target_vocab")
            entry["targets"] = (
                [_raw(x) for x in tv] if tv is not None else [None] + [str(i) for i in range(1, t.num_targets)]
            )
        else:
            entry["classes"] = (
                list(t.class_names) if t.class_names is not None else [str(i) for i in range(t.num_targets)]
            )
        out.append(entry)
    return {"source": source, "tasks": out}


# ------------------------------------------------------------------------------------------------ inference
class InferenceModel(nn.Module):
    """One task's inference model: ``scores(items [B, L]) -> [B, num_targets]`` (ranking scores with column 0 =
    -inf, or class logits), exactly the learner's ``predict`` for that task.

    Attributes: ``task`` (id), ``name``, ``kind``, ``method``, ``vocab`` (``source`` raw ids, ``targets`` raw ids or
    ``classes``), ``max_len``, ``info`` (the export metadata).
    """

    def __init__(
        self,
        backbone: NextItNet,
        head: nn.Module,
        patches: Optional[nn.Module],
        forward_task: int,
        info: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.backbone, self.head, self.patches = backbone, head, patches
        self.forward_task = int(forward_task)
        self.info = dict(info)
        self.task = int(info["task"])
        self.name = str(info["name"])
        self.kind = str(info["task_kind"])
        self.method = str(info["method"])
        self.vocab = dict(info["vocab"])
        self.max_len = int(info.get("max_len") or 50)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def user_vectors(self, items: torch.Tensor) -> torch.Tensor:
        items = items.to(self.backbone.embedding.weight.device)
        n = self.head.reads(items)  # a last-position head: only the positions it depends on are computed
        hidden = self.backbone(items, self.forward_task, self.patches, out_len=n)
        return self.head.pool(hidden, items if n is None else items[:, items.shape[1] - n :])

    @torch.no_grad()
    def scores(self, items: torch.Tensor) -> torch.Tensor:
        return self.head.scores(self.user_vectors(items))

    def target_names(self) -> List[Optional[str]]:
        """Raw id (or class name) of every output column."""
        if self.kind == "profile":
            return list(self.vocab["classes"])
        targets = self.vocab["targets"]
        return list(self.vocab["source"]) if targets == "source" else list(targets)


def _task_modules(learner: ContinualLearner, task: int) -> Tuple[NextItNet, Optional[nn.Module], int]:
    """(backbone as task ``task`` uses it, its patches or None, the task id its forward passes)."""
    import copy

    method = learner.method
    store = learner.store
    if method == "conure":
        net = copy.deepcopy(learner.backbone)
        with torch.no_grad():
            for _, m in net.conv_layers():
                foreign = (m.owner == 0) | (m.owner > task)
                m.weight.masked_fill_(foreign, 0.0)
                m.owner.masked_fill_(foreign, 0)
        return net, None, task
    if method in ("sinmo", "fineall"):
        key = "backbone" if task == 1 else f"backbone_{task}"
        return copy.deepcopy(store[key]), None, 1
    if method in ("sinmoall", "finecls"):
        return copy.deepcopy(learner.backbone), None, 1
    if method == "peterrec":
        patches = None if task == 1 else copy.deepcopy(store[f"patch_{task}"])
        return copy.deepcopy(learner.backbone), patches, 1
    raise CheckpointError(f"export: don't know which modules method {method!r} uses for a task")


def inference_model(
    learner: ContinualLearner,
    task: int,
    vocab: Mapping[str, Any],
    *,
    max_len: Optional[int] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> InferenceModel:
    """Task ``task``'s :class:`InferenceModel`, cut out of a learner (what :func:`export_task` writes)."""
    if task not in learner.tasks:
        raise CheckpointError(f"task {task} has not been learned (learned: {learner.learned_tasks or 'none'})")
    import copy

    backbone, patches, fwd = _task_modules(learner, task)
    head = copy.deepcopy(learner.store[f"head_{task}"])
    info = dict(learner.tasks[task])
    tv = vocab["tasks"][task - 1]
    task_vocab: Dict[str, Any] = {"source": vocab["source"]}
    if "classes" in tv:
        task_vocab["classes"] = tv["classes"]
    else:
        task_vocab["targets"] = tv["targets"]
    meta = {
        "task": task,
        "name": info["name"],
        "task_kind": info["kind"],
        "metric": info.get("metric"),
        "num_targets": info.get("num_targets"),
        "method": learner.method,
        "forward_task": fwd,
        "vocab": task_vocab,
        "max_len": max_len,
        "seed": learner.seed,
    }
    meta.update(dict(extra or {}))
    return InferenceModel(backbone, head, patches, fwd, meta)


def export_task(
    learner: ContinualLearner,
    task: int,
    path: PathLike,
    vocab: Mapping[str, Any],
    *,
    max_len: Optional[int] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Tuple[Path, InferenceModel]:
    """Write task ``task``'s inference model to ``path`` (kind ``"export"``); returns (path, the model)."""
    model = inference_model(learner, task, vocab, max_len=max_len, extra=extra)
    tensors = {f"backbone/{k}": v for k, v in model.backbone.state_dict().items()}
    tensors.update({f"head/{k}": v for k, v in model.head.state_dict().items()})
    modules = {"backbone": module_config(model.backbone), "head": module_config(model.head)}
    if model.patches is not None:
        tensors.update({f"patch/{k}": v for k, v in model.patches.state_dict().items()})
        modules["patch"] = module_config(model.patches)
    owners = {}
    for name, m in model.backbone.conv_layers():
        counts = torch.bincount(m.owner.flatten().to(torch.int64), minlength=task + 1).tolist()
        owners[name] = {str(t): int(c) for t, c in enumerate(counts) if c}
    meta = {"kind": "export", "modules": modules, "owners": owners, **model.info}
    return save(path, tensors, meta), model


def load_inference(path: PathLike, device: Union[str, torch.device] = "cpu") -> InferenceModel:
    """Load an exported task model (see :func:`export_task`)."""
    tensors, meta = load(path, kind="export")
    try:
        parts = {}
        for key in ("backbone", "head", "patch"):
            if key not in meta["modules"]:
                continue
            module = build_module(meta["modules"][key])
            state = {k[len(key) + 1 :]: v for k, v in tensors.items() if k.startswith(key + "/")}
            check_state_dtypes(module.state_dict(), state, key)
            module.load_state_dict(state, strict=True)
            parts[key] = module
        info = {k: v for k, v in meta.items() if k not in ("modules", "owners")}
        model = InferenceModel(parts["backbone"], parts["head"], parts.get("patch"), int(meta["forward_task"]), info)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: export does not hold a usable model: {_reason(e)}") from None
    return model.to(device)


def nan_to_none(value: Any) -> Any:
    """JSON for humans: NaN/inf floats -> None, recursively."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Mapping):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value
