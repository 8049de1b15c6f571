"""Ranking and classification metrics, batched over users (no Python loop per user).

Ranking
    ``target_ranks(scores [N, V], targets [N])`` ranks each user's target among ALL ids of the target vocabulary
    except the padding id 0 (full ranking). ``sampled_ranks`` is the optional "1 + 99" protocol: the target among
    ``num_negatives`` sampled non-target, non-padding ids.

Tie policy: pessimistic. ``rank = 1 + #{candidates c != target : score[c] >= score[target]}``, so a candidate tied
with the target is ranked ahead of it; a model that scores everything equal gets the worst rank, never the best.
NaN scores count as -inf (a NaN target score is therefore ranked last).

With rank r (1-based) and cut-off K, per user:
    ``HR@K = [r <= K]``, ``MRR@K = [r <= K] / r``, ``NDCG@K = [r <= K] / log2(r + 1)`` (one relevant item),
averaged over users.

Classification (profile tasks)
    ``classification_metrics(logits [N, K], labels [N], num_classes)``: ``acc``; ``bacc`` (balanced accuracy: the
    mean over the classes present of the recall); ``macro_f1`` (mean F1 over the classes present in the labels or the
    predictions); ``auc`` (binary tasks: ROC AUC of ``logit[1] - logit[0]``, ties counted half); ``nll`` (mean
    negative log-likelihood of the softmax). A constant predictor gets ``bacc = 1 / #classes present`` and
    ``auc = 0.5`` whatever the class balance, so model selection on ``bacc`` cannot be won by the majority guess
    (``acc`` can). The default validation metric of profile tasks is ``bacc`` (:func:`default_metric`).
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

import torch

__all__ = [
    "target_ranks",
    "sampled_ranks",
    "hr_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "ranking_metrics",
    "accuracy",
    "popularity_ranks",
    "majority_accuracy",
    "classification_metrics",
    "majority_logits",
    "default_metric",
    "improves",
]


def _clean(scores: torch.Tensor) -> torch.Tensor:
    if not scores.is_floating_point():
        scores = scores.to(torch.float32)
    return torch.nan_to_num(scores, nan=-math.inf)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude_padding: bool = True) -> torch.Tensor:
    """1-based pessimistic rank of ``targets [N]`` in ``scores [N, V]`` over ids ``1..V-1`` (or ``0..V-1``).

    Returns int64 ``[N]``. Raises ValueError for a target outside the ranked ids.
    """
    if scores.dim() != 2 or targets.dim() != 1 or scores.shape[0] != targets.shape[0]:
        raise ValueError(
            f"target_ranks: need scores [N, V] and targets [N], got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    targets = targets.to(scores.device, torch.int64)
    low = 1 if exclude_padding else 0
    if targets.numel() and (int(targets.min()) < low or int(targets.max()) >= scores.shape[1]):
        raise ValueError(
            f"target_ranks: targets must lie in [{low}, {scores.shape[1] - 1}], got "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    # Ranked as _clean(scores) (NaN -> -inf, +-inf -> the largest finite values), without [N, V] temporaries: a
    # cleaned copy, and the bool "ahead" mask whose sum torch widens to int64 (256 users x 1M items: 1 + 2 GiB
    # beside the 1 GiB of scores). Against a finite target score above the lowest float the raw scores compare the
    # same (NaN never >=, -inf below, +inf above), counted in blocks of columns; the rare other rows are ranked on
    # their cleaned copy.
    s = scores if scores.is_floating_point() else scores.to(torch.float32)
    t = s.gather(1, targets[:, None])
    ahead = _count_at_least(s, t) - 1  # less the target itself (t >= t)
    if exclude_padding:
        ahead -= (s[:, 0] >= t[:, 0]).to(torch.int64)
    odd = ~torch.isfinite(t[:, 0]) | (t[:, 0] == torch.finfo(s.dtype).min)
    if bool(odd.any()):
        c, y = _clean(s[odd]), targets[odd]
        mask = c >= c.gather(1, y[:, None])
        mask[torch.arange(len(y), device=c.device), y] = False
        if exclude_padding:
            mask[:, 0] = False
        ahead[odd] = mask.sum(dim=1)
    return 1 + ahead


def _count_at_least(s: torch.Tensor, t: torch.Tensor, cells: int = 1 << 24) -> torch.Tensor:
    """[N] int64: per row, how many of ``s [N, V]`` are >= ``t [N, 1]``; temporaries of ~``cells`` elements."""
    n = torch.zeros(s.shape[0], dtype=torch.int64, device=s.device)
    step = max(1, cells // max(s.shape[0], 1))
    for c0 in range(0, s.shape[1], step):
        n += (s[:, c0 : c0 + step] >= t).sum(dim=1)
    return n


def sampled_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    num_negatives: int = 99,
    generator: Optional[torch.Generator] = None,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Pessimistic rank of each target among itself and ``num_negatives`` sampled negatives (the 1+99 protocol).

    Negatives are drawn without replacement from ids ``1..V-1`` other than the target, uniformly or proportionally
    to ``weights [V]`` (e.g. popularity). ``generator`` (a CPU generator) makes the draw reproducible.
    Returns int64 ``[N]`` in ``[1, num_negatives + 1]``.
    """
    n, v = scores.shape
    if num_negatives > v - 2:
        raise ValueError(f"sampled_ranks: cannot draw {num_negatives} negatives from {v - 2} non-target ids")
    targets = targets.to(torch.int64).cpu()
    w = torch.ones(v) if weights is None else weights.detach().to(torch.float64).cpu().clone()
    w = w.to(torch.float64).expand(n, v).clone()
    w[:, 0] = 0.0
    w[torch.arange(n), targets] = 0.0
    negatives = torch.multinomial(w, num_negatives, replacement=False, generator=generator).to(scores.device)
    s = _clean(scores)
    t = s.gather(1, targets.to(scores.device)[:, None])
    return 1 + (s.gather(1, negatives) >= t).sum(dim=1)


