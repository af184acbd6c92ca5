"""The File menu's work: experiment configs, initializations (export, import), plot and metrics export,
recent files, past runs and image sets, with the open / save dialogs they share (last-used folder, suffixes).

Its own module because it is all "a file in, a file out, and say what went wrong": none of it changes while
a run trains, and the main window only wires it to actions.
"""

from __future__ import annotations

import weakref
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog, QInputDialog

from ..core.algorithms.registry import ALGORITHMS
from ..core.export import InitializationError, atomic_write_bytes, export_initialization, load_initialization
from ..core.tasks.registry import TASKS, task_family
from ..core.training.config import ExperimentConfig
from ..core.training.runs import RunFolder
from ..lab.initializations import Initialization, adaptation_from_metadata
from ..lab.playground import mlp_for_playground
from ..lab.run_library import SETTINGS_KEY as RUNS_ROOT_KEY
from ..lab.run_library import runs_root
from .colors import algorithm_label
from .experiment_panel import FormError
from .image_dialogs import DownloadDialog, ImageSetDialog
from .past_runs import app_runs_folder
from .plot_export import PLOT_FILTERS, render_plot

RECENT_LIMIT = 8
INIT_FILTERS = [("safetensors + metadata", ".safetensors"), ("PyTorch state dict", ".pt")]


