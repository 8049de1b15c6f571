"""The ``conure`` command line (also ``python -m conure``).

Commands::

    conure demo     [--out DIR] [--set key=value ...]
    conure train    --config FILE [--set key=value ...] [--out DIR] [--resume | --overwrite] [--print-config]
    torchrun --nproc_per_node N -m conure train ...     (data-parallel: DDP, rank 0 writes)
    conure eval     --checkpoint CKPT [--task N] [--split test|valid] [--json]
    conure inspect  --checkpoint CKPT [--json]
    conure predict  --checkpoint CKPT --task N --input FILE [--top-k K] [--format tsv|json] [--output FILE]
    conure export   --checkpoint CKPT --task N|all --out FILE [--format safetensors|onnx|pt2] [--top-k K] [--stream]
    conure config   [--defaults | FILE] [--set key=value ...]
    conure tune     --config FILE --task NAME --trials N [--out DIR] [--set key=value ...] [--timeout SECONDS]
                    [--space FILE]                      (needs optuna: pip install 'conure[tune]')
    conure doctor   [--json]                            (backend, compiled library, compiler, CUDA, CPU, threads)

Bad arguments, configs, data or checkpoints end with one line ``conure: error: ...`` on stderr and exit code 2
(``--debug`` shows the traceback). An interrupted run says how to resume it (exit code 130).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import NoReturn, Optional, Sequence

PROG = "conure"


class UsageError(Exception):
    """A bad command line (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``conure: error: ... (see 'conure train --help')``."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def _sets(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, typed by the schema (repeatable): --set train.epochs=3 "
        "--set method.compare=[sinmoall]",
    )


def _precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="compute the scores in float32 (default) or under bfloat16 autocast (faster on CPUs with "
        "AVX512-BF16/AMX; scores round differently, rankings may change among near ties)",
    )


def _autocast(precision: str):
    from conure.learner import autocast

    return autocast(precision, "cpu")  # eval and predict load the model on the CPU


