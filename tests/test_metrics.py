"""conure.metrics against hand-computed values (ties are pessimistic: a tied candidate ranks ahead of the target)."""

import math

import pytest
import torch

from conure import metrics as M

NEG_INF = -math.inf


def test_full_ranking_hand_values_with_ties_and_padding():
    # column 0 is padding: its (huge) score must never count.
    scores = torch.tensor(
        [
            [9.0, 0.1, 0.5, 0.3, 0.5],  # target 2: item 4 ties with it -> rank 2 (pessimistic)
            [9.0, 0.1, 0.5, 0.3, 0.5],  # target 1: items 2, 3, 4 ahead -> rank 4
            [9.0, 0.9, 0.5, 0.3, 0.5],  # target 1: best -> rank 1
            [9.0, 0.2, 0.2, 0.2, 0.2],  # target 3: all tied -> worst, rank 4
        ]
    )
    targets = torch.tensor([2, 1, 1, 3])
    assert M.target_ranks(scores, targets).tolist() == [2, 4, 1, 4]
    # counting the padding column as a candidate moves every target down by one
    assert M.target_ranks(scores, targets, exclude_padding=False).tolist() == [3, 5, 2, 5]


def test_metrics_at_k_hand_values():
    ranks = torch.tensor([1, 2, 4, 6])
    assert M.hr_at_k(ranks, 5) == pytest.approx(3 / 4)
    assert M.mrr_at_k(ranks, 5) == pytest.approx((1 + 1 / 2 + 1 / 4 + 0) / 4)
    assert M.ndcg_at_k(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5) + 0) / 4)
    assert M.hr_at_k(ranks, 1) == pytest.approx(1 / 4)
    assert M.mrr_at_k(ranks, 10) == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 6) / 4)
    out = M.ranking_metrics(ranks, (1, 5))
    assert set(out) == {"mrr@1", "hr@1", "ndcg@1", "mrr@5", "hr@5", "ndcg@5", "n"}
    assert out["n"] == 4 and out["ndcg@1"] == pytest.approx(1 / 4)
    assert math.isnan(M.mrr_at_k(torch.zeros(0, dtype=torch.long), 5))


def test_nan_scores_rank_last_and_bad_targets_raise():
    scores = torch.tensor([[0.0, math.nan, 1.0, 2.0], [0.0, 1.0, math.nan, 0.5]])
    assert M.target_ranks(scores, torch.tensor([1, 3])).tolist() == [3, 2]  # NaN target last; NaN other = -inf
    with pytest.raises(ValueError, match="targets must lie"):
        M.target_ranks(scores, torch.tensor([0, 1]))  # padding is not a target
    with pytest.raises(ValueError, match="targets must lie"):
        M.target_ranks(scores, torch.tensor([1, 4]))
    with pytest.raises(ValueError):
        M.target_ranks(scores, torch.tensor([1]))


def test_batched_ranks_match_a_python_loop():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (50, 12), generator=g).float()  # many ties on purpose
    targets = torch.randint(1, 12, (50,), generator=g)
    expected = []
    for s, t in zip(scores.tolist(), targets.tolist()):
        expected.append(1 + sum(1 for c in range(1, 12) if c != t and s[c] >= s[t]))
    assert M.target_ranks(scores, targets).tolist() == expected


def test_sampled_protocol():
    n, v = 30, 300
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(1, v, (n,), generator=g)
    best = torch.rand(n, v, generator=g)
    best[torch.arange(n), targets] = 2.0  # target above everything -> rank 1
    worst = torch.rand(n, v, generator=g) + 1.0
    worst[torch.arange(n), targets] = 0.5  # target below every real item -> rank 100 (never drawn as neg)
    worst[:, 0] = -5.0  # padding is never a candidate
    assert M.sampled_ranks(best, targets, 99, torch.Generator().manual_seed(1)).tolist() == [1] * n
    assert M.sampled_ranks(worst, targets, 99, torch.Generator().manual_seed(1)).tolist() == [100] * n
    mixed = torch.rand(n, v, generator=g)
    a = M.sampled_ranks(mixed, targets, 99, torch.Generator().manual_seed(3))
    b = M.sampled_ranks(mixed, targets, 99, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and int(a.min()) >= 1 and int(a.max()) <= 100
    # popularity-weighted negatives: only ids with weight can be drawn
    w = torch.zeros(v)
    w[1:101] = 1.0
    only_low = mixed.clone()
    only_low[:, 101:] = 10.0  # would be ahead if ever drawn
    t_high = torch.full((n,), 150)
    assert M.sampled_ranks(only_low, t_high, 99, torch.Generator().manual_seed(0), weights=w).max() <= 100
    r = M.sampled_ranks(only_low, t_high, 99, torch.Generator().manual_seed(0), weights=w)
    assert torch.equal(r, 1 + (only_low[:, 1:101] >= 10.0).sum(1))
    with pytest.raises(ValueError):
        M.sampled_ranks(torch.zeros(2, 50), torch.tensor([1, 2]), 99)


def test_accuracy_and_baselines():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5], [0.0, 1.0]])
    labels = torch.tensor([1, 1, 0, 0])
    assert M.accuracy(logits, labels) == pytest.approx(2 / 4)  # row 3: tie -> lowest index (0) is right
    with pytest.raises(ValueError):
        M.accuracy(logits, labels[:3])
    assert M.majority_accuracy(torch.tensor([2, 2, 1, 0]), torch.tensor([2, 1, 2, 2])) == pytest.approx(3 / 4)
    counts = torch.tensor([0.0, 5.0, 1.0, 9.0, 1.0])
    # popularity order: 3, 1, then 2 and 4 tied
    assert M.popularity_ranks(counts, torch.tensor([3, 1, 2, 4])).tolist() == [1, 2, 4, 4]


def test_target_ranks_match_the_cleaned_definition_with_nan_inf_and_ties():
    """target_ranks skips the cleaned [N, V] copy of the scores; it must rank exactly as NaN -> -inf would."""
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n, v = 7, 9
        s = torch.randint(-2, 3, (n, v), generator=g).float()  # many ties
        s[torch.rand(n, v, generator=g) < 0.2] = math.nan
        s[torch.rand(n, v, generator=g) < 0.2] = -math.inf
        s[torch.rand(n, v, generator=g) < 0.1] = math.inf
        s[torch.rand(n, v, generator=g) < 0.05] = torch.finfo(torch.float32).min  # what -inf cleans to
        y = torch.randint(1, v, (n,), generator=g)
        for pad in (True, False):
            c = torch.nan_to_num(s, nan=-math.inf)
            ahead = c >= c.gather(1, y[:, None])
            ahead[torch.arange(n), y] = False
            if pad:
                ahead[:, 0] = False
            assert M.target_ranks(s, y, exclude_padding=pad).tolist() == (1 + ahead.sum(1)).tolist()
    assert M.target_ranks(torch.tensor([[0, 3, 1]]), torch.tensor([2])).tolist() == [2]  # integer scores


def test_count_at_least_in_blocks_of_columns():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 37, generator=g), torch.randn(5, 1, generator=g)
    for cells in (1, 4, 10, 1 << 24):
        assert M._count_at_least(s, t, cells).tolist() == (s >= t).sum(1).tolist()