class FileActions:
    """The File menu of `window` (a MainWindow): its settings, status bar and views."""

    def __init__(self, window):
        # a weak reference: the window owns this object, and a cycle would leave the window (and its Qt objects)
        # to Python's cyclic garbage collector, which then deletes them at some later moment, in the middle of
        # whatever Qt is doing (a segfault, seen in the UI tests)
        self._window = weakref.ref(window)

    @property
    def w(self):
        return self._window()

    def error(self, title: str, text: str) -> None:
        """Say what went wrong (the run's model shows it in a dialog)."""
        self.w.run_model.error(title, text)

    def last_dir(self) -> str:
        d = str(self.w.settings.value("paths/last_dir", "") or "")
        return d if d and Path(d).is_dir() else str(Path.home())

    def remember_dir(self, path: str | Path) -> None:
        self.w.settings.setValue("paths/last_dir", str(Path(path).parent))

    def write_error(self, path, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        self.error("Could not write file", f"Could not write {path}:\n{reason}.\n\nNothing was changed: the "
                    "previous file, if there was one, is kept.")

    def ask_open_path(self, title: str, file_filter: str) -> Path | None:
        """An open dialog in the last-used folder (any file may be chosen too); None when cancelled."""
        path, _ = QFileDialog.getOpenFileName(self.w, title, self.last_dir(), f"{file_filter};;All files (*)")
        return Path(path) if path else None

    def ask_save_path(self, title: str, filename: str, filters: list[tuple[str, str]]) -> Path | None:
        """A save dialog opening in the last-used folder; a name without one of `filters`' suffixes gets the
        suffix of the filter the user picked (the first when none). None when cancelled."""
        spec = ";;".join(f"{label} (*{suffix})" for label, suffix in filters)
        path, selected = QFileDialog.getSaveFileName(self.w, title, str(Path(self.last_dir()) / filename), spec)
        if not path:
            return None
        suffixes = [suffix for _, suffix in filters]
        if Path(path).suffix.lower() not in suffixes:
            path += next((suffix for label, suffix in filters if (selected or "").startswith(label)), suffixes[0])
        return Path(path)

    def ask_directory(self, title: str, start: Path) -> Path | None:
        """A folder dialog opening in `start` (or the last-used folder); None when cancelled."""
        where = str(start) if Path(start).is_dir() else self.last_dir()
        path = QFileDialog.getExistingDirectory(self.w, title, where)
        return Path(path) if path else None

    def exportable(self) -> list[str]:
        return list(self.w.latest_snapshot.params) if self.w.latest_snapshot else []

    def export_initialization(self, name: str | None = None) -> list[Path]:
        """Export one algorithm's initialization (all of them with `name='*'`); returns the files written."""
        names = self.exportable()
        if not names:
            self.error("Nothing to export", "There is no trained initialization yet: press Start first.")
            return []
        if not name:
            if len(names) == 1:
                name = names[0]
            else:
                labels = [algorithm_label(n) for n in names] + ["All (one file each)"]
                choice, ok = QInputDialog.getItem(self.w, "Export initialization", "Initialization to export:",
                                                  labels, 0, False)
                if not ok:
                    return []
                name = "*" if choice == labels[-1] else names[labels.index(choice)]
        snap = self.w.latest_snapshot
        stem = f"{name if name != '*' else 'maml-lab'}-{snap.iteration}it"
        title = "Export initialization" + (f" of {algorithm_label(name)}" if name != "*" else "s")
        path = self.ask_save_path(title, f"{stem}.safetensors", INIT_FILTERS)
        if path is None:
            return []
        targets = {name: path} if name != "*" else {
            n: path.with_name(f"{path.stem}-{n}{path.suffix}") for n in names}
        written = []
        for n, target in targets.items():
            try:
                learned = snap.algorithms.get(n)
                export_initialization(target, snap.params[n], snap.metadata.get(n, {}),
                                      extra_tensors=getattr(learned, "tensors", None))
            except OSError as exc:
                self.write_error(target, exc)
                return written
            except (InitializationError, ValueError) as exc:
                self.error("Cannot export", str(exc))
                return written
            written.append(target)
        self.remember_dir(path)
        for target in written:
            self.add_recent(target)
        self.w.run_model.status(f"Exported {', '.join(str(t) for t in written)}", 6000)
        return written

    def import_initialization(self, path: str | None = None) -> Initialization | None:
        path = Path(path) if path else self.ask_open_path("Import initialization",
                                                           "Initializations (*.safetensors *.pt)")
        if path is None:
            return None
        init, why = self.read_initialization(path)
        if init is None:
            self.error("Cannot import initialization", f"{path.name} was not imported{why}")
            return None
        self._follow_family(init)
        where = self.place_initialization(init)
        if where == "tasks":
            # the classes it was not trained on, unless the panel's tasks fit
            self.w.views["tasks"].show_heldout_of(init)
        self.remember_dir(path)
        self.add_recent(path)
        if where == "tasks":  # the Tasks view uses it on image tasks with the same N ways and image size
            self.w.show_view("tasks")
            spec = init.model.spec()
            self.w.run_model.status(
                f"Imported {path.name}: a {spec.get('ways')}-way conv-4 for {spec.get('image_size')}x"
                f"{spec.get('image_size')} images, shown in Tasks on image tasks of that shape", 8000)
            return init
        self.w.show_view(where if where in self.w.views else "playground")
        self.w.run_model.status(f"Imported {path.name} ({algorithm_label(init.algorithm)}, "
                                     f"{init.metadata.get('iterations', 0)} iterations)", 6000)
        return init

    def _follow_family(self, init: Initialization) -> None:
        """An initialization of another task family (registered) makes it the form's family: what is shown of the
        earlier family goes (not while a run trains)."""
        task = (init.metadata.get("task") or {}).get("name")
        panel = self.w.panel
        if not task or task not in TASKS or self.w.running or task == panel.task.currentData():
            return
        index = panel.task.findData(task)
        item = panel.task.model().item(index) if index >= 0 else None
        if item is not None and item.isEnabled():
            panel.task.setCurrentIndex(index)

    def read_initialization(self, path: Path, label: str | None = None) -> tuple[Initialization | None, str]:
        """(the initialization in `path`, "") or (None, why not: the text that follows "<name> was not imported")."""
        try:
            params, extras, meta, model = load_initialization(path, with_extras=True)
        except (InitializationError, OSError, ValueError) as exc:
            return None, f":\n{exc}"
        kind = model.spec().get("kind")
        # an MLP must fit the sinusoid playground; other models go to the views that take them (accepts_model)
        problem = mlp_for_playground(model.spec()) if kind == "mlp" else None
        if kind not in ("mlp", "conv4") and not any(self._view_for(model)):
            problem = f"no view of this lab shows a {kind} model"
        if problem:
            return None, f": {problem}."
        algorithm = meta.get("algorithm", "unknown")
        algorithm = algorithm if algorithm in ALGORITHMS else "unknown"
        label = label or f"{algorithm_label(algorithm) if algorithm != 'unknown' else 'Imported'} · {path.name}"
        return Initialization(f"file:{path.resolve()}", algorithm, label, model, params,
                              adaptation_from_metadata(meta, tensors=extras), "imported", meta), ""

    def place_initialization(self, init: Initialization) -> str:
        """Put an imported initialization where it can adapt: the Tasks view (conv-4), the playground and
        Adaptation view (MLP), or the first view whose `accepts_model` takes it (2-D navigation policies: the
        Arena). Returns "tasks", "playground" or that view's name."""
        self.w.inits.put(init)
        kind = init.model.spec().get("kind")
        if kind in ("conv4", "mlp"):
            return "tasks" if kind == "conv4" else "playground"
        return next(self._view_for(init.model), "playground")

    def _view_for(self, model):
        """Names of the window's views that declare they show `model` (a view's optional accepts_model(model))."""
        return (name for name, view in self.w.views.items()
                if getattr(view, "accepts_model", None) is not None and view.accepts_model(model))

    def fill_export_menu(self) -> None:
        self.w.export_menu.clear()
        for name in self.exportable():
            act = self.w.export_menu.addAction(f"{algorithm_label(name)}…")
            act.triggered.connect(lambda _=False, n=name: self.export_initialization(n))
        if len(self.exportable()) > 1:
            self.w.export_menu.addSeparator()
            self.w.export_menu.addAction("All (one file each)…").triggered.connect(
                lambda: self.export_initialization("*"))

    def export_plot(self, path: str | None = None) -> Path | None:
        view = self.current_view()
        if not hasattr(view, "export_item"):
            self.error("Cannot export plot", "This view has no plot to export.")
            return None
        path = Path(path) if path else self.ask_save_path("Export plot", f"maml-lab-{view.view_title()}.png",
                                                            PLOT_FILTERS)
        if path is None:
            return None
        return self._save(path, lambda: render_plot(view.export_item(), path.suffix.lower()))

    def _save(self, path: Path, data) -> Path | None:
        """Write `data()` (bytes) to `path` atomically; a failure is a dialog and leaves any old file intact."""
        try:
            atomic_write_bytes(path, data())
        except OSError as exc:
            self.write_error(path, exc)
            return None
        self.remember_dir(path)
        self.w.run_model.status(f"Saved {path}", 5000)
        return path

    def export_metrics(self, path: str | None = None) -> Path | None:
        if not self.w.history.algorithms:
            self.error("Nothing to export", "There are no training metrics yet: press Start first.")
            return None
        path = Path(path) if path else self.ask_save_path("Export metrics", "maml-lab-metrics.csv",
                                                            [("CSV", ".csv"), ("JSON with evaluation cards", ".json")])
        if path is None:
            return None
        # the run folder's metrics.csv has every row; the history held in memory bins long runs
        folder = self.w.run_folder
        source = RunFolder(folder).metrics_path if folder is not None else None
        if path.suffix.lower() == ".json":  # the rows, with the validation protocol's evaluation cards
            return self._save(path, lambda: metrics_json(self.w.history.to_csv(source), self.w.run_config))
        return self._save(path, lambda: self.w.history.to_csv(source).encode("utf-8"))

    def save_config(self, path: str | None = None) -> Path | None:
        try:
            config = self.w.panel.config()
        except FormError as exc:
            self.error("Cannot save experiment", f"The experiment has an invalid value:\n{exc}")
            return None
        path = Path(path) if path else self.ask_save_path("Save experiment", "experiment.toml", [("TOML", ".toml")])
        if path is None:
            return None
        try:
            config.save_toml(path)
        except OSError as exc:
            self.write_error(path, exc)
            return None
        self.remember_dir(path)
        self.add_recent(path)
        self.w.run_model.status(f"Saved {path}", 5000)
        return path

    def open_config(self, path: str | None = None) -> ExperimentConfig | None:
        if self.w.running:
            self.error("Cannot open experiment", "Stop training before opening another experiment.")
            return None
        path = Path(path) if path else self.ask_open_path("Open experiment", "TOML (*.toml)")
        if path is None:
            return None
        try:
            config = ExperimentConfig.load_toml(path)
        except (ValueError, OSError) as exc:
            self.error("Cannot open experiment", f"{path.name} was not opened:\n{exc}")
            return None
        self.w.panel.set_config(config)
        self.remember_dir(path)
        self.add_recent(path)
        self.w.run_model.status(f"Opened {path}", 5000)
        return config

    def recent_files(self) -> list[str]:
        value = self.w.settings.value("recent/files", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def add_recent(self, path) -> None:
        path = str(Path(path).resolve())
        files = [path] + [p for p in self.recent_files() if p != path]
        self.w.settings.setValue("recent/files", files[:RECENT_LIMIT])

    def fill_recent_menu(self) -> None:
        self.w.recent_menu.clear()
        files = self.recent_files()
        for p in files:
            kind = "experiment" if p.endswith(".toml") else "initialization"
            act = self.w.recent_menu.addAction(f"{Path(p).name}  —  {kind}")
            act.setToolTip(p)
            act.setEnabled(Path(p).exists())
            if kind == "experiment":
                act.triggered.connect(lambda _=False, p=p: self.open_config(p))
            else:
                act.triggered.connect(lambda _=False, p=p: self.import_initialization(p))
        if files:
            self.w.recent_menu.addSeparator()
            self.w.recent_menu.addAction("Clear recent files").triggered.connect(
                lambda: self.w.settings.setValue("recent/files", []))
        else:
            self.w.recent_menu.addAction("No recent files").setEnabled(False)

    def runs_root(self) -> Path:
        """Where run folders go: $MAML_LAB_RUNS, else the folder chosen in Past runs, else <app data>/runs."""
        return runs_root(str(self.w.settings.value(RUNS_ROOT_KEY, "") or ""), app_runs_folder())

    def set_runs_root(self, path: str) -> None:
        self.w.settings.setValue(RUNS_ROOT_KEY, str(path))
        self.w.run_model.status(f"New runs go to {path}", 5000)

    def show_past_runs(self):
        """File ▸ Past runs: the run folders under the runs root, newest first (non-modal)."""
        from shiboken6 import isValid

        from .past_runs import PastRunsDialog

        dialog = self.w.past_runs_dialog
        if dialog is None or not isValid(dialog):
            dialog = PastRunsDialog(self.w, self.runs_root(), self.w.run_folder if self.w.running else None)
            dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            dialog.open_requested.connect(lambda p: self._from_dialog(self.w.open_run, p))
            dialog.resume_requested.connect(lambda p: self._from_dialog(self.w.resume_run, p))
            dialog.root_changed.connect(self.set_runs_root)
            self.w.past_runs_dialog = dialog
        else:
            dialog.root = self.runs_root()
            dialog.refresh()
        dialog.set_busy(self.w.running, self.w.run_folder if self.w.running else None)
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        return dialog

    def _from_dialog(self, action, path: str) -> None:
        if action(path) and self.w.past_runs_dialog is not None:
            self.w.past_runs_dialog.close()

    def refresh_past_runs(self) -> None:
        from shiboken6 import isValid

        dialog = self.w.past_runs_dialog
        if dialog is not None and isValid(dialog) and dialog.isVisible():
            dialog.set_busy(self.w.running, self.w.run_folder if self.w.running else None)
            dialog.refresh()

    def open_image_set(self, path: str | None = None) -> ImageSetDialog | None:
        """File ▸ Open image set: a dialog loads the set off the GUI thread and shows its report; "Use image set"
        makes it the experiment's (image tasks). With `path` it starts loading that path at once."""
        if self.w.running:
            self.error("Cannot open image set", "Stop training before choosing another image set.")
            return None
        config, _ = self.w.panel.try_config()
        if config is not None and getattr(task_family(config.task).playground, "kind", None) == "images":
            values = {"image_size": config.image_size, "image_mode": config.image_mode, "ways": config.ways,
                      "shots": config.shots, "queries": config.queries}
        else:
            values = {"ways": self.w.panel.ways.value()}
        dialog = ImageSetDialog(self.w, self.last_dir(), **values)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self._use_image_set(dialog.path, dialog.image_set,
                                                            getattr(dialog, "use_as", "data")))
        self.w.image_set_dialog = dialog
        dialog.open()
        if path:
            dialog.load(path)
        return dialog

    def _use_image_set(self, path: str | None, image_set, use_as: str = "data") -> None:
        if not path or image_set is None or self.w.running:
            return
        if use_as == "heldout":  # validation and eval on this set's classes (--eval-data)
            self.w.panel.set_heldout_data(path)
            self.remember_dir(path)
            self.w.run_model.status(f"Held-out classes from {Path(path).name}: {image_set.num_classes:,} classes",
                                    6000)
            return
        self.w.panel.set_image_data(path)
        self.remember_dir(path)
        self.w.show_view("tasks")
        self.w.run_model.status(f"Image tasks from {Path(path).name}: {image_set.num_classes:,} classes, "
                                     f"{image_set.num_images:,} images", 6000)

    def download_omniglot(self, folder: str | None = None, **options) -> DownloadDialog:
        """File ▸ Download Omniglot: the official zips into a folder (options: base_url, files, checksums, md5)."""
        folder = folder or str(Path(self.last_dir()) / "omniglot")
        dialog = DownloadDialog(self.w, folder, **options)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open_requested.connect(lambda p: self.open_image_set(p))
        self.w.download_dialog = dialog
        dialog.open()
        return dialog

    def current_view(self):
        return self.w.tabs.currentWidget()


def metrics_json(csv_text: str, config) -> bytes:
    """Exported metrics as JSON: the rows of the metrics CSV (numbers as numbers, empty cells as null) and the
    evaluation card of the validation columns (val_*) per algorithm (core/analysis/card.py)."""
    import csv
    import io
    import json

    from ..core.analysis.card import validation_cards

    def value(text: str):
        if text == "":
            return None
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text

    rows = [{k: value(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(csv_text))]
    cards = {name: card.to_dict() for name, card in validation_cards(config).items()} if config is not None else {}
    return json.dumps({"validation_cards": cards, "rows": rows}, indent=1).encode("utf-8")
