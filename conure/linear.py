"""Bag-of-items linear baselines: what a linear model on the same input window reaches, per task.

Every task reads a user's last L source items (``inputs [N, L]``, 0 = padding). The linear baseline forgets the
order and keeps the set: a binary multi-hot ``x [F]`` of the items in the window (:func:`bag_of_items`), then

* profile tasks: multinomial logistic regression (softmax over the ``K`` classes, a bias per class, binary tasks as
  two classes), mean cross-entropy ``+ l2 * ||W||^2 / 2``, fitted full batch with L-BFGS (strong Wolfe line search,
  float64, sparse ``X @ W``) for each ``l2`` of a grid from strong to weak, each fit starting from the previous one;
* ranking tasks (``item``, ``next_item``): ridge regression from ``x`` to the multi-hot ``y [V]`` of the user's
  training targets (item: the task's train target ids; next_item: the one item after the input window, i.e.
  ``train.targets[:, -1]``), in closed form, ``W = argmin (1/N) ||X W - Y||^2 + l2 ||W||^2``; column 0 of ``x``
  (the padding id, never a feature) is a constant 1: an intercept, which alone would give the popularity ranking.
  Scores of new users are ``X' W``, ranked like the learners' (:func:`conure.metrics.target_ranks`: full ranking over
  ids ``1..V-1``, pessimistic ties).

The ``l2`` of each is the one with the best validation value of the task's metric (``bacc`` for profile tasks,
``mrr@K`` for ranking tasks unless the run names another; :func:`conure.metrics.improves`; a tie keeps the stronger
``l2``); the reported ``value`` and ``metrics`` are that model's on the test split. It runs on the CPU and draws no
random numbers: the same data and thread count give the same numbers (another thread count may round the sums
differently, and with them where L-BFGS stops).

Sizes and costs
    ``max_features`` (default 20,000) caps F: only the ``max_features`` most frequent source items are features.
    Source ids are numbered by decreasing training frequency, so these are ids ``1..max_features``; rarer ids are
    dropped from the bag. Logistic regression costs ``O(nnz(X) * K)`` per L-BFGS iteration. The ridge solves with
    the Gram matrix of the smaller side, ``X^T X [F, F]`` when ``F <= N`` (primal), else ``X X^T [N, N]`` (dual,
    ``W = X^T (X X^T + lambda I)^-1 Y``), both in float64 with ``lambda = N * l2``: memory ``8 * min(N, F)^2``
    bytes (twice that while factorising), time ``O(min(N, F)^3)`` per ``l2`` (Cholesky) or once (eigen). When
    ``min(N, F)`` exceeds ``max_dim`` (default 10,000: about 1.6 GB and a few minutes on 2 cores), F is cut to
    ``max_dim`` columns (the most frequent items again). ``W [F, V]`` is never formed: valid/test users are
    scored in batches through the sparse ``X`` and ``Y`` (``scores = X' (X^T X + lambda I)^-1 X^T Y``), so memory
    for the scores is ``batch * V`` whatever the number V of targets.

Ridge solvers (``solver``): ``"cholesky"`` factorises ``Gram + lambda I`` once per ``l2``; ``"eigh"`` decomposes
``Gram = Q diag(s) Q^T`` once and solves every ``l2`` as ``Q diag(1 / (s + lambda)) Q^T``. A symmetric
eigendecomposition costs about twenty Cholesky factorisations (measured with one thread, 2,000-3,000 rows; far more
when threads compete for cores), so ``"auto"`` (default) takes the eigendecomposition only for grids of more than
20 values.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from conure import metrics as M
from conure.data.types import TaskData

__all__ = [
    "DEFAULT_L2",
    "DEFAULT_RIDGE_L2",
    "DEFAULT_MAX_FEATURES",
    "DEFAULT_MAX_DIM",
    "bag_of_items",
    "ridge_scores",
    "linear_baseline",
]

# Logistic regression: mean cross-entropy + l2 ||W||^2 / 2; strong -> weak (warm starts go that way).
DEFAULT_L2: Tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
# Ridge: (1/N) ||XW - Y||^2 + l2 ||W||^2; strong -> weak (a tie keeps the stronger).
DEFAULT_RIDGE_L2: Tuple[float, ...] = (10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3)
DEFAULT_MAX_FEATURES = 20_000
DEFAULT_MAX_DIM = 10_000
_EIGH_GRID = 20  # "auto": eigendecomposition only for grids longer than this
_MAX_ITER = 200  # L-BFGS iterations per l2
_SCORE_ENTRIES = 1 << 24  # ridge scoring: rows per batch such that a batch's scores hold ~16M entries


# ------------------------------------------------------------------------------------------------ features
def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # torch calls sparse CSR "beta": the operations used here are not new
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _check_ids(inputs: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"{what}: need an [N, L] tensor of item ids, got {shape}")
    if inputs.is_floating_point() or inputs.is_complex() or inputs.dtype == torch.bool:
        raise ValueError(f"{what}: item ids must be integers, got {inputs.dtype}")
    x = inputs.detach().to("cpu", torch.int64)
    if x.numel() and int(x.min()) < 0:
        raise ValueError(f"{what}: item ids must be >= 0 (0 = padding), got {int(x.min())}")
    return x


def _multi_hot_coords(x: torch.Tensor, num_features: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sorted, unique (row, column) pairs of the ids ``1 <= id < num_features`` of ``x [N, L]``."""
    n, width = x.shape
    keep = (x > 0) & (x < num_features)
    rows = torch.arange(n, dtype=torch.int64)[:, None].expand(n, width)[keep]
    key = torch.unique(rows * num_features + x[keep])  # sorted: row-major order, duplicates once
    return key // num_features, key % num_features


