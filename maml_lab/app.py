"""Starts the desktop app: `python main.py` (or `maml-lab` with no subcommand).

`--screenshot out.png --iterations N` trains N iterations offscreen, renders the main window and saves it.
Where no display is available the app says so in one line instead of letting Qt abort.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

NO_DISPLAY = ("maml-lab: no display found; run under Xvfb (xvfb-run python main.py) or offscreen with "
              "--screenshot out.png (QT_QPA_PLATFORM=offscreen)")
ORGANIZATION = "MAML Lab"
APPLICATION = "MAML Lab"


def has_display() -> bool:
    """False on Linux and other X11/Wayland systems when neither display nor a Qt platform is set."""
    if sys.platform.startswith(("win", "darwin")):
        return True
    return any(os.environ.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def view_names() -> tuple[str, ...]:
    """The views a screenshot can show: the view registry's names (built-ins, then plug-ins). Read when the
    parser is built, not when this module is imported (the registry lives in the Qt layer)."""
    from .ui.views import view_names as registered

    return registered()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as the CLI's, instead of usage + message
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from .limit_flags import add_image_limit_flags  # the CLI's flags, one definition for both

    p = _Parser(prog="maml-lab", description="MAML Lab: the desktop app.")
    p.add_argument("--config", type=Path, help="open this experiment config (TOML)")
    p.add_argument("--screenshot", type=Path, metavar="PATH",
                   help="train --iterations offscreen, save a picture of the window to PATH and exit")
    p.add_argument("--iterations", type=_positive_int, help="meta-iterations (with --screenshot: default 2000)")
    p.add_argument("--view", choices=view_names(), default="playground", help="the view a screenshot shows")
    p.add_argument("--wait", type=_positive_int, metavar="SECONDS",
                   help="with --screenshot: stop training after this many seconds and picture the stopped run "
                        "(default: wait until all --iterations are trained)")
    from .core.tasks.registry import task_names  # no Qt: the registries live in the core

    p.add_argument("--task", choices=task_names(),
                   help="the task family (images: the built-in glyphs); a screenshot of --view tasks uses images")
    p.add_argument("--size", default="1440x900", help="window size of a screenshot, WIDTHxHEIGHT")
    p.add_argument("--seed", type=int, default=7, help="seed of the screenshot's playground task")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="where training runs (the experiment panel's Device; default: the experiment's, auto)")
    p.add_argument("--threads", type=_positive_int,
                   help="torch CPU threads for training and the GUI (default: per task family, see "
                        "maml_lab/lab/threads.py: image tasks every core up to 4, the others one per two cores)")
    add_image_limit_flags(p)
    return p


def apply_image_limits(args) -> None:
    """--max-image-pixels and the other limit flags, for the whole process: the app loads image sets in worker
    threads, which limits applied in this thread would not reach."""
    from .core.tasks.imagelimits import set_default_limits
    from .limit_flags import image_limits_from

    set_default_limits(image_limits_from(args))


def _set_device(window, device: str | None) -> None:
    """--device: the experiment panel's Device choice (cuda is offered only where CUDA is available)."""
    if device:
        window.panel.device.setCurrentIndex(window.panel.device.findData(device))


def _limit_threads(threads: int | None = None) -> None:
    """Training and the GUI share the CPU: the GUI's own work is small and runs fastest, with the UI fluid, on few
    intra-op threads (one per two cores); each run's training thread then takes what its task family's ops
    are worth (lab/threads.py). `threads` (--threads) fixes one number for both."""
    import torch

    from .lab import threads as thread_policy

    thread_policy.fix(threads)
    torch.set_num_threads(thread_policy.gui_threads())


