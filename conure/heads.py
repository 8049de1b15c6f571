"""Task heads: what sits on top of the shared backbone for each task.

Every head has ``loss(hidden [B, L, C], items [B, L], targets, generator) -> scalar`` (training, train-split targets)
and ``scores(user [B, C]) -> [B, num_targets]`` (evaluation: ranking scores, or class logits), and ``config()``
(JSON-able constructor arguments, for checkpoints).

* :class:`NextItemHead` (``kind == "next_item"``): a linear output layer over the item vocabulary applied at EVERY
  position; full softmax cross-entropy, or sampled softmax (``num_sampled > 0``, shared negatives per batch, logQ
  correction, accidental hits removed) for large vocabularies. Padding targets (0) are ignored.
* :class:`ItemHead` (``kind == "item"``): the task's own target embedding table ``E [num_targets, C]`` (row 0 =
  padding), score ``= E @ proj(u)`` with a linear projection of the user vector ``u``. Loss ``"bpr"``: for every
  (user, target) pair, ``num_negatives`` popularity-sampled negatives drawn by
  :class:`conure.data.samplers.PopularitySampler` (``mode="rank"``: LambdaFM's rank-based scheme of the Conure
  release, temperature ``rho``; or ``mode="power"``: ``counts ** rho``), never the positive, and negatives that are
  another of the user's targets are dropped; ``-log sigmoid(s_pos - s_neg)``. Loss ``"softmax"``: cross-entropy over
  the full target vocabulary for every non-padding target, or sampled softmax (``num_sampled > 0``, as above).
* :class:`ProfileHead` (``kind == "profile"``): a linear classifier, cross-entropy (optionally class-weighted:
  ``class_weight [K]``, e.g. "balanced" = ``N / (K * n_k)``, so a rare class costs as much as a frequent one).

How a head reads the user vector from the backbone's ``[B, L, C]`` output is the head's ``pool`` (:class:`Pool`):
``"last"`` (the paper: the output at the last real position), ``"mean"`` (the average over the real positions) or
``"attention"`` (a learned softmax over the real positions, starting as the mean). The pooling belongs to the task's
head, so it is trained with the task and frozen with it. ``dropout`` (item and profile heads) drops entries of the
pooled user vector while training the head.

Sampled softmax (:func:`sampled_softmax_loss`) never builds ``[P, V]`` logits (P = scored positions: up to B*L for
next_item, the B users' targets for item); beyond the ``V x C`` table and its dense gradient (and Adam's two
moments) it needs ``O(P * (S + 1) + S * C + V)`` floats for S = ``num_sampled``: :func:`head_memory` is the model
(figures for the paper's 646K-item vocabulary in ``docs/MEMORY.md``).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from conure.data.samplers import NegativeSampler, make_sampler
from conure.nn import gather_last, left_padded

__all__ = [
    "TaskHead",
    "NextItemHead",
    "ItemHead",
    "ProfileHead",
    "Pool",
    "POOLS",
    "make_head",
    "head_from_config",
    "head_memory",
    "sampled_softmax_loss",
    "balanced_class_weight",
]

POOLS = ("last", "mean", "attention")


class Pool(nn.Module):
    """The user vector ``[B, C]`` of a backbone output ``hidden [B, L, C]`` and its ``items [B, L]`` (0 = padding).

    ``"last"``: the output at the last real position (:func:`conure.nn.gather_last`); ``"mean"``: the average over
    the real positions; ``"attention"``: ``sum_l softmax_l(hidden[:, l] . query) hidden[:, l]`` over the real
    positions, with a learned ``query [C]`` that starts at zero (= the mean). An all-padding row reads like
    ``"last"`` (position L - 1), so every mode is defined for every row.
    """

    def __init__(self, channels: int, mode: str = "last") -> None:
        super().__init__()
        if mode not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {mode!r}")
        self.mode = mode
        if mode == "attention":
            self.query = nn.Parameter(torch.zeros(channels))

    def reads(self, items: torch.Tensor) -> Optional[int]:
        """How many last positions of ``hidden`` this pooling reads for ``items [B, L]``: 1 for ``"last"`` on
        left-padded rows (the last real position is then L - 1), else None (all)."""
        return 1 if self.mode == "last" and left_padded(items) else None

    def forward(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if self.mode == "last":
            return gather_last(hidden, items)
        real = (items != 0).to(hidden.device)
        real = real | ~real.any(dim=1, keepdim=True) & (
            torch.arange(items.shape[1], device=real.device) == items.shape[1] - 1
        )  # an empty row reads position L-1
        if self.mode == "mean":
            w = real.to(hidden.dtype)
            return (hidden * w[..., None]).sum(1) / w.sum(1, keepdim=True)
        logits = (hidden @ self.query.to(hidden.dtype)).masked_fill(~real, float("-inf"))
        return (torch.softmax(logits, dim=1)[..., None] * hidden).sum(1)


def balanced_class_weight(labels: torch.Tensor, num_classes: int, power: float = 1.0) -> torch.Tensor:
    """``[K]`` float32 weights ``(N / (K * n_k)) ** power`` of the training labels ``[N]`` (``power`` 1: sklearn's
    "balanced"; 0.5: half-way, in log scale, between it and no weighting); a class without training users gets
    weight 0 (it contributes no loss anyway)."""
    n = torch.bincount(labels.to(torch.int64).cpu(), minlength=num_classes).to(torch.float64)
    w = torch.where(n > 0, n.sum() / (num_classes * n.clamp_min(1.0)), torch.zeros_like(n)) ** float(power)
    return w.to(torch.float32)


def sampled_softmax_loss(
    h: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    q: torch.Tensor,
    num_sampled: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Sampled softmax of rows ``h [P, C]`` with targets ``y [P]`` over the output table ``weight [V, C]`` (and
    ``bias [V]``): one shared set of ``num_sampled`` negatives drawn from ``q [V]`` (with replacement), logQ
    correction, accidental hits (a negative equal to the row's target) removed."""
    neg = torch.multinomial(q, num_sampled, replacement=True, generator=generator).to(h.device)
    log_q = torch.log((q * num_sampled).clamp_min(1e-12)).to(h.device, h.dtype)
    n, idx = y.shape[0], torch.cat([y, neg])
    rows = weight[idx]  # one gather: its backward makes one dense [V, C] gradient, not two
    pos_logit = (h * rows[:n]).sum(-1)
    neg_logit = h @ rows[n:].T
    if bias is not None:
        b = bias[idx]
        pos_logit, neg_logit = pos_logit + b[:n], neg_logit + b[n:]
    pos_logit, neg_logit = pos_logit - log_q[y], neg_logit - log_q[neg]
    neg_logit = neg_logit.masked_fill(neg[None, :] == y[:, None], float("-inf"))
    logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(y))


