"""Bad inputs of resuming: conure train --resume (conure.cli.main -> conure.run.Run)."""

import shutil

from ._common import CKPT, RUN_CFG, _copy_run, _cuda_cli, _shared_run, _succeeds, cli
from ._framework import behaves, exits


def _resume(*sets, prepare=None, config="run.yaml"):
    """run(ctx): ``conure train --config run.yaml --out run --resume`` on a copy of the shared run (task 1 learned),
    after ``prepare(ctx)``."""

    def run(ctx):
        _copy_run(ctx)
        if prepare is not None:
            prepare(ctx)
        args = ["train", "--config", config, "--out", "run", "--resume"]
        for s in sets:
            args += ["--set", s]
        return cli(ctx, *args)

    return run


def _put_other_method_checkpoint(ctx):
    shutil.copy(_shared_run("sinmoall") / "checkpoints" / "sinmoall.safetensors", ctx.tmp / CKPT)


def _put_export_as_checkpoint(ctx):
    from conure import checkpoint as ckpt

    tensors, meta = ckpt.load(ctx.tmp / CKPT)
    ckpt.export_task(ckpt.learner_from(tensors, meta["learner"]), 1, ctx.tmp / CKPT, meta["vocab"])


def _truncate_checkpoint(ctx):
    data = (ctx.tmp / CKPT).read_bytes()
    (ctx.tmp / CKPT).write_bytes(data[: len(data) // 2])


def _break_saved_config(ctx):
    (ctx.tmp / "run" / "config.yaml").write_text("model: {channels: [8\n")


def _resume_empty_dir(ctx):
    import yaml

    ctx.write("run.yaml", yaml.safe_dump(RUN_CFG))
    (ctx.tmp / "fresh").mkdir()
    return cli(ctx, "train", "--config", "run.yaml", "--out", "fresh", "--resume")


@exits(
    "resume.other_config",
    "conure.cli.main (train --resume)",
    "the run's config with train.epochs changed",
    "cannot resume run: the config differs from the run's: train.epochs (0 in the run, 1 now)",
)
def test_resume_other_config(ctx):
    return _resume("train.epochs=1")(ctx)


@exits(
    "resume.other_method",
    "conure.cli.main (train --resume)",
    "the run's config with another method.name",
    "the config differs from the run's: method.name (conure in the run, sinmoall now)",
)
def test_resume_other_method(ctx):
    return _resume("method.name=sinmoall")(ctx)


@exits(
    "resume.checkpoint_of_other_method",
    "conure.cli.main (train --resume)",
    "checkpoints/conure.safetensors replaced by a sinmoall run's checkpoint (same config otherwise)",
    f"{CKPT}: holds method 'sinmoall', expected 'conure'",
)
def test_resume_checkpoint_of_other_method(ctx):
    return _resume(prepare=_put_other_method_checkpoint)(ctx)


@exits(
    "resume.export_as_checkpoint",
    "conure.cli.main (train --resume)",
    "an export of task 1 in place of the run's checkpoint",
    f"{CKPT}: expected a training run's checkpoint, found an exported task model",
)
def test_resume_export_as_checkpoint(ctx):
    return _resume(prepare=_put_export_as_checkpoint)(ctx)


@exits(
    "resume.truncated_checkpoint",
    "conure.cli.main (train --resume)",
    "the run's checkpoint cut at 50%",
    f"{CKPT}: truncated checkpoint",
)
def test_resume_truncated_checkpoint(ctx):
    return _resume(prepare=_truncate_checkpoint)(ctx)


@exits(
    "resume.saved_config_broken",
    "conure.cli.main (train --resume)",
    "the run's config.yaml not valid YAML",
    "cannot resume: run/config.yaml is not a valid config",
)
def test_resume_saved_config_broken(ctx):
    return _resume(prepare=_break_saved_config)(ctx)


@exits(
    "resume.cuda_run_on_cpu_machine",
    "conure.cli.main (train --resume)",
    "a device: cuda run resumed with its config on a machine without CUDA",
    "device 'cuda' requested but torch sees no CUDA device (use device: cpu or auto)",
)
def test_resume_cuda_run_on_cpu_machine(ctx):
    return _cuda_cli("train", "--config", "cuda.yaml", "--out", "run", "--resume")(ctx)


@behaves(
    "resume.cuda_run_with_device_cpu",
    "conure.cli.main (train --resume)",
    "a device: cuda run resumed with --set device=cpu on a machine without CUDA",
    "resumes on the CPU (device is not part of a run's identity) and completes the run",
    _succeeds(f"[conure] resuming from {CKPT} (after task 1)", "[conure] task 3/3 gender"),
)
def test_resume_cuda_run_with_device_cpu(ctx):
    return _cuda_cli("train", "--config", "cuda.yaml", "--set", "device=cpu", "--out", "run", "--resume")(ctx)


@behaves(
    "resume.nothing_to_resume",
    "conure.cli.main (train --resume)",
    "--resume with an --out holding no run",
    "starts a new run, saying so ('nothing to resume in fresh: starting a new run')",
    _succeeds("nothing to resume in fresh: starting a new run", "[conure] task 3/3 gender"),
)
def test_resume_nothing_to_resume(ctx):
    return _resume_empty_dir(ctx)
