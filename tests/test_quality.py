"""What later tasks learn with: profile metrics a constant guess cannot win, how heads read the user vector (pool),
head warm-up (linear probing before fine-tuning), class weights, keep_ratio "auto", task-1 windows over the whole
history. Tiny models on synthetic data; the quality on real data is measured in experiments/ (ABLATION_ml1m.md)."""

import itertools
import math
import warnings

import pytest
import torch

from conure import checkpoint as ckpt
from conure import metrics as M
from conure.data import build_task_sequence, make_synthetic_interactions, make_synthetic_tasks
from conure.heads import ItemHead, Pool, ProfileHead, balanced_class_weight
from conure.learner import ConureLearner, TaskConfig
from conure.models import NextItNet
from conure.nn import gather_last

warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*compiled extension.*")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tasks():
    return make_synthetic_tasks(num_users=1200, num_items=60, seq_len=12, num_target_items=40, num_topics=6, seed=0)


# ------------------------------------------------------------------------------------------------ metrics
def _brute_metrics(logits, labels, k):
    pred = [max(range(k), key=lambda c: (row[c], -c)) for row in logits.tolist()]
    y = labels.tolist()
    acc = sum(p == t for p, t in zip(pred, y)) / len(y)
    recalls, f1s = [], []
    for c in range(k):
        tp = sum(p == c and t == c for p, t in zip(pred, y))
        n_true, n_pred = y.count(c), pred.count(c)
        if n_true:
            recalls.append(tp / n_true)
        if n_true or n_pred:
            f1s.append(2 * tp / (n_true + n_pred))
    return acc, sum(recalls) / len(recalls), sum(f1s) / len(f1s)


@pytest.mark.parametrize("k,n,seed", [(2, 57, 0), (3, 101, 1), (7, 40, 2), (21, 333, 3)])
def test_classification_metrics_match_their_definitions(k, n, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g)
    logits[::5, 0] = logits[::5, 1]  # ties: the lowest index wins
    labels = torch.randint(0, k, (n,), generator=g)
    m = M.classification_metrics(logits, labels, k)
    acc, bacc, f1 = _brute_metrics(logits, labels, k)
    assert m["acc"] == pytest.approx(acc) and m["bacc"] == pytest.approx(bacc) and m["macro_f1"] == pytest.approx(f1)
    nll = float(torch.nn.functional.cross_entropy(logits.double(), labels))
    assert m["nll"] == pytest.approx(nll) and m["n"] == n
    if k == 2:
        s = (logits[:, 1] - logits[:, 0]).tolist()
        pos = [a for a, t in zip(s, labels.tolist()) if t == 1]
        neg = [a for a, t in zip(s, labels.tolist()) if t == 0]
        pairs = sum((p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg))
        assert m["auc"] == pytest.approx(pairs / (len(pos) * len(neg)))
    else:
        assert "auc" not in m


def test_a_constant_predictor_cannot_win_balanced_accuracy():
    labels = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)
    const = M.majority_logits(labels, len(labels), 3)
    m = M.classification_metrics(const, labels, 3)
    assert m["acc"] == pytest.approx(0.8) and m["bacc"] == pytest.approx(1 / 3)
    two = M.classification_metrics(M.majority_logits(labels[:95], 95, 2), labels[:95], 2)
    assert two["auc"] == 0.5 and two["bacc"] == 0.5
    assert M.default_metric("profile") == "bacc" and M.default_metric("item", (10, 20)) == "mrr@10"
    assert M.improves("nll", 0.5, 0.6) and not M.improves("nll", 0.7, 0.6) and M.improves("bacc", 0.6, 0.5)
    assert M.improves("acc", 0.1, math.nan)
    with pytest.raises(ValueError, match="labels must lie"):
        M.classification_metrics(torch.zeros(2, 2), torch.tensor([0, 2]), 2)
    assert math.isnan(M.classification_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))["bacc"])