def hr_at_k(ranks: torch.Tensor, k: int) -> float:
    return float((ranks <= k).double().mean()) if ranks.numel() else math.nan


def mrr_at_k(ranks: torch.Tensor, k: int) -> float:
    if not ranks.numel():
        return math.nan
    r = ranks.double()
    return float(torch.where(r <= k, 1.0 / r, torch.zeros_like(r)).mean())


def ndcg_at_k(ranks: torch.Tensor, k: int) -> float:
    if not ranks.numel():
        return math.nan
    r = ranks.double()
    return float(torch.where(r <= k, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r)).mean())


def ranking_metrics(ranks: torch.Tensor, ks: Iterable[int] = (5, 20)) -> Dict[str, float]:
    """``{"mrr@K", "hr@K", "ndcg@K"}`` for each K, plus ``"n"`` (number of users)."""
    out: Dict[str, float] = {}
    for k in ks:
        out[f"mrr@{k}"] = mrr_at_k(ranks, k)
        out[f"hr@{k}"] = hr_at_k(ranks, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
    out["n"] = int(ranks.numel())
    return out


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class accuracy: share of rows whose arg-max (lowest index among ties) equals the label."""
    if logits.dim() != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"accuracy: need logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if not labels.numel():
        return math.nan
    return float((_clean(logits).argmax(dim=1) == labels.to(logits.device)).double().mean())


def popularity_ranks(counts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Ranks under the popularity baseline: every user gets the training counts ``[V]`` as scores (full ranking)."""
    counts = counts.to(torch.float64)
    return target_ranks(counts.expand(targets.shape[0], -1), targets)


def majority_accuracy(train_labels: torch.Tensor, test_labels: torch.Tensor) -> float:
    """Accuracy of always predicting the most frequent training class."""
    majority = int(torch.bincount(train_labels.to(torch.int64)).argmax())
    return float((test_labels == majority).double().mean())


def default_metric(kind: str, eval_ks: Iterable[int] = (5, 20)) -> str:
    """The validation (model selection) and accuracy-matrix metric of a task kind when the config names none:
    ``mrr@K`` (K = the first of ``eval_ks``) for ranking tasks, balanced accuracy ``bacc`` for profile tasks."""
    return "bacc" if kind == "profile" else f"mrr@{list(eval_ks)[0]}"


LOWER_IS_BETTER = frozenset({"nll"})


def improves(metric: str, value: float, best: float) -> bool:
    """Whether ``value`` of ``metric`` beats ``best`` (a NaN ``best`` is beaten by anything); ``nll`` is lower-better,
    every other metric higher-better."""
    if math.isnan(best):
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


def _binary_auc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, tied scores sharing their average rank."""
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    s = score.to(torch.float64)
    _, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
    upper = torch.cumsum(counts, 0).to(torch.float64)  # 1-based rank of the last member of each tie group
    avg_rank = (upper - (counts.to(torch.float64) - 1) / 2)[inverse]
    return float((avg_rank[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: Optional[int] = None
) -> Dict[str, float]:
    """``acc``, ``bacc``, ``macro_f1``, ``nll``, ``auc`` (two classes only) and ``n`` of ``logits [N, K]`` against
    ``labels [N]`` (see the module docstring). Predictions are the arg-max (lowest index among ties); NaN logits
    count as -inf. Empty input gives NaN metrics and ``n = 0``."""
    if logits.dim() != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"classification_metrics: need logits [N, K] and labels [N], got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    k = int(num_classes if num_classes is not None else logits.shape[1])
    if logits.shape[1] != k:
        raise ValueError(f"classification_metrics: logits have {logits.shape[1]} columns for {k} classes")
    n = int(labels.numel())
    out: Dict[str, float] = {"acc": math.nan, "bacc": math.nan, "macro_f1": math.nan, "nll": math.nan}
    if k == 2:
        out["auc"] = math.nan
    out["n"] = n
    if n == 0:
        return out
    labels = labels.to(torch.int64).cpu()
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ValueError(
            f"classification_metrics: labels must lie in [0, {k - 1}], got [{int(labels.min())}, {int(labels.max())}]"
        )
    z = _clean(logits.detach().cpu().to(torch.float64))
    pred = z.argmax(dim=1)
    hit = pred == labels
    true_count = torch.bincount(labels, minlength=k).to(torch.float64)
    pred_count = torch.bincount(pred, minlength=k).to(torch.float64)
    tp = torch.bincount(labels[hit], minlength=k).to(torch.float64)
    present = true_count > 0
    out["acc"] = float(hit.double().mean())
    out["bacc"] = float((tp[present] / true_count[present]).mean())
    either = present | (pred_count > 0)
    f1 = 2 * tp / (true_count + pred_count).clamp_min(1.0)
    out["macro_f1"] = float(f1[either].mean())
    out["nll"] = float(-torch.log_softmax(z, dim=1).gather(1, labels[:, None]).clamp_min(-1e30).mean())
    if k == 2:
        out["auc"] = _binary_auc(z[:, 1] - z[:, 0], labels == 1)
    return out


def majority_logits(train_labels: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """``[n, num_classes]`` logits of the constant predictor: the log of the training class frequencies (its arg-max
    is the majority class; its ``nll`` is the prior's cross-entropy)."""
    freq = torch.bincount(train_labels.to(torch.int64).cpu(), minlength=num_classes).to(torch.float64)
    return torch.log(freq.clamp_min(0.5) / freq.sum().clamp_min(1.0)).expand(n, num_classes).clone()
