"""conure.linear: the bag-of-items linear baseline (multi-hot features, logistic regression, closed-form ridge) and
how a run reports it. Small hand-built tasks, no data files; a few seconds in all."""

import json
import math
import re

import pytest
import torch

from conure import metrics as M
from conure.config import parse_config
from conure.data.types import Split, TaskData
from conure.learner import TaskConfig
from conure.linear import DEFAULT_L2, bag_of_items, linear_baseline, ridge_scores
from conure.runner import Run, baselines

NUM_ITEMS = 41  # ids 1..40, 0 = padding


@pytest.fixture(autouse=True)
def one_thread():
    # tiny problems: with two threads on a busy 2-core machine, OpenMP barrier waits made them several times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _histories(n, width, gen, num_items=NUM_ITEMS):
    """``[n, width]`` left-padded histories of random ids 1..num_items-1, lengths width // 2 .. width."""
    x = torch.randint(1, num_items, (n, width), generator=gen)
    lengths = torch.randint(width // 2, width + 1, (n,), generator=gen)
    x[torch.arange(width)[None, :] < (width - lengths)[:, None]] = 0
    return x


def _split(x, y):
    return Split(torch.arange(x.shape[0]), x, y)


def profile_task(n=(300, 150, 150), width=10, noise=0.0, seed=0):
    """Label 1 iff the user has one of the items 2, 4, 6, 8, 10 (then flipped with probability ``noise``): a
    linear function of the multi-hot."""
    gen = torch.Generator().manual_seed(seed)
    splits = []
    for size in n:
        x = _histories(size, width, gen)
        y = torch.isin(x, torch.tensor([2, 4, 6, 8, 10])).any(1).long()
        flip = torch.rand(size, generator=gen) < noise
        splits.append(_split(x, torch.where(flip, 1 - y, y)))
    return TaskData("has_even", "profile", NUM_ITEMS, 2, *splits, class_names=["no", "yes"])


def _target_of(x):
    return (x - 1) % 15 + 1  # source item i -> target item: 15 target ids, 1..15


def item_task(n=(300, 150, 150), width=8, seed=0):
    """Targets are a function of the inputs: each training user's targets are the images of its items; a held-out
    target is the image of one of the user's items."""
    gen = torch.Generator().manual_seed(seed)
    splits = []
    for i, size in enumerate(n):
        x = _histories(size, width, gen)
        t = torch.where(x > 0, _target_of(x), torch.zeros_like(x))
        if i == 0:
            splits.append(_split(x, t))
        else:
            pick = torch.full((size,), width - 1)  # the last item (never padding)
            splits.append(_split(x, t[torch.arange(size), pick]))
    counts = torch.bincount(splits[0].targets.flatten(), minlength=16).float()
    counts[0] = 0
    return TaskData("images", "item", NUM_ITEMS, 16, *splits, target_counts=counts)


# ------------------------------------------------------------------------------------------------ features
def test_bag_of_items_is_a_binary_multi_hot():
    x = torch.tensor(
        [
            [0, 0, 3, 3, 1],  # padding, a duplicate
            [5, 2, 7, 0, 9],  # 7 and 9 are beyond the cap (num_features 6 keeps ids 1..5)
            [0, 0, 0, 0, 0],
        ]
    )  # an empty history
    b = bag_of_items(x, 6)
    assert b.layout == torch.sparse_csr and b.dtype == torch.float32 and b.shape == (3, 6)
    want = torch.zeros(3, 6)
    want[0, [1, 3]] = 1
    want[1, [2, 5]] = 1
    assert torch.equal(b.to_dense(), want)
    assert torch.equal(
        bag_of_items(x, 10, dtype=torch.float64).to_dense()[1],
        torch.tensor([0, 0, 1, 0, 0, 1, 0, 1, 0, 1], dtype=torch.float64),
    )
    assert bag_of_items(torch.zeros(0, 4, dtype=torch.long), 3).shape == (0, 3)
    dense = torch.zeros(3, 1)
    assert torch.equal(bag_of_items(x, 1).to_dense(), dense)  # only the padding column: nothing is kept


@pytest.mark.parametrize(
    "inputs, num_features, match",
    [
        (torch.tensor([1, 2, 3]), 4, r"\[N, L\]"),
        (torch.tensor([[1.0, 2.0]]), 4, "integers"),
        (torch.tensor([[1, -2]]), 4, ">= 0"),
        (torch.tensor([[1, 2]]), 0, "num_features"),
        ([[1, 2]], 4, r"\[N, L\]"),
    ],
)
def test_bag_of_items_rejects_bad_input(inputs, num_features, match):
    with pytest.raises(ValueError, match=match):
        bag_of_items(inputs, num_features)


# ------------------------------------------------------------------------------------------------ ridge algebra
def test_ridge_paths_equal_the_direct_solve():
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(30, 9, generator=gen) < 0.3).double()
    y = (torch.rand(30, 6, generator=gen) < 0.3).double()
    x_new = (torch.rand(7, 9, generator=gen) < 0.3).double()
    lambdas = [3.0, 0.1, 1e-3]
    want = torch.stack(
        [x_new @ torch.linalg.solve(x.T @ x + lam * torch.eye(9, dtype=torch.float64), x.T @ y) for lam in lambdas]
    )
    for primal in (True, False, None):
        for solver in ("eigh", "cholesky"):
            got = ridge_scores(x, y, x_new, lambdas, primal=primal, solver=solver)
            assert got.shape == (3, 7, 6)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"primal {primal}, solver {solver}")
    # more features than rows: the dual (X X^T) is the default, and the primal agrees with it
    wide = (torch.rand(8, 20, generator=gen) < 0.3).double()
    wide_new = (torch.rand(5, 20, generator=gen) < 0.3).double()
    yw = y[:8]
    torch.testing.assert_close(
        ridge_scores(wide, yw, wide_new, lambdas),
        ridge_scores(wide, yw, wide_new, lambdas, primal=True, solver="eigh"),
        rtol=1e-8,
        atol=1e-10,
    )
    # any real values, not only 0/1
    xr, yr = (
        x * torch.rand(30, 9, generator=gen, dtype=torch.float64),
        torch.randn(30, 6, generator=gen, dtype=torch.float64),
    )
    for primal in (True, False):
        torch.testing.assert_close(
            ridge_scores(xr, yr, x_new, [0.5], primal=primal)[0],
            x_new @ torch.linalg.solve(xr.T @ xr + 0.5 * torch.eye(9, dtype=torch.float64), xr.T @ yr),
            rtol=1e-9,
            atol=1e-9,
        )
    # sparse inputs are accepted as they are
    torch.testing.assert_close(
        ridge_scores(x.to_sparse(), y.to_sparse_csr(), x_new, lambdas), want, rtol=1e-9, atol=1e-9
    )
    with pytest.raises(ValueError, match="solver"):
        ridge_scores(x, y, x_new, lambdas, solver="qr")
    with pytest.raises(ValueError, match="x_new"):
        ridge_scores(x, y, x_new[:, :5], lambdas)