# ------------------------------------------------------------------------------------------------ pooling
def test_pool_modes():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 6, 5, generator=g)
    items = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 9]])
    assert torch.equal(Pool(5, "last")(hidden, items), gather_last(hidden, items))
    mean = Pool(5, "mean")(hidden, items)
    for b in range(4):
        real = items[b] != 0
        want = hidden[b, real].mean(0) if real.any() else hidden[b, -1]  # an empty row reads position L-1
        assert torch.allclose(mean[b], want, atol=1e-6)
    attention = Pool(5, "attention")
    assert torch.allclose(attention(hidden, items), mean, atol=1e-6)  # the query starts at zero: the mean
    with torch.no_grad():
        attention.query.copy_(torch.randn(5, generator=g))
    out = attention(hidden, items)
    w = torch.softmax((hidden[0, 2:] @ attention.query), 0)
    assert torch.allclose(out[0], (w[:, None] * hidden[0, 2:]).sum(0), atol=1e-6)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="pool must be one of"):
        Pool(5, "max")


def test_heads_user_loss_is_loss_of_the_pooled_vector_and_configs_round_trip():
    g = torch.Generator().manual_seed(1)
    hidden, items = torch.randn(6, 5, 8, generator=g), torch.randint(0, 9, (6, 5), generator=g)
    profile = ProfileHead(8, 3, pool="mean", dropout=0.0, label_smoothing=0.1)
    profile.set_class_weight(torch.tensor([1.0, 2.0, 0.5]))
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    assert torch.equal(profile.loss(hidden, items, y), profile.user_loss(profile.pool(hidden, items), y))
    want = torch.nn.functional.cross_entropy(
        profile.out(profile.pool(hidden, items)), y, weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1
    )
    assert torch.allclose(profile.loss(hidden, items, y), want)
    item = ItemHead(8, 11, pool="attention", dropout=0.2)
    assert ItemHead(**{k: v for k, v in item.config().items() if k != "type"}).config() == item.config()
    assert ProfileHead(**{k: v for k, v in profile.config().items() if k != "type"}).config() == profile.config()
    assert "class_weight" not in profile.state_dict()  # how the head was trained, not what it computes
    w = balanced_class_weight(torch.tensor([0, 0, 0, 1]), 3)
    assert torch.allclose(w, torch.tensor([4 / 9, 4 / 3, 0.0]))
    with pytest.raises(ValueError, match="class weights"):
        profile.set_class_weight(torch.tensor([1.0, -1.0, 1.0]))


@pytest.mark.parametrize(
    "bad",
    [
        dict(pool="max"),
        dict(dropout=1.0),
        dict(class_weight="inverse"),
        dict(label_smoothing=-0.1),
        dict(head_warmup=-1),
        dict(head_lr=0.0),
        dict(keep_ratio="most"),
        dict(keep_ratio=1.5),
        dict(keep_candidates=(0.5, 1.0)),
        dict(keep_candidates=()),
        dict(keep_tolerance=-0.01),
    ],
)
def test_task_config_rejects_bad_quality_options(bad):
    with pytest.raises(ValueError):
        TaskConfig(**bad)


# ------------------------------------------------------------------------------------------------ learning
def _learner(tasks, keep_ratios=(0.5, 0.5, 0.5)):
    torch.manual_seed(0)
    net = NextItNet(tasks[0].num_items, channels=16, kernel_size=3, dilations=(1, 4))
    return ConureLearner(net, keep_ratios=list(keep_ratios), seed=0)


def test_head_warmup_starts_fine_tuning_from_a_fitted_head(tasks):
    learner = _learner(tasks)
    learner.learn(tasks[0], 1, TaskConfig(epochs=2, retrain_epochs=1, lr=1e-2, batch_size=64))
    gender = tasks[2]
    cfg = TaskConfig(epochs=1, retrain_epochs=0, lr=1e-2, batch_size=64, pool="mean", head_warmup=15, patience=5)
    learner.learn(gender, 2, cfg)
    warm = [r for r in learner.history if r.get("event") == "head_warmup"]
    assert len(warm) == 1 and warm[0]["best_epoch"] >= 1  # the fitted head beat the random one on valid
    first = next(r for r in learner.history if r.get("event") == "phase" and r["task"] == 2)
    assert first["best_valid"] >= warm[0]["best_valid"]  # fine-tuning starts from it (epoch 0)
    assert learner.evaluate(2, "test")["bacc"] > 0.6  # the synthetic gender is learnable