def build_parser() -> argparse.ArgumentParser:
    from conure import __version__

    parser = _Parser(
        prog=PROG,
        description="Continual user representation learning (Conure, SIGIR 2021): one "
        "NextItNet backbone learns task after task without forgetting.",
        epilog="Run 'conure COMMAND --help' for a command's options. Quick look: 'conure demo'.",
    )
    parser.add_argument("--version", action="version", version=f"conure {__version__}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "demo",
        help="learn the synthetic task sequence with Conure and SinMoAll (about a minute)",
        description="Learn task 1 (next item) and four later tasks (two item, two profile) of the "
        "embedded synthetic data with Conure and, for contrast, SinMoAll; print per-task metrics and "
        "their baselines, the accuracy matrices and Conure's capacity table; write DIR/results.json, "
        "log.csv, plots, checkpoints.",
    )
    p.add_argument("--out", default="conure-demo", metavar="DIR", help="output directory (default: ./conure-demo)")
    p.add_argument(
        "--ddp",
        action="store_true",
        help="instead: the data-parallel demo, launched with torchrun (its options: conure demo --ddp "
        "--help); must be the first option",
    )
    _sets(p)
    _add_common(p)

    p = sub.add_parser(
        "train",
        help="run a task sequence from a YAML config",
        description="Train the config's method(s) on its task sequence; write DIR/config.yaml, "
        "checkpoints/, log.csv, tb/, results.json, plots/.",
    )
    p.add_argument(
        "--config", required=True, metavar="FILE", help="YAML config (or a shipped example: demo, ml100k, ml1m_paper)"
    )
    _sets(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/<config name>)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--resume", action="store_true", help="continue the run in DIR from its last checkpoint (last completed epoch)"
    )
    g.add_argument("--overwrite", action="store_true", help="start over in a DIR that holds a run")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_common(p)

    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint's tasks on the run's data",
        description="Re-read the data named in the checkpoint's config and evaluate every learned "
        "task (or one) with all its metrics and its baseline.",
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a run checkpoint (or run directory)")
    p.add_argument("--task", metavar="N", help="task id (1-based) or name; default: every learned task")
    p.add_argument("--split", choices=["test", "valid", "train"], default="test")
    _precision(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_common(p)

    p = sub.add_parser("inspect", help="tasks, progress, capacity and parameter counts of a checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a run checkpoint, run directory or export")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_common(p)

    p = sub.add_parser(
        "predict",
        help="top-K items or a label per user, from raw-id histories",
        description="Input: a TSV 'user<TAB>item item ...' of raw item ids as in the training data "
        "(oldest first). Output: per user the top-K target items (raw ids) or the class label. "
        "Streams: each batch of 512 users is written as soon as it is scored; --output is written "
        "atomically.",
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a run checkpoint, run directory or export")
    p.add_argument("--task", metavar="N", help="task id (1-based) or name (optional with an export)")
    p.add_argument("--input", required=True, metavar="FILE", help="sequence TSV ('-' = stdin)")
    p.add_argument("--top-k", type=int, default=10, metavar="K", help="items per user (ranking tasks; default 10)")
    p.add_argument("--format", choices=["tsv", "json"], default="tsv")
    _precision(p)
    p.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    p.add_argument(
        "--exclude-seen",
        action="store_true",
        help="next-item tasks: do not recommend items already in the user's history",
    )
    _add_common(p)

    p = sub.add_parser(
        "export",
        help="write a task's inference model (safetensors), or ONNX / PyTorch 2 graphs",
        description="Write task N's inference model: backbone weights masked to owners 1..N with "
        "their owner maps, embedding, head N and vocabularies; 'conure predict' loads it. With --format "
        "onnx or pt2: task N, every task (--task all) or the streaming step (--stream) as a graph that "
        "runs without conure, plus FILE stem + .vocab.json (docs/DEPLOY.md).",
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a run checkpoint or run directory")
    p.add_argument(
        "--task",
        required=True,
        metavar="N",
        help="task id (1-based) or name; 'all': every learned task in one graph (onnx, pt2)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="output file (.safetensors, .onnx, .pt2)")
    p.add_argument(
        "--format",
        choices=["safetensors", "onnx", "pt2"],
        default="safetensors",
        help="safetensors (for 'conure predict'), or a graph without conure: ONNX, PyTorch 2 export; the "
        "graphs get a vocabulary file beside them (FILE stem + .vocab.json); see docs/DEPLOY.md",
    )
    p.add_argument("--top-k", type=int, metavar="K", help="onnx, pt2: also output the top-K scores and indices")
    p.add_argument(
        "--stream",
        action="store_true",
        help="onnx, pt2: the streaming step (one item per user, state in and out) instead of the whole history",
    )
    _add_common(p)

    p = sub.add_parser(
        "config",
        help="print the default config (documented) or a resolved one",
        description="With --defaults: every key, its default and what it does. With FILE: the "
        "config after --set overrides and validation, every key filled in.",
    )
    p.add_argument("file", nargs="?", metavar="FILE", help="config to resolve (or a shipped example name)")
    p.add_argument("--defaults", action="store_true", help="print every key with its default and documentation")
    p.add_argument("--list", action="store_true", help="list the shipped example configs")
    _sets(p)
    _add_common(p)

    p = sub.add_parser(
        "tune",
        help="tune one task's training settings with Optuna, on validation users",
        description="Learn the tasks before --task once (cached in DIR/prefix.safetensors), then run "
        "an Optuna study (DIR/study.db) over that task's training settings (learning rate, batch size, "
        "weight decay, head options, Conure's keep ratio...), scored by its validation metric, pruning "
        "bad trials after each epoch; the test split is never evaluated. Write the best settings to "
        "DIR/best.yaml (config syntax and --set lines). Rerunning the command resumes the study. "
        "Needs optuna: pip install optuna (or pip install 'conure[tune]').",
    )
    p.add_argument(
        "--config", required=True, metavar="FILE", help="YAML config (or a shipped example: demo, ml100k, ml1m_paper)"
    )
    p.add_argument("--task", required=True, metavar="NAME", help="the task to tune: its name (or 1-based number)")
    p.add_argument(
        "--trials",
        required=True,
        type=int,
        metavar="N",
        help="complete or pruned trials the study should hold in total (a rerun adds the missing ones)",
    )
    p.add_argument("--out", metavar="DIR", help="study directory (default: runs/tune-<config name>-<task>)")
    _sets(p)
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="start no new trial after this many seconds (rerun to continue)",
    )
    p.add_argument(
        "--space",
        metavar="FILE",
        help="search space YAML: TrainConfig key -> {low, high, log} | {int: [low, high]} | "
        "{choices: [...]} (default: lr, batch_size, weight_decay, head options, keep_ratio...)",
    )
    _add_common(p)

    p = sub.add_parser(
        "doctor",
        help="how conure runs here: backend, compiled library, compiler, CUDA, CPU, threads",
        description="Print the operators' backend (compiled or reference) and where the compiled "
        "library came from (built at install, or compiled at first import into the cache, and where), "
        "conure's and torch's versions, the C++ compiler, ninja, CUDA (torch's, nvcc, GPUs), the CPU "
        "model and the instruction sets conure's speed depends on (AVX2, AVX-512F, AVX512-BF16, "
        "AMX-BF16), threads and the environment switches that are set. Paste it into bug reports.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_common(p)
    return parser


# --------------------------------------------------------------------------------------------------- helpers
def _say(text: str = "") -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _setup_warnings() -> None:
    # The compiled-extension fallback warning is printed once by conure itself; keep the CLI output clean of
    # library deprecation noise.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _load_cfg(path: Optional[str], sets: Sequence[str]):
    from conure.config import load_config

    return load_config(path, sets)


# ------------------------------------------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    if args.ddp:
        raise UsageError("demo: --ddp must come first (conure demo --ddp [its options])")
    from conure.config import builtin_configs
    from conure.run import Run

    t0 = time.perf_counter()
    cfg, _ = _load_cfg(str(builtin_configs()["demo"]), args.sets)
    out = Path(args.out)
    if os.environ.get("RANK", "0") == "0":  # under torchrun the process group is not joined yet: rank 0 only
        _say(
            f"conure demo: {len(cfg.tasks)} tasks on synthetic data, methods {', '.join(cfg.method.names)}, "
            f"NextItNet {cfg.model.channels} channels x {len(cfg.model.dilations)} blocks -> {out}"
        )
    run = Run(cfg, out, overwrite=True, echo=_say)
    res = run.execute()
    if not run.main:  # torchrun: rank 0 reports
        return 0
    beaten, linear = [], []
    main = res["methods"].get(cfg.method.name, {})
    final = main.get("final") or []
    for j, b in enumerate(res["baselines"][: len(res["tasks"])]):
        v = final[j] if j < len(final) else None
        beaten.append(v is not None and b["value"] is not None and v > b["value"])
        lv = (b.get("linear") or {}).get("value")
        if lv is not None:
            linear.append(v is not None and v > lv)
    _say("")
    _say(
        f"every task beats its baseline with {cfg.method.name}: {'yes' if all(beaten) else 'NO'} "
        f"({sum(beaten)}/{len(beaten)})"
        + (f"; it beats the linear model on {sum(linear)}/{len(linear)}" if linear else "")
    )
    _say(f"demo wall time {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_train(args) -> int:
    from conure.config import dump_config
    from conure.run import Run

    cfg, _ = _load_cfg(args.config, args.sets)
    if args.print_config:
        sys.stdout.write(dump_config(cfg, comments=True))
        return 0
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    run = Run(cfg, out, resume=args.resume, overwrite=args.overwrite, echo=_say)
    try:
        run.execute()  # under torchrun: on every rank, rank 0 writes (conure.run)
    except KeyboardInterrupt:
        if run.main:
            launch = "conure" if run.ctx is None else "torchrun <the same options> -m conure"
            _err(
                f"{PROG}: interrupted; continue with: {launch} train --config {args.config} "
                f"{' '.join('--set ' + s for s in args.sets)}{' ' if args.sets else ''}--out {out} --resume"
            )
        return 130
    return 0


def cmd_eval(args) -> int:
    from conure.commands import evaluate_checkpoint

    with _autocast(args.precision):
        res = evaluate_checkpoint(args.checkpoint, args.task, args.split, echo=_say)
    if args.json:
        from conure.checkpoint import nan_to_none

        _say(json.dumps(nan_to_none(res), indent=1))
        return 0
    _say(
        f"{res['checkpoint']}: method {res['method']}, {args.split} split"
        + ("" if args.split == "test" else " (baselines: test split)")
    )
    _say(f"{'task':>4} {'name':<14}{'metric':>8}{'value':>9}{'baseline':>10}{'linear':>9}   all metrics")
    for r in res["tasks"]:
        others = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items() if k != "n")
        b = r["baseline"]
        lin = b.get("linear") or {}
        lv = lin.get("value")
        lin_text = "-" if lv is None or lv != lv else f"{lv:.4f}"  # NaN: the model could not be fitted
        lin_note = f", linear: {lin['model']} l2 {lin['l2']:g}" if "model" in lin else ""
        _say(
            f"{r['task']:>4} {r['name'][:13]:<14}{r['metric']:>8}{r['value']:>9.4f}{b['value']:>10.4f}"
            f"{lin_text:>9}   {others} (n={r['metrics'].get('n')}; baseline: {b['name']}{lin_note})"
        )
    return 0


def cmd_inspect(args) -> int:
    from conure.commands import describe_checkpoint
    from conure.report import format_capacity, format_matrix

    info = describe_checkpoint(args.checkpoint)
    if args.json:
        from conure.checkpoint import nan_to_none

        _say(json.dumps(nan_to_none(info), indent=1))
        return 0
    _say(
        f"{info['checkpoint']}: {info['kind']} checkpoint, format v{info['format_version']}, written "
        f"{info['written']} by conure {info['conure_version']}; {info['tensors']} tensors, "
        f"{info['tensor_bytes'] / 1e6:.2f} MB"
    )
    if info["kind"] == "export":
        _say(
            f"method {info['method']}, task {info['task']} {info['name']} ({info['task_kind']}, "
            f"{info['num_targets']} targets, metric {info['metric']}), max_len {info['max_len']}"
        )
        _say(f"backbone {info['backbone']}")
        _say(f"parameters {info['params']:,}")
        own = {}
        for layer in (info.get("owners") or {}).values():
            for t, c in layer.items():
                own[t] = own.get(t, 0) + c
        _say(
            "conv weights by owner: "
            + ", ".join(
                f"{'free' if t == '0' else 'task ' + t} {c:,}"
                for t, c in sorted(own.items(), key=lambda kv: int(kv[0]))
            )
        )
        return 0
    _say(f"method {info['method']} (seed {info['seed']}), status: {info['status']}")
    b = info["backbone"]
    _say(
        f"backbone NextItNet: {b['num_items'] - 1:,} items, {b['channels']} channels, kernel {b['kernel_size']}, "
        f"dilations {b['dilations']}"
    )
    _say(
        f"{'task':>4} {'name':<14}{'kind':<10}{'metric':>8}{'learned':>9}{'when':>9}{'now':>9}{'head params':>13}"
        f"{'baseline':>10}{'linear':>9}"
    )

    def num(v):
        return f"{v:.4f}" if v is not None and v == v else "-"  # None or NaN: nothing to show

    for r in info["tasks"]:
        _say(
            f"{r['task']:>4} {r['name'][:13]:<14}{r['kind']:<10}{r['metric']:>8}{'yes' if r['learned'] else 'no':>9}"
            f"{num(r.get('test_when_learned')):>9}{num(r.get('test')):>9}{r.get('head_params', 0):>13,}"
            f"{num(r.get('baseline')):>10}{num(r.get('linear')):>9}"
        )
    if any(r.get("baseline") is not None for r in info["tasks"]):
        _say(
            "baseline, linear: test metric of the trivial predictor (popularity / majority class) and of the "
            "bag-of-items linear model"
        )
    _say(f"parameters stored: {info['params_stored']:,} ({info['bytes_stored'] / 1e6:.2f} MB)")
    names = [r["name"] for r in info["tasks"]]
    if info.get("matrix"):
        _say("")
        _say(format_matrix(info["method"], info["matrix"], names, [r["metric"] for r in info["tasks"]]))
    if "capacity" in info:
        _say("")
        _say(format_capacity(info["capacity"], names))
    return 0


def cmd_predict(args) -> int:
    """Streams: reads the input a line at a time, predicts a batch of users at a time and writes each batch's
    output at once (bounded memory for any input size). ``--output`` is written atomically (a temp file renamed at
    the end; on any error the temp file goes and an existing file stays as it was); stdout gets every batch as it
    is computed, so an error half-way leaves the batches before it there."""
    import itertools

    from conure.checkpoint import AtomicWriter
    from conure.commands import open_model
    from conure.predict import PredictStats, iter_predictions, iter_sequences, prediction_text

    if args.top_k < 1:
        raise UsageError("--top-k must be >= 1")
    rows = iter_sequences(sys.stdin, name="<stdin>") if args.input == "-" else iter_sequences(args.input)
    try:
        first = next(rows)  # an empty input, or a bad first line, fails before the model is loaded
        model = open_model(args.checkpoint, args.task)
        stats = PredictStats()
        batches = iter_predictions(
            model, itertools.chain([first], rows), top_k=args.top_k, exclude_seen=args.exclude_seen, stats=stats
        )
        with _autocast(args.precision):
            if args.output:
                with AtomicWriter(args.output, binary=False) as out:
                    for text in prediction_text(model, batches, args.format):
                        out.write(text)
            else:
                for text in prediction_text(model, batches, args.format):
                    sys.stdout.write(text)
                    sys.stdout.flush()
    finally:
        rows.close()
    if stats.unknown:
        _err(f"{PROG}: note: {stats.unknown} input item(s) are not in the model's vocabulary and were skipped")
    if stats.empty:
        _err(f"{PROG}: note: {stats.empty} user(s) have no known item; their prediction is empty")
    if args.output:
        _err(f"{PROG}: wrote {stats.users} predictions to {args.output}")
    return 0


def cmd_export(args) -> int:
    if args.format != "safetensors" or args.top_k is not None or args.stream or args.task == "all":
        from conure.export import cli_export

        return cli_export(args, UsageError, _say)
    from conure.commands import export_checkpoint

    path, model = export_checkpoint(args.checkpoint, args.task, args.out)
    n = sum(p.numel() for p in model.parameters())
    _say(
        f"exported task {model.task} ({model.name}, {model.kind}) of method {model.method}: {n:,} parameters -> {path}"
    )
    return 0


def cmd_config(args) -> int:
    from conure.config import builtin_configs, defaults_yaml, dump_config

    if args.list:
        for name, path in builtin_configs().items():
            _say(f"{name:<12} {path}")
        return 0
    if args.defaults:
        if args.file or args.sets:
            raise UsageError("--defaults takes no FILE or --set")
        sys.stdout.write(defaults_yaml())
        return 0
    if not args.file and not args.sets:
        raise UsageError("give --defaults, --list, or a config FILE to resolve")
    cfg, _ = _load_cfg(args.file, args.sets)
    sys.stdout.write(dump_config(cfg, comments=True))
    return 0


def cmd_tune(args) -> int:
    try:
        import optuna  # noqa: F401 - an optional dependency: say how to get it before reading anything
    except ImportError:
        from conure.tune import OPTUNA_HINT

        raise UsageError(OPTUNA_HINT) from None
    from conure.tune import tune

    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    cfg, _ = _load_cfg(args.config, args.sets)
    out = Path(args.out) if args.out else Path("runs") / f"tune-{Path(args.config).stem}-{args.task}"
    try:
        res = tune(
            cfg, args.task, args.trials, out, space=args.space, timeout=args.timeout, echo=_say, config_name=args.config
        )
    except KeyboardInterrupt:  # before the trials (data, earlier tasks): nothing of the study is lost
        res = {"interrupted": True}
    if res["interrupted"]:
        _err(
            f"{PROG}: interrupted; continue with: conure tune --config {args.config} --task {args.task} --trials "
            f"{args.trials}{''.join(' --set ' + s for s in args.sets)}{' --space ' + args.space if args.space else ''}"
            f" --out {out}"
        )
        return 130
    return 0


def cmd_doctor(args) -> int:
    from conure import doctor

    r = doctor.report()
    _say(json.dumps(r, indent=2) if args.json else doctor.format_report(r))
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "train": cmd_train,
    "eval": cmd_eval,
    "inspect": cmd_inspect,
    "predict": cmd_predict,
    "export": cmd_export,
    "config": cmd_config,
    "tune": cmd_tune,
    "doctor": cmd_doctor,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    _setup_warnings()
    if argv[:2] == ["demo", "--ddp"]:  # its own options and failure handling (one line per rank)
        from conure import demo_ddp

        return demo_ddp.main(argv[2:])
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        _err(f"{PROG}: interrupted")
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as e:  # noqa: BLE001 - one line per error, traceback with --debug
        if debug:
            raise
        from conure.checkpoint import CheckpointError
        from conure.config import ConfigError
        from conure.data import DataError
        from conure.nn import CapacityError
        from conure.run import RunError

        known = (UsageError, ConfigError, CheckpointError, DataError, RunError, CapacityError)
        msg = " ".join(str(e).split()) or type(e).__name__
        if getattr(e, "reported_by_rank_0", False):  # torchrun: an error every rank met, printed by rank 0
            return 2
        if isinstance(e, known):
            _err(f"{PROG}: error: {msg}")
            return 2
        if isinstance(e, OSError) and e.errno is not None and e.filename is not None:
            # a file that cannot be read or written (missing, no permission, a directory, disk full...)
            _err(f"{PROG}: error: {e.strerror or msg}: {e.filename}")
            return 2
        _err(f"{PROG}: error: {type(e).__name__}: {msg} (this looks like a bug; rerun with --debug for the traceback)")
        return 1


def entry() -> NoReturn:
    """The ``conure`` command and ``python -m conure``: :func:`main`, then exit with its code; a process that ran a
    process group (torchrun) ends through :func:`conure.distributed.exit_process` (why: its docstring)."""
    code = main()
    dist_module = sys.modules.get("conure.distributed")  # imported only by runs that may use a process group
    if dist_module is not None and dist_module.ran_process_group():
        dist_module.exit_process(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