def make_application(argv: list[str] | None = None):
    from PySide6.QtWidgets import QApplication

    from .ui.fields import guard_fields
    from .ui.theme import apply_theme

    app = QApplication.instance()
    if app is None:
        app = QApplication([sys.argv[0] if sys.argv else "maml-lab", *(argv or [])])
    if not app.organizationName():
        app.setOrganizationName(ORGANIZATION)
    if app.applicationName() in ("", "python", "python3", Path(sys.argv[0]).name if sys.argv else ""):
        app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName(APPLICATION)
    apply_theme(app)
    guard_fields(app)  # the wheel changes a field only when it has focus
    return app


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)
    apply_image_limits(args)
    if args.screenshot is not None:
        if not has_display():
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
    elif not has_display():
        print(NO_DISPLAY, file=sys.stderr)
        return 2
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"maml-lab: error: --size must be WIDTHxHEIGHT, got {args.size!r}", file=sys.stderr)
        return 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("maml-lab: error: --device cuda was asked for but CUDA is not available here (use auto or cpu)",
                  file=sys.stderr)
            return 2
    config = None
    if args.config is not None:
        from .core.training.config import ExperimentConfig

        try:
            config = ExperimentConfig.load_toml(args.config)
        except ValueError as exc:
            print(f"maml-lab: error: {exc}", file=sys.stderr)
            return 2

    _limit_threads(args.threads)
    from .lab.memory import keep_freed_memory

    keep_freed_memory()  # training reuses the same large buffers every iteration: no fresh pages (lab/memory.py)
    app = make_application()
    from .ui.main_window import MainWindow

    if args.screenshot is not None:
        return screenshot(app, args, config, (width, height))

    window = MainWindow()
    if config is not None:
        window.panel.set_config(config)
    if args.task:
        window.panel.task.setCurrentIndex(window.panel.task.findData(args.task))
    if args.iterations:
        window.panel.iterations.setValue(args.iterations)
    _set_device(window, args.device)
    app.aboutToQuit.connect(window.shutdown)
    window.show()
    return app.exec()


def screenshot(app, args, config, size: tuple[int, int]) -> int:
    """Train offscreen, show the chosen view with a task in the playground, save the window as an image."""
    import os
    import tempfile

    import numpy as np
    from PySide6.QtCore import QSettings

    from .ui.main_window import MainWindow

    # a screenshot never reads or writes the user's settings, nor leaves a run among the user's runs
    settings_dir = tempfile.TemporaryDirectory(prefix="maml-lab-screenshot-")
    os.environ["MAML_LAB_RUNS"] = str(Path(settings_dir.name) / "runs")
    settings = QSettings(str(Path(settings_dir.name) / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings, persist=False, rng=np.random.default_rng(args.seed))
    if config is not None:
        window.panel.set_config(config)
    task = args.task or ("images" if args.view == "tasks" and config is None else None)
    if task:
        window.panel.task.setCurrentIndex(window.panel.task.findData(task))  # with the family's app defaults
    window.panel.iterations.setValue(args.iterations or 2000)
    _set_device(window, args.device)
    window.resize(*size)
    window.tabs.setCurrentWidget(window.views[args.view])
    window.show()
    window.views["playground"].random_task()
    app.processEvents()
    if not window.start():
        print(f"maml-lab: error: {window.panel.message or 'could not start training'}", file=sys.stderr)
        window.close()
        return 2
    print(f"training {window.panel.iterations.value():,} iterations for the screenshot"
          + (f" (at most {args.wait:,} s)" if args.wait else "") + "...", file=sys.stderr, flush=True)
    state = window.wait_for_training(float(args.wait) if args.wait else None)
    stopped_by_wait = state in ("starting", "running", "paused", "stopping")
    if stopped_by_wait:  # --wait ran out: stop the run and picture what it reached, never a run still moving
        window.stop()
        state = window.wait_for_training(60.0)
    for _ in range(5):
        app.processEvents()
    window.views["playground"].flush()
    window.views["training"].redraw()
    view = window.views[args.view]
    if hasattr(view, "wait_until_idle"):  # views computing in the background (landscape, paths, adaptation)
        if not view.wait_until_idle(600.0):
            print(f"maml-lab: warning: the {args.view} view was still computing", file=sys.stderr)
    app.processEvents()
    image = window.grab()
    path = Path(args.screenshot)
    ok = False
    if path.parent.is_dir() or str(path.parent) == "":
        ok = image.save(str(path))
    window.close()
    settings_dir.cleanup()
    if not ok:
        print(f"maml-lab: error: could not save the screenshot to {path}", file=sys.stderr)
        return 1
    print(f"saved {path} ({image.width()}x{image.height()}, training {state} after "
          f"{window.history.last_iteration():,} iterations"
          + (f": stopped when --wait {args.wait:,} s ran out" if stopped_by_wait else "") + ")")
    return 0 if state in ("finished", "stopped") else 1