def test_keep_ratio_auto_keeps_the_smallest_candidate_within_tolerance(tasks):
    learner = _learner(tasks)
    learner.learn(tasks[0], 1, TaskConfig(epochs=2, retrain_epochs=1, lr=1e-2, batch_size=64))
    before = learner.task_digest(1)
    probe = tasks[0].test.inputs[:32]
    scores = learner.predict(1, probe)
    cfg = TaskConfig(
        epochs=2,
        retrain_epochs=1,
        lr=1e-2,
        batch_size=64,
        keep_ratio="auto",
        keep_candidates=(0.05, 0.2, 0.6),
        keep_tolerance=0.05,
    )
    seen = []
    learner.on_epoch_end = seen.append
    learner.learn(tasks[1], 2, cfg)
    trials = [r for r in learner.history if r.get("event") == "auto_keep"]
    assert [t["keep_ratio"] for t in trials] == [0.05, 0.2, 0.6][: len(trials)] and trials[-1]["accepted"]
    assert not any(t["accepted"] for t in trials[:-1])
    dense = trials[0]["dense_valid"]
    last = trials[-1]
    assert last["valid"] >= dense * (1 - 0.05) or last["keep_ratio"] == 0.6
    prunes = [r for r in learner.history if r.get("event") == "prune" and r["task"] == 2]
    assert len(prunes) == len(trials)  # each candidate pruned the dense state afresh
    for name, m in learner.backbone.conv_layers():
        claimed = prunes[-1]["claimed"][name]
        assert all(p["claimed"][name] == claimed for p in prunes)
        assert m.owned(2) == prunes[-1]["kept"][name] == round(last["keep_ratio"] * claimed)
    assert learner.on_epoch_end == seen.append  # the hook is back after the search
    assert all(s["phase"] == "train" for s in seen)  # and was off during it
    assert learner.task_digest(1) == before and torch.equal(learner.predict(1, probe), scores)  # no forgetting
    learner.learn(tasks[2], 3, TaskConfig(epochs=1, retrain_epochs=0, batch_size=64))  # capacity left


def test_a_failed_auto_search_gives_the_hook_back(tasks, monkeypatch):
    learner = _learner(tasks)
    learner.learn(tasks[0], 1, TaskConfig(epochs=1, retrain_epochs=0, batch_size=64))
    hook = learner.on_epoch_end = lambda state: None
    calls = []

    def failing_fit(task_id, epochs, cfg, phase):
        calls.append(phase)
        if phase == "retrain":
            raise KeyboardInterrupt
        return {"best_epoch": 0, "best_valid": 0.0}

    monkeypatch.setattr(learner, "_fit", failing_fit)
    with pytest.raises(KeyboardInterrupt):
        learner.learn(tasks[1], 2, TaskConfig(epochs=1, retrain_epochs=1, keep_ratio="auto"))
    assert calls == ["train", "retrain"] and learner.on_epoch_end is hook and learner.learned_tasks == [1]


def test_pooled_heads_survive_export(tasks, tmp_path):
    learner = _learner(tasks)
    learner.learn(tasks[0], 1, TaskConfig(epochs=1, retrain_epochs=0, batch_size=64))
    learner.learn(
        tasks[2],
        2,
        TaskConfig(epochs=1, retrain_epochs=0, batch_size=64, pool="attention", class_weight="balanced", dropout=0.3),
    )
    vocab = ckpt.vocab_meta([tasks[0], tasks[2]])
    path, _ = ckpt.export_task(learner, 2, tmp_path / "t2.safetensors", vocab, max_len=12)
    model = ckpt.load_inference(path)
    probe = tasks[2].test.inputs[:16]
    assert torch.equal(model.scores(probe), learner.predict(2, probe))


