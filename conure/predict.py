"""Prediction from raw histories: ``user<TAB>item item ...`` lines in, top-k items or class scores out, streamed in
batches (what ``conure predict`` does)."""

from __future__ import annotations

import io
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from conure import checkpoint as ckpt
from conure.data.readers import is_utf8
from conure.run import RunError
from conure.run_callbacks import _bar

__all__ = [
    "Row",
    "iter_sequences",
    "read_sequences",
    "PredictStats",
    "iter_predictions",
    "predict_rows",
    "prediction_text",
]


Row = Tuple[str, List[str]]


def iter_sequences(source: Any, name: Optional[str] = None) -> Iterator[Row]:
    """``user<TAB>item item ...`` lines (raw ids, oldest first; blank lines and '#' comments skipped), read lazily:
    one line at a time, so any input size takes bounded memory.

    ``source``: a path, or an open stream (``sys.stdin``; ``name`` names it in messages, default its ``.name`` or
    ``<stream>``). A missing path or a directory raises :class:`RunError` now; a malformed line
    (``path:lineno: ...``) and an input without any user raise it while iterating, after the rows before them.

    A file is decoded as UTF-8, or as latin-1 when it is not valid UTF-8, as a whole (as ``Path.read_text`` would
    read it): from its first non-ASCII line, if any, the rest is scanned once to decide. A file that cannot be read
    twice (a pipe given as a path, ``<(zcat ...)``) is read once: latin-1 when its first non-ASCII line is not UTF-8,
    an error when a later line is not UTF-8. A text stream is decoded as the stream does (``sys.stdin``: the
    locale's encoding). Lines are split as ``str.splitlines`` splits them.
    """
    if isinstance(source, (str, bytes, os.PathLike)):
        p = Path(os.fsdecode(source))
        if not p.exists():
            raise RunError(f"input file not found: {p}")
        if p.is_dir():
            raise RunError(f"input {p} is a directory, not a sequence file")
        return _parse_sequences(_path_lines(p, name or str(p)), name or str(p))
    label = name or getattr(source, "name", None)
    label = label if isinstance(label, str) else "<stream>"
    if isinstance(source, (io.RawIOBase, io.BufferedIOBase)):
        return _parse_sequences(_binary_lines(source, label, seekable=False), label)
    return _parse_sequences(_text_lines(source, label), label)


def read_sequences(path: os.PathLike) -> List[Row]:
    """Every row of :func:`iter_sequences` (``path``: a file or a stream) in a list."""
    return list(iter_sequences(path))


def _parse_sequences(lines: Iterable[str], name: str) -> Iterator[Row]:
    n = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 2:
            raise RunError(
                f"{name}:{lineno}: expected 'user<TAB>item item ...', got {len(parts)} tab-separated "
                f"field{'s' if len(parts) != 1 else ''}"
            )
        user = parts[0].strip()
        if not user:
            raise RunError(f"{name}:{lineno}: empty user id")
        n += 1
        yield user, parts[1].split()
    if not n:
        raise RunError(f"{name}: no users in the input")


def _path_lines(p: Path, name: str) -> Iterator[str]:
    with open(p, "rb") as f:
        yield from _binary_lines(f, name, seekable=f.seekable())


def _binary_lines(f: Any, name: str, seekable: bool) -> Iterator[str]:
    """The lines of a binary file from its position, decoded as described in :func:`iter_sequences`."""
    encoding = None  # None: only ASCII so far, which both encodings decode alike
    n = 0
    for raw in f:
        if encoding is None and not raw.isascii():
            if seekable:  # decide for the whole file: is the rest valid UTF-8?
                pos = f.tell()
                valid = is_utf8(itertools.chain([raw], iter(lambda: f.read(1 << 20), b"")))
                f.seek(pos)
            else:
                valid = is_utf8([raw])
            encoding = "utf-8" if valid else "latin-1"
        try:
            text = raw.decode(encoding or "ascii")
        except UnicodeDecodeError as e:  # a stream: UTF-8 so far, this line is not
            raise RunError(
                f"{name}:{n + 1}: not valid UTF-8 ({e.reason}), but earlier lines were UTF-8 and have "
                f"been read as such; a stream cannot be reread as latin-1 (convert it to UTF-8 or give "
                f"a file)"
            ) from None
        lines = text.splitlines()
        n += len(lines)
        yield from lines


def _text_lines(stream: Any, name: str) -> Iterator[str]:
    try:
        for chunk in stream:
            yield from chunk.splitlines()
    except UnicodeDecodeError as e:
        raise RunError(
            f"{name}: the input is not valid {e.encoding} ({e.reason}); give it as a file (read as "
            f"UTF-8, or latin-1 when it is not UTF-8)"
        ) from None


@dataclass
class PredictStats:
    """What :func:`iter_predictions` has seen so far: users predicted, input items not in the model's vocabulary
    (skipped), users with no known item (an empty prediction with a ``"note"``)."""

    users: int = 0
    unknown: int = 0
    empty: int = 0


