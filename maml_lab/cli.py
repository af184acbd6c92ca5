"""Headless command line on the same core as the app: `python -m maml_lab train|eval ...`.

Invalid input gets one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

EXIT_USAGE = 2


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
    from .core.algorithms import ALGORITHMS

    parser = _Parser(prog="maml-lab", description="MAML Lab: meta-learning engine (no arguments opens the app).")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="meta-train and export initializations")
    t.add_argument("--config", type=Path, help="TOML experiment config; flags override it")
    t.add_argument("--task", choices=("sinusoid", "images"))
    t.add_argument("--algorithm", nargs="+", choices=ALGORITHMS, metavar="NAME",
                   help=f"one or more of {', '.join(ALGORITHMS)} (default maml)")
    t.add_argument("--iterations", type=_int_at_least(1))
    t.add_argument("--meta-batch-size", type=_int_at_least(1))
    t.add_argument("--shots", type=_int_at_least(1), help="K support examples per task (per class for images)")
    t.add_argument("--queries", type=_int_at_least(1), help="query examples per task (per class for images)")
    t.add_argument("--inner-lr", type=_positive_float, help="alpha, inner SGD step size (default 0.01)")
    t.add_argument("--inner-steps", type=_int_at_least(1), help="inner steps in meta-training")
    t.add_argument("--test-inner-steps", type=_int_at_least(0), help="inner steps at evaluation")
    t.add_argument("--meta-lr", type=_positive_float, help="outer Adam learning rate (default 1e-3)")
    t.add_argument("--first-order", action="store_true", help="with --algorithm maml: train FOMAML")
    t.add_argument("--inner-optimizer", choices=("sgd", "adam"), help="Reptile's inner optimizer")
    t.add_argument("--outer-lr-start", type=_nonneg_float, help="Reptile's epsilon at the start (default 1.0)")
    t.add_argument("--outer-lr-end", type=_nonneg_float, help="Reptile's epsilon at the end (default 0.0)")
    t.add_argument("--hidden", type=_int_at_least(1), nargs="+", help="MLP hidden widths (default 40 40)")
    t.add_argument("--activation", choices=("relu", "tanh", "gelu", "silu"))
    t.add_argument("--seed", type=_int_at_least(0))
    t.add_argument("--device", help="auto (default), cpu or cuda")
    t.add_argument("--dtype", choices=("float32", "float64"))
    t.add_argument("--val-every", type=_int_at_least(0), help="validation every N iterations (0: never)")
    t.add_argument("--data", type=Path, help="image set: Omniglot zip or folder, or class-per-folder set")
    t.add_argument("--ways", type=_int_at_least(2), help="N classes per image task (default 5)")
    t.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=None,
                   help="augment classes with 90/180/270 degree rotations (default on)")
    t.add_argument("--out", type=Path, help="export path (.safetensors or .pt); several algorithms get a suffix")
    t.add_argument("--save-config", type=Path, help="also write the effective config as TOML")
    t.add_argument("--quiet", action="store_true", help="no progress output")

    e = sub.add_parser("eval", help="adaptation table of exported initializations on held-out tasks")
    e.add_argument("paths", type=Path, nargs="+", help=".safetensors or .pt files")
    e.add_argument("--shots", type=_int_at_least(1), nargs="+", help="K (several allowed); default: as trained")
    e.add_argument("--steps", type=_int_at_least(0), nargs="+", help="step counts to report (default 1 5 10)")
    e.add_argument("--tasks", type=_int_at_least(1), default=600, help="held-out tasks (default 600)")
    e.add_argument("--queries", type=_int_at_least(1), help="query points per task (default 100; images: 15)")
    e.add_argument("--inner-lr", type=_positive_float, help="fine-tuning step size (default: as trained)")
    e.add_argument("--seed", type=_int_at_least(0), default=2017, help="seed of the held-out tasks")
    e.add_argument("--device", default="auto")
    e.add_argument("--data", type=Path, help="image set for image initializations (default: built-in glyphs)")
    e.add_argument("--ways", type=_int_at_least(2))
    return parser


def _config_from_args(args):
    from .core.algorithms import AlgorithmConfig
    from .core.config import ExperimentConfig

    base = ExperimentConfig.load_toml(args.config).to_dict() if args.config else {}
    for key in ("task", "iterations", "meta_batch_size", "shots", "queries", "hidden", "activation", "seed",
                "device", "dtype", "val_every", "ways", "rotations"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if args.data is not None:
        base["data"] = str(args.data)
    names = list(args.algorithm) if args.algorithm else list(base.get("algorithms", {}) or ["maml"])
    if args.first_order:
        names = ["fomaml" if n == "maml" else n for n in names]
    overrides = {k: getattr(args, k) for k in ("inner_lr", "inner_steps", "test_inner_steps", "meta_lr",
                                               "inner_optimizer", "outer_lr_start", "outer_lr_end")}
    from_file = base.get("algorithms", {}) if isinstance(base.get("algorithms"), dict) else {}
    algos = []
    for name in dict.fromkeys(names):
        opts = dict(from_file.get(name, {}) or {})
        opts.update({k: v for k, v in overrides.items() if v is not None})
        algos.append(AlgorithmConfig.defaults(name, **opts).to_dict())
    base["algorithms"] = {a.pop("name"): a for a in algos}
    return ExperimentConfig.from_dict(base)


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

    def __call__(self, p: dict) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        final = p["state"] != "running"
        if not final and now - self.last < self.interval:
            return
        self.last = now
        losses = "  ".join(f"{n} {m['pre_loss']:.3f}->{m['post_loss']:.3f}" for n, m in p["metrics"].items())
        eta = p["eta_s"]
        line = (f"[{p['iteration']}/{p['total']}] {100 * p['iteration'] / p['total']:5.1f}%  "
                f"{p['tasks_per_s']:,.0f} tasks/s  ETA {int(eta // 60)}:{int(eta % 60):02d}  {losses}")
        if self.tty:
            sys.stderr.write("\r" + line[:200].ljust(120) + ("\n" if final else ""))
        elif not final:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def cmd_train(args) -> int:
    from .core.trainer import Trainer

    config = _config_from_args(args)
    outs = _out_paths(args.out, [a.name for a in config.algorithms])
    if args.save_config:
        config.save_toml(args.save_config)
    trainer = Trainer(config)
    if not args.quiet:
        names = ", ".join(a.name for a in config.algorithms)
        print(f"training {names} on {config.task} for {config.iterations} iterations on {trainer.device}",
              file=sys.stderr)
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum, frame):
        print("\ninterrupted: stopping after this iteration (Ctrl+C again to abort)", file=sys.stderr)
        signal.signal(signal.SIGINT, previous)
        trainer.stop()

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        state = trainer.run(callback=_Progress(args.quiet), report_every=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    if state == "diverged":
        print(f"maml-lab: training stopped: {trainer.stop_reason}", file=sys.stderr)
    for name, run in trainer.runs.items():
        m = run.last_metrics
        if m and not args.quiet:
            print(f"{name}: iteration {trainer.iteration}, pre-adaptation loss {m['pre_loss']:.4f}, "
                  f"post-adaptation loss {m['post_loss']:.4f}", file=sys.stderr)
        if name in outs:
            trainer.export(name, outs[name])
            print(f"exported {name} to {outs[name]}")
    return 0 if state in ("finished", "stopped") else 1


def cmd_eval(args) -> int:
    from .core.device import resolve_device
    from .core.evaluation import adaptation_curve
    from .core.export import load_initialization
    from .core.tasks import SinusoidFamily

    device = resolve_device(args.device)
    steps = sorted(set(args.steps or [1, 5, 10]))
    for path in args.paths:
        params, meta, model = load_initialization(path)
        hyper = meta.get("hyperparameters", {})
        lr = args.inner_lr or float(hyper.get("inner_lr", 0.01))
        task = meta.get("task", {}).get("name", "sinusoid")
        shots_list = args.shots or [int(hyper.get("shots", 10))]
        params = {k: v.to(device) for k, v in params.items()}
        print(f"{path.name}: {meta.get('algorithm')} after {meta.get('iterations')} iterations, "
              f"{model.spec().get('kind')} model")
        if task == "sinusoid":
            t = meta.get("task", {})
            family = SinusoidFamily(tuple(t.get("amplitude", (0.1, 5.0))), tuple(t.get("phase", (0.0, 3.14159))),
                                    tuple(t.get("x_range", (-5.0, 5.0))))
            queries = args.queries or 100
            for shots in shots_list:
                curve = adaptation_curve(model, family, params, shots, max(steps), lr, args.tasks, queries,
                                         args.seed, device)
                print(f"  K = {shots}, {args.tasks} held-out tasks, inner lr {lr:g}: MSE after fine-tuning steps")
                print(f"  {'steps':>5}  {'MSE':>8}  95% CI")
                for s in [0, *steps] if 0 not in steps else steps:
                    mean, ci = curve.at(s)
                    print(f"  {s:>5}  {mean:8.3f}  +- {ci:.3f}")
        else:
            from .core.image_tasks import eval_image_initialization

            eval_image_initialization(args, params, meta, model, shots_list, steps, lr, device)
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
        handler = {"train": cmd_train, "eval": cmd_eval}[args.command]
        return handler(args)
    except UsageError as exc:
        print(f"maml-lab: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        print(f"maml-lab: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