# ------------------------------------------------------------------------------------------------ task-1 windows
def test_next_item_windows_over_the_whole_history():
    inter = make_synthetic_interactions(num_users=80, num_items=30, seq_len=40, seed=3)
    spec = {"name": "n", "kind": "next_item"}
    (last,) = build_task_sequence(inter, [spec], max_len=7, min_len=2, seed=0)
    (every,) = build_task_sequence(inter, [dict(spec, windows="all")], max_len=7, min_len=2, seed=0)
    assert torch.equal(last.valid.inputs, every.valid.inputs) and torch.equal(last.test.targets, every.test.targets)
    tr = every.train
    ids = last.meta["source_vocab"]
    for u in last.train.users.tolist():
        rows = (tr.users == u).nonzero().flatten()
        assert rows.numel() == max(1, math.ceil((inter.history.lengths[u] - 1) / 7))
        targets = tr.targets[rows]
        # newest window first; every item of the history but the first is a target exactly once
        got = torch.cat([t[t != 0] for t in targets.flip(0)]).tolist()
        raw = inter.history.items[inter.history.offsets[u] : inter.history.offsets[u + 1]]
        assert [ids[i] for i in got] == [inter.history.item_ids[i] for i in raw[1:]]
        inputs = tr.inputs[rows]
        mask = targets[:, :-1] != 0
        assert torch.equal(inputs[:, 1:][mask], targets[:, :-1][mask])  # inputs are the targets shifted
        assert torch.equal(last.train.inputs[last.train.users == u][0], inputs[0])
    with pytest.raises(ValueError, match="windows"):
        build_task_sequence(inter, [dict(spec, windows="some")], max_len=7)
    with pytest.raises(ValueError, match="next_item tasks only"):
        build_task_sequence(inter, [spec, {"name": "i", "kind": "item", "windows": "all"}], max_len=7)


def test_shipped_configs_train_profile_tasks_with_the_measured_defaults_and_set_edits_one_task():
    from conure.config import load_config
    from conure.data.tasks import PROFILE_TRAIN, default_specs

    for name in ("ml1m_paper", "ml100k"):
        cfg, _ = load_config(name, ["tasks.3.train.lr=0.5"])
        tcs = cfg.task_configs()
        assert cfg.tasks[0]["windows"] == "all"
        assert [tc.lr for tc in tcs[2:]] == [PROFILE_TRAIN["lr"], 0.5, PROFILE_TRAIN["lr"]]  # YAML aliases unshared
        assert all(tc.pool == "mean" and tc.head_warmup == PROFILE_TRAIN["head_warmup"] for tc in tcs[2:])
    specs = default_specs("ml-1m", train=True)
    specs[2]["train"]["lr"] = 9.0
    assert specs[3]["train"]["lr"] == PROFILE_TRAIN["lr"]
    assert all("train" not in s for s in default_specs("ml-1m"))  # build_task_sequence takes these as they are


# ------------------------------------------------------------------------------------------------ mixed precision
def test_bf16_training_keeps_float32_master_weights_and_frozen_tasks_bit_identical(tasks):
    learner = _learner(tasks)
    learner.learn(tasks[0], 1, TaskConfig(epochs=2, retrain_epochs=1, lr=1e-2, batch_size=64, precision="bf16"))
    probe = tasks[0].test.inputs[:32]
    digest, scores = learner.task_digest(1), learner.predict(1, probe)
    learner.learn(
        tasks[2], 2, TaskConfig(epochs=2, retrain_epochs=1, lr=1e-2, batch_size=64, precision="bf16", pool="mean")
    )
    assert all(
        t.dtype in (torch.float32, torch.uint8, torch.float64) for t in learner.state_tensors().values()
    )  # stored dtypes unchanged
    assert learner.task_digest(1) == digest and torch.equal(learner.predict(1, probe), scores)
    epochs = [r for r in learner.history if r.get("event") == "epoch"]
    assert epochs and all(math.isfinite(r["loss"]) for r in epochs)
    assert learner.evaluate(1, "test")["mrr@5"] > 0 and learner.evaluate(2, "test")["bacc"] > 0.55


def test_fp16_needs_cuda_and_is_refused_before_anything_changes(tasks):
    learner = _learner(tasks)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        learner.learn(tasks[0], 1, TaskConfig(epochs=1, precision="fp16"))
    assert learner.learned_tasks == [] and "head_1" not in learner.store
    with pytest.raises(ValueError, match="precision must be one of"):
        TaskConfig(precision="fp8")