# ------------------------------------------------------------------------------------------------ models
def _constant_bacc(task):
    logits = M.majority_logits(task.train.targets, len(task.test), task.num_targets)
    return M.classification_metrics(logits, task.test.targets, task.num_targets)["bacc"]


def test_logistic_regression_beats_the_constant_predictor():
    task = profile_task()
    r = linear_baseline(task)
    assert r["name"] == "linear" and r["model"] == "logistic" and r["metric"] == "bacc"
    assert r["value"] == r["metrics"]["bacc"] and set(r["metrics"]) >= {"acc", "bacc", "macro_f1", "nll", "auc"}
    assert _constant_bacc(task) == 0.5 and r["value"] > 0.9, r["metrics"]
    assert r["features"] == NUM_ITEMS - 1 and r["l2"] in DEFAULT_L2 and r["seconds"] > 0
    assert [p[0] for p in r["valid_by_l2"]] == list(DEFAULT_L2)
    # deterministic: the same numbers again
    again = linear_baseline(task)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in r.items() if k != "seconds"}


def _brute_force_logistic(task, l2, split):
    """A separate fit, from zero, with autograd on the dense multi-hot: the same objective as conure.linear."""
    f, k = task.num_items, task.num_targets
    x = bag_of_items(task.train.inputs, f, dtype=torch.float64).to_dense()
    y = task.train.targets
    w = torch.zeros(f, k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    s = getattr(task, split)
    logits = bag_of_items(s.inputs, f, dtype=torch.float64).to_dense() @ w.detach() + b.detach()
    return M.classification_metrics(logits, s.targets, k)


def test_logistic_l2_is_the_best_on_validation_by_a_brute_force_refit():
    task = profile_task(noise=0.2, seed=3)
    grid = [1.0, 0.1, 0.01, 1e-3]
    r = linear_baseline(task, "nll", l2=grid)  # nll: continuous, so a refit is compared closely
    brute = [_brute_force_logistic(task, l2, "valid")["nll"] for l2 in grid]
    # the same optimum up to the stopping tolerances (conure.linear stops at gradients of 1e-5)
    assert [p[1] for p in r["valid_by_l2"]] == pytest.approx(brute, rel=1e-3)
    assert r["l2"] == grid[min(range(len(grid)), key=lambda i: brute[i])]  # nll: lower is better
    assert r["valid"] == pytest.approx(min(brute), rel=1e-3)
    assert r["metrics"]["nll"] == pytest.approx(_brute_force_logistic(task, r["l2"], "test")["nll"], rel=1e-3)


def _popularity(task, ks):
    return M.ranking_metrics(M.popularity_ranks(task.target_counts, task.test.targets), ks)


def test_ridge_beats_popularity_when_targets_follow_the_inputs():
    task = item_task()
    r = linear_baseline(task, eval_ks=(1, 5))
    assert r["model"] == "ridge" and r["metric"] == "mrr@1" and r["value"] == r["metrics"]["mrr@1"]
    assert set(r["metrics"]) == {"mrr@1", "hr@1", "ndcg@1", "mrr@5", "hr@5", "ndcg@5", "n"}
    pop = _popularity(task, (5,))["mrr@5"]
    assert r["metrics"]["mrr@5"] > pop + 0.2, (r["metrics"], pop)
    # hr@K for a K beyond eval_ks: computed for the selection all the same
    assert "hr@3" in linear_baseline(task, "hr@3", eval_ks=(5,))["metrics"]


def test_ridge_l2_is_the_best_on_validation_by_a_brute_force_refit():
    task = item_task(seed=2)
    grid = [30.0, 1.0, 0.03, 1e-3]
    r = linear_baseline(task, "mrr@5", ridge_l2=grid)
    n = len(task.train)
    x = bag_of_items(task.train.inputs, task.num_items, dtype=torch.float64).to_dense()
    x[:, 0] = 1.0  # the intercept column
    y = torch.zeros(n, task.num_targets, dtype=torch.float64)
    rows = torch.arange(n)[:, None].expand_as(task.train.targets)
    y[rows.flatten(), task.train.targets.flatten()] = 1.0
    y[:, 0] = 0.0

    def metrics(l2, split):
        w = torch.linalg.solve(x.T @ x + n * l2 * torch.eye(x.shape[1], dtype=torch.float64), x.T @ y)
        s = getattr(task, split)
        xs = bag_of_items(s.inputs, task.num_items, dtype=torch.float64).to_dense()
        xs[:, 0] = 1.0
        return M.ranking_metrics(M.target_ranks(xs @ w, s.targets), (5, 20))

    brute = [metrics(l2, "valid")["mrr@5"] for l2 in grid]
    assert [p[1] for p in r["valid_by_l2"]] == pytest.approx(brute, abs=1e-12)
    best = max(brute)
    assert r["l2"] == grid[brute.index(best)] and r["valid"] == pytest.approx(best)
    assert r["metrics"] == pytest.approx(metrics(r["l2"], "test"))


def test_next_item_ridge_learns_the_next_item():
    """next_item: trained on the item after the input window; here the next item is always the last one + 1."""
    gen = torch.Generator().manual_seed(4)
    splits = []
    for i, size in enumerate((300, 100, 100)):
        x = _histories(size, 6, gen, num_items=NUM_ITEMS - 1)  # ids 1..39: the next one exists
        nxt = x[:, -1] + 1
        if i == 0:
            targets = torch.cat([x[:, 1:], nxt[:, None]], 1)
            targets[x == 0] = 0
            splits.append(_split(x, targets))
        else:
            splits.append(_split(x, nxt))
    counts = torch.bincount(splits[0].targets.flatten(), minlength=NUM_ITEMS).float()
    counts[0] = 0
    task = TaskData("next", "next_item", NUM_ITEMS, NUM_ITEMS, *splits, target_counts=counts)
    r = linear_baseline(task)
    assert r["metric"] == "mrr@5" and r["value"] > _popularity(task, (5,))["mrr@5"] + 0.1, r["metrics"]


def test_feature_caps():
    task = item_task()
    capped = linear_baseline(task, max_features=9)
    assert capped["features"] == 9
    # max_dim caps min(users, features): the same model as that many features
    by_dim = linear_baseline(task, max_dim=10)
    assert by_dim["features"] == 9
    assert {k: v for k, v in by_dim.items() if k != "seconds"} == {k: v for k, v in capped.items() if k != "seconds"}
    assert linear_baseline(profile_task(), max_features=5)["features"] == 5
    # solvers agree
    a, b = linear_baseline(task, solver="eigh"), linear_baseline(task, solver="cholesky")
    assert a["l2"] == b["l2"] and a["metrics"] == pytest.approx(b["metrics"])


def test_empty_test_split_gives_nan_and_test_false_skips_it():
    task = profile_task(n=(200, 60, 0))
    r = linear_baseline(task)
    assert math.isnan(r["value"]) and r["metrics"]["n"] == 0 and not math.isnan(r["valid"])
    r = linear_baseline(profile_task(), test=False)
    assert r["metrics"] == {} and math.isnan(r["value"]) and r["valid_metrics"]["bacc"] == r["valid"]


def _replace(task, split, inputs=None, targets=None):
    s = getattr(task, split)
    new = Split(s.users, s.inputs if inputs is None else inputs, s.targets if targets is None else targets)
    return TaskData(
        task.name,
        task.kind,
        task.num_items,
        task.num_targets,
        *[new if name == split else getattr(task, name) for name in ("train", "valid", "test")],
        target_counts=task.target_counts,
    )


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (
            lambda: _replace(
                profile_task(), "train", torch.zeros(0, 10, dtype=torch.long), torch.zeros(0, dtype=torch.long)
            ),
            {},
            "train split: no users",
        ),
        (
            lambda: _replace(
                profile_task(), "valid", torch.zeros(0, 10, dtype=torch.long), torch.zeros(0, dtype=torch.long)
            ),
            {},
            "valid split: no users",
        ),
        (lambda: _replace(profile_task(), "train", targets=torch.zeros(300, 2, dtype=torch.long)), {}, r"\[N\]"),
        (lambda: _replace(profile_task(), "valid", targets=torch.zeros(7, dtype=torch.long)), {}, "one row per user"),
        (lambda: _replace(profile_task(), "test", targets=torch.full((150,), 2)), {}, r"lie in \[0, 1\]"),
        (lambda: _replace(item_task(), "valid", targets=torch.zeros(150, dtype=torch.long)), {}, r"lie in \[1, 15\]"),
        (lambda: _replace(item_task(), "train", targets=torch.ones(300, dtype=torch.long)), {}, r"\[N, T\]"),
        (lambda: _replace(item_task(), "train", inputs=torch.ones(300)), {}, "inputs must be"),
        (lambda: profile_task(), {"metric": "mrr@5"}, "profile metric"),
        (lambda: item_task(), {"metric": "bacc"}, "ranking metric"),
        (lambda: profile_task(), {"max_features": 0}, "max_features"),
        (lambda: profile_task(), {"l2": []}, "l2"),
        (lambda: item_task(), {"ridge_l2": [1.0, -1.0]}, "ridge_l2"),
        (lambda: item_task(), {"solver": "lu"}, "solver"),
        (lambda: item_task(), {"eval_ks": ()}, "eval_ks"),
        (lambda: "not a task", {}, "TaskData"),
    ],
)
def test_bad_input_is_a_clear_value_error(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear_baseline(make(), **kwargs)


# ------------------------------------------------------------------------------------------------ runs
def test_baselines_keep_their_keys_and_add_the_linear_model():
    tasks = [item_task(), profile_task()]
    cfgs = [TaskConfig(), TaskConfig()]
    plain = baselines(tasks, cfgs)
    assert [b["name"] for b in plain] == ["popularity", "majority"] and all("linear" not in b for b in plain)
    assert plain[1]["metrics"]["bacc"] == plain[1]["value"] == 0.5 and "mrr@20" in plain[0]["metrics"]
    full = baselines(tasks, cfgs, {"l2": [0.01]})
    for a, b in zip(plain, full):
        assert {k: b[k] for k in a} == a
    assert full[1]["linear"]["l2"] == 0.01 and full[1]["linear"]["value"] > 0.9
    assert full[0]["linear"]["metric"] == "mrr@5" and full[0]["linear"]["value"] > full[0]["value"]
    # a task the linear model cannot fit is reported, not raised
    no_valid = _replace(profile_task(), "valid", torch.zeros(0, 10, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    bad = baselines([no_valid], cfgs[:1], {})[0]["linear"]
    assert math.isnan(bad["value"]) and "no users" in bad["error"]


TINY_RUN = {
    "seed": 1,
    "threads": 1,
    "data": {
        "kind": "synthetic",
        "max_len": 10,
        "options": {"num_users": 200, "num_items": 40, "seq_len": 10, "num_target_items": 20, "num_topics": 4},
    },
    "tasks": [{"name": "next_item", "kind": "next_item"}, {"name": "gender", "kind": "profile", "attribute": "gender"}],
    "model": {"channels": 8, "dilations": [1]},
    "train": {"epochs": 1, "retrain_epochs": 1, "batch_size": 64, "eval_batch_size": 128},
    "output": {"plots": False, "tensorboard": False, "checkpoint_every_epoch": False},
}


def test_a_run_reports_the_linear_rows_and_can_switch_them_off(tmp_path):
    from conure import checkpoint as ckpt
    from conure.runner import describe_checkpoint

    lines = []
    Run(parse_config(TINY_RUN), tmp_path / "on", echo=lines.append).execute()
    res = json.loads((tmp_path / "on" / "results.json").read_text())
    assert [b["name"] for b in res["baselines"]] == ["popularity", "majority"]
    for b, model in zip(res["baselines"], ["ridge", "logistic"]):
        lin = b["linear"]
        assert lin["name"] == "linear" and lin["model"] == model and lin["metric"] == b["metric"]
        assert 0 <= lin["value"] <= 1 and lin["l2"] > 0 and lin["features"] > 0 and lin["metrics"]
    text = "\n".join(lines)
    assert "linear" in next(line for line in lines if line.startswith("baselines (test):"))
    assert "> majority" in text or "<= majority" in text
    assert any(re.search(r", (> |<= )?linear (\d|-)", line) for line in lines if line.startswith("[conure] task 2/2"))
    _, meta = ckpt.load(tmp_path / "on" / "checkpoints" / "conure.safetensors")
    assert meta["baselines"][1]["linear"]["value"] == res["baselines"][1]["linear"]["value"]
    info = describe_checkpoint(tmp_path / "on")
    assert [r["linear"] for r in info["tasks"]] == [b["linear"]["value"] for b in res["baselines"]]

    off = dict(TINY_RUN, baselines={"linear": False})
    lines = []
    Run(parse_config(off), tmp_path / "off", echo=lines.append).execute()
    res_off = json.loads((tmp_path / "off" / "results.json").read_text())
    assert all("linear" not in b for b in res_off["baselines"])
    assert [b["value"] for b in res_off["baselines"]] == [b["value"] for b in res["baselines"]]
    assert ", linear" not in "\n".join(lines)
