"""Negative samplers over a task's target ids ``1..V-1`` (never the padding id 0), excluding the positive.

Both samplers draw *exactly* from the stated distribution conditioned on "not the positive", without
rejection loops: with ``p`` the sampling distribution and ``c`` its CDF, a negative for positive ``j`` is
``searchsorted(c, u')`` with ``u ~ U[0, 1 - p_j)`` and ``u' = u + p_j * [u >= c_{j-1}]``, i.e. the uniform
draw skips over ``j``'s slice of the CDF. Everything is vectorised in torch; pass a ``torch.Generator`` for
reproducible draws.

Popularity (:class:`PopularitySampler`), two documented modes:

* ``mode="rank"`` (default; LambdaFM, Yuan et al. CIKM 2016, the scheme of the Conure release): items are
  ranked by training count, most popular first (rank r = 1, 2, ...; ties by lower id), and
  ``p(j) ∝ exp(-r(j) / (rho * (V - 1)))``. Unlike the release, whose probability vector was indexed by rank
  position but used as if indexed by item id, the weight of rank r goes to *the item holding rank r*.
  Items never seen in training rank last (still sampled, rarely).
* ``mode="power"``: ``p(j) ∝ count_j ** rho`` (word2vec-style; ``rho = 0`` is uniform over ids 1..V-1,
  ``rho = 1`` is proportional to frequency; unseen items are then never drawn).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from conure.data.types import TaskData

__all__ = ["NegativeSampler", "UniformSampler", "PopularitySampler", "make_sampler"]


class NegativeSampler:
    """Base class: a distribution ``probabilities`` over ids ``0..V-1`` with ``probabilities[0] == 0``."""

    num_items: int

    @property
    def probabilities(self) -> torch.Tensor:
        """[V] float64, sums to 1, 0 at the padding id."""
        raise NotImplementedError

    def sample(self, positives: torch.Tensor, num: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw ``num`` negatives for every positive.

        Args:
            positives: int64 of any shape S (e.g. [N] or [N, T]); 0 entries (padding) exclude nothing.
            num: negatives per positive.
            generator: optional ``torch.Generator`` (CPU) for reproducible draws.

        Returns:
            int64 [*S, num], every entry in ``1..V-1`` and different from its positive.
        """
        raise NotImplementedError

    def _check(self, positives: torch.Tensor, num: int) -> torch.Tensor:
        if positives.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"positives must be an integer tensor, got {positives.dtype}")
        if num < 0:
            raise ValueError("num must be >= 0")
        flat = positives.reshape(-1).to(torch.int64).cpu()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_items):
            raise ValueError(
                f"positives must lie in 0..{self.num_items - 1}, got range [{int(flat.min())}, {int(flat.max())}]"
            )
        return flat