def iter_predictions(
    model: ckpt.InferenceModel,
    rows: Iterable[Row],
    *,
    top_k: int = 10,
    exclude_seen: bool = False,
    batch_size: int = 512,
    stats: Optional[PredictStats] = None,
) -> Iterator[List[Dict[str, Any]]]:
    """Predictions of a task model for raw-id histories, one list per batch of ``batch_size`` rows, each yielded
    as soon as it is computed: ``rows`` (any iterable, e.g. :func:`iter_sequences`) is read one batch at a time, so
    memory stays bounded whatever the input size. ``stats`` (optional) is updated batch by batch.

    Per user, ranking tasks: ``items`` (top-K raw target ids, best first) and ``scores``; profile tasks: ``label``
    (class name) and ``probs`` (per class). Items the model does not know are skipped; a user with no known item
    gets an empty prediction and ``"note"``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stats = PredictStats() if stats is None else stats
    index = {raw: i for i, raw in enumerate(model.vocab["source"]) if raw is not None and i > 0}
    L = model.max_len
    names = model.target_names()
    k = max(1, min(top_k, len(names) - (0 if model.kind == "profile" else 1)))
    it = iter(rows)
    with _bar(desc="predict", unit="batch", leave=False) as bar:
        while True:
            chunk = list(itertools.islice(it, batch_size))
            if not chunk:
                return
            encoded = []
            for _, items in chunk:
                ids = [index.get(str(x), 0) for x in items]
                stats.unknown += sum(1 for i in ids if i == 0)
                encoded.append([i for i in ids if i][-L:])
            x = torch.zeros(len(chunk), L, dtype=torch.long)
            for i, ids in enumerate(encoded):
                if ids:
                    x[i, L - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            scores = model.scores(x).float().cpu()
            out: List[Dict[str, Any]] = []
            for i, ((user, _), ids) in enumerate(zip(chunk, encoded)):
                if not ids:
                    out.append(
                        {
                            "user": user,
                            **({"label": None} if model.kind == "profile" else {"items": []}),
                            "note": "no known item in the history",
                        }
                    )
                    stats.empty += 1
                    continue
                s = scores[i]
                if model.kind == "profile":
                    probs = torch.softmax(s, dim=0)
                    c = int(torch.argmax(s))
                    out.append(
                        {
                            "user": user,
                            "label": names[c],
                            "probs": {str(n): round(float(p), 6) for n, p in zip(names, probs)},
                        }
                    )
                    continue
                if exclude_seen and model.vocab.get("targets") == "source":
                    s = s.clone()
                    s[torch.tensor(sorted(set(ids)))] = float("-inf")
                vals, idx = torch.topk(s, k)
                keep = [
                    (names[j], float(v)) for j, v in zip(idx.tolist(), vals.tolist()) if j > 0 and v > float("-inf")
                ]
                out.append({"user": user, "items": [n for n, _ in keep], "scores": [round(v, 6) for _, v in keep]})
            stats.users += len(out)
            bar.update(1)
            yield out


def predict_rows(
    model: ckpt.InferenceModel,
    rows: Iterable[Row],
    *,
    top_k: int = 10,
    exclude_seen: bool = False,
    batch_size: int = 512,
) -> Tuple[List[Dict[str, Any]], int]:
    """Every prediction of :func:`iter_predictions` in one list: (one dict per user, unknown item count)."""
    stats = PredictStats()
    out: List[Dict[str, Any]] = []
    for batch in iter_predictions(
        model, rows, top_k=top_k, exclude_seen=exclude_seen, batch_size=batch_size, stats=stats
    ):
        out.extend(batch)
    return out, stats.unknown


def prediction_text(
    model: ckpt.InferenceModel, batches: Iterable[List[Dict[str, Any]]], fmt: str = "tsv"
) -> Iterator[str]:
    """``conure predict``'s output, one piece per batch of :func:`iter_predictions`; joined, the pieces are
    exactly ``json.dumps({"task", "name", "kind", "predictions": [...]}, indent=1) + "\\n"`` (``fmt="json"``) or
    one line per user (``tsv``): ``user<TAB>item item ...`` (ranking) or ``user<TAB>label`` (profile; empty for a
    user with no known item)."""
    if fmt == "tsv":
        for batch in batches:
            if model.kind == "profile":
                yield "".join(f"{p['user']}\t{'' if p['label'] is None else p['label']}\n" for p in batch)
            else:
                yield "".join(f"{p['user']}\t{' '.join(str(i) for i in p['items'])}\n" for p in batch)
        return
    if fmt != "json":
        raise ValueError(f"unknown format {fmt!r} (tsv or json)")
    # json.dumps(indent=1) of the whole document, written piece by piece: the header ends with '"predictions": []\n}';
    # a batch is the dumps of its list without the brackets, its items (one level deep there) indented one level more
    # (nested indents are relative; a JSON string holds no raw newline); batches are separated by ",\n", then the
    # list and the document close.
    empty = json.dumps({"task": model.task, "name": model.name, "kind": model.kind, "predictions": []}, indent=1)
    head = empty[: -len("[]\n}")] + "[\n"
    first = True
    for batch in batches:
        if not batch:
            continue
        items = " " + json.dumps(batch, indent=1)[len("[\n") : -len("\n]")].replace("\n", "\n ")
        yield (head if first else ",\n") + items
        first = False
    yield empty + "\n" if first else "\n ]\n}\n"


# ------------------------------------------------------------------------------------------------ checkpoints
