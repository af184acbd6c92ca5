"""GUI event-loop latency while training runs: how late a 10 ms timer fires, offscreen.

    QT_QPA_PLATFORM=offscreen python benchmarks/bench_gui_latency.py [--seconds 10] [--view playground]
    QT_QPA_PLATFORM=offscreen python benchmarks/bench_gui_latency.py --task images [--data small1.zip] [--threads 2]

Opens the main window (settings in a temporary file), puts a random task in the playground so it follows
training live, starts MAML + the pretrained baseline and records the lateness of a precise 10 ms QTimer
(actual interval minus 10 ms) for --seconds. Prints p50 / p99 / max of the lateness, idle (before training)
and while training, and the training speed. Target: p99 under 50 ms while training.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(app, seconds: float, interval_ms: int = 10) -> list[float]:
    from PySide6.QtCore import QElapsedTimer, QEventLoop, Qt, QTimer

    lateness: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]

    def tick():
        now = clock.nsecsElapsed()
        lateness.append(max(0.0, (now - last[0]) / 1e6 - interval_ms))
        last[0] = now

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(interval_ms)
    timer.timeout.connect(tick)
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    timer.start()
    loop.exec()
    timer.stop()
    return lateness


def percentiles(values: list[float]) -> str:
    import numpy as np

    if not values:
        return "no samples"
    v = np.asarray(values)
    return (f"p50 {np.percentile(v, 50):6.2f} ms   p99 {np.percentile(v, 99):6.2f} ms   max {v.max():6.2f} ms   "
            f"({len(v)} ticks)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement while training (default 10)")
    from maml_lab.ui.views import VIEWS  # every registered view, plug-ins included

    parser.add_argument("--view", choices=VIEWS.names(),
                        default="playground", help="the view shown (paths: re-projected every second while training)")
    parser.add_argument("--algorithms", nargs="+", default=["maml", "pretrained"])
    parser.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval, seconds")
    parser.add_argument("--plot-fps", type=float, default=None, help="maximum plot redraws per second")
    parser.add_argument("--task", default="sinusoid", help="a registered task family (images: the conv-4 experiment)")
    parser.add_argument("--data", help="image set for --task images (default: the embedded glyph set)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of training before measuring (the first snapshot and plot frames; the cost "
                             "meter's one-time probe of more inner steps takes longer)")
    parser.add_argument("--threads", type=int, help="torch threads, as the app's --threads (default: the app's choice "
                                                    "per task family, lab/threads.py)")
    args = parser.parse_args(argv)

    import numpy as np
    from PySide6.QtCore import QSettings

    from maml_lab.app import _limit_threads, make_application
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.ui.experiment_panel import default_config
    from maml_lab.ui.main_window import MainWindow

    _limit_threads(args.threads)
    app = make_application()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    with tempfile.TemporaryDirectory() as tmp:
        settings = QSettings(str(Path(tmp) / "bench.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings=settings, persist=False, rng=np.random.default_rng(0))
        config = default_config()
        if args.task != config.task:
            from maml_lab.core.training.config import ExperimentConfig

            config = ExperimentConfig(task=args.task, data=args.data)
        config.algorithms = [AlgorithmConfig.defaults(a, task=args.task) for a in args.algorithms]
        config.iterations = 10_000_000
        window.panel.set_config(config)
        if args.plot_fps:
            window.views["training"].min_interval = 1.0 / args.plot_fps
        window.resize(1440, 900)
        window.tabs.setCurrentWidget(window.views[args.view])
        window.show()
        if args.task == "sinusoid":
            window.views["playground"].random_task()
        idle = measure(app, 2.0)
        window.start()
        measure(app, args.warmup)  # warm-up: the first snapshot, the first plot frames
        start_iteration = window.last_progress.iteration if window.last_progress else 0
        t0 = time.perf_counter()
        training = measure(app, args.seconds)
        elapsed = time.perf_counter() - t0
        end_iteration = window.last_progress.iteration if window.last_progress else 0
        window.stop()
        t_stop = time.perf_counter()
        window.wait_for_training(10)
        stop_s = time.perf_counter() - t_stop
        iterations = end_iteration - start_iteration
        plots = window.views["training"]
        print(f"switch interval {sys.getswitchinterval() * 1000:g} ms; plot fps <= {1 / plots.min_interval:g}")
        from maml_lab.lab import threads as thread_policy

        print(f"task: {args.task}; view: {args.view}; algorithms: {', '.join(args.algorithms)}; torch threads: "
              f"training {thread_policy.training_threads(args.task)}, GUI {__import__('torch').get_num_threads()}; "
              f"cores: {os.cpu_count()}")
        print(f"idle      {percentiles(idle)}")
        print(f"training  {percentiles(training)}")
        print(f"training speed: {iterations / elapsed:,.2f} meta-iterations/s "
              f"({iterations * config.meta_batch_size / elapsed:,.0f} tasks/s); "
              f"plot frames: {plots.draw_count}; stop took {stop_s * 1000:.0f} ms")
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
