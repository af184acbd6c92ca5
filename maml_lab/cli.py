"""Headless command line on the same core as the app: `python -m maml_lab train|eval|download ...`.

Invalid input gets one line on stderr and exit code 2, never a traceback; a failure (disk full, a plug-in's
error) one line and 1; a run stopped by a signal 128 + its number once its checkpoint and exports are written.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from .limit_flags import add_image_limit_flags, image_limits_from

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_CODES = """exit status: 0 finished; 1 failed (disk full, read-only folder, a plug-in's error: one line, run.json
"failed", the last good checkpoint and exports kept); 2 bad input or a refused resume (nothing changed); 128 +
signal when stopped by one after its checkpoint and exports were written (SIGINT/Ctrl+C 130, SIGTERM 143)."""


class UsageError(Exception):
    """Bad user input: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(message)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from .core.algorithms.registry import algorithm_names
    from .core.models.batch_norm import BATCH_NORM_MODES
    from .core.tasks.registry import task_names

    ALGORITHMS = algorithm_names()

    parser = _Parser(prog="maml-lab", description="MAML Lab: meta-learning engine (no arguments opens the app).",
                     epilog=EXIT_CODES)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="meta-train and export initializations", epilog=EXIT_CODES)
    t.add_argument("--config", type=Path, help="TOML experiment config; flags override it")
    t.add_argument("--preset", metavar="NAME",
                   help="a task family's named settings under the flags, e.g. --task images --preset paper (the "
                        "MAML paper's Omniglot settings); `maml-lab list` shows them")
    t.add_argument("--task", choices=task_names())
    t.add_argument("--algorithm", nargs="+", choices=ALGORITHMS, metavar="NAME",
                   help=f"one or more of {', '.join(ALGORITHMS)} (default maml)")
    t.add_argument("--iterations", type=_int_at_least(1))
    t.add_argument("--meta-batch-size", type=_int_at_least(1))
    t.add_argument("--shots", type=_int_at_least(1), help="K support examples per task (per class for images)")
    t.add_argument("--queries", type=_int_at_least(1), help="query examples per task (per class for images)")
    t.add_argument("--inner-lr", type=_positive_float,
                   help="alpha, inner SGD step size (default 0.01; images 0.4, Reptile 0.1)")
    t.add_argument("--inner-steps", type=_int_at_least(1), help="inner steps in meta-training (default 1)")
    t.add_argument("--test-inner-steps", type=_int_at_least(0), help="inner steps at evaluation (10; images 3)")
    t.add_argument("--meta-lr", type=_positive_float, help="outer Adam learning rate (default 1e-3)")
    t.add_argument("--meta-lr-schedule", choices=("constant", "cosine"),
                   help="outer learning rate over the run: constant (the MAML paper) or cosine to 0 (MAML++)")
    t.add_argument("--outer-optimizer", choices=("adam", "trpo"),
                   help="outer step on RL tasks: trpo (cbfinn/maml_rl's, max KL 0.01; navigation's default for "
                        "MAML and FOMAML) or adam at --meta-lr")
    t.add_argument("--step-loss-weights", type=_nonneg_float, nargs="+", metavar="W",
                   help="MAML/FOMAML: weight of the query loss after each inner step, one per step (MAML++'s "
                        "multi-step loss; default: only after the last step)")
    t.add_argument("--first-order", action="store_true", help="with --algorithm maml: train FOMAML")
    t.add_argument("--inner-optimizer", choices=("sgd", "adam"), help="Reptile's inner optimizer")
    t.add_argument("--outer-lr-start", type=_nonneg_float, help="Reptile's epsilon at the start (default 1.0)")
    t.add_argument("--outer-lr-end", type=_nonneg_float, help="Reptile's epsilon at the end (default 0.0)")
    t.add_argument("--hidden", type=_int_at_least(1), nargs="+",
                   help="hidden widths of the MLP or navigation policy (default 40 40; navigation 100 100)")
    t.add_argument("--activation", choices=("relu", "tanh", "gelu", "silu"))
    t.add_argument("--seed", type=_int_at_least(0))
    t.add_argument("--device", help="auto (default), cpu or cuda")
    t.add_argument("--threads", type=_int_at_least(1),
                   help="CPU threads for torch (default: $OMP_NUM_THREADS, else the app's policy, lab/threads.py: "
                        "image tasks every core up to 4, the others one per two cores)")
    t.add_argument("--dtype", choices=("float32", "float64"))
    t.add_argument("--val-every", type=_int_at_least(0), help="validation every N iterations (0: never)")
    t.add_argument("--data", type=Path, action="append",
                   help="image set: Omniglot zip or folder, class-per-folder set, learn2learn mini-ImageNet .pkl or "
                        "torchmeta .hdf5 (default with --task images: the built-in glyph set); repeat it to train "
                        "on several sets as one")
    t.add_argument("--eval-data", type=Path, metavar="PATH",
                   help="a separate held-out image set: every class of --data meta-trains, validation and eval use "
                        "this set's classes (Lake's background / evaluation protocol)")
    t.add_argument("--split", choices=("lab", "paper"),
                   help="image tasks: how --data's classes split into training and held-out, the lab's rule "
                        "(default) or the MAML paper's Omniglot split (cbfinn/maml: both Omniglot zips, 1,100 "
                        "train, 100 validate, 423 test); the task option `split`")
    t.add_argument("--ways", type=_int_at_least(2), help="N classes per image task (default 5)")
    t.add_argument("--image-size", type=_int_at_least(8), help="images are resized to SIZE x SIZE (default 28)")
    t.add_argument("--image-mode", choices=("grayscale", "rgb"), help="image channels (default grayscale)")
    t.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=None,
                   help="augment training classes with 90/180/270 degree rotations (default on)")
    t.add_argument("--option", nargs="+", action="extend", metavar="ALGO.KEY=VALUE", default=[],
                   help="an algorithm's own setting (plug-ins; `maml-lab list`), e.g. fomaml_momentum.momentum=0.8; "
                        "VALUE is read as TOML (numbers, true/false, [lists]), else as text")
    t.add_argument("--task-option", nargs="+", action="extend", metavar="KEY=VALUE", default=[],
                   help="a task family's own setting (plug-in families), e.g. slope=[-1,1]")
    t.add_argument("--convention", choices=("lab", "cbfinn"),
                   help="image tasks: loss and batch-norm conventions, the lab's (per-task mean cross-entropy) or "
                        "cbfinn/maml's (sum / K, batch norm without scale, eps 1e-3, shift not adapted; "
                        "docs/image_tasks.md); the task option `convention`")
    t.add_argument("--out", type=Path, help="export path (.safetensors or .pt); several algorithms get a suffix")
    t.add_argument("--save-config", type=Path, help="also write the effective config as TOML")
    t.add_argument("--run-dir", type=Path, help="this run's folder: config, metrics.csv, checkpoints, exports, "
                                                "TensorBoard events (default: a new folder under $MAML_LAB_RUNS "
                                                "or ./runs)")
    t.add_argument("--checkpoint-every", type=_int_at_least(0), default=1000,
                   help="write a checkpoint every N iterations, and always at the end (0: only at the end)")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the newest good checkpoint in RUN_DIR with the run's own config (damaged ones "
                        "are skipped and named; none good: refused, nothing changed)")
    t.add_argument("--restart", action="store_true",
                   help="with --resume: start the run over in its folder from iteration 0, discarding its "
                        "checkpoints, metrics.csv rows, exports and TensorBoard events (for a run with no good "
                        "checkpoint)")
    t.add_argument("--dist-timeout", type=_positive_float, default=120.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before the job ends (default 120)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    add_image_limit_flags(t)

    e = sub.add_parser("eval", help="adaptation table of exported initializations on held-out tasks")
    e.add_argument("paths", type=Path, nargs="+", help=".safetensors or .pt files")
    e.add_argument("--shots", type=_int_at_least(1), nargs="+", help="K (several allowed); default: as trained")
    e.add_argument("--steps", type=_int_at_least(0), nargs="+",
                   help="step counts to report (default 1 5 10; images: the trained test steps, 3)")
    e.add_argument("--tasks", type=_int_at_least(1), help="held-out tasks (default 600; navigation 40)")
    e.add_argument("--protocol", choices=("lab", "paper"), default="lab",
                   help="navigation: the lab's protocol (default) or the MAML paper's (cbfinn/maml_rl's test: its 40 "
                        "goals, 40 trajectories per step, steps 0.5 then 0.25); docs/navigation.md")
    e.add_argument("--queries", type=_int_at_least(1), help="query points per task (default 100; images: 15)")
    e.add_argument("--inner-lr", type=_positive_float, help="fine-tuning step size (default: as trained)")
    e.add_argument("--seed", type=_int_at_least(0), default=2017, help="seed of the held-out tasks")
    e.add_argument("--device", default="auto")
    e.add_argument("--threads", type=_int_at_least(1),
                   help="CPU threads for torch (default: $OMP_NUM_THREADS, else the app's policy, lab/threads.py: "
                        "image tasks every core up to 4, the others one per two cores)")
    e.add_argument("--data", type=Path, action="append",
                   help="image set for image initializations (default: the one it was trained on): its held-out "
                        "classes are used, or, for one trained with --eval-data, all of its classes; repeat it for "
                        "several sets")
    e.add_argument("--ways", type=_int_at_least(2), help="must match the initialization's output layer")
    e.add_argument("--bn", nargs="+", choices=BATCH_NORM_MODES, metavar="MODE",
                   help="batch norm of the predictions (image initializations): transductive (a task's queries "
                        "together, cbfinn/maml), support (the support set's statistics: queries one at a time), "
                        "support+query (each query with the support set, supervised-reptile), running (population "
                        "statistics of training tasks); several for one table; default: the algorithm's own")
    e.add_argument("--probe", action="store_true",
                   help="image initializations: also a linear probe of their features on the same tasks (the body "
                        "frozen, a new linear head fit on each support set as Baseline's, Chen et al. 2019: 100 epochs "
                        "of SGD 0.01 in batches of 4), printed beside the rows")
    e.add_argument("--json", type=Path, metavar="PATH",
                   help="also write each initialization's evaluation card and results as JSON")
    add_image_limit_flags(e)

    d = sub.add_parser("download", help="download the Omniglot zips (background and evaluation)")
    d.add_argument("--dest", type=Path, required=True, help="folder to put images_background.zip and "
                                                            "images_evaluation.zip in (created if missing)")
    d.add_argument("--sets", nargs="+", choices=("background", "evaluation"), default=["background", "evaluation"],
                   help="which zips (default both)")
    d.add_argument("--base-url", help="a mirror of the official python/ folder")
    d.add_argument("--sha256", nargs="+", metavar="NAME=HEX", default=[],
                   help="expected sha256 per file, e.g. images_background.zip=<64 hex digits>")
    d.add_argument("--overwrite", action="store_true", help="download again even if the files are present")
    d.add_argument("--quiet", action="store_true", help="no progress output")

    sub.add_parser("list", help="what is registered: algorithms, task families and views, built-in or plug-in")
    return parser


def _config_from_args(args, base: dict | None = None):
    """The config the flags describe, on top of `base` (a run's own config) or the --config file."""
    from .core.training.config import ExperimentConfig

    if base is None:
        if args.config and getattr(args, "preset", None):
            raise UsageError("--preset and --config both set every unset value: use one (flags still override)")
        base = ExperimentConfig.load_toml(args.config).to_dict() if args.config else {}
    for key in ("task", "iterations", "meta_batch_size", "shots", "queries", "hidden", "activation", "seed",
                "device", "dtype", "val_every", "ways", "image_size", "image_mode", "rotations"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if args.data:
        base["data"] = str(args.data[0]) if len(args.data) == 1 else [str(p) for p in args.data]
    if getattr(args, "eval_data", None) is not None:
        base["eval_data"] = str(args.eval_data)
    names = list(args.algorithm) if args.algorithm else list(base.get("algorithms", {}) or ["maml"])
    if args.first_order:
        names = ["fomaml" if n == "maml" else n for n in names]
    task_options = dict(base.get("task_options") or {})
    task_options.update(_key_values(args.task_option, "--task-option"))
    if getattr(args, "convention", None):
        task_options["convention"] = args.convention
    if getattr(args, "split", None):
        task_options["split"] = args.split
    if task_options:
        base["task_options"] = task_options
    overrides = {k: getattr(args, k) for k in ("inner_lr", "inner_steps", "test_inner_steps", "meta_lr",
                                               "inner_optimizer", "outer_lr_start", "outer_lr_end",
                                               "meta_lr_schedule", "step_loss_weights", "outer_optimizer")}
    from_file = base.get("algorithms", {}) if isinstance(base.get("algorithms"), dict) else {}
    options: dict[str, dict] = {}
    for key, value in _key_values(args.option, "--option").items():
        name, dot, option = key.partition(".")
        if not dot or not option:
            raise UsageError(f"--option takes ALGO.KEY=VALUE, got {key!r}")
        if name not in names:
            raise UsageError(f"--option {key}: {name} is not among the algorithms trained ({', '.join(names)})")
        options.setdefault(name, {})[option] = value
    algos = {}
    for name in dict.fromkeys(names):
        opts = dict(from_file.get(name, {}) or {})
        opts.update({k: v for k, v in overrides.items() if v is not None})
        opts.update(options.get(name, {}))
        algos[name] = opts  # unset values take the task's defaults (AlgorithmConfig.defaults(name, task))
    if not algos:
        raise UsageError("choose at least one algorithm")
    base["algorithms"] = algos
    if getattr(args, "preset", None):
        from .core.training.config import apply_preset

        try:
            base = apply_preset(base, base.get("task") or ExperimentConfig.task, args.preset)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return ExperimentConfig.from_dict(base)


def _key_values(items: list[str], flag: str) -> dict:
    """KEY=VALUE pairs; VALUE read as a TOML value (0.8, true, [-1, 1], "text"), else kept as text."""
    from .core.validation import InputError, TooDeepError, parse_toml

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            value = parse_toml(f"v = {text}", flag)["v"]
        except TooDeepError as exc:
            raise UsageError(f"{key.strip()}: {exc}") from None
        except InputError:
            value = text
        out[key.strip()] = value
    return out


def _out_paths(out: Path | None, names: list[str]) -> dict[str, Path]:
    if out is None:
        return {}
    if out.suffix not in (".safetensors", ".pt"):
        raise UsageError(f"--out must end in .safetensors or .pt, got {out.name!r}")
    if not out.parent.exists():
        raise UsageError(f"--out folder does not exist: {out.parent}")
    if len(names) == 1:
        return {names[0]: out}
    return {n: out.with_name(f"{out.stem}-{n}{out.suffix}") for n in names}


class _Progress:
    """Throttled one-line progress on stderr (rewritten in place on a terminal)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.interval = 0.5 if self.tty else 10.0

    def __call__(self, p) -> None:  # a lab.session.Progress
        if self.quiet:
            return
        if p.state == "starting":  # what runs before the first iteration, named while it runs
            self.stage(p.stage)
            return
        now = time.monotonic()
        final = p.final
        if not final and now - self.last < self.interval and p.iteration != 1:
            return
        self.last = now
        losses = "  ".join(_metrics_text(n, m, p.val.get(n, {})) for n, m in p.metrics.items())
        eta = p.eta_s
        line = (f"[{p.iteration}/{p.total}] {100 * p.iteration / p.total:5.1f}%  "
                f"{p.tasks_per_s:,.0f} tasks/s  ETA {int(eta // 60)}:{int(eta % 60):02d}  {losses}")
        if p.cost and not final:  # the cost meter (core/training/cost.py): per meta-step, and of one more inner step
            from .core.training.cost import cost_text

            line += "  |  " + "  ".join(f"{n} {cost_text(c)}" for n, c in p.cost.items())
        if self.tty:
            sys.stderr.write("\r" + line[:200].ljust(120) + ("\n" if final else ""))
        elif not final:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def stage(self, what: str) -> None:
        """A step before the first iteration ("building the model", "first meta-iteration"), as it starts."""
        if self.quiet:
            return
        sys.stderr.write(f"{what}…\n")  # a line of its own: other lines (the start line) may follow
        sys.stderr.flush()


def _metrics_text(name: str, m: dict, val: dict) -> str:
    """`maml 1.609->0.482` (regression) or `maml acc 20.0%->84.0%` (classification), plus validation accuracy."""
    if "post_accuracy" in m:
        text = f"{name} acc {100 * m['pre_accuracy']:.1f}%->{100 * m['post_accuracy']:.1f}%"
        if "val_post_accuracy" in val:
            text += f" (held-out {100 * val['val_post_accuracy']:.1f}%)"
        return text
    return f"{name} {m['pre_loss']:.3f}->{m['post_loss']:.3f}"


def _load_family(config, quiet: bool):
    """The config's task family, built by its registry entry; what it loads shows progress on stderr, and what it
    built is reported in one line."""
    from .core.tasks.images import _LoadProgress
    from .core.tasks.registry import task_family
    from .core.training.trainer import make_family

    kind = task_family(config.task)
    label = kind.loading_label(config)
    family = make_family(config, progress=_LoadProgress(label) if label and not quiet else None)
    report = kind.build_report(config, family)
    if report and not quiet:
        print(report, file=sys.stderr)
    return family


def _start_session(args, world, main_rank: bool):
    """(session, --out paths) for a new or resumed run. Under torchrun only rank 0 creates or changes the folder;
    the other ranks train without one (a resumed run's ranks all restore its checkpoint)."""
    from .lab.session import TrainingSession

    if args.resume is None:
        config = _config_from_args(args)
        outs = _out_paths(args.out, [a.name for a in config.algorithms])
        if args.save_config and main_rank:
            config.save_toml(args.save_config)
        if not main_rank:
            return TrainingSession(config, world=world, record_every=0), {}
        TrainingSession.check_folder(args.run_dir)  # a bad path fails fast; the folder waits for the data
        session = TrainingSession(config, family=_load_family(config, args.quiet), world=world, record_every=0,
                                  preparing=_Progress(args.quiet).stage)
        folder = TrainingSession.create_folder(config, args.run_dir, outs=outs)
        session.attach_folder(folder, args.checkpoint_every)
        return session, outs
    if args.config is not None or args.run_dir is not None or getattr(args, "preset", None):
        raise UsageError("--resume continues a run with its own config and folder: drop --config, --preset and "
                         "--run-dir")
    from .core.training.runs import RunFolder

    folder = RunFolder.open(args.resume)
    config = _config_from_args(args, base=folder.config().to_dict())
    if args.save_config and main_rank:
        config.save_toml(args.save_config)
    if args.out is not None:
        outs = _out_paths(args.out, [a.name for a in config.algorithms])
    session = TrainingSession.resume(folder.path, config, args.checkpoint_every, attach=main_rank,
                                     restart=args.restart,
                                     notice=lambda text: print(f"maml-lab: {text}", file=sys.stderr),
                                     family=_load_family(config, args.quiet), world=world, record_every=0,
                                     preparing=_Progress(args.quiet).stage)
    if not main_rank:
        return session, {}
    folder = session.folder
    if args.out is not None:
        folder.write_status(outs={n: str(p) for n, p in outs.items()})
    else:
        outs = {n: Path(p) for n, p in (folder.status().get("outs") or {}).items()}
    if not args.quiet:
        if session.resumed_at is not None:
            print(f"resuming {folder.path} at iteration {session.resumed_at} of {config.iterations}", file=sys.stderr)
        else:
            print(f"{folder.path}: starting the run over (--restart)", file=sys.stderr)
    return session, outs


def use_threads(args, task: str, processes: int = 1) -> int:
    """Set torch's threads for a run on task family `task` and return the number: --threads, else an explicit
    $OMP_NUM_THREADS, else the app's policy (lab/threads.py), the cores shared among `processes` (torchrun ranks).
    Torch's own default (every core) made small-op families such as 2-D navigation many times slower."""
    from .lab import threads as policy

    n = getattr(args, "threads", None)
    if n is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        n = max(1, int(os.environ["OMP_NUM_THREADS"]))
    if n is None:
        n = policy.training_threads(task, max(1, (os.cpu_count() or 2) // max(1, processes)))
    policy.set_for_this_thread(n)
    return n


def _threads_text(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def cmd_train(args) -> int:
    from .core.training.distributed import init_from_env

    # under torchrun: join the job first; rank 0 alone writes the run folder, prints and exports
    world = init_from_env(args.device or "auto", timeout_s=args.dist_timeout)
    main_rank = world is None or world.is_main
    if not main_rank:
        args.quiet = True
    if args.restart and args.resume is None:
        raise UsageError("--restart starts a run over in its folder: use it with --resume RUN_DIR")
    try:
        return _train(args, world, main_rank)
    finally:
        if world is not None:
            world.close()


def _train(args, world, main_rank: bool) -> int:
    session, outs = _start_session(args, world, main_rank)
    trainer, config = session.trainer, session.config
    threads = use_threads(args, config.task, world.size if world is not None else 1)
    if world is not None and not args.quiet:
        share = world.local_count(config.meta_batch_size)
        print(f"distributed: {world.size} processes ({world.backend}), {config.meta_batch_size} tasks per "
              f"meta-batch, {share} on rank 0", file=sys.stderr)
    if not args.quiet:
        names = ", ".join(a.name for a in config.algorithms)
        from .core.tasks.registry import task_family

        what = task_family(config.task).tasks_text(config)
        print(f"training {names} on {what} for {config.iterations} iterations on {trainer.device} "
              f"({_threads_text(threads)}); run folder {session.folder.path}", file=sys.stderr)
    try:
        if world is not None:  # ranks must stop together: Ctrl+C ends the job, --resume continues it
            state = session.run(_Progress(args.quiet))
        else:
            with session.stop_on_signals(announce=lambda text: print(f"\n{text}", file=sys.stderr)):
                state = session.run(_Progress(args.quiet))
        return _finish(args, session, state, outs)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a failed run: one line, run.json "failed", exit 1
        return _failed(session, exc)
    finally:
        session.close()


def _failed(session, exc: BaseException) -> int:
    """A run that failed while training or writing: one line naming the cause (and the plug-in, when its code
    raised), run.json "failed" with the reason where it can still be written, exit 1."""
    from .core.training.distributed import RankLostError
    from .core.training.runs import failure_text

    if isinstance(exc, RankLostError):
        raise exc
    reason = failure_text(exc)
    from .lab.plugin_blame import plugin_in

    plugin = plugin_in(exc)
    if plugin is not None:
        reason = f"plug-in {plugin} failed: {reason}"
    session.mark_failed(reason)  # failed outside Trainer.run (which tells the folder itself)
    if session.folder is not None and session.trainer.state == "failed" and plugin is not None:
        try:  # name the plug-in in run.json too (the run's end let go of the folder: take it again for this)
            session.folder.acquire()
            session.folder.write_status(status="failed", reason=reason)
        except (OSError, ValueError):
            pass
    where = session.folder.path if session.folder is not None else "the run"
    print(f"maml-lab: error: training failed at iteration {session.iteration} ({where}): {reason}", file=sys.stderr)
    return EXIT_FAILED


def _finish(args, session, state, outs) -> int:
    """Report, export to --out, and the exit status: 0 finished, 128 + the signal that stopped the run, 1 else."""
    trainer, folder = session.trainer, session.folder
    if state == "diverged":
        print(f"maml-lab: training stopped: {trainer.stop_reason}", file=sys.stderr)
    for name, run in trainer.runs.items():
        m = run.last_metrics
        if m and not args.quiet:
            acc = (f", query accuracy {100 * m['pre_accuracy']:.1f}% -> {100 * m['post_accuracy']:.1f}%"
                   if "post_accuracy" in m else "")
            print(f"{name}: iteration {trainer.iteration}, pre-adaptation loss {m['pre_loss']:.4f}, "
                  f"post-adaptation loss {m['post_loss']:.4f}{acc}", file=sys.stderr)
            if name in trainer.cost.costs:
                from .core.training.cost import cost_details

                print(cost_details(f"{name} cost", trainer.cost.costs[name].as_dict(), ended=True), file=sys.stderr)
        if name in outs:
            try:
                session.export({name: outs[name]})
            except OSError as exc:  # the run folder has its exports; only this copy is missing
                from .core.training.runs import failure_text

                print(f"maml-lab: error: could not export {name} to {outs[name]} ({failure_text(exc)}); the run "
                      f"folder's exports/ has it", file=sys.stderr)
                return EXIT_FAILED
            print(f"exported {name} to {outs[name]}")
            choice = trainer.export_choice(name)
            if choice is not None:
                from .core.training.trainer import export_choice_text

                print(f"  {name}'s export is {export_choice_text(choice, trainer.config.task)}")
    if state == "stopped" and not args.quiet:
        print(f"stopped at iteration {trainer.iteration}; continue with: maml-lab train --resume {folder.path}",
              file=sys.stderr)
    if state == "stopped" and session.stopped_by is not None:
        return 128 + int(session.stopped_by)
    return 0 if state in ("finished", "stopped") else EXIT_FAILED


def cmd_eval(args) -> int:
    from .core.algorithms.config import adaptation_text
    from .core.analysis.evaluation import adaptation_curve
    from .core.export import load_initialization
    from .core.tasks.registry import task_family
    from .core.training.device import resolve_device
    from .lab.initializations import adaptation_from_metadata, dtype_of

    device = resolve_device(args.device)
    steps = sorted(set(args.steps or [1, 5, 10]))
    for data in args.data or []:
        if not data.expanduser().exists():
            raise UsageError(f"image set not found: {data}")
    json_path = getattr(args, "json", None)
    if json_path is not None and not json_path.expanduser().parent.is_dir():
        raise UsageError(f"--json: folder not found: {json_path.parent}")
    evaluations = []
    tasks_given = args.tasks
    for path in args.paths:
        args.tasks = tasks_given
        params, extras, meta, model = load_initialization(path, with_extras=True)
        hyper = meta.get("hyperparameters", {})
        # fine-tune as the algorithm was trained to (Reptile with Adam: Adam; Meta-SGD: its learned rates), at the
        # precision it was saved in
        adaptation = adaptation_from_metadata(meta, inner_lr=args.inner_lr, tensors=extras)
        dtype = dtype_of(params)
        task = meta.get("task", {}).get("name", "sinusoid")
        kind = task_family(task)
        threads = use_threads(args, task)
        shots_list = args.shots or [int(hyper.get("shots", 10))]
        params = {k: v.to(device) for k, v in params.items()}
        print(f"{path.name}: {meta.get('algorithm')} after {meta.get('iterations')} iterations, "
              f"{model.spec().get('kind')} model ({_threads_text(threads)})")
        if getattr(args, "bn", None) and not hasattr(model, "batch_norm_names"):
            raise UsageError(f"--bn: {path.name} is a {model.spec().get('kind')} model without batch norm")
        if getattr(args, "probe", False) and kind.metric != "accuracy":
            raise UsageError(f"--probe: {path.name} is a {task} initialization; a linear probe fits a classifier "
                             f"head, for classification (image) initializations")
        if kind.metric == "return":  # reinforcement learning (2-D navigation): average return, oracle, random
            from .core.rl.protocol import eval_navigation

            out = eval_navigation(args, params, meta, model, adaptation, device, dtype)
            evaluations.append({"path": str(path), "algorithm": meta.get("algorithm"),
                                "iterations": meta.get("iterations"), **out})
            continue
        args.tasks = args.tasks or 600
        if kind.metric == "accuracy":
            from .core.tasks.images import eval_image_initialization

            out = eval_image_initialization(args, params, meta, model, shots_list, sorted(set(args.steps or [])),
                                            adaptation, device, dtype)
            evaluations.append({"path": str(path), "algorithm": meta.get("algorithm"),
                                "iterations": meta.get("iterations"), **(out or {})})
            continue
        family = kind.from_description(meta.get("task", {}), data=args.data)
        queries = args.queries or 100
        _check_eval_memory(path, params, model, args.tasks, max(shots_list) + queries, max(steps))
        from .core.analysis.card import EvaluationCard

        card = EvaluationCard.build(task, args.tasks, shots_list, steps, adaptation, queries=queries,
                                    loss=family.loss, model=model, algorithm=meta.get("algorithm"),
                                    notes={"task_seed": args.seed})
        print(card.text())
        rows = []
        for shots in shots_list:
            curve = adaptation_curve(model, family, params, shots, max(steps), adaptation, args.tasks, queries,
                                     args.seed, device, dtype)
            print(f"  K = {shots}, {args.tasks} held-out tasks, {adaptation_text(adaptation)}: "
                  f"{kind.loss_label} after fine-tuning steps")
            print(f"  {'steps':>5}  {kind.loss_label:>8}  95% CI")
            for s in [0, *steps] if 0 not in steps else steps:
                mean, ci = curve.at(s)
                print(f"  {s:>5}  {mean:8.3f}  +- {ci:.3f}" if math.isfinite(mean) else f"  {s:>5}  diverged")
                rows.append({"shots": shots, "steps": s, "metric": family.loss, "mean": mean if math.isfinite(mean)
                             else None, "ci95": ci if math.isfinite(ci) else None})
        evaluations.append({"path": str(path), "algorithm": meta.get("algorithm"), "iterations": meta.get("iterations"),
                            "card": card.to_dict(), "results": rows})
    if json_path is not None:
        import json

        from .core.export import atomic_write_bytes

        atomic_write_bytes(json_path.expanduser(), json.dumps({"evaluations": evaluations}, indent=2).encode())
        print(f"wrote {json_path}")
    return 0


def _check_eval_memory(path, params, model, tasks: int, points: int, steps: int) -> None:
    """Refuse an evaluation that cannot fit in memory: adaptation_curve adapts up to 600 tasks at once, each with its
    own parameters and its points' activations (an MLP's widths) for the step being taken."""
    from .core.validation import check_memory

    count = sum(v.numel() for v in params.values())
    width = sum(model.spec().get("sizes", [])) or 1
    itemsize = max(v.element_size() for v in params.values())
    chunk = min(tasks, 600)
    check_memory(itemsize * chunk * 3 * (count + 2 * points * width),
                 f"evaluating {path.name} on {tasks} tasks of {points} points")


def cmd_download(args) -> int:
    from .core.tasks.download import OMNIGLOT_BASE_URL, download_omniglot

    checksums = {}
    for item in args.sha256:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UsageError(f"--sha256 takes NAME=HEX, got {item!r}")
        checksums[name] = value
    files = [f"images_{s}.zip" for s in args.sets]
    unknown = sorted(set(checksums) - set(files))
    if unknown:
        raise UsageError(f"--sha256 names a file that is not downloaded: {', '.join(unknown)}")
    state = {"name": None, "last": 0.0}
    tty = sys.stderr.isatty()

    def progress(name, done, total):
        if args.quiet:
            return True
        now = time.monotonic()
        final = total is not None and done >= total
        if name != state["name"] or final or now - state["last"] >= (0.5 if tty else 10.0):
            state["name"], state["last"] = name, now
            amount = f"{done / 1e6:.1f} / {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
            line = f"{name}: {amount}" + (f" ({100 * done / total:.0f}%)" if total else "")
            sys.stderr.write(("\r" + line.ljust(60) + ("\n" if final else "")) if tty else line + "\n")
            sys.stderr.flush()
        return True

    try:
        paths = download_omniglot(args.dest, files, base_url=args.base_url or OMNIGLOT_BASE_URL,
                                  checksums=checksums, progress=progress, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print("\nmaml-lab: download interrupted; no partial file was kept", file=sys.stderr)
        return 130
    for p in paths:
        print(p)
    return 0


def _source_text(entry) -> str:
    """`maml_lab` for a built-in, else the distribution and its `module:attr` reference."""
    from .core.registry import BUILTIN

    return BUILTIN if entry.source == BUILTIN else f"{entry.source} ({entry.reference})"


def _views_registry():
    """The views registry when the Qt layer imports here (it may not be installed, or not exist); else None."""
    try:  # views are widgets: listed only where Qt imports (the headless CLI never needs it otherwise)
        from .ui import views

        views.VIEWS.names()  # loads the view modules, which import Qt
    except ImportError:
        return None
    return getattr(views, "VIEWS", None)


def cmd_list(args) -> int:
    from .core.algorithms.registry import ALGORITHMS
    from .core.tasks.registry import TASKS

    groups = [("algorithms", ALGORITHMS, lambda a: (a.label or a.name, a.description)),
              ("task families", TASKS, lambda k: (k.label or k.name, k.description))]
    views = _views_registry()
    if views is not None:
        groups.append(("views", views, lambda v: (v.title, "")))
    problems: list[str] = []
    for title, registry, describe in groups:
        entries = registry.entries()
        print(f"{title}:")
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            label, description = describe(e.obj)
            text = f"{label} - {description}" if description else label
            print(f"  {e.name:<{width}}  {text}  [{_source_text(e)}]")
            for preset, spec in sorted((getattr(e.obj, "presets", None) or {}).items()):
                print(f"  {'':<{width}}    --preset {preset}: {spec.get('description', '')}")
        problems += registry.problems
    for line in problems:
        print(f"skipped: {line.removeprefix('maml-lab: skipped ')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        from .app import main as app_main  # no subcommand: the desktop app, with its own flags

        return app_main(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        handler = {"train": cmd_train, "eval": cmd_eval, "download": cmd_download, "list": cmd_list}[args.command]
        if args.command in ("train", "eval"):
            from .lab.memory import keep_freed_memory

            keep_freed_memory()  # the same large buffers every iteration, without fresh pages (lab/memory.py)
        torch = sys.modules.get("torch")  # imported already: main() called in-process (tests, scripts)
        threads = torch.get_num_threads() if torch is not None else None
        try:
            with image_limits_from(args).applied():
                return handler(args)
        finally:  # train and eval set their task family's threads (use_threads); an in-process caller keeps its own
            if threads is not None:
                torch.set_num_threads(threads)
    except UsageError as exc:
        print(f"maml-lab: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl+C: abort at once (the run folder keeps its last checkpoint)
        print("\nmaml-lab: interrupted", file=sys.stderr)
        return 128 + 2
    except (ValueError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        print(f"maml-lab: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except (Exception, SystemExit) as exc:
        from .core.training.distributed import RankLostError
        from .core.training.runs import failure_text

        if isinstance(exc, RankLostError):  # under torchrun: another rank died or stopped answering
            print(f"maml-lab: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        from .lab.plugin_blame import plugin_in

        plugin = plugin_in(exc)  # a plug-in's hook (a family's loading_label...) failed: one line
        if plugin is None:
            raise
        print(f"maml-lab: error: plug-in {plugin} failed: {failure_text(exc)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
