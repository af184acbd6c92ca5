"""The experiment form: task, model, training schedule and the algorithms to train, each with its own
hyperparameters. Invalid values are refused here, with a message that says why, before anything runs."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..core.algorithms.config import AlgorithmConfig
from ..core.algorithms.registry import ALGORITHMS, algorithm_class, algorithm_names, family_refusal
from ..core.models.mlp import ACTIVATIONS
from ..core.registry import BUILTIN
from ..core.tasks.registry import TASKS, task_family
from ..core.training.config import ExperimentConfig
from ..core.validation import parse_toml
from ..lab.resources import resource
from .colors import algorithm_color, algorithm_label
from .fields import IntField

APP_DEFAULT_ITERATIONS = 20000
# what choosing the image family sets: the image experiment's defaults (5-way 1-shot, meta-batch 32, the 800
# iterations tuned for time to accuracy: minutes on a CPU), with the app's validation schedule
APP_IMAGE_DEFAULTS = {**ExperimentConfig.task_defaults("images"), "val_every": 50, "val_tasks": 50, "ways": 5}
GLYPHS_LABEL = "Built-in glyphs"


def default_config() -> ExperimentConfig:
    """The app's starting experiment (resources/default_experiment.toml): MAML beside the pretrained baseline."""
    try:
        text = resource("default_experiment.toml").read_text("utf-8")
        import tomllib

        return ExperimentConfig.from_dict(tomllib.loads(text))
    except (OSError, ValueError, ModuleNotFoundError):
        return ExperimentConfig(algorithms=[AlgorithmConfig.defaults("maml"), AlgorithmConfig.defaults("pretrained")],
                                iterations=APP_DEFAULT_ITERATIONS)


def image_tasks_available() -> bool:
    return importlib.util.find_spec("maml_lab.core.tasks.images") is not None


def is_image_family(task: str | None) -> bool:
    """Whether a registered family draws image tasks (image set, N ways, conv-4): what its registry entry says."""
    try:
        return getattr(task_family(task).playground, "kind", None) == "images"
    except ValueError:
        return False


def _short_name(name: str, limit: int = 22) -> str:
    """A file name that fits the image-set field: its start and its end around "…" (the field's tooltip has the
    whole path); "images_background_small1.zip" was cut to its first letters."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return f"{name[:head]}…{name[-(limit - 1 - head):]}"


def _fmt_float(value: float) -> str:
    return f"{value:g}"


IMAGE_SOURCE_TIP = ("The images tasks are drawn from: the built-in glyphs, or an image set you opened (a zip or a "
                    "folder of class folders, such as Omniglot)")


class FormError(ValueError):
    """An invalid field: the message and the widget to mark."""

    def __init__(self, message: str, widget: QWidget | None = None):
        super().__init__(message)
        self.widget = widget


def _spin(what: str, low: int, high: int, step: int = 1, tip: str = "") -> IntField:
    """A whole-number field named `what` in the form's messages (text it cannot read is refused, with the reason)."""
    box = IntField(what)
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setGroupSeparatorShown(True)
    box.setToolTip(tip)
    box.setAlignment(Qt.AlignmentFlag.AlignRight)
    box.setKeyboardTracking(True)
    return box