def _csr_from_coords(
    rows: torch.Tensor, cols: torch.Tensor, shape: Tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    return _csr(crow, cols, torch.ones(cols.numel(), dtype=dtype), shape)


def bag_of_items(inputs: torch.Tensor, num_features: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Binary multi-hot of each row of ``inputs [N, L]`` (int item ids, 0 = padding): a sparse CSR ``[N,
    num_features]`` tensor of ``dtype`` with a 1 at column ``i`` for every id ``i`` in the row. Id 0 and ids ``>=
    num_features`` are dropped (the feature cap: with ids numbered by decreasing frequency, ``num_features = F + 1``
    keeps the F most frequent items); an id repeated in a row counts once. Column 0 is always empty.

    Raises ValueError for a tensor that is not 2-D or not integer, negative ids, or ``num_features < 1``.
    """
    x = _check_ids(inputs, "bag_of_items")
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"bag_of_items: num_features must be an int >= 1, got {num_features!r}")
    rows, cols = _multi_hot_coords(x, num_features)
    return _csr_from_coords(rows, cols, (x.shape[0], num_features), dtype)


def _with_bias(x: torch.Tensor, num_features: int) -> torch.Tensor:
    """Ridge design matrix: the float64 multi-hot of ``x [N, L]`` with column 0 (padding, never a feature) set to 1,
    the intercept. Sparse CSR ``[N, num_features]``."""
    rows, cols = _multi_hot_coords(x, num_features)
    n = x.shape[0]
    key = torch.cat([rows * num_features + cols, torch.arange(n, dtype=torch.int64) * num_features])
    key = torch.sort(key).values  # the intercept sorts first in its row
    return _csr_from_coords(key // num_features, key % num_features, (n, num_features), torch.float64)


def _dense_rows(a: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of a sparse CSR matrix ``a [N, F]`` as a dense ``[stop - start, F]`` tensor."""
    crow, col, val = a.crow_indices(), a.col_indices(), a.values()
    lo, hi = int(crow[start]), int(crow[stop])
    out = torch.zeros(stop - start, a.shape[1], dtype=val.dtype)
    local = torch.repeat_interleave(torch.arange(stop - start), crow[start + 1 : stop + 1] - crow[start:stop])
    out[local, col[lo:hi]] = val[lo:hi]
    return out


def _transpose(a: torch.Tensor) -> torch.Tensor:
    """The transpose of a sparse CSR matrix ``a [R, C]``, as sparse CSR ``[C, R]`` (products with ``A^T`` then stay
    row-parallel and deterministic)."""
    coo = a.to_sparse_coo().coalesce()
    (r, c), v = coo.indices(), coo.values()
    order = torch.argsort(c * a.shape[0] + r)
    crow = torch.zeros(a.shape[1] + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(c, minlength=a.shape[1]), 0)
    return _csr(crow, r[order], v[order], (a.shape[1], a.shape[0]))


def _gram(a: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """``A A^T [R, R]`` (dense float64) of a sparse CSR ``A [R, C]``, a block of columns at a time: memory ``R^2`` plus
    ``C * block``."""
    r = a.shape[0]
    out = torch.empty(r, r, dtype=torch.float64)
    for s in range(0, r, block):
        e = min(r, s + block)
        out[:, s:e] = a @ _dense_rows(a, s, e).T
    return out


# ------------------------------------------------------------------------------------------------ ridge
class _Ridge:
    """A ridge problem ``(1/N) ||X W - Y||^2 + l2 ||W||^2`` prepared for a grid of raw penalties ``lambdas``
    (``lam = N * l2``): the Gram matrix of the smaller side and, for ``solver="eigh"``, its eigendecomposition.

    ``x [N, F]``: sparse CSR float64; ``y_t [V, N]``: sparse CSR float64 (``Y^T``). ``primal``: Gram ``X^T X [F, F]``
    (None: when ``F <= N``), else ``X X^T [N, N]``.
    """

    def __init__(
        self, x: torch.Tensor, y_t: torch.Tensor, lambdas: Sequence[float], primal: Optional[bool], solver: str
    ) -> None:
        n, f = x.shape
        self.x, self.y_t, self.lambdas = x, y_t, [float(v) for v in lambdas]
        self.primal = f <= n if primal is None else primal
        self.gram = _gram(_transpose(x) if self.primal else x)
        self.eigh = solver == "eigh" or (solver == "auto" and len(self.lambdas) > _EIGH_GRID)
        if self.eigh:
            s, self.q = torch.linalg.eigh(self.gram)
            self.s = s.clamp_min(0.0)  # the Gram is PSD; rounding can leave tiny negative eigenvalues

    def _factor(self, k: int) -> torch.Tensor:
        a = self.gram.clone()
        a.diagonal().add_(self.lambdas[k])
        return torch.linalg.cholesky(a)

    def _rhs(self, x_new: torch.Tensor, s: int, e: int) -> torch.Tensor:
        d = _dense_rows(x_new, s, e).T  # X'^T [F, b]
        return d if self.primal else self.x @ d  # dual: X X'^T [N, b]

    def _scores(self, sol: torch.Tensor) -> torch.Tensor:
        r = self.x @ sol if self.primal else sol  # [N, b]: X S (primal) or S (dual)
        return (self.y_t @ r).T  # (Y^T R)^T = R^T Y [b, V]

    def scores(
        self, x_new: torch.Tensor, ks: Optional[Sequence[int]] = None, batch_size: Optional[int] = None
    ) -> Iterator[Tuple[int, int, int, torch.Tensor]]:
        """Scores ``X' W`` of the rows of ``x_new [n, F]`` (sparse CSR float64) for the lambdas at indices ``ks``
        (default all), yielded as ``(k, start, stop, scores [stop - start, V] float64)``, a batch of rows at a time
        (``W [F, V]`` is never formed)."""
        ks = list(range(len(self.lambdas)) if ks is None else ks)
        rows = x_new.shape[0]
        width = max(self.y_t.shape[0], self.gram.shape[0], 1)
        b = batch_size or max(1, min(rows, _SCORE_ENTRIES // width))
        if self.eigh:  # one Q^T B per batch serves every lambda
            for s in range(0, rows, b):
                e = min(rows, s + b)
                qtb = self.q.T @ self._rhs(x_new, s, e)
                for k in ks:
                    yield k, s, e, self._scores(self.q @ (qtb / (self.s + self.lambdas[k])[:, None]))
        else:  # one factorisation per lambda
            for k in ks:
                factor = self._factor(k)
                for s in range(0, rows, b):
                    e = min(rows, s + b)
                    yield k, s, e, self._scores(torch.cholesky_solve(self._rhs(x_new, s, e), factor))


def ridge_scores(
    x: torch.Tensor,
    y: torch.Tensor,
    x_new: torch.Tensor,
    lambdas: Sequence[float],
    *,
    primal: Optional[bool] = None,
    solver: str = "auto",
) -> torch.Tensor:
    """Ridge regression scores, for tests and small problems: ``X' (X^T X + lam I)^-1 X^T Y`` for each ``lam``.

    ``x [N, F]``, ``y [N, V]``, ``x_new [n, F]``: dense or sparse (any layout) float tensors; ``lambdas``: raw
    penalties (added to the Gram matrix as they are). ``primal``: solve with ``X^T X [F, F]`` (True), ``X X^T [N, N]``
    (False), or whichever is smaller (None); ``solver``: "cholesky", "eigh" or "auto". Returns float64 ``[len(lambdas),
    n, V]``, computed the way :func:`linear_baseline` scores users (in batches, never forming ``W``).
    """

    def csr(a: torch.Tensor) -> torch.Tensor:
        a = a.to_dense() if a.layout != torch.strided else a
        return a.to(torch.float64).to_sparse_csr()

    if solver not in ("auto", "cholesky", "eigh"):
        raise ValueError(f"ridge_scores: solver must be 'auto', 'cholesky' or 'eigh', got {solver!r}")
    if x.dim() != 2 or y.dim() != 2 or x_new.dim() != 2 or x.shape[0] != y.shape[0] or x_new.shape[1] != x.shape[1]:
        raise ValueError(
            f"ridge_scores: need x [N, F], y [N, V], x_new [n, F], got {tuple(x.shape)}, "
            f"{tuple(y.shape)}, {tuple(x_new.shape)}"
        )
    out = torch.empty(len(lambdas), x_new.shape[0], y.shape[1], dtype=torch.float64)
    with warnings.catch_warnings():  # sparse CSR "beta" notes from torch
        warnings.simplefilter("ignore", UserWarning)
        y_t = csr((y.to_dense() if y.layout != torch.strided else y).T)
        for k, s, e, sc in _Ridge(csr(x), y_t, lambdas, primal, solver).scores(csr(x_new)):
            out[k, s:e] = sc
    return out


# ------------------------------------------------------------------------------------------------ checks
def _check_split(task: TaskData, name: str, need_rows: bool) -> None:
    split = getattr(task, name)
    inputs, targets = split.inputs, split.targets
    where = f"linear baseline, task {task.name!r}, {name} split"
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2:
        raise ValueError(
            f"{where}: inputs must be [N, L], got "
            f"{tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__}"
        )
    n = inputs.shape[0]
    if need_rows and n == 0:
        raise ValueError(f"{where}: no users (the linear model needs {name} users)")
    if not isinstance(targets, torch.Tensor) or targets.shape[:1] != (n,):
        raise ValueError(
            f"{where}: targets must have one row per user ({n}), got "
            f"{tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__}"
        )
    want = 1 if (task.kind == "profile" or name != "train") else 2
    if targets.dim() != want:
        raise ValueError(
            f"{where}: {task.kind} targets must be {'[N]' if want == 1 else '[N, T]'}, got {tuple(targets.shape)}"
        )
    if targets.is_floating_point():
        raise ValueError(f"{where}: targets must be integer ids, got {targets.dtype}")
    if targets.numel():
        low = 0 if (task.kind == "profile" or name == "train") else 1
        lo, hi = int(targets.min()), int(targets.max())
        if lo < low or hi >= task.num_targets:
            raise ValueError(f"{where}: targets must lie in [{low}, {task.num_targets - 1}], got [{lo}, {hi}]")
    _check_ids(inputs, where)


def _ranking_ks(metric: str, eval_ks: Sequence[int]) -> List[int]:
    m = re.fullmatch(r"(mrr|hr|ndcg)@(\d+)", metric)
    if m is None:
        raise ValueError(f"linear baseline: ranking metric must be mrr@K, hr@K or ndcg@K, got {metric!r}")
    ks = [int(k) for k in eval_ks]
    return ks + ([int(m.group(2))] if int(m.group(2)) not in ks else [])


def _grid(values: Optional[Sequence[float]], default: Sequence[float], what: str) -> List[float]:
    grid = [float(v) for v in (default if values is None else values)]
    if not grid or any(not (v > 0 and math.isfinite(v)) for v in grid):
        raise ValueError(f"linear baseline: {what} must be a non-empty list of positive numbers, got {values!r}")
    return grid


# ------------------------------------------------------------------------------------------------ models
def _logistic(task: TaskData, metric: str, f: int, grid: List[float], max_iter: int, test: bool) -> Dict[str, Any]:
    k = task.num_targets
    x = bag_of_items(task.train.inputs, f, dtype=torch.float64)
    x_t = _transpose(x)
    x_valid = bag_of_items(task.valid.inputs, f, dtype=torch.float64)
    y = task.train.targets.to(torch.int64).cpu()
    n = y.shape[0]
    onehot = torch.zeros(n, k, dtype=torch.float64)
    onehot[torch.arange(n), y] = 1.0
    prior = torch.bincount(y, minlength=k).to(torch.float64).clamp_min(0.5) / n
    theta = torch.zeros(f * k + k, dtype=torch.float64)  # W [F, K] then the bias [K], one flat vector
    theta[f * k :] = torch.log(prior)  # start at the constant (majority) predictor
    theta.requires_grad_(True)

    def unpack(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return t[: f * k].view(f, k), t[f * k :]

    def logits(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        w, b = unpack(t.detach())
        return a @ w + b

    path, best, best_value = [], None, math.nan
    for l2 in grid:
        opt = torch.optim.LBFGS(
            [theta],
            lr=1.0,
            max_iter=max_iter,
            history_size=20,
            tolerance_grad=1e-5,
            tolerance_change=1e-9,
            line_search_fn="strong_wolfe",
        )

        def closure(l2: float = l2) -> torch.Tensor:
            # loss and gradient by hand: sparse X, no autograd graph (X^T G is a second sparse product)
            w, _ = unpack(theta.detach())
            z = logits(x, theta)
            lse = torch.logsumexp(z, dim=1)
            loss = (lse - z.gather(1, y[:, None])[:, 0]).mean() + 0.5 * l2 * (w * w).sum()
            g = (torch.exp(z - lse[:, None]) - onehot) / n
            theta.grad = torch.cat([(x_t @ g + l2 * w).reshape(-1), g.sum(0)])
            return loss.detach()

        opt.step(closure)
        value = M.classification_metrics(logits(x_valid, theta), task.valid.targets, k).get(metric, math.nan)
        path.append([l2, value])
        if M.improves(metric, value, best_value) and not math.isnan(value):
            best, best_value = (l2, theta.detach().clone()), value
    if best is None:
        raise ValueError(f"linear baseline, task {task.name!r}: validation {metric} is NaN for every l2")
    theta_best = best[1]
    metrics = (
        M.classification_metrics(
            logits(bag_of_items(task.test.inputs, f, dtype=torch.float64), theta_best), task.test.targets, k
        )
        if test
        else {}
    )
    valid = M.classification_metrics(logits(x_valid, theta_best), task.valid.targets, k)
    return {
        "model": "logistic",
        "l2": best[0],
        "valid": best_value,
        "valid_metrics": valid,
        "metrics": metrics,
        "valid_by_l2": path,
    }


def _ridge(
    task: TaskData,
    metric: str,
    ks: List[int],
    f: int,
    grid: List[float],
    max_dim: int,
    solver: str,
    batch_size: Optional[int],
    test: bool,
) -> Dict[str, Any]:
    n = len(task.train)
    if min(n, f) > max_dim:
        f = max_dim  # primal then, on the max_dim - 1 most frequent items
    x = _with_bias(task.train.inputs.to(torch.int64).cpu(), f)
    t = task.train.targets.to(torch.int64).cpu()
    t = t[:, -1:] if task.kind == "next_item" else t  # next_item: the item after the input window
    rows, cols = _multi_hot_coords(t, task.num_targets)  # drops the padding id 0, repeats once
    y_t = _csr_from_coords(*_sort_pairs(cols, rows, n), (task.num_targets, n), torch.float64)
    problem = _Ridge(x, y_t, [n * l2 for l2 in grid], None, solver)  # (1/N) ||XW - Y||^2 + l2 ||W||^2

    def ranks(split_name: str, k_list: Sequence[int]) -> Dict[int, torch.Tensor]:
        split = getattr(task, split_name)
        x_new = _with_bias(split.inputs.to(torch.int64).cpu(), f)
        targets = split.targets.to(torch.int64).cpu()
        out: Dict[int, List[torch.Tensor]] = {k: [] for k in k_list}
        for k, s, e, sc in problem.scores(x_new, k_list, batch_size):
            out[k].append(M.target_ranks(sc, targets[s:e]))
        return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.int64) for k, v in out.items()}

    path, best_k, best_value = [], None, math.nan
    for k, r in ranks("valid", range(len(grid))).items():
        value = M.ranking_metrics(r, ks).get(metric, math.nan)
        path.append([grid[k], value])
        if M.improves(metric, value, best_value) and not math.isnan(value):
            best_k, best_value, best_valid = k, value, r
    if best_k is None:
        raise ValueError(f"linear baseline, task {task.name!r}: validation {metric} is NaN for every l2")
    metrics: Dict[str, float] = {}
    if test:
        metrics = M.ranking_metrics(
            ranks("test", [best_k])[best_k] if len(task.test) else torch.zeros(0, dtype=torch.int64), ks
        )
    return {
        "model": "ridge",
        "l2": grid[best_k],
        "valid": best_value,
        "valid_metrics": M.ranking_metrics(best_valid, ks),
        "metrics": metrics,
        "valid_by_l2": path,
        "features_cap": f - 1,
    }


def _sort_pairs(rows: torch.Tensor, cols: torch.Tensor, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` reordered row-major (CSR order)."""
    order = torch.argsort(rows * width + cols)
    return rows[order], cols[order]


def linear_baseline(
    task: TaskData,
    metric: Optional[str] = None,
    eval_ks: Sequence[int] = (5, 20),
    *,
    max_features: int = DEFAULT_MAX_FEATURES,
    l2: Optional[Sequence[float]] = None,
    ridge_l2: Optional[Sequence[float]] = None,
    max_dim: int = DEFAULT_MAX_DIM,
    solver: str = "auto",
    max_iter: int = _MAX_ITER,
    batch_size: Optional[int] = None,
    test: bool = True,
) -> Dict[str, Any]:
    """The bag-of-items linear model of ``task`` (see the module docstring), its ``l2`` chosen on the valid split.

    ``metric``: the selection and reported metric (default :func:`conure.metrics.default_metric`); ``eval_ks``:
    the cut-offs of the ranking metrics. ``l2``: the logistic regression grid (profile tasks, default
    :data:`DEFAULT_L2`); ``ridge_l2``: the ridge grid (ranking tasks, default :data:`DEFAULT_RIDGE_L2`); both are
    tried in the order given (strong to weak: warm starts, and a tie keeps the earlier one). ``max_features``,
    ``max_dim``, ``solver``: see the module docstring; ``max_iter``: L-BFGS iterations per ``l2``; ``batch_size``:
    ridge scoring rows per batch (default: about 16M score entries per batch); ``test=False``: the test split is
    not scored at all (a hyper-parameter search on validation users): ``metrics`` is empty, ``value`` NaN.

    Returns ``{"name": "linear", "model": "logistic" | "ridge", "metric", "value"`` (test value of ``metric``),
    ``"valid"`` (its best validation value), ``"l2"``, ``"features"`` (item features used), ``"metrics"`` (every
    test metric), ``"valid_metrics"``, ``"valid_by_l2"`` (``[l2, valid value]`` per grid point), ``"seconds"}``.
    Raises ValueError for a task without train or valid users, malformed splits, or bad options.
    """
    t0 = time.perf_counter()
    if not isinstance(task, TaskData):
        raise ValueError(f"linear_baseline: need a TaskData, got {type(task).__name__}")
    eval_ks = [int(k) for k in eval_ks]
    if not eval_ks or any(k < 1 for k in eval_ks):
        raise ValueError(f"linear baseline: eval_ks must be positive cut-offs, got {eval_ks}")
    metric = metric or M.default_metric(task.kind, eval_ks)
    for name, v, low in (("max_features", max_features, 1), ("max_dim", max_dim, 2), ("max_iter", max_iter, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"linear baseline: {name} must be an int >= {low}, got {v!r}")
    if solver not in ("auto", "cholesky", "eigh"):
        raise ValueError(f"linear baseline: solver must be 'auto', 'cholesky' or 'eigh', got {solver!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"linear baseline: batch_size must be an int >= 1 or None, got {batch_size!r}")
    for split in ("train", "valid", "test"):
        _check_split(task, split, need_rows=split != "test")
    f = min(task.num_items, max_features + 1)  # columns: padding/intercept + the F first ids
    with warnings.catch_warnings():  # sparse CSR "beta" notes from torch
        warnings.simplefilter("ignore", UserWarning)
        if task.kind == "profile":
            known = set(
                M.classification_metrics(
                    torch.zeros(0, task.num_targets), torch.zeros(0, dtype=torch.long), task.num_targets
                )
            ) - {"n"}
            if metric not in known:
                raise ValueError(f"linear baseline: profile metric must be one of {sorted(known)}, got {metric!r}")
            out = _logistic(task, metric, f, _grid(l2, DEFAULT_L2, "l2"), max_iter, test)
            features = f - 1
        else:
            grid = _grid(ridge_l2, DEFAULT_RIDGE_L2, "ridge_l2")
            out = _ridge(task, metric, _ranking_ks(metric, eval_ks), f, grid, max_dim, solver, batch_size, test)
            features = out.pop("features_cap")
    return {
        "name": "linear",
        "model": out["model"],
        "metric": metric,
        "value": out["metrics"].get(metric, math.nan),
        "valid": out["valid"],
        "l2": out["l2"],
        "features": features,
        "metrics": out["metrics"],
        "valid_metrics": out["valid_metrics"],
        "valid_by_l2": out["valid_by_l2"],
        "seconds": time.perf_counter() - t0,
    }