class UniformSampler(NegativeSampler):
    """Uniform over ``1..V-1`` minus the positive (exact integer shift: draw in ``1..V-2``, step over it)."""

    def __init__(self, num_items: int) -> None:
        if num_items < 3:
            raise ValueError(f"need at least two real ids (num_items >= 3) to draw a negative, got {num_items}")
        self.num_items = int(num_items)

    @property
    def probabilities(self) -> torch.Tensor:
        p = torch.full((self.num_items,), 1.0 / (self.num_items - 1), dtype=torch.float64)
        p[0] = 0.0
        return p

    def sample(self, positives: torch.Tensor, num: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        flat = self._check(positives, num)
        pos = flat[:, None]
        # Choices left: V-2 real ids when the positive is real, V-1 when it is padding.
        choices = torch.where(pos > 0, self.num_items - 2, self.num_items - 1)
        u = torch.rand((flat.numel(), num), generator=generator, dtype=torch.float64)
        draw = 1 + torch.minimum((u * choices).long(), choices - 1)
        draw = draw + ((pos > 0) & (draw >= pos)).long()
        return draw.reshape(*positives.shape, num).to(positives.device)


class PopularitySampler(NegativeSampler):
    """Popularity-based negatives (see the module docstring for the two modes).

    Args:
        counts: [V] training frequency of each id (e.g. ``TaskData.target_counts``); ``counts[0]`` is ignored.
        rho: rank mode: the LambdaFM temperature (smaller = more concentrated on popular items), > 0;
            power mode: the exponent, >= 0.
        mode: ``"rank"`` or ``"power"``.
    """

    def __init__(self, counts: Union[torch.Tensor, Sequence[float]], rho: float = 0.3, mode: str = "rank") -> None:
        counts = torch.as_tensor(counts, dtype=torch.float64).reshape(-1).cpu()
        V = counts.numel()
        if V < 3:
            raise ValueError(f"need at least two real ids (len(counts) >= 3), got {V}")
        if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
            raise ValueError("counts must be finite and non-negative")
        real = counts[1:]
        if mode == "rank":
            if rho <= 0:
                raise ValueError("rank mode needs rho > 0")
            # Stable sort on -count: ties keep the lower id first. rank[j] = 1 + position of item j.
            order = torch.sort(-real, stable=True).indices
            rank = torch.empty_like(order)
            rank[order] = torch.arange(1, V, dtype=order.dtype)
            weights = torch.exp(-rank.to(torch.float64) / (rho * (V - 1)))
        elif mode == "power":
            if rho < 0:
                raise ValueError("power mode needs rho >= 0")
            weights = real.pow(rho)  # 0 ** 0 == 1: rho = 0 is uniform over every real id
        else:
            raise ValueError(f"mode must be 'rank' or 'power', got {mode!r}")
        if int((weights > 0).sum()) < 2:
            raise ValueError("popularity weights leave fewer than two ids with non-zero probability")
        p = torch.zeros(V, dtype=torch.float64)
        p[1:] = weights / weights.sum()
        self.num_items = V
        self.mode = mode
        self.rho = rho
        self._p = p
        self._cdf = torch.cumsum(p, 0)
        self._cdf[-1] = 1.0  # exact top, so that u < 1 always lands on a real id
        self._before = self._cdf - p  # CDF just before each id: the start of its slice

    @property
    def probabilities(self) -> torch.Tensor:
        return self._p.clone()

    def sample(self, positives: torch.Tensor, num: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        flat = self._check(positives, num)
        p_pos = self._p[flat][:, None]
        if flat.numel() and float(p_pos.max()) >= 1.0 - 1e-12:
            raise ValueError("a positive holds all the probability mass: no negative can be drawn")
        u = torch.rand((flat.numel(), num), generator=generator, dtype=torch.float64) * (1.0 - p_pos)
        u = u + p_pos * (u >= self._before[flat][:, None])
        draw = torch.searchsorted(self._cdf, u, right=True).clamp_(1, self.num_items - 1)
        # Rounding can, in rare cases, land on the positive or on a zero-probability id at a slice boundary;
        # redraw those entries the slow way (row-wise multinomial with the positive masked out).
        bad = (draw == flat[:, None]) | (self._p[draw] == 0)
        if bool(bad.any()):
            rows = bad.nonzero()[:, 0]
            w = self._p.expand(rows.numel(), -1).clone()
            w[torch.arange(rows.numel()), flat[rows]] = 0.0
            draw[bad] = torch.multinomial(w, 1, generator=generator).reshape(-1)
        return draw.reshape(*positives.shape, num).to(positives.device)


def make_sampler(
    task: Union[TaskData, int],
    kind: str = "uniform",
    rho: float = 1.0,
    mode: str = "rank",
    *,
    counts: Optional[torch.Tensor] = None,
) -> NegativeSampler:
    """The one sampler factory: negatives over the target ids ``1..size-1`` of ``task`` (a :class:`TaskData`:
    ``size = task.num_targets``, popularity from ``task.target_counts``) or of a vocabulary of ``size = task`` ids
    (an int: popularity from ``counts``, shape ``[size]``). ``kind``: ``"uniform"`` or ``"popularity"``
    (:class:`PopularitySampler` with ``rho`` and ``mode``; the TrainConfig defaults)."""
    if isinstance(task, TaskData):
        if task.kind == "profile":
            raise ValueError(f"task {task.name!r} is a profile task: negatives are for item targets")
        size, counts, name = task.num_targets, task.target_counts, f"task {task.name!r}"
    else:
        size, name = int(task), "the vocabulary"
    if kind == "uniform":
        return UniformSampler(size)
    if kind == "popularity":
        if counts is None:
            raise ValueError(f"{name} has no target_counts")
        if counts.shape != (size,):
            raise ValueError(f"target counts must have shape [{size}], got {tuple(counts.shape)}")
        return PopularitySampler(counts, rho=rho, mode=mode)
    raise ValueError(f"sampler kind must be 'uniform' or 'popularity', got {kind!r}")
