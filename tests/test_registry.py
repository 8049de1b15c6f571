"""Methods and dataset kinds declare themselves (conure.registry): adding one is one file plus its tests.

The example method below is all a new method needs: a ContinualLearner subclass with a ``method`` name, its declared
options, and what it trains. It is then known to make_method, the run config, conure train and checkpoints.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import conure
from conure import registry
from conure.config import ConfigError, load_config, parse_config
from conure.data import default_specs, load_dataset, make_synthetic_interactions
from conure.learner import ContinualLearner, TrainConfig
from conure.models import NextItNet
from conure.registry import Option

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_tasks():
    from conure.data import make_synthetic_tasks

    return make_synthetic_tasks(num_users=300, num_items=40, seq_len=10, seed=3)


class HeadsOnly(ContinualLearner):
    """Example: task 1 trains the backbone, later tasks train their head only, with a learning-rate ``scale``."""

    method = "example_heads_only"
    options = {"scale": Option(1.0, "multiplies the head learning rate of later tasks", lambda v: _positive(v))}

    def __init__(self, backbone, *, scale: float = 1.0, seed: int = 0):
        super().__init__(backbone, seed=seed)
        self.scale = scale

    def learn(self, task_data, task_id, config=None):
        cfg = self._begin(task_data, task_id, config)
        if task_id > 1:
            cfg = TrainConfig(**{**cfg.to_dict(), "lr": cfg.lr * self.scale})
        with self._undo_on_error(task_id):
            if task_id == 1:
                for _, m in self.backbone.conv_layers():
                    m.owner.fill_(1)
            self._fit(task_id, cfg.epochs, cfg, "train")
        return self._end(task_id)

    def _encode(self, task_id, items, out_len=None):
        return self.backbone(items, 1, out_len=out_len)

    def _trainable(self, task_id):
        return list(self.backbone.parameters()) if task_id == 1 else []

    def _options(self):
        return {"scale": self.scale}


# Defining the class registered it; the registry is global, so only the tests that ask for it see it (other test
# modules iterate over every registered method).
assert registry.METHODS.pop(HeadsOnly.method) is HeadsOnly


@pytest.fixture
def heads_only():
    registry.register_method(HeadsOnly)
    yield HeadsOnly
    registry.METHODS.pop(HeadsOnly.method, None)


def _positive(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ValueError(f"must be a positive number, got {v!r}")
    return float(v)


def test_a_method_registers_itself_and_runs_through_make_method(tiny_tasks, heads_only):
    assert registry.METHODS["example_heads_only"] is HeadsOnly
    net = NextItNet(tiny_tasks[0].num_items, channels=8, dilations=(1, 2))
    learner = conure.make_method("example_heads_only", net, seed=0, scale=0.5)
    cfg = TrainConfig(epochs=1, batch_size=64)
    for t, task in enumerate(tiny_tasks[:2], 1):
        learner.learn(task, t, cfg)
    assert learner.learned_tasks == [1, 2] and learner.results[1][1] == learner.results[1][1]  # learned, not NaN
    again = ContinualLearner.from_state(learner.state_tensors(), learner.state_meta())  # checkpoints know it
    assert isinstance(again, HeadsOnly) and again.scale == 0.5
    probe = tiny_tasks[1].test.inputs[:5]
    assert torch.equal(again.predict(2, probe), learner.predict(2, probe))


def test_declared_options_are_validated(tiny_tasks, heads_only):
    net = NextItNet(tiny_tasks[0].num_items, channels=8, dilations=(1,))
    with pytest.raises(ValueError, match=r"example_heads_only.scale must be a positive number, got -1"):
        conure.make_method("example_heads_only", net, scale=-1)
    with pytest.raises(ValueError, match=r"has no option\(s\) \['keep_ratios'\]; its options: \['scale'\]"):
        conure.make_method("example_heads_only", net, keep_ratios=[0.5])
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        conure.make_method("nope", net)
    assert registry.method_options("conure")["keep_ratios"].default == [0.3]
    assert registry.method_options("peterrec")["reduction"].default == 8


def test_the_run_config_takes_the_methods_declared_options(heads_only):
    cfg, _ = load_config(None, ["method.keep_ratios=[0.2, 0.4]", "method.reduction=4"])
    assert cfg.method.options("conure") == {"keep_ratios": [0.2, 0.4]} and cfg.method.options("peterrec") == {
        "reduction": 4
    }
    with pytest.raises(ConfigError, match="reduction must be an integer >= 1"):
        load_config(None, ["method.reduction=0"])
    with pytest.raises(ConfigError, match="keep_ratios"):
        load_config(None, ["method.keep_ratios=[1.5]"])
    # A method registered after conure.config was imported is known by name (its options go through Python).
    assert parse_config({"method": {"name": "example_heads_only"}}).method.name == "example_heads_only"


def test_a_dataset_kind_registers_itself(tmp_path):
    def read_lines(path):
        return make_synthetic_interactions(num_users=50, num_items=30, seq_len=8, seed=len(Path(path).name))

    kind = registry.register_dataset(
        registry.DatasetKind("example-lines", read_lines, lambda train: [{"name": "next_item", "kind": "next_item"}])
    )
    try:
        assert default_specs("example-lines") == [{"name": "next_item", "kind": "next_item"}]
        inter = load_dataset("example-lines", tmp_path / "x.txt")
        assert inter.num_users == 50
        with pytest.raises(ValueError, match="needs a path"):
            load_dataset("example-lines")
        cfg = parse_config({"data": {"kind": "example-lines", "path": str(tmp_path / "x.txt")}})
        assert cfg.data.kind == "example-lines" and [t["name"] for t in cfg.task_specs()] == ["next_item"]
    finally:
        registry.DATASETS.pop(kind.name)
    with pytest.raises(ValueError, match="unknown dataset kind 'example-lines'"):
        load_dataset("example-lines", tmp_path / "x.txt")


def test_no_import_cycle_in_the_package():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "check_imports.py")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 cycle(s)" in r.stdout


def test_the_cycle_checker_finds_a_cycle(tmp_path, monkeypatch):
    """The checker itself can fail: two modules that import each other (one lazily) are a cycle."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import check_imports
    finally:
        sys.path.pop(0)
    pkg = tmp_path / "conure"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from conure import b\n")
    (pkg / "b.py").write_text("def f():\n    from conure.a import x\n")
    mods = check_imports.modules(tmp_path)
    graph = {n: check_imports.edges(n, p, set(mods)) for n, p in mods.items()}
    assert check_imports.cycles(graph) == [["conure.a", "conure.b"]]