class TaskHead(nn.Module):
    kind = "base"

    def reads(self, items: torch.Tensor) -> Optional[int]:
        """How many of the last positions of the backbone output this head reads for ``items [B, L]``: None (all,
        the default), or 1 (a last-position head on left-padded rows), so the backbone can compute only those."""
        return None

    def pool(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The user vector ``[B, C]`` this head reads from ``hidden [B, L, C]`` (default: the last real position)."""
        return gather_last(hidden, items)

    def user_loss(
        self, user: torch.Tensor, targets: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """The training loss from pooled user vectors ``[B, C]`` (item and profile heads): ``loss(hidden, items,
        ...)`` is ``user_loss(pool(hidden, items), ...)``, so a head can also be fitted on cached user vectors."""
        raise NotImplementedError(f"{type(self).__name__} reads every position: it has no user-vector loss")

    def loss(
        self,
        hidden: torch.Tensor,
        items: torch.Tensor,
        targets: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, user: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> Dict[str, object]:
        raise NotImplementedError

    def set_counts(self, counts: Optional[torch.Tensor]) -> None:
        """Training frequency of each target id (for negative sampling); ignored by heads that do not sample."""


class _SamplingHead(TaskHead):
    """A head that draws negatives: keeps the target counts as a buffer (so checkpoints carry them) and builds its
    sampler from them (uniform while the counts are all zero)."""

    def _init_sampling(self, size: int, rho: float, sampler_mode: str) -> None:
        self.rho, self.sampler_mode = float(rho), str(sampler_mode)
        self.register_buffer("counts", torch.zeros(size, dtype=torch.float64))
        self._sampler, self._sampler_key = None, None

    def set_counts(self, counts: Optional[torch.Tensor]) -> None:
        if counts is not None:
            self.counts.copy_(torch.as_tensor(counts, dtype=torch.float64).reshape(self.counts.shape))

    @property
    def sampler(self) -> NegativeSampler:
        key = (self.counts._version, self.counts.data_ptr())
        if self._sampler is None or key != self._sampler_key:
            c = self.counts.detach().cpu()
            c = c if bool((c[1:] > 0).any()) else None
            self._sampler = make_sampler(
                self.counts.numel(), "uniform" if c is None else "popularity", self.rho, self.sampler_mode, counts=c
            )
            self._sampler_key = key
        return self._sampler


class NextItemHead(_SamplingHead):
    """Next-item prediction at every position: ``logits = W h + b`` over ``num_items`` (id 0 never predicted)."""

    kind = "next_item"

    def __init__(
        self, channels: int, num_items: int, num_sampled: int = 0, rho: float = 1.0, sampler_mode: str = "rank"
    ) -> None:
        super().__init__()
        self.channels, self.num_items, self.num_sampled = channels, num_items, int(num_sampled)
        self.out = nn.Linear(channels, num_items)
        self._init_sampling(num_items, rho, sampler_mode)

    def config(self):
        return {
            "type": "NextItemHead",
            "channels": self.channels,
            "num_items": self.num_items,
            "num_sampled": self.num_sampled,
            "rho": self.rho,
            "sampler_mode": self.sampler_mode,
        }

    def _masked_logits(self, h: torch.Tensor) -> torch.Tensor:
        # in place: logits are [rows, V] (1 GiB for 256 users x 1M items) and a copy doubled the peak of
        # evaluation, predict and the full-softmax loss; the linear layer's backward does not read its output
        logits = self.out(h)
        return logits.index_fill_(-1, torch.zeros(1, dtype=torch.long, device=h.device), float("-inf"))

    def scores(self, user: torch.Tensor) -> torch.Tensor:
        return self._masked_logits(user)

    def loss(self, hidden, items, targets, generator=None):
        if targets.shape != items.shape:
            raise ValueError(f"NextItemHead: train targets must be [N, L] like the inputs, got {tuple(targets.shape)}")
        mask = targets != 0
        h, y = hidden[mask], targets[mask]
        if h.shape[0] == 0:
            return hidden.sum() * 0.0
        if self.num_sampled <= 0 or self.num_sampled >= self.num_items - 1:
            return F.cross_entropy(self._masked_logits(h), y)
        return sampled_softmax_loss(
            h, y, self.out.weight, self.out.bias, self.sampler.probabilities, self.num_sampled, generator
        )


class ItemHead(_SamplingHead):
    """Target-item recommendation: own embedding table, dot product with a projection of the user vector."""

    kind = "item"

    def __init__(
        self,
        channels: int,
        num_targets: int,
        loss: str = "softmax",
        num_negatives: int = 4,
        rho: float = 1.0,
        sampler_mode: str = "rank",
        num_sampled: int = 0,
        pool: str = "last",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if loss not in ("bpr", "softmax"):
            raise ValueError(f"ItemHead: loss must be 'bpr' or 'softmax', got {loss!r}")
        self.channels, self.num_targets, self.loss_name = channels, num_targets, loss
        self.pooling, self.drop = Pool(channels, pool), nn.Dropout(float(dropout))
        self.num_negatives, self.num_sampled = int(num_negatives), int(num_sampled)
        self.proj = nn.Linear(channels, channels)
        self.table = nn.Embedding(num_targets, channels, padding_idx=0)
        nn.init.normal_(self.table.weight, 0.0, channels**-0.5)
        with torch.no_grad():
            self.table.weight[0].zero_()
        self._init_sampling(num_targets, rho, sampler_mode)

    def config(self):
        return {
            "type": "ItemHead",
            "channels": self.channels,
            "num_targets": self.num_targets,
            "loss": self.loss_name,
            "num_negatives": self.num_negatives,
            "rho": self.rho,
            "sampler_mode": self.sampler_mode,
            "num_sampled": self.num_sampled,
            "pool": self.pooling.mode,
            "dropout": self.drop.p,
        }

    def pool(self, hidden, items):
        return self.pooling(hidden, items)

    def reads(self, items):
        return self.pooling.reads(items)

    def scores(self, user: torch.Tensor) -> torch.Tensor:
        s = self.proj(user) @ self.table.weight.T
        # in place (see NextItemHead._masked_logits): matmul's backward does not read its output
        return s.index_fill_(-1, torch.zeros(1, dtype=torch.long, device=s.device), float("-inf"))

    def loss(self, hidden, items, targets, generator=None):
        return self.user_loss(self.pool(hidden, items), targets, generator)

    def user_loss(self, user, targets, generator=None):
        user = self.drop(user)
        if targets.dim() == 1:
            targets = targets[:, None]
        valid = targets != 0  # [B, T]
        if not bool(valid.any()):
            return user.sum() * 0.0
        rows = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)[valid]  # [P]
        pos = targets[valid]  # [P]
        if self.loss_name == "softmax" and 0 < self.num_sampled < self.num_targets - 1:
            return sampled_softmax_loss(
                self.proj(user)[rows],
                pos,
                self.table.weight,
                None,
                self.sampler.probabilities,
                self.num_sampled,
                generator,
            )
        if self.loss_name == "softmax":
            return F.cross_entropy(self.scores(user)[rows], pos)
        u = self.proj(user)[rows]  # [P, C]
        neg = self.sampler.sample(pos.cpu(), self.num_negatives, generator).to(pos.device)  # [P, M], != pos
        own = (neg[:, :, None] == targets[rows][:, None, :]).any(-1)  # another target of the user
        s_pos = (u * self.table(pos)).sum(-1)  # [P]
        s_neg = (u[:, None, :] * self.table(neg)).sum(-1)  # [P, M]
        pair = F.softplus(s_neg - s_pos[:, None])  # -log sigmoid(pos - neg)
        keep = (~own).to(pair.dtype)
        return (pair * keep).sum() / keep.sum().clamp_min(1.0)


class ProfileHead(TaskHead):
    """User-profile classification: ``logits = W u + b`` over ``num_classes``; cross-entropy."""

    kind = "profile"

    def __init__(
        self, channels: int, num_classes: int, pool: str = "last", dropout: float = 0.0, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"ProfileHead: label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.channels, self.num_classes = channels, num_classes
        self.label_smoothing = float(label_smoothing)
        self.pooling, self.drop = Pool(channels, pool), nn.Dropout(float(dropout))
        self.out = nn.Linear(channels, num_classes)
        # training only, set from the train labels at the start of the task: not part of the stored model
        self.register_buffer("class_weight", torch.ones(num_classes), persistent=False)

    def config(self):
        return {
            "type": "ProfileHead",
            "channels": self.channels,
            "num_classes": self.num_classes,
            "pool": self.pooling.mode,
            "dropout": self.drop.p,
            "label_smoothing": self.label_smoothing,
        }

    def set_class_weight(self, weight: Optional[torch.Tensor]) -> None:
        """Per-class loss weights ``[K]`` (None: all 1), e.g. :func:`balanced_class_weight` of the train labels."""
        w = torch.ones(self.num_classes) if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        if w.shape != (self.num_classes,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"ProfileHead: class weights must be {self.num_classes} finite values >= 0")
        self.class_weight.copy_(w.reshape(self.class_weight.shape))

    def pool(self, hidden, items):
        return self.pooling(hidden, items)

    def reads(self, items):
        return self.pooling.reads(items)

    def scores(self, user: torch.Tensor) -> torch.Tensor:
        return self.out(user)

    def loss(self, hidden, items, targets, generator=None):
        return self.user_loss(self.pool(hidden, items), targets, generator)

    def user_loss(self, user, targets, generator=None):
        logits = self.scores(self.drop(user))
        return F.cross_entropy(
            logits, targets, weight=self.class_weight.to(logits.dtype), label_smoothing=self.label_smoothing
        )


_HEADS = {"NextItemHead": NextItemHead, "ItemHead": ItemHead, "ProfileHead": ProfileHead}


def make_head(
    kind: str,
    channels: int,
    num_targets: int,
    *,
    item_loss: str = "softmax",
    num_negatives: int = 4,
    rho: float = 1.0,
    sampler_mode: str = "rank",
    num_sampled: int = 0,
    counts: Optional[torch.Tensor] = None,
    pool: str = "last",
    dropout: float = 0.0,
    label_smoothing: float = 0.0,
) -> TaskHead:
    """The head for a task kind (``"next_item"``, ``"item"``, ``"profile"``); ``counts``: the task's target counts.
    ``pool`` and ``dropout`` apply to item and profile heads (next-item heads read every position)."""
    if kind == "next_item":
        head: TaskHead = NextItemHead(
            channels, num_targets, num_sampled=num_sampled, rho=rho, sampler_mode=sampler_mode
        )
    elif kind == "item":
        head = ItemHead(
            channels,
            num_targets,
            loss=item_loss,
            num_negatives=num_negatives,
            rho=rho,
            sampler_mode=sampler_mode,
            num_sampled=num_sampled,
            pool=pool,
            dropout=dropout,
        )
    elif kind == "profile":
        head = ProfileHead(channels, num_targets, pool=pool, dropout=dropout, label_smoothing=label_smoothing)
    else:
        raise ValueError(f"make_head: unknown task kind {kind!r}")
    head.set_counts(counts)
    return head


def head_from_config(config: Dict[str, object]) -> TaskHead:
    """Rebuild a head (fresh parameters) from its ``config()``."""
    cfg = dict(config)
    cls = _HEADS.get(str(cfg.pop("type", "")))
    if cls is None:
        raise ValueError(f"head_from_config: unknown head type in {config!r}")
    return cls(**cfg)


def head_memory(
    batch: int,
    length: int,
    vocab: int,
    channels: int,
    num_sampled: int = 0,
    *,
    optimizer_states: int = 2,
    bytes_per: int = 4,
) -> Dict[str, int]:
    """Estimated bytes of a next-item output layer over ``vocab`` items with ``channels`` channels for a batch of
    ``batch`` users x ``length`` positions (P = batch * length scored positions, an upper bound: padding is skipped).

    * ``table``: weight + bias; ``grad``: the same (dense); ``optimizer``: ``optimizer_states`` copies (Adam: 2);
    * ``logits``: one ``[P, V]`` copy (full softmax) or ``[P, S+1]`` (sampled); ``activations``: ~3 copies of it
      (logits, log-softmax, gradient), plus for the sampled softmax the ``[P+S, C]`` gathered rows and ~40 bytes per
      item of sampling buffers (float64 probabilities, logQ);
    * ``total`` = table + grad + optimizer + activations. Item heads (last position only): ``length=1``.
    """
    p, v, c, s = batch * length, vocab, channels, num_sampled
    table = (v * c + v) * bytes_per
    if s > 0:
        logits = p * (s + 1) * bytes_per
        activations = 3 * logits + (p + s) * c * bytes_per + 40 * v
    else:
        logits = p * v * bytes_per
        activations = 3 * logits
    out = {
        "positions": p,
        "table": table,
        "grad": table,
        "optimizer": optimizer_states * table,
        "logits": logits,
        "activations": activations,
    }
    out["total"] = out["table"] + out["grad"] + out["optimizer"] + activations
    return out
