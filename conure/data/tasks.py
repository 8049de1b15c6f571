"""Task builders: from :class:`Interactions` and a declarative list of task specs to ``list[TaskData]``.

Protocol (what :func:`build_task_sequence` guarantees):

* **Users.** Users with fewer than ``min_len`` events in their main history are dropped from every task.
  The rest are split once, by user, for the whole sequence: a seeded permutation puts
  ``round(test_frac * n)`` users in *test*, ``round(valid_frac * n)`` in *valid*, the rest in *train*. A user
  is in the same split in every task where they appear, so no task trains on a user that another task tests
  (the backbone is shared, so this is what keeps test users unseen). Users are never expanded into several
  rows before splitting.
* **Source vocabulary** (shared by every task, ``num_items``): the items in the *training* users' histories,
  ids ``1..num_items-1`` by decreasing training frequency (ties: raw item order); 0 is padding.
  ``meta["source_vocab"][id]`` is the raw item id of ``id``.
* **Unknown ids** (an item that no training user has, met in a valid/test user): in *inputs* the event is
  dropped (``meta["dropped_unknown_input_events"]``); a held-out *target* that is unknown drops that user from
  the split (``meta["dropped_users"]["unknown_target"]``). Nothing is silently mapped to the pad id.
* **Inputs** are the most recent ``max_len`` known items, left padded with 0: ``[N, L]`` int64.
* Kinds:

  - ``next_item`` (task 1): train users give inputs ``s[:-1]`` and targets ``s[1:]`` (the next item at each
    position, 0 under padding) over their last ``L + 1`` items (``windows: last``), or over the whole history cut
    into windows of ``L + 1`` items that overlap by one, newest first, so every item but the first is a target
    once (``windows: all``: one train row per window, several rows per user); valid/test users are evaluated on
    their last item: inputs end before it, target ``[N]`` = it.
  - ``item``: each user's items of another service (``split`` = ``"time"``: the later part of their own
    timeline; ``"subset"``: the items of a catalogue subset; ``"stream"``: a named stream of
    :attr:`Interactions.streams`) are the targets, in the task's own vocabulary (ids ``1..num_targets-1`` by
    training frequency, 0 pad); the inputs are the rest of the history (for ``"time"`` only the part *before*
    the window, for ``"subset"`` only the non-subset items). Train targets ``[N, T]``: the user's distinct
    target items, oldest first, at most ``max_targets`` (default ``max_len``), 0-padded at the end.
    Valid/test target ``[N]``: the *first* (oldest) target item, i.e. the first item of the later window.
  - ``profile``: target ``[N]`` = class index of a user attribute; users without the attribute are left out
    (``meta["dropped_users"]["missing_label"]``); a value outside the spec's ``classes``/``bins`` is a
    :class:`DataError` naming the file and line it came from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from conure.data.errors import DataError
from conure.data.interactions import Interactions, ItemSequences
from conure.data.types import TASK_KINDS, Split, TaskData
from conure.registry import dataset_kind

__all__ = ["TaskSpec", "build_task_sequence", "default_specs", "TRAIN", "VALID", "TEST"]

TRAIN, VALID, TEST = 0, 1, 2
_SPLIT_NAMES = ("train", "valid", "test")
ITEM_SPLITS = ("time", "subset", "stream")


@dataclass
class TaskSpec:
    """One task of a sequence, as a YAML config would state it.

    Common: ``name``, ``kind`` (``next_item`` | ``item`` | ``profile``).

    ``item`` tasks: ``split`` = ``"time"`` (with ``window``: the share of each user's events that form the
    later window, at least one event and at least one left as input; or ``window_by="global"``: the events at
    or after the global ``1 - window`` time quantile, or after an explicit ``cutoff`` timestamp), ``"subset"``
    (with ``items``: raw ids of the other service's items, or ``fraction``: a seeded random share of the
    catalogue) or ``"stream"`` (with ``stream``: the name of an :attr:`Interactions.streams` entry);
    ``max_targets`` caps train targets per user.

    ``next_item`` tasks: ``windows`` = ``"last"`` (train on each user's last ``max_len + 1`` items, the default)
    or ``"all"`` (the whole history, in windows of ``max_len + 1``; see the module docstring).

    ``profile`` tasks: ``attribute``; optional ``classes`` (the allowed raw values, in class order) or
    ``bins`` (ascending numeric edges: class i holds values in ``[bins[i-1], bins[i])``, with open ends).
    """

    name: str
    kind: str
    split: Optional[str] = None
    window: float = 0.2
    window_by: str = "user"
    cutoff: Optional[float] = None
    items: Optional[Sequence] = None
    fraction: Optional[float] = None
    stream: Optional[str] = None
    max_targets: Optional[int] = None
    attribute: Optional[str] = None
    classes: Optional[Sequence[str]] = None
    bins: Optional[Sequence[float]] = None
    windows: str = "last"

    @classmethod
    def coerce(cls, spec: Union[TaskSpec, Mapping[str, object]]) -> TaskSpec:
        """Accept a TaskSpec or a plain dict (as loaded from YAML); validate it."""
        if isinstance(spec, TaskSpec):
            out = spec
        else:
            if not isinstance(spec, Mapping):
                raise ValueError(f"a task spec must be a dict or TaskSpec, got {type(spec).__name__}")
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(spec) - known)
            if unknown:
                raise ValueError(f"task spec {dict(spec)!r}: unknown keys {unknown}; known keys: {sorted(known)}")
            for key in ("name", "kind"):
                if key not in spec:
                    raise ValueError(f"task spec {dict(spec)!r} lacks {key!r}")
            out = cls(**spec)  # type: ignore[arg-type]
        out.validate()
        return out

    def validate(self) -> None:
        where = f"task spec {self.name!r}"
        if self.kind not in TASK_KINDS:
            raise ValueError(f"{where}: kind must be one of {TASK_KINDS}, got {self.kind!r}")
        if self.kind == "item":
            split = self.split or "time"
            if split not in ITEM_SPLITS:
                raise ValueError(f"{where}: split must be one of {ITEM_SPLITS}, got {self.split!r}")
            if split == "time":
                if self.window_by not in ("user", "global"):
                    raise ValueError(f"{where}: window_by must be 'user' or 'global'")
                if self.cutoff is None and not 0.0 < self.window < 1.0:
                    raise ValueError(f"{where}: window must be in (0, 1), got {self.window}")
            if split == "subset" and (self.items is None) == (self.fraction is None):
                raise ValueError(f"{where}: a subset split needs exactly one of 'items' or 'fraction'")
            if split == "subset" and self.fraction is not None and not 0.0 < self.fraction < 1.0:
                raise ValueError(f"{where}: fraction must be in (0, 1)")
            if split == "stream" and not self.stream:
                raise ValueError(f"{where}: a stream split needs 'stream' (the stream's name)")
            if self.max_targets is not None and self.max_targets < 1:
                raise ValueError(f"{where}: max_targets must be >= 1")
        if self.windows not in ("last", "all"):
            raise ValueError(f"{where}: windows must be 'last' or 'all', got {self.windows!r}")
        if self.windows != "last" and self.kind != "next_item":
            raise ValueError(f"{where}: windows applies to next_item tasks only")
        if self.kind == "profile":
            if not self.attribute:
                raise ValueError(f"{where}: a profile task needs 'attribute'")
            if self.classes is not None and self.bins is not None:
                raise ValueError(f"{where}: give 'classes' or 'bins', not both")
            if self.bins is not None and (len(self.bins) == 0 or list(self.bins) != sorted(self.bins)):
                raise ValueError(f"{where}: bins must be a non-empty ascending list")

    def to_dict(self) -> Dict[str, object]:
        """The non-default fields, as a config would write them."""
        defaults = TaskSpec(name=self.name, kind=self.kind)
        return {k: v for k, v in asdict(self).items() if k in ("name", "kind") or v != getattr(defaults, k)}


# How profile tasks learn best on MovieLens-1M (experiments/ABLATION_ml1m.md): the head reads the mean over the
# positions, is first fitted alone on the frozen user vectors (linear probe), then the free weights are fine-tuned
# at a tenth of the task-1 learning rate.
PROFILE_TRAIN = {"pool": "mean", "head_warmup": 100, "head_lr": 1e-3, "lr": 1e-4}


def default_specs(dataset: str, train: bool = False) -> List[Dict[str, object]]:
    """The task sequence a dataset kind gets by default (its registration: :data:`conure.registry.DATASETS`).

    ``train=True`` adds, as a run config's task entries do, a ``train`` mapping of TrainConfig overrides to the tasks
    that learn better with them (:data:`PROFILE_TRAIN`); :func:`build_task_sequence` takes the specs without it."""
    return [dict(s) for s in dataset_kind(dataset).default_specs(train)]


# ---------------------------------------------------------------------------------------------- array helpers
def _right_aligned(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> torch.Tensor:
    """[N, width] int64: ``values[starts[i]:ends[i]]`` right-aligned in row i, left padded with 0.

    Requires ``ends - starts <= width`` (callers clip ``starts``). Vectorised per block of rows, not per user.
    """
    return _aligned(values, starts, ends, width, right=True)


def _left_aligned(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> torch.Tensor:
    """[N, width] int64: ``values[starts[i]:ends[i]][:width]`` left-aligned in row i, 0-padded at the end."""
    return _aligned(values, starts, ends, width, right=False)


_ALIGN_CELLS = 1 << 22  # cells per block of rows: the index arrays stay ~32 MiB whatever N x width is


def _aligned(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int, right: bool) -> torch.Tensor:
    # Filled in blocks of rows into the one output array: the [N, width] position, mask and gathered arrays of a
    # whole-array version were three more copies of the output (12 GB beside the 2.9 GB of inputs and targets for
    # 1M users x L=200).
    n = len(starts)
    out = np.zeros((n, width), dtype=np.int64)
    if n == 0 or len(values) == 0:
        return torch.from_numpy(out)
    step = max(1, _ALIGN_CELLS // max(width, 1))
    cols = np.arange(width)[None, :]
    for lo in range(0, n, step):
        s, e = starts[lo : lo + step, None], ends[lo : lo + step, None]
        pos = e - width + cols if right else s + cols
        valid = pos >= s if right else pos < e
        np.clip(pos, 0, len(values) - 1, out=pos)
        block = values[pos]
        block[~valid] = 0
        out[lo : lo + step] = block
    return torch.from_numpy(out)


def _compact(values: np.ndarray, keep: np.ndarray, owner: np.ndarray, num_users: int) -> Tuple[np.ndarray, np.ndarray]:
    """Keep the events where ``keep``; return (kept values [E'], CSR offsets [U + 1])."""
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner[keep], minlength=num_users), out=offsets[1:])
    return values[keep], offsets


def _first_occurrences(owner: np.ndarray, values: np.ndarray) -> np.ndarray:
    """[E] bool: True at the first occurrence of each value within its owner's (contiguous) segment."""
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((np.arange(len(values)), values, owner))
    sv, so = values[order], owner[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (sv[1:] != sv[:-1]) | (so[1:] != so[:-1])
    keep = np.zeros(len(values), dtype=bool)
    keep[order[first]] = True
    return keep


def _frequency_vocab(codes: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Dense ids by decreasing frequency of ``codes`` (ties: lower code first).

    Returns (lut [size] int64: code -> id, 0 if unseen; order [V-1]: the code of ids 1..V-1).
    """
    counts = np.bincount(codes, minlength=size)
    seen = np.flatnonzero(counts)
    order = seen[np.argsort(-counts[seen], kind="stable")]
    lut = np.zeros(size, dtype=np.int64)
    lut[order] = np.arange(1, len(order) + 1)
    return lut, order


def _vocab_names(raw_ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    """[V] object array: raw id of each dense id (index 0, the pad, is None)."""
    names = np.empty(len(order) + 1, dtype=object)
    names[1:] = raw_ids[order]
    return names


def _long(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))


def _count_targets(targets: torch.Tensor, size: int) -> torch.Tensor:
    """[size] float32: how often each id appears in ``targets`` (0/pad not counted)."""
    flat = targets.reshape(-1)
    counts = torch.bincount(flat[flat > 0], minlength=size).to(torch.float32)
    counts[0] = 0.0
    return counts


# ---------------------------------------------------------------------------------------------- the builder
class _Context:
    """Shared state of one sequence: user buckets, source vocabulary, the history mapped to vocabulary ids."""

    def __init__(
        self, inter: Interactions, max_len: int, min_len: int, seed: int, valid_frac: float, test_frac: float
    ) -> None:
        self.inter = inter
        self.max_len = max_len
        self.seed = seed
        hist = inter.history
        self.U = inter.num_users
        self.lengths = hist.lengths
        self.owner = hist.user_of_event()  # [E] user of each event
        self.pos = np.arange(len(hist.items), dtype=np.int64) - hist.offsets[self.owner]  # [E] rank in user
        eligible = np.flatnonzero(self.lengths >= min_len)
        self.num_short = int(self.U - len(eligible))
        rng = np.random.default_rng(seed)
        perm = rng.permutation(eligible)
        n_test = int(round(test_frac * len(perm)))
        n_valid = int(round(valid_frac * len(perm)))
        self.bucket = np.full(self.U, -1, dtype=np.int8)  # -1: not in any task
        self.bucket[perm[:n_test]] = TEST
        self.bucket[perm[n_test : n_test + n_valid]] = VALID
        self.bucket[perm[n_test + n_valid :]] = TRAIN
        train_events = self.bucket[self.owner] == TRAIN
        self.lut, order = _frequency_vocab(hist.items[train_events], len(hist.item_ids))
        self.num_items = len(order) + 1
        self.source_vocab = _vocab_names(hist.item_ids, order)
        self.mapped = self.lut[hist.items]  # [E] source id, 0 = unknown
        self.known = self.mapped > 0

    def users_in(self, split: int, mask: Optional[np.ndarray] = None) -> np.ndarray:
        sel = self.bucket == split
        if mask is not None:
            sel &= mask
        return np.flatnonzero(sel)

    def inputs(self, input_event_mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Compact the known input events: (ids [E'], offsets [U+1], unknown-dropped per user [U])."""
        vals, offsets = _compact(self.mapped, input_event_mask & self.known, self.owner, self.U)
        dropped = np.bincount(self.owner[input_event_mask & ~self.known], minlength=self.U)
        return vals, offsets, dropped

    def last_inputs(self, vals: np.ndarray, offsets: np.ndarray, users: np.ndarray) -> torch.Tensor:
        """[N, L]: the most recent max_len known input items of ``users``, left padded."""
        ends = offsets[users + 1]
        starts = np.maximum(offsets[users], ends - self.max_len)
        return _right_aligned(vals, starts, ends, self.max_len)


def _build_next_item(ctx: _Context, spec: TaskSpec, meta: Dict[str, object]) -> Tuple[Split, Split, Split]:
    L = ctx.max_len
    hist = ctx.inter.history
    vals, offsets, dropped_in = ctx.inputs(np.ones(len(hist.items), dtype=bool))
    klen = np.diff(offsets)
    dropped: Dict[str, int] = {"too_short": 0, "unknown_target": 0, "no_known_input": 0}
    # Train: all items are known (the vocabulary is built from them); need one input and one target.
    train_users = ctx.users_in(TRAIN, klen >= 2)
    dropped["too_short"] += int(((ctx.bucket == TRAIN) & (klen < 2)).sum())
    b, e = offsets[train_users], offsets[train_users + 1]
    if spec.windows == "all":
        # windows ending at e, e - L, e - 2L, ... while they hold a target: window k covers [e - kL - L - 1, e - kL)
        count = np.maximum(1, -(-(e - b - 1) // L))  # ceil((n - 1) / L) windows per user
        row_user = np.repeat(np.arange(len(train_users)), count)
        k = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        train_users, b, e = train_users[row_user], b[row_user], e[row_user] - k * L
    train = Split(
        _long(train_users),
        _right_aligned(vals, np.maximum(b, e - 1 - L), e - 1, L),  # s[:-1], last L
        _right_aligned(vals, np.maximum(b + 1, e - L), e, L),
    )  # s[1:],  last L
    splits = [train]
    unknown_inputs = 0
    for split in (VALID, TEST):
        users = ctx.users_in(split)
        last_event = hist.offsets[users + 1] - 1
        target = ctx.mapped[last_event]
        ok = target > 0
        dropped["unknown_target"] += int((~ok).sum())
        users, target = users[ok], target[ok]
        # The target is known, so it is the last compacted item; the inputs are the known items before it.
        ends = offsets[users + 1] - 1
        has_input = ends > offsets[users]
        dropped["no_known_input"] += int((~has_input).sum())
        users, target, ends = users[has_input], target[has_input], ends[has_input]
        unknown_inputs += int(dropped_in[users].sum())
        starts = np.maximum(offsets[users], ends - L)
        splits.append(Split(_long(users), _right_aligned(vals, starts, ends, L), _long(target)))
    meta["dropped_users"] = dropped
    meta["dropped_unknown_input_events"] = unknown_inputs
    return splits[0], splits[1], splits[2]


def _item_task_events(ctx: _Context, spec: TaskSpec) -> Tuple[np.ndarray, ItemSequences, np.ndarray, np.ndarray]:
    """Where an item task's inputs and targets come from, by ``spec.split``.

    Returns (input event mask [E] over the main history, the sequences whose ``item_ids`` is the target
    catalogue, target item codes [E_t] grouped by user and oldest first, their users [E_t]).
    """
    inter, hist = ctx.inter, ctx.inter.history
    split = spec.split or "time"
    E = len(hist.items)
    if split == "stream":
        if spec.stream not in inter.streams:
            raise DataError(
                f"task {spec.name!r}: stream {spec.stream!r} not found (available: {sorted(inter.streams) or 'none'})",
                path=inter.source or None,
            )
        seqs = inter.streams[spec.stream]
        return np.ones(E, dtype=bool), seqs, seqs.items, seqs.user_of_event()
    if split == "subset":
        if spec.items is not None:
            wanted = {str(x) for x in spec.items}
            in_subset = np.fromiter(
                (str(x) in wanted for x in hist.item_ids.tolist()), dtype=bool, count=len(hist.item_ids)
            )
            if not in_subset.any():
                raise DataError(f"task {spec.name!r}: none of the subset's items occur in the data")
        else:
            rng = np.random.default_rng([ctx.seed, 0x5EB5E7])  # own stream: independent of the user split
            k = max(1, int(round(spec.fraction * len(hist.item_ids))))
            in_subset = np.zeros(len(hist.item_ids), dtype=bool)
            in_subset[rng.choice(len(hist.item_ids), size=k, replace=False)] = True
        is_target = in_subset[hist.items]
        return ~is_target, hist, hist.items[is_target], ctx.owner[is_target]
    # split == "time": the later window is a suffix of each user's (time-sorted) history.
    n = ctx.lengths
    if spec.window_by == "global" or spec.cutoff is not None:
        if hist.timestamps is None:
            raise DataError(
                f"task {spec.name!r}: a global time window needs timestamps, and this data has none",
                path=inter.source or None,
            )
        cutoff = spec.cutoff if spec.cutoff is not None else float(np.quantile(hist.timestamps, 1.0 - spec.window))
        is_target = hist.timestamps >= cutoff
        k = np.bincount(ctx.owner[is_target], minlength=ctx.U)
        # A user wholly inside (or before) the window has nothing to predict from (or to predict).
        bad = (k == 0) | (k == n)
        is_target &= ~bad[ctx.owner]
    else:
        # The tolerance keeps e.g. 0.2 * 15 = 3.0000000000000004 at 3 events.
        k = np.clip(np.ceil(spec.window * n - 1e-9).astype(np.int64), 1, np.maximum(n - 1, 1))
        is_target = ctx.pos >= (n - k)[ctx.owner]
        is_target &= (n >= 2)[ctx.owner]
    return ~is_target, hist, hist.items[is_target], ctx.owner[is_target]


def _build_item(
    ctx: _Context, spec: TaskSpec, meta: Dict[str, object]
) -> Tuple[Split, Split, Split, int, torch.Tensor]:
    L = ctx.max_len
    input_mask, catalogue, tcodes, towner = _item_task_events(ctx, spec)
    vals, offsets, dropped_in = ctx.inputs(input_mask)
    klen = np.diff(offsets)
    has_target = np.bincount(towner, minlength=ctx.U) > 0
    dropped: Dict[str, int] = {
        "no_target": int(((ctx.bucket >= 0) & ~has_target).sum()),
        "unknown_target": 0,
        "no_known_input": 0,
    }
    # Train targets: distinct items, oldest first, at most max_targets per user.
    first = _first_occurrences(towner, tcodes)
    t_codes, t_offsets = _compact(tcodes, first, towner, ctx.U)
    cap = spec.max_targets or L
    train_users = ctx.users_in(TRAIN, has_target)
    no_input = klen[train_users] == 0
    dropped["no_known_input"] += int(no_input.sum())
    train_users = train_users[~no_input]
    tb = t_offsets[train_users]
    te = np.minimum(t_offsets[train_users + 1], tb + cap)
    # The target vocabulary comes from exactly the targets the training split holds.
    sel = np.zeros(len(t_codes), dtype=bool)
    sel[_ranges(tb, te)] = True
    tlut, torder = _frequency_vocab(t_codes[sel], len(catalogue.item_ids))
    num_targets = len(torder) + 1
    width = max(1, int((te - tb).max())) if len(train_users) else 1
    mapped_targets = tlut[t_codes]
    train = Split(
        _long(train_users), ctx.last_inputs(vals, offsets, train_users), _left_aligned(mapped_targets, tb, te, width)
    )
    splits = [train]
    unknown_inputs = 0
    for split in (VALID, TEST):
        users = ctx.users_in(split, has_target)
        target = tlut[t_codes[t_offsets[users]]]  # the first (oldest) target item
        ok = target > 0
        dropped["unknown_target"] += int((~ok).sum())
        users, target = users[ok], target[ok]
        has_input = klen[users] > 0
        dropped["no_known_input"] += int((~has_input).sum())
        users, target = users[has_input], target[has_input]
        unknown_inputs += int(dropped_in[users].sum())
        splits.append(Split(_long(users), ctx.last_inputs(vals, offsets, users), _long(target)))
    meta["dropped_users"] = dropped
    meta["dropped_unknown_input_events"] = unknown_inputs
    meta["target_vocab"] = _vocab_names(catalogue.item_ids, torder)
    meta["eval_target"] = "first (oldest) target item of the user"
    counts = _count_targets(train.targets, num_targets)
    return splits[0], splits[1], splits[2], num_targets, counts


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for each pair, vectorised."""
    lens = ends - starts
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    seg_start = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return seg_start + np.arange(total)


def _sort_key(value: str) -> Tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _build_profile(ctx: _Context, spec: TaskSpec, meta: Dict[str, object]) -> Tuple[Split, Split, Split, List[str]]:
    inter = ctx.inter
    attr = spec.attribute
    if attr not in inter.attributes:
        raise DataError(
            f"task {spec.name!r}: attribute {attr!r} not found (available: "
            f"{sorted(inter.attributes) or 'none: was the users file given?'})",
            path=inter.source or None,
        )
    raw = inter.attributes[attr]
    origin = inter.attribute_origin.get(attr)

    def malformed(u: int, value: str, why: str) -> DataError:
        path, line = (origin[0], int(origin[1][u]) or None) if origin is not None else (None, None)
        return DataError(f"task {spec.name!r}: user {inter.user_ids[u]!r} has {attr} {value!r}: {why}", path, line)

    in_task = ctx.bucket >= 0
    present = np.array([v is not None and str(v).strip() != "" for v in raw.tolist()], dtype=bool)
    labels = np.full(ctx.U, -1, dtype=np.int64)
    users_with = np.flatnonzero(present & in_task)
    values = [str(raw[u]).strip() for u in users_with.tolist()]
    if spec.bins is not None:
        edges = [float(x) for x in spec.bins]
        for u, v in zip(users_with.tolist(), values):
            try:
                x = float(v)
            except ValueError:
                raise malformed(u, v, "not a number (the task uses numeric bins)") from None
            if math.isnan(x):
                raise malformed(u, v, "not a number (the task uses numeric bins)")
            labels[u] = int(np.searchsorted(edges, x, side="right"))
        fmt = lambda x: f"{x:g}"  # noqa: E731
        class_names = (
            [f"<{fmt(edges[0])}"]
            + [f"{fmt(a)}-{fmt(b)}" for a, b in zip(edges[:-1], edges[1:])]
            + [f">={fmt(edges[-1])}"]
        )
    else:
        classes = [str(c) for c in spec.classes] if spec.classes is not None else sorted(set(values), key=_sort_key)
        index = {c: i for i, c in enumerate(classes)}
        for u, v in zip(users_with.tolist(), values):
            if v not in index:
                raise malformed(u, v, f"not one of the task's classes {classes}")
            labels[u] = index[v]
        names = inter.attribute_labels.get(attr, {})
        class_names = [names.get(c, c) for c in classes]
    if len(users_with) == 0:
        raise DataError(
            f"task {spec.name!r}: no user has a value for attribute {attr!r}", path=origin[0] if origin else None
        )
    vals, offsets, dropped_in = ctx.inputs(np.ones(len(inter.history.items), dtype=bool))
    has_input = np.diff(offsets) > 0
    dropped = {
        "missing_label": int((in_task & ~present).sum()),
        "no_known_input": int((in_task & present & ~has_input).sum()),
    }
    splits = []
    unknown_inputs = 0
    for split in (TRAIN, VALID, TEST):
        users = ctx.users_in(split, present & has_input)
        if split != TRAIN:
            unknown_inputs += int(dropped_in[users].sum())
        splits.append(Split(_long(users), ctx.last_inputs(vals, offsets, users), _long(labels[users])))
    meta["dropped_users"] = dropped
    meta["dropped_unknown_input_events"] = unknown_inputs
    meta["attribute"] = attr
    return splits[0], splits[1], splits[2], class_names


def build_task_sequence(
    interactions: Interactions,
    specs: Sequence[Union[TaskSpec, Mapping[str, object]]],
    *,
    max_len: int = 50,
    min_len: int = 2,
    seed: int = 0,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
) -> List[TaskData]:
    """Build one :class:`TaskData` per spec, in order (see the module docstring for the protocol).

    Args:
        interactions: the output of a reader or of the synthetic generator.
        specs: task specs (dicts as in a YAML config, or :class:`TaskSpec`), e.g.
            ``[{"name": "next_item", "kind": "next_item"},
            {"name": "later", "kind": "item", "split": "time", "window": 0.2},
            {"name": "gender", "kind": "profile", "attribute": "gender"}]``.
        max_len: L, the input history length (most recent items kept, left padding).
        min_len: users with fewer main-history events are left out of every task.
        seed: the user split's seed (and the item subset's, for ``split: subset`` with ``fraction``).
        valid_frac, test_frac: shares of users in the valid and test splits.

    Returns:
        ``list[TaskData]``; every task has the same ``num_items`` and ``meta["source_vocab"]``.

    Raises:
        DataError: an unusable spec/data combination (unknown attribute or stream, malformed label, a split
        left without users).
    """
    specs = [TaskSpec.coerce(s) for s in specs]
    if not specs:
        raise ValueError("build_task_sequence needs at least one task spec")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    if max_len < 1 or min_len < 1:
        raise ValueError("max_len and min_len must be >= 1")
    if not (0 <= valid_frac < 1 and 0 <= test_frac < 1 and valid_frac + test_frac < 1):
        raise ValueError(
            f"need 0 <= valid_frac, test_frac and valid_frac + test_frac < 1; got {valid_frac}, {test_frac}"
        )
    ctx = _Context(interactions, max_len, min_len, seed, valid_frac, test_frac)
    if ctx.num_items < 2:
        raise DataError(
            "no training users left: check min_len and the split fractions", path=interactions.source or None
        )
    tasks: List[TaskData] = []
    for spec in specs:
        meta: Dict[str, object] = {
            "spec": spec.to_dict(),
            "dataset": interactions.source,
            "seed": seed,
            "max_len": max_len,
            "min_len": min_len,
            "users_below_min_len": ctx.num_short,
            "source_vocab": ctx.source_vocab,
        }
        class_names = None
        if spec.kind == "next_item":
            train, valid, test = _build_next_item(ctx, spec, meta)
            num_targets, counts = ctx.num_items, _count_targets(train.targets, ctx.num_items)
        elif spec.kind == "item":
            train, valid, test, num_targets, counts = _build_item(ctx, spec, meta)
        else:
            train, valid, test, class_names = _build_profile(ctx, spec, meta)
            num_targets, counts = len(class_names), None
        for split, frac, part in ((TRAIN, 1.0, train), (VALID, valid_frac, valid), (TEST, test_frac, test)):
            if frac > 0 and len(part) == 0:
                raise DataError(
                    f"task {spec.name!r}: the {_SPLIT_NAMES[split]} split has no users "
                    f"(dropped: {meta.get('dropped_users')}); use more data or larger fractions",
                    path=interactions.source or None,
                )
        meta["num_users"] = {"train": len(train), "valid": len(valid), "test": len(test)}
        tasks.append(
            TaskData(
                name=spec.name,
                kind=spec.kind,
                num_items=ctx.num_items,
                num_targets=num_targets,
                train=train,
                valid=valid,
                test=test,
                target_counts=counts,
                class_names=class_names,
                meta=meta,
            )
        )
    return tasks