class AlgorithmColumn:
    """One algorithm's column of the grid: enable box and its own hyperparameters."""

    def __init__(self, name: str):
        self.name = name
        label = algorithm_label(name)
        self.enabled = QCheckBox(label)
        self.enabled.setToolTip(f"Train {label} on the shared task stream")
        color = algorithm_color(name)
        self.enabled.setStyleSheet(
            f"QCheckBox {{ font-weight: 600; color: {color}; }}"
            f"QCheckBox::indicator:checked {{ background: {color}; border: 1px solid {color}; border-radius: 3px; }}"
            f"QCheckBox::indicator {{ width: 13px; height: 13px; border: 1px solid #B8BFC7; border-radius: 3px;"
            f" background: white; }}")
        self.inner_lr = self._line("inner learning rate α: the SGD step size of adaptation")
        self.inner_steps = _spin(f"{label} inner steps", algorithm_class(name).min_inner_steps, 1000,
                                 tip="inner steps during meta-training (Reptile's k)")
        self.test_steps = _spin(f"{label} test steps", 0, 1000, tip="inner SGD steps at evaluation / test time")
        self.algorithm = ALGORITHMS.get(name)
        # the outer-step field: which config field, its name and tooltip, as the algorithm declares them
        self.outer_field = self.algorithm.outer_lr_field
        self.meta_lr = self._line(self.algorithm.outer_lr_tip)
        # the algorithm's own settings (its `panel_settings` fields and `option_defaults`), as key=value, ...
        self.setting_keys = (tuple(getattr(self.algorithm, "panel_settings", ()))
                             + tuple(k for k in self.algorithm.option_defaults
                                     if k not in getattr(self.algorithm, "panel_settings", ())))
        self.settings = self._line(
            f"{label}'s own settings as key=value, separated by commas: {', '.join(self.setting_keys)}"
            + (f" ({getattr(self.algorithm, 'settings_tip', '')})" if getattr(self.algorithm, "settings_tip", "")
               else "") if self.setting_keys else f"{label} has no settings beyond those above")
        self.settings.setAlignment(Qt.AlignmentFlag.AlignLeft)
        self.fields = (self.inner_lr, self.inner_steps, self.test_steps, self.meta_lr, self.settings)
        # fields the algorithm does not read (ProtoNets: no inner loop): greyed out, the tooltip says why
        by_field = {"inner_lr": self.inner_lr, "inner_steps": self.inner_steps, "test_inner_steps": self.test_steps}
        self.unused = tuple(by_field[f] for f in self.algorithm.unused_fields if f in by_field)
        for w in self.unused:
            w.setToolTip(f"{label} does not read this setting (it adapts without inner-loop steps)")
        self.outer_unused = False  # the outer rate is not read under the config's outer step (TRPO: set_config)
        self.enabled.toggled.connect(self._sync_enabled)
        self._extra: dict = {}

    @staticmethod
    def _line(tip: str) -> QLineEdit:
        edit = QLineEdit()
        edit.setToolTip(tip)
        edit.setAlignment(Qt.AlignmentFlag.AlignRight)
        edit.setMinimumWidth(48)
        return edit

    def set_refused(self, reason: str | None) -> None:
        """The chosen family refuses this algorithm (`reason`: unchecked, disabled, the reason as the tooltip), or
        takes it (None)."""
        if reason:
            self.enabled.setChecked(False)
        self.enabled.setEnabled(not reason)
        self.enabled.setToolTip(reason or f"Train {algorithm_label(self.name)} on the shared task stream")

    def _sync_enabled(self, on: bool) -> None:
        for w in self.fields:
            w.setEnabled(on and (w is not self.settings or bool(self.setting_keys)) and w not in self.unused
                         and not (w is self.meta_lr and self.outer_unused))

    def set_config(self, cfg: AlgorithmConfig | None) -> None:
        cfg = cfg or AlgorithmConfig.defaults(self.name)
        self._extra = {k: v for k, v in cfg.to_dict().items()
                       if k not in ("name", "inner_lr", "inner_steps", "test_inner_steps", self.outer_field)}
        self.inner_lr.setText(_fmt_float(cfg.inner_lr))
        self.inner_steps.setValue(cfg.inner_steps)
        self.test_steps.setValue(cfg.test_inner_steps)
        self.meta_lr.setText(_fmt_float(getattr(cfg, self.outer_field)))
        if self.outer_field == "meta_lr":  # the schedule is not a field of its own: say it where the rate is
            schedule = ("annealed to 0 by a cosine over the run" if cfg.meta_lr_schedule == "cosine"
                        else "constant over the run")
            self.meta_lr.setToolTip(f"{self.algorithm.outer_lr_tip}; {schedule} (TOML / CLI: meta_lr_schedule)")
        # TRPO (2-D navigation's outer step for MAML and FOMAML) sizes its step by the KL bound, not by this rate
        self.outer_unused = self.outer_field == "meta_lr" and cfg.outer_optimizer == "trpo"
        if self.outer_unused:
            self.meta_lr.setToolTip(f"{algorithm_label(self.name)} does not read this rate: its outer step is TRPO, "
                                    f"whose size the KL bound (0.01) sets; with outer_optimizer = \"adam\" (TOML / CLI "
                                    f"--outer-optimizer adam) Adam steps at this rate")
        self._sync_enabled(self.enabled.isChecked())
        flat = cfg.to_dict()
        self.settings.setText(", ".join(f"{k}={_fmt_setting(flat[k])}" for k in self.setting_keys if k in flat))
        self.settings.setCursorPosition(0)

    def config(self) -> AlgorithmConfig:
        label = algorithm_label(self.name)
        _check_whole(self.inner_steps, self.test_steps)
        inner_lr = _positive(self.inner_lr, f"{label} inner lr α")
        outer = _positive(self.meta_lr, f"{label} {self.algorithm.outer_lr_label}")
        values = dict(self._extra)
        values.update(inner_lr=inner_lr, inner_steps=self.inner_steps.value(),
                      test_inner_steps=self.test_steps.value())
        values[self.outer_field] = outer
        values.update(self._settings(label))
        try:  # from_dict: a plug-in's declared options (in _extra) go to `options`
            return AlgorithmConfig.from_dict({**values, "name": self.name}, strict=True)
        except ValueError as exc:
            raise FormError(f"{label}: {exc}", self.inner_lr) from None


    def _settings(self, label: str) -> dict:
        """key=value pairs of the settings field (values read as TOML: 10, 0.5, true, [1, 2]; else text)."""
        import re


        out = {}
        text = self.settings.text().strip()
        for item in filter(None, (p.strip() for p in re.split(r",(?![^\[]*\])", text))):
            key, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not key:
                raise FormError(f"{label} settings: write key=value, got '{item}'", self.settings)
            if key not in self.setting_keys:
                raise FormError(f"{label} has no setting '{key}' (it takes {', '.join(self.setting_keys)})",
                                self.settings)
            try:
                out[key] = parse_toml(f"v = {value}", f"{label}'s setting {key}")["v"]
            except ValueError:  # not TOML (or nested absurdly deep): taken as text, the option's type check follows
                out[key] = value
        return out


