"""Bad inputs of the command line: conure.cli (`python -m conure ...`)."""

import os
import subprocess
import sys

import pytest

from ._common import _a_file, _copy_run, _disk_full, cli
from ._framework import REPO, _exit_check, _exit_text, behaves, exits, fixed


def cli_process(ctx, *argv):
    """``python -m conure argv`` in a child process, in the row's directory: (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), CONURE_PROGRESS="0")
    r = subprocess.run(
        [sys.executable, "-m", "conure", *map(str, argv)],
        cwd=ctx.tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return r.returncode, r.stdout, r.stderr


def _export_disk_full(ctx):
    _copy_run(ctx)
    try:
        with _disk_full():
            return cli(ctx, "export", "--checkpoint", "run", "--task", "1", "--out", "e.safetensors")
    finally:
        assert not [p.name for p in ctx.tmp.iterdir() if p.name.startswith(("e.", ".e."))], "a file was left"


@exits(
    "cli.unknown_subcommand",
    "python -m conure",
    "an unknown subcommand (frobnicate)",
    "argument COMMAND: invalid choice: 'frobnicate' (choose from 'demo', 'train', 'eval', 'inspect', 'predict', "
    "'export', 'config', 'tune', 'doctor')",
)
def test_cli_unknown_subcommand(ctx):
    return cli_process(ctx, "frobnicate")


@behaves(
    "cli.no_subcommand",
    "conure.cli.main",
    "no subcommand at all",
    "exit 2 after printing the usage (stdout)",
    lambda r, c: (r[0] == 2 and r[1].startswith("usage: conure") and not r[2].strip()) or pytest.fail(str(r)),
)
def test_cli_no_subcommand(ctx):
    return cli(ctx)


@exits(
    "cli.missing_required_option",
    "python -m conure",
    "train without --config",
    "the following arguments are required: --config (see 'conure train --help')",
)
def test_cli_missing_required_option(ctx):
    return cli_process(ctx, "train")


@exits(
    "cli.unknown_option",
    "conure.cli.main",
    "train with an option it does not have (--epochs 3)",
    "unrecognized arguments: --epochs 3",
)
def test_cli_unknown_option(ctx):
    return cli(ctx, "train", "--config", "demo", "--epochs", "3")


@exits(
    "cli.option_without_value",
    "conure.cli.main",
    "eval --checkpoint with no value",
    "argument --checkpoint: expected one argument",
)
def test_cli_option_without_value(ctx):
    return cli(ctx, "eval", "--checkpoint")


@exits(
    "cli.config_missing",
    "conure.cli.main",
    "train --config of a file that does not exist",
    "config file not found: nope.yaml (shipped examples: demo, ml100k, ml1m_paper)",
)
def test_cli_config_missing(ctx):
    return cli(ctx, "train", "--config", "nope.yaml", "--out", "out")


@exits(
    "cli.config_directory",
    "conure.cli.main",
    "train --config of a directory",
    "config path is a directory, not a YAML file: cfgdir",
)
def test_cli_config_directory(ctx):
    return ((ctx.tmp / "cfgdir").mkdir(), cli(ctx, "train", "--config", "cfgdir", "--out", "out"))[1]


@exits(
    "cli.checkpoint_dir_without_checkpoint",
    "conure.cli.main",
    "eval --checkpoint of a directory without one",
    "empty: no checkpoint in this directory (looked for *.safetensors)",
)
def test_cli_checkpoint_dir_without_checkpoint(ctx):
    return ((ctx.tmp / "empty").mkdir(), cli(ctx, "eval", "--checkpoint", "empty"))[1]


@fixed(
    "cli.export_parent_is_file",
    "conure.cli.main",
    "export --out below a regular file (afile/e.safetensors)",
    "exit 1, 'FileExistsError: [Errno 17] File exists: ... (this looks like a bug ...)'",
    _exit_text("Not a directory: afile"),
    check=_exit_check("Not a directory: afile"),
)
def test_cli_export_parent_is_file(ctx):
    return (
        _copy_run(ctx),
        _a_file(ctx),
        cli(ctx, "export", "--checkpoint", "run", "--task", "1", "--out", "afile/e.safetensors"),
    )[2]


@fixed(
    "cli.export_disk_full",
    "conure.cli.main",
    "export on a full disk (ENOSPC half-way through the write)",
    "exit 1, 'OSError: [Errno 28] No space left on device (this looks like a bug ...)', no file name",
    _exit_text("No space left on device: e.safetensors") + "; no file left behind",
    check=_exit_check("No space left on device: e.safetensors"),
)
def test_cli_export_disk_full(ctx):
    return _export_disk_full(ctx)
