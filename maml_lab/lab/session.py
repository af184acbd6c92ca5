"""A training session, written once for the CLI, the app and notebooks: config -> task family -> algorithms ->
Trainer -> run folder -> checkpoints -> resume -> exports.

    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.lab.session import TrainingSession

    session = TrainingSession.create(ExperimentConfig(iterations=2000), run_dir="runs/demo")
    session.run()                       # or session.run(callback=print) for Progress messages
    session.export({"maml": "init.safetensors"})

What a running session tells its listener are typed messages (Progress, and the Started/Ended the app's worker
adds); the metric names they carry are those of core.training.metrics. Stopping is thread-safe (`stop`, and
the Trainer's `pause`/`resume`), and `stop_on_signals` turns Ctrl+C and SIGTERM (what schedulers send before
preemption) into a clean stop: finish the iteration, checkpoint, export, status "stopped".
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.training.checkpoint import CheckpointError, read_checkpoint, restore_checkpoint
from ..core.training.config import ExperimentConfig
from ..core.training.device import resolve_device
from ..core.training.runs import RunFolder, RunFolderError, RunLogger, default_runs_root, new_run_name, unique_path
from ..core.training.trainer import Trainer, make_family
from .messages import Progress

CHECKPOINT_EVERY = 1000  # iterations between checkpoints (and one at the end)
TERMINAL_STATES = ("finished", "stopped", "diverged", "failed")


class TrainingSession:
    """One meta-training run: its Trainer, its run folder (optional) and its exports."""

    def __init__(self, config: ExperimentConfig, family=None, initial_params=None, world=None, record_every: int = 1,
                 loading: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                 preparing: Callable[[str], None] | None = None):
        """Build the task family (image sets load here: `loading(done, total)`, `cancel()` stops it) and the
        Trainer (`preparing("building the model")` names that step while it runs). No files are written until a
        run folder is attached."""
        config.validate()
        self.config = config
        if family is None:
            family = make_family(config, progress=loading, cancel=cancel)
        if preparing is not None:
            if world is None:
                resolve_device(config.device)  # a bad device name is bad input: its one line, before any progress
            preparing("building the model")
        self.trainer = Trainer(config, family=family, initial_params=initial_params, record_every=record_every,
                               world=world)
        self.trainer.cost.probe = True  # the CLI and the app show the expected cost of more inner steps (off the
        # critical path: measured between steps within a small share of the training time, cost.py)
        if world is not None and not world.is_main:
            self.trainer.cost.enabled = False  # only rank 0 reports: the others would measure out of step with it
        self.folder: RunFolder | None = None
        self.logger: RunLogger | None = None
        self.resumed_at: int | None = None  # the checkpoint's iteration when this session continues a run
        self.stopped_by: int | None = None  # the signal (SIGINT, SIGTERM) that stopped the run, if one did

    # -- making one ---------------------------------------------------------------------------------------
    @classmethod
    def create(cls, config: ExperimentConfig, run_dir: str | Path | None = None, runs_root: str | Path | None = None,
               checkpoint_every: int = CHECKPOINT_EVERY, source: str = "cli", outs: dict | None = None,
               **kwargs) -> "TrainingSession":
        """A new run training into `run_dir` (default: a new folder under `runs_root`, else $MAML_LAB_RUNS or
        ./runs). The path is checked before the family loads, so a bad path fails fast, but the folder is created
        only once the family has loaded: a load that fails leaves nothing behind. This process holds the folder's
        lock from here to the end of the run (and again while a later `run()` trains), or until `close()`."""
        cls.check_folder(run_dir, runs_root)
        session = cls(config, **kwargs)
        folder = cls.create_folder(config, run_dir, runs_root, source, outs)
        session.attach_folder(folder, checkpoint_every)
        return session

    @staticmethod
    def check_folder(run_dir=None, runs_root=None) -> None:
        """Raise RunFolderError if a run folder could not be created at `run_dir` (or under `runs_root`), without
        creating anything: the path must be new or an empty folder, under a folder this process may write."""
        path = Path(run_dir).expanduser() if run_dir is not None else (
            Path(runs_root).expanduser() if runs_root is not None else default_runs_root())
        if run_dir is not None and path.exists() and (not path.is_dir() or any(path.iterdir())):
            if (path / "run.json").is_file():
                raise RunFolderError(f"{path} already holds a run (resume it with --resume {path})")
            raise RunFolderError(f"run folder {path} exists and is not empty")
        existing = path.absolute()
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            raise RunFolderError(f"cannot create run folder {path}: {existing} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise RunFolderError(f"cannot create run folder {path}: {existing} is not writable")

    @staticmethod
    def create_folder(config: ExperimentConfig, run_dir=None, runs_root=None, source: str = "cli",
                      outs: dict | None = None) -> RunFolder:
        path = Path(run_dir) if run_dir is not None else unique_path(
            Path(runs_root).expanduser() if runs_root is not None else default_runs_root(), new_run_name(config))
        status = {"outs": {n: str(p) for n, p in (outs or {}).items()}} if outs else {}
        return RunFolder.create(path, config, source=source, **status)

    @classmethod
    def resume(cls, run_dir: str | Path, config: ExperimentConfig | None = None,
               checkpoint_every: int = CHECKPOINT_EVERY, attach: bool = True, restart: bool = False,
               fresh_if_empty: bool = False, notice: Callable[[str], None] | None = None,
               **kwargs) -> "TrainingSession":
        """Continue the run in `run_dir` from its newest good checkpoint (with its own config, or `config` where the
        caller lengthened or moved it: another experiment's checkpoint is refused with the difference named).

        The folder is locked first (a second writer is refused, naming the holder). Damaged checkpoints (checksum,
        truncation) are skipped, each named through `notice`. Nothing in the folder is written until the resume is
        known to be valid; a refusal (RunFolderError, CheckpointError, RunLockedError: all ValueErrors) leaves every
        file as it was. No good checkpoint: refused, unless `restart` (start over in this folder, discarding its
        checkpoints and metrics) or `fresh_if_empty` and the run never wrote one (`resumed_at` is then None).
        attach=False: restore only, no lock and no writes (ranks other than 0 under torchrun)."""
        say = notice or (lambda text: None)
        folder = RunFolder.open(run_dir)
        if attach:
            stale = folder.acquire()
            if stale:
                say(f"{folder.path}: {stale}")
        try:
            saved = folder.config()
            config = config or saved
            found = [] if restart else folder.checkpoints()
            good, damaged = None, []
            for _, path in reversed(found):
                try:
                    good = (path, *read_checkpoint(path))
                    break
                except Exception as exc:  # noqa: BLE001 - damaged or crafted: passed over by name, never resumed
                    damaged.append(path)
                    why = str(exc) if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
                    say(f"skipping damaged checkpoint {path.name}: {why}")
            if good is None and not restart and (found or not fresh_if_empty):
                what = (f"no usable checkpoint ({len(damaged)} damaged: {', '.join(p.name for p in damaged[:3])}"
                        f"{', ...' if len(damaged) > 3 else ''})" if damaged else "no checkpoint")
                raise RunFolderError(f"{folder.path} has {what}: nothing was changed; `train --resume "
                                     f"{folder.path} --restart` starts the run over in this folder")
            session = cls(config, **kwargs)
            if good is not None:
                path, tensors, header = good
                try:
                    restore_checkpoint(session.trainer, tensors, header, where=path.name)
                except CheckpointError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a header that reads but does not describe this run
                    raise CheckpointError(f"{path.name} does not fit this run: {type(exc).__name__}: {exc}") from None
                session.resumed_at = int(header["iteration"])
            session.folder = folder
            if attach:  # valid: only now is anything in the folder changed
                session._prepare_folder(folder, saved, damaged, restart)
                session.attach_folder(folder, checkpoint_every, resumed=good is not None)
        except BaseException:
            if attach:
                folder.release(restore=True)
            raise
        return session

    def _prepare_folder(self, folder: RunFolder, saved: ExperimentConfig, damaged: list[Path], restart: bool) -> None:
        """A resume known to be valid: damaged checkpoints set aside (renamed *.damaged, so a later prune keeps the
        good ones), or, when the run starts over, what the discarded run left (checkpoints, exports, TensorBoard
        events; metrics.csv is rewritten by attach_folder); temporary files of interrupted writes removed; the
        config saved when the run's length changed."""
        for path in damaged:
            path.replace(path.with_name(path.name + ".damaged"))
        if restart:
            for path in [p for _, p in folder.checkpoints()] + folder.exports():
                path.unlink()
            if folder.tensorboard_dir.is_dir():
                shutil.rmtree(folder.tensorboard_dir)
            folder.write_status(exports={}, restarted=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        folder.clean_temporary()
        if self.config.iterations != saved.iterations:
            self.config.save_toml(folder.config_path)  # the run now has a new length

    def attach_folder(self, folder: RunFolder, checkpoint_every: int = CHECKPOINT_EVERY, resumed: bool = False) -> None:
        """Log metrics, checkpoints and the final status into `folder` (OSError if its first files cannot be
        written)."""
        logger = RunLogger(folder, checkpoint_every=checkpoint_every)
        logger.start(self.trainer, resumed=resumed)
        self.trainer.observers.append(logger)
        self.folder, self.logger = folder, logger

    # -- running ------------------------------------------------------------------------------------------
    def run(self, callback: Callable[[Progress], None] | None = None, iterations: int | None = None) -> str:
        """Train to the end (or `iterations` more) unless stopped; returns the final state. The callback hears
        Progress after every iteration (first a "starting" one naming the first meta-iteration)."""
        report = (lambda p: callback(Progress.from_trainer(p))) if callback is not None else None
        return self.trainer.run(iterations, callback=report, report_every=1)

    def stop(self) -> None:
        self.trainer.stop()

    def close(self) -> None:
        """Let go of the run folder's lock (the end of a run and the process's end do it too; a session closed
        before it trained, or after a failure outside Trainer.run, needs this)."""
        if self.folder is not None:
            self.folder.release()

    def end_without_training(self, reason: str = "stopped by the user") -> str:
        """A stop that came before training began: the run folder still ends "stopped", with its checkpoint."""
        self.trainer.state, self.trainer.stop_reason = "stopped", reason
        if self.logger is not None:
            self.logger.on_end(self.trainer)
        return "stopped"

    def mark_failed(self, message: str) -> None:
        """Training failed outside Trainer.run (which tells the folder itself): say so in run.json."""
        if self.logger is None or self.trainer.state in TERMINAL_STATES:
            return
        try:
            self.logger.flush()
            self.logger.folder.write_status(status="failed", reason=message, iteration=self.trainer.iteration)
        except OSError:
            pass

    @contextmanager
    def stop_on_signals(self, announce: Callable[[str], None] | None = None) -> Iterator[None]:
        """While inside: SIGINT (Ctrl+C) and SIGTERM stop after the current iteration; the run then checkpoints,
        exports and ends "stopped". A second Ctrl+C aborts at once. Main thread only."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum, frame):
            name = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
            if announce is not None:
                announce(f"{name}: stopping after this iteration, then checkpointing"
                         + (" (Ctrl+C again to abort)" if signum == signal.SIGINT else ""))
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, previous[signal.SIGINT])
            if self.stopped_by is None:
                self.stopped_by = signum
            self.trainer.stop()

        for sig in previous:
            signal.signal(sig, on_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- results ------------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.trainer.state

    @property
    def iteration(self) -> int:
        return self.trainer.iteration

    @property
    def cost(self) -> dict:
        """Each algorithm's cost so far, as progress messages carry it (core.training.cost: seconds and bytes per
        meta-step, the marginal cost of one more inner step; cost.expected_cost extrapolates to more steps)."""
        return self.trainer.cost.summary()

    def export(self, outs: dict[str, str | Path]) -> dict[str, Path]:
        """Write the named algorithms' initializations (safetensors or .pt, with metadata); returns the paths."""
        written = {}
        for name, path in outs.items():
            self.trainer.export(name, path)
            written[name] = Path(path)
        return written