def _fmt_setting(value) -> str:
    """A setting as the settings field shows it (and reads it back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _fmt_float(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt_setting(v) for v in value) + "]"
    return str(value)


def _check_whole(*fields: IntField) -> None:
    """Refuse a whole-number field whose text is not its value (unreadable, out of range), saying why."""
    for field in fields:
        problem = field.problem()
        if problem:
            raise FormError(problem, field)


def _positive(edit: QLineEdit, what: str) -> float:
    text = edit.text().strip()
    if not text:
        raise FormError(f"{what} is empty: enter a positive number such as 0.01", edit)
    try:
        value = float(text)
    except ValueError:
        raise FormError(f"{what} must be a number, got '{text}'", edit) from None
    if not math.isfinite(value) or value <= 0:
        raise FormError(f"{what} must be a positive number, got {text}", edit)
    return value


class ExperimentPanel(QWidget):
    """The form (scrollable) with its error message pinned below it, always in view.

    Emits `changed` on every edit and `validity_changed(ok, message)` when the form becomes (in)valid.
    """

    changed = Signal()
    validity_changed = Signal(bool, str)
    open_image_set_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._base = default_config()
        self._valid = True
        self._message = ""
        self._loading = False

        body = self.form = QWidget()
        body.setObjectName("ExperimentBody")
        layout = QVBoxLayout(body)
        layout.setContentsMargins(10, 2, 10, 10)
        layout.setSpacing(4)

        # task --------------------------------------------------------------------------------------
        task_box = QGroupBox("Task")
        form = self._form(task_box)
        self.task = QComboBox()
        for entry in TASKS.entries():  # built-in families, then the plug-ins'
            kind = entry.obj
            self.task.addItem(kind.label or entry.name, entry.name)
            tip = kind.description + ("" if entry.source == BUILTIN else f" (plug-in: {entry.source})")
            self.task.setItemData(self.task.count() - 1, tip.strip(), Qt.ItemDataRole.ToolTipRole)
        if not image_tasks_available() and self.task.findData("images") >= 0:
            item = self.task.model().item(self.task.findData("images"))
            item.setEnabled(False)
            item.setToolTip("Image tasks are not available in this build")
        self.task.setToolTip("The task family meta-training samples from")
        form.addRow("Family", self.task)
        # image tasks: where the images come from, and N
        self.image_source = QComboBox()
        self.image_source.addItem(GLYPHS_LABEL, None)
        self.image_source.setItemData(0, "Handwriting-like characters generated by the app (no download)",
                                      Qt.ItemDataRole.ToolTipRole)
        self.image_source.setToolTip(IMAGE_SOURCE_TIP)
        self.image_source.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.image_source.setMinimumContentsLength(8)
        self.open_images = QPushButton("Open…")
        self.open_images.setToolTip("Open an image set: a zip or a folder of class folders (File ▸ Open image set)")
        self.open_images.clicked.connect(self.open_image_set_requested)
        source_row = QWidget()
        row = QHBoxLayout(source_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(6)
        row.addWidget(self.image_source, 1)
        row.addWidget(self.open_images)
        form.addRow("Image set", source_row)
        self.heldout = QComboBox()  # image tasks: the classes validation and eval use (docs/image_tasks.md)
        self.heldout.addItem("Split from the image set", "lab")
        self.heldout.addItem("The MAML paper's split", "paper")
        self.heldout.setItemData(0, "The lab's rule: 30% of the classes held out (1,200 train in sets of 1,500+)",
                                 Qt.ItemDataRole.ToolTipRole)
        self.heldout.setItemData(1, "cbfinn/maml's Omniglot split: the full Omniglot (both zips in a config's "
                                    "data list), 1,100 characters train, 100 validate, 423 held out",
                                 Qt.ItemDataRole.ToolTipRole)
        self.heldout.setToolTip("The classes validation and evaluation use: a split of the image set, or another "
                                "set (Open image set ▸ Use as held-out set)")
        form.addRow("Held out", self.heldout)
        self.ways = _spin("N (ways)", 2, 100, tip="N: classes per task (N-way classification)")
        form.addRow("N (ways)", self.ways)
        self.shots = _spin("K (shots)", 1, 1000, tip="K: support examples per task (per class for images)")
        form.addRow("K (shots)", self.shots)
        self.meta_batch = _spin("Meta-batch", 1, 100000, tip="tasks per meta-iteration")
        form.addRow("Meta-batch", self.meta_batch)
        self.task_form = form
        self.image_rows = (source_row, self.ways)
        layout.addWidget(task_box)

        # model -------------------------------------------------------------------------------------
        model_box = QGroupBox("Model")
        form = self._form(model_box)
        self.hidden = QLineEdit()
        self.hidden.setPlaceholderText("e.g. 40, 40")
        self.hidden.setToolTip("Hidden layer widths of the MLP (2-D navigation: of the policy's mean network), "
                               "separated by commas (the MAML paper: 40, 40 for sinusoids, 100, 100 for navigation)")
        form.addRow("Hidden widths", self.hidden)
        self.activation = QComboBox()
        for name in ACTIVATIONS:
            self.activation.addItem(name, name)
        form.addRow("Activation", self.activation)
        self.network = QLabel("Conv-4: 4 × (3×3 conv, 64 filters)")
        self.network.setToolTip("Image tasks train the MAML paper's conv-4 network (batch norm, ReLU, stride 2)")
        form.addRow("Network", self.network)
        self.convention = QComboBox()  # image tasks: the task option `convention` (docs/image_tasks.md)
        self.convention.addItem("Lab: per-task mean loss", "lab")
        self.convention.addItem("cbfinn/maml: loss sum / K", "cbfinn")
        self.convention.setItemData(0, "Cross-entropy averaged over a task's images; batch norm with scale and "
                                       "shift (eps 1e-5), all adapted; flattened head", Qt.ItemDataRole.ToolTipRole)
        self.convention.setItemData(1, "cbfinn/maml's code: cross-entropy summed over the images / K (N times the "
                                       "mean, so inner lr 0.4 means what it meant in the paper); batch norm without "
                                       "scale, eps 1e-3, shift not adapted in the inner loop; the head on the mean "
                                       "of the last 2x2 map", Qt.ItemDataRole.ToolTipRole)
        self.convention.setToolTip("Loss and batch-norm conventions: the lab's, or those of the MAML paper's code")
        form.addRow("Conventions", self.convention)
        self.model_form = form
        layout.addWidget(model_box)

        # schedule ----------------------------------------------------------------------------------
        run_box = QGroupBox("Training")
        form = self._form(run_box)
        self.iterations = _spin("Iterations", 1, 100_000_000, 1000, "meta-iterations to train")
        form.addRow("Iterations", self.iterations)
        self.seed = _spin("Seed", 0, 2**31 - 1, tip="seed of the task stream and of the initialization")
        form.addRow("Seed", self.seed)
        self.device = QComboBox()
        self.device.addItem("auto", "auto")
        self.device.addItem("cpu", "cpu")
        try:
            import torch

            if torch.cuda.is_available():
                self.device.addItem("cuda", "cuda")
        except Exception:  # noqa: BLE001 - a broken CUDA install leaves cpu and auto
            pass
        self.device.setToolTip("auto: CUDA when available, else CPU")
        form.addRow("Device", self.device)
        layout.addWidget(run_box)

        # algorithms --------------------------------------------------------------------------------
        algo_box = QGroupBox("Algorithms")
        grid = QGridLayout(algo_box)
        grid.setContentsMargins(10, 12, 10, 8)
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(5)
        self.columns = {name: AlgorithmColumn(name) for name in algorithm_names()}
        rows = ("Inner lr α", "Inner steps", "Test steps", "Meta lr β / ε", "Settings")
        tips = ("SGD step size of adaptation (training and test)", "inner steps in meta-training",
                "inner steps when evaluating", "outer step size, as each algorithm defines it: "
                + "; ".join(f"{algorithm_label(n)}: {ALGORITHMS.get(n).outer_lr_label}" for n in self.columns),
                "an algorithm's own settings, key=value separated by commas (hover a field for its keys)")
        # two algorithms per block keeps the panel narrow: MAML | FOMAML, then Reptile | Pretrained, then the
        # plug-ins' algorithms, two by two
        for block in range((len(self.columns) + 1) // 2):
            base = block * 7
            for r, (text, tip) in enumerate(zip(rows, tips, strict=True), start=1):
                label = QLabel(text)
                label.setToolTip(tip)
                label.setProperty("hint", True)
                grid.addWidget(label, base + r, 0)
            if block:
                grid.setRowMinimumHeight(base - 1, 8)
        for i, name in enumerate(algorithm_names()):
            col = self.columns[name]
            block, c = divmod(i, 2)
            base = block * 7
            grid.addWidget(col.enabled, base, 1 + c)
            for r, w in enumerate(col.fields, start=1):
                grid.addWidget(w, base + r, 1 + c)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(2, 1)
        layout.addWidget(algo_box)

        layout.addStretch(1)
        self.scroll.setWidget(body)
        self.error = QLabel()
        self.error.setObjectName("FormError")
        self.error.setWordWrap(True)
        self.error.setVisible(False)
        self.error.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        outer.addWidget(self.scroll, 1)
        outer.addWidget(self.error)

        self.task.currentIndexChanged.connect(self._on_task_changed)
        self.image_source.currentIndexChanged.connect(self._sync_image_source_tip)
        for w in (self.task, self.activation, self.device, self.image_source, self.convention, self.heldout):
            w.currentIndexChanged.connect(self._on_edit)
        for w in (self.shots, self.meta_batch, self.iterations, self.seed, self.ways):
            self._follow_whole(w)
        self.hidden.textChanged.connect(self._on_edit)
        for col in self.columns.values():
            col.enabled.toggled.connect(self._on_edit)
            col.inner_lr.textChanged.connect(self._on_edit)
            col.meta_lr.textChanged.connect(self._on_edit)
            self._follow_whole(col.inner_steps)
            self._follow_whole(col.test_steps)
            col.settings.textChanged.connect(self._on_edit)
        self.set_config(self._base)
        # never clip the form horizontally: the panel is at least as wide as its content
        self.setMinimumWidth(body.minimumSizeHint().width() + self.scroll.verticalScrollBar().sizeHint().width() + 2)

    def _follow_whole(self, field: IntField) -> None:
        """Check the form when a whole-number field's value changes, and when its text does while the text cannot
        be read or the form is invalid (an unreadable edit changes no value; fixing it may not either)."""
        field.valueChanged.connect(self._on_edit)
        field.lineEdit().textChanged.connect(
            lambda _text: self._on_edit() if field.problem() or not self._valid else None)

    @staticmethod
    def _form(box: QGroupBox) -> QFormLayout:
        form = QFormLayout(box)
        form.setContentsMargins(10, 12, 10, 8)
        form.setHorizontalSpacing(10)
        form.setVerticalSpacing(5)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        return form

    # -- config in / out -----------------------------------------------------------------------------
    def set_config(self, config: ExperimentConfig) -> None:
        self._loading = True
        try:
            self._base = config
            self._set_combo(self.task, config.task)
            self._select_image_source(config.data)
            self._select_heldout(getattr(config, "eval_data", None), (config.task_options or {}).get("split"))
            self.ways.setValue(config.ways)
            self.shots.setValue(config.shots)
            self.meta_batch.setValue(config.meta_batch_size)
            self.hidden.setText(", ".join(str(h) for h in config.hidden))
            self._set_combo(self.activation, config.activation)
            self.iterations.setValue(config.iterations)
            self.seed.setValue(config.seed)
            self._set_combo(self.convention, (config.task_options or {}).get("convention", self._default_convention()))
            if self.device.findData(config.device) < 0:
                self.device.addItem(config.device, config.device)
            self._set_combo(self.device, config.device)
            chosen = {a.name: a for a in config.algorithms}
            for name, col in self.columns.items():
                col.set_config(chosen.get(name))
                col.enabled.setChecked(name in chosen)
                col._sync_enabled(name in chosen)
        finally:
            self._loading = False
        self._sync_task_rows()
        self._sync_family_fit()
        self._on_edit()

    # -- the task family -----------------------------------------------------------------------------
    def _select_image_source(self, data) -> None:
        """Select (adding it when new) the image set at path `data`; None: the built-in glyphs."""
        if data is None or str(data) == "" or (isinstance(data, (list, tuple)) and not data):
            self.image_source.setCurrentIndex(0)
            return
        if isinstance(data, (list, tuple)):  # several sets trained as one (a config's `data = [...]`)
            data = [str(d) for d in data] if len(data) > 1 else str(data[0])
        paths = data if isinstance(data, list) else [str(data)]
        i = self.image_source.findData(data)
        if i < 0:
            self.image_source.addItem(" + ".join(_short_name(Path(p).name or p) for p in paths), data)
            i = self.image_source.count() - 1
            self.image_source.setItemData(i, "\n".join(paths), Qt.ItemDataRole.ToolTipRole)
        self.image_source.setCurrentIndex(i)

    def _select_heldout(self, eval_data, split) -> None:
        """Select the held-out choice: a separate set at path `eval_data` (added when new), else the split."""
        if eval_data:
            key = f"set:{eval_data}"
            if self.heldout.findData(key) < 0:
                self.heldout.addItem(f"{_short_name(Path(eval_data).name or eval_data)} (held-out set)", key)
                self.heldout.setItemData(self.heldout.count() - 1, str(eval_data), Qt.ItemDataRole.ToolTipRole)
        else:
            key = split or "lab"
        self._set_combo(self.heldout, key)

    def set_heldout_data(self, path) -> None:
        """Validate and evaluate on the image set at `path` (every class of the image set then meta-trains)."""
        self._select_heldout(str(path), None)

    def _sync_image_source_tip(self, *_args) -> None:
        """The field's tooltip names the whole path of the chosen set (its text may be shortened)."""
        data = self.image_source.currentData()
        shown = "\n".join(data) if isinstance(data, list) else data
        self.image_source.setToolTip(f"{shown}\n\n{IMAGE_SOURCE_TIP}" if data else IMAGE_SOURCE_TIP)

    def set_image_data(self, data) -> None:
        """Use the image set at `data` (a zip or folder path; None: the built-in glyphs) for image tasks."""
        if not is_image_family(self.task.currentData()):
            images = next((n for n in TASKS.names() if is_image_family(n)), "images")
            self.task.setCurrentIndex(self.task.findData(images))  # the image defaults come with it
        self._select_image_source(data)

    @property
    def image_data(self) -> str | None:
        return self.image_source.currentData()

    def _sync_task_rows(self) -> None:
        images = is_image_family(self.task.currentData())
        for w in self.image_rows:
            self.task_form.setRowVisible(w, images)
        self.model_form.setRowVisible(self.hidden, not images)
        self.model_form.setRowVisible(self.activation, not images)
        self.model_form.setRowVisible(self.network, images)
        self.model_form.setRowVisible(self.convention, self.task.currentData() == "images")
        self.task_form.setRowVisible(self.heldout, self.task.currentData() == "images")

    @staticmethod
    def _default_convention() -> str:
        from ..core.tasks.images import ImageTasks

        return ImageTasks.option_defaults.get("convention", "lab")

    def _sync_family_fit(self) -> None:
        """Algorithms the chosen family refuses (a classifier only on a regression family) are unchecked and
        disabled, the reason as their tooltip (core.algorithms.registry.family_refusal, what validation says)."""
        task = self.task.currentData()
        kind = task_family(task) if task in TASKS else None
        for name, col in self.columns.items():
            reason = family_refusal(name, kind) if kind is not None else None
            col.set_refused(reason)

    def _on_task_changed(self, *_args) -> None:
        """A new family by hand: its defaults (the MAML paper's settings, sized for this app) come with it."""
        self._sync_task_rows()
        self._sync_family_fit()
        if self._loading:
            return
        task = self.task.currentData()
        base = self._base.to_dict()
        if base.get("task") != task:
            base.pop("task_options", None)  # another family's settings
        default = default_config().to_dict()
        if is_image_family(task):
            values = dict(APP_IMAGE_DEFAULTS)
        elif task == default["task"]:
            values = {k: default[k] for k in ("shots", "queries", "meta_batch_size", "iterations", "val_every",
                                              "val_tasks", "hidden")}
        else:  # another family (a plug-in's): its own defaults, the app's validation schedule
            values = {k: default[k] for k in ("val_every", "val_tasks")}
            values.update(task_family(task).experiment_defaults)
        base.update({k: v for k, v in values.items() if k in base}, task=task)
        base["algorithms"] = [AlgorithmConfig.defaults(a.name, task=task).to_dict()
                              for a in (self._base.algorithms or [])]
        try:
            new_base = ExperimentConfig.from_dict(base)
        except ValueError:
            return
        self._loading = True
        try:
            self._base = new_base
            self.shots.setValue(new_base.shots)
            self.meta_batch.setValue(new_base.meta_batch_size)
            self.iterations.setValue(new_base.iterations)
            self.ways.setValue(new_base.ways)
            self.hidden.setText(", ".join(str(h) for h in new_base.hidden))  # the family's (navigation: 100, 100)
            if task == "images":
                self._set_combo(self.convention, new_base.task_option("convention"))
            for name, col in self.columns.items():
                enabled = col.enabled.isChecked()
                col.set_config(AlgorithmConfig.defaults(name, task=task))
                col._sync_enabled(enabled)
        finally:
            self._loading = False

    @staticmethod
    def _set_combo(combo: QComboBox, value) -> None:
        i = combo.findData(value)
        if i >= 0:
            combo.setCurrentIndex(i)

    def _hidden_widths(self) -> list[int]:
        text = self.hidden.text().replace(";", ",").strip()
        parts = [p for p in text.replace(" ", ",").split(",") if p]
        try:
            widths = [int(p) for p in parts]
        except ValueError:
            widths = []
        if not widths or any(w < 1 or w > 100000 for w in widths):
            raise FormError("Hidden widths: use positive integers separated by commas, e.g. 40, 40 "
                            f"(got '{self.hidden.text()}')", self.hidden)
        return widths

    def config(self) -> ExperimentConfig:
        """The experiment the form describes; raises FormError (a ValueError) saying what is wrong."""
        _check_whole(self.shots, self.meta_batch, self.iterations, self.seed,
                     *((self.ways,) if is_image_family(self.task.currentData()) else ()))
        algorithms = [col.config() for col in self.columns.values() if col.enabled.isChecked()]
        if not algorithms:
            raise FormError("Choose at least one algorithm to train", self.columns["maml"].enabled)
        task = self.task.currentData()
        if task == "images" and not image_tasks_available():
            raise FormError("Image tasks are not available in this build: choose Sinusoid regression", self.task)
        data = self._base.to_dict()
        if data.get("task") != task:
            data.pop("task_options", None)  # another family's settings
        if is_image_family(task):
            data.update(data=self.image_source.currentData(), ways=self.ways.value())
        if task == "images":
            held = self.heldout.currentData() or "lab"
            data["task_options"] = {**(data.get("task_options") or {}), "convention": self.convention.currentData(),
                                    "split": "lab" if held.startswith("set:") else held}
            data["eval_data"] = held[len("set:"):] if held.startswith("set:") else None
        data.update(task=task, shots=self.shots.value(), meta_batch_size=self.meta_batch.value(),
                    hidden=self._hidden_widths(), activation=self.activation.currentData(),
                    iterations=self.iterations.value(), seed=self.seed.value(), device=self.device.currentData())
        data["algorithms"] = [a.to_dict() for a in algorithms]
        for key in ("data", "eval_data"):
            if data.get(key) is None:
                data.pop(key, None)
        try:
            config = ExperimentConfig.from_dict(data)
        except ValueError as exc:
            raise FormError(str(exc)) from None
        if config.device != "auto":
            from ..core.training.device import resolve_device

            try:
                resolve_device(config.device)
            except ValueError as exc:
                raise FormError(str(exc), self.device) from None
        return config

    def try_config(self) -> tuple[ExperimentConfig | None, str]:
        try:
            return self.config(), ""
        except FormError as exc:
            return None, str(exc)

    @property
    def valid(self) -> bool:
        return self._valid

    @property
    def message(self) -> str:
        return self._message

    def _on_edit(self, *_args) -> None:
        if self._loading:
            return
        for w in self._all_fields():
            if w.property("invalid"):
                w.setProperty("invalid", False)
                w.style().unpolish(w)
                w.style().polish(w)
        try:
            self.config()
            ok, message = True, ""
        except FormError as exc:
            ok, message = False, str(exc)
            if exc.widget is not None and hasattr(exc.widget, "setProperty"):
                exc.widget.setProperty("invalid", True)
                exc.widget.style().unpolish(exc.widget)
                exc.widget.style().polish(exc.widget)
        self.error.setText(f"⚠  {message}" if message else "")
        self.error.setVisible(bool(message))
        changed = ok != self._valid or message != self._message
        self._valid, self._message = ok, message
        if changed:
            self.validity_changed.emit(ok, message)
        self.changed.emit()

    def _all_fields(self):
        yield from (self.hidden, self.shots, self.meta_batch, self.iterations, self.seed, self.task, self.device,
                    self.ways, self.convention)
        for col in self.columns.values():
            yield col.enabled
            yield from col.fields

    def set_running(self, running: bool) -> None:
        """While a run trains, its experiment cannot change."""
        self.form.setEnabled(not running)

