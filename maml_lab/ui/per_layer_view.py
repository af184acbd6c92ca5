"""The Per-layer view: for every trained or imported initialization, side by side, how far each layer moves in the
inner loop (relative change ||theta_l^(s) - theta_l^(0)|| / ||theta_l^(0)||) and how much its representation changes
(linear CKA of the layer's activations before vs after adaptation; Raghu et al. 2020, "Rapid learning or feature
reuse?"), on the same seeded held-out tasks, mean with a 95% interval. The Rule box adapts every initialization by
its own rule, or by SGD on the head only, the body only or every layer, to test the feature-reuse claim on any
initialization. The numbers come from lab/per_layer.py, computed off the GUI thread; Export numbers saves them as CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QSpinBox

from ..core.export import atomic_write_bytes
from ..lab.initializations import Initialization
from ..lab.inside import RunPaths
from ..lab.jobs import errors_note
from ..lab.per_layer import RULE_LABELS, RULES, LayerRequest, PerLayerSet, compute_per_layer, to_csv
from .colors import algorithm_color, qcolor
from .computed_view import HeldOutView, plain_plot, set_quietly
from .inside_plots import compact, flow_bar, labelled, readable_log_ticks, readout_label
from .theme import MUTED, TEXT, style_plot
from .views import ViewSpec, adapts_by_steps, family_label, sampled_from_policy, steps_reason

GROUP_WIDTH = 0.8  # of one layer's slot, shared by the initializations' bars


class PerLayerView(HeldOutView):
    message = Signal(str)

    title = "per-layer"
    queries = 50
    request_type = LayerRequest
    result_type = PerLayerSet
    what = "see how each layer adapts"

    def __init__(self, parent=None):
        super().__init__(parent)
        self.result: PerLayerSet | None = None

        self.rule = compact(QComboBox(), 12)
        for rule in RULES:
            self.rule.addItem(RULE_LABELS[rule], rule)
        self.rule.currentIndexChanged.connect(lambda _: self._inputs_changed())
        self.shots = QSpinBox()
        self.shots.setRange(1, 100)
        self.shots.setValue(10)
        self.steps = QSpinBox()
        self.steps.setRange(1, 50)
        self.steps.setValue(5)
        self.tasks = QSpinBox()
        self.tasks.setRange(2, 1000)
        self.tasks.setValue(50)
        self.shown_step = QSpinBox()
        self.shown_step.setRange(1, 50)
        self.shown_step.setValue(5)
        self.shown_step.valueChanged.connect(lambda _: self._draw())
        for spin in (self.shots, self.steps, self.tasks):
            spin.valueChanged.connect(lambda _: self._inputs_changed())
        for spin in (self.shots, self.steps, self.tasks, self.shown_step):
            spin.setMaximumWidth(72)
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.setToolTip("Relative change on a log axis (an initialization whose inner loop diverges, e.g. "
                                  "learned step sizes run for more steps than they were trained for, dwarfs the rest)")
        self.log_scale.toggled.connect(lambda _: self._draw())
        self.data_button("Export numbers…", "Save every initialization's per-layer numbers, every step, as CSV",
                         self.export_csv)
        self.export_image_button.setToolTip("Save the plots as PNG or SVG (File ▸ Export plot)")
        bar = flow_bar([
            labelled("Rule", self.rule, "How the inner loop adapts: each initialization's own rule (ANIL: head only, "
                     "BOIL: body only, Meta-SGD: its learned rates, ...), or SGD with its inner lr on the head only, "
                     "the body only or every layer"),
            labelled("K (shots)", self.shots, "Support examples per held-out task (per class for images)"),
            labelled("Steps", self.steps, "Inner steps of adaptation"),
            labelled("Tasks", self.tasks, "Held-out tasks the means and 95% intervals are over"),
            labelled("Show step", self.shown_step, "The inner step whose change the bars show"),
            self.log_scale, self.compute_button, self.cancel_button, self.progress, self.export_data_button,
            self.export_image_button])

        self.change_plot = plain_plot(self.graphics.addPlot(row=0, col=0))
        readable_log_ticks(self.change_plot.getAxis("left"))  # its log scale
        self.cka_plot = plain_plot(self.graphics.addPlot(row=0, col=1))
        style_plot(self.change_plot, "How far each layer moves", "layer", "‖θ_l(s) − θ_l(0)‖ / ‖θ_l(0)‖, %")
        self.change_plot.getAxis("left").enableAutoSIPrefix(False)
        style_plot(self.cka_plot, "How much each layer's representation stays", "layer", "CKA before vs after")
        self.decorate(self.change_plot, (10, 8))
        self.summary = readout_label(one_line=False)
        self.lay_out([bar], [[self.summary], [self.status]])

    # -- data in -------------------------------------------------------------------------------------
    def clear_result(self) -> None:
        """No bars, layer names, titles or summary of an earlier result (the export goes with them)."""
        self._draw()
        for plot in (self.change_plot, self.cka_plot):
            plot.getAxis("bottom").setTicks(None)
        style_plot(self.change_plot, "How far each layer moves", "layer", "‖θ_l(s) − θ_l(0)‖ / ‖θ_l(0)‖, %")
        style_plot(self.cka_plot, "How much each layer's representation stays", "layer", "CKA before vs after")

    def defaults_from(self, run: RunPaths) -> None:
        """The run's K; its test steps (images: fewer tasks, they cost more)."""
        set_quietly(self.shots, run.shots)
        set_quietly(self.steps, max(run.test_steps(n) for n in run.names) if run.names else 5)
        set_quietly(self.tasks, 50 if run.model_spec.get("kind") == "mlp" else 20)
        self.shown_step.setValue(self.steps.value())

    def _inputs_changed(self) -> None:
        self.shown_step.setMaximum(self.steps.value())
        super()._inputs_changed()

    # -- computing -----------------------------------------------------------------------------------
    def fits(self, init: Initialization, family) -> bool:
        """Initializations that fit the held-out tasks, name their layers (layer_activations) and adapt by gradient
        steps (ProtoNets' prototypes and Baseline's head fit move no layer)."""
        return (super().fits(init, family) and hasattr(init.model, "layer_activations")
                and adapts_by_steps(init.algorithm))

    def job(self, requests: list, family, queries: int):
        rule, shots, steps, tasks = self.rule.currentData(), self.shots.value(), self.steps.value(), self.tasks.value()
        return lambda progress, cancel: compute_per_layer(requests, family, shots, steps, tasks, queries, rule,
                                                          progress, cancel)

    def drawn(self) -> bool:
        return self.result is not None and bool(self.result.stats)

    def can_export(self) -> bool:
        return self.result is not None and bool(self.result.stats)

    def result_text(self, result: PerLayerSet) -> str:
        return (f"{result.num_tasks} held-out tasks, K = {result.shots}, {result.steps} inner "
                f"step{'s' if result.steps != 1 else ''}, {RULE_LABELS[result.rule]}" + errors_note(result))

    def show_result(self, result: PerLayerSet) -> None:
        self.shown_step.setMaximum(result.steps)
        self.shown_step.setValue(result.steps)
        self._draw()

    # -- drawing -------------------------------------------------------------------------------------
    def _draw(self) -> None:
        self.clear_items()
        r = self.result
        self.hint.setVisible(r is None or not r.stats)
        if r is None or not r.stats:
            self.show_hint(self.hint_now())
            self.summary.setText(" ")
            return
        layers: list[str] = []
        for s in r.stats.values():
            layers += [name for name in s.layers if name not in layers]
        step = min(self.shown_step.value(), r.steps)
        log = self.log_scale.isChecked()
        self.change_plot.getAxis("left").setLogMode(log)
        changes = np.concatenate([100 * s.change[:, step] for s in r.stats.values()])
        positive = changes[np.isfinite(changes) & (changes > 0)]
        floor = float(positive.min()) / 10 if positive.size else 1e-6
        n = len(r.stats)
        width = GROUP_WIDTH / n
        summary = []
        for i, (key, s) in enumerate(r.stats.items()):
            algo = r.algorithms.get(key, key)
            label = r.labels.get(key, key)
            color = algorithm_color(algo)
            imported = self.imported(key)
            x = np.array([layers.index(name) for name in s.layers], float) + (i - (n - 1) / 2) * width
            for plot, mean, ci in ((self.change_plot, 100 * s.change[:, step], 100 * s.change_ci95[:, step]),
                                   (self.cka_plot, s.cka[:, step], s.cka_ci95[:, step])):
                shown = np.nan_to_num(mean, posinf=np.finfo(float).max)
                lo, hi = shown - np.nan_to_num(ci), shown + np.nan_to_num(ci)
                base = 0.0
                if log and plot is self.change_plot:  # bars from a floor below the smallest nonzero change
                    shown, lo, hi = (np.log10(np.clip(v, floor, None)) for v in (shown, lo, hi))
                    base = np.log10(floor)
                bars = pg.BarGraphItem(x=x, y0=base, height=shown - base, width=width * 0.92,
                                       brush=pg.mkBrush(qcolor(color, 150 if imported else 235)),
                                       pen=pg.mkPen(qcolor(color), width=1))
                errors = pg.ErrorBarItem(x=x, y=shown, top=hi - shown, bottom=shown - lo, beam=width * 0.3,
                                         pen=pg.mkPen(TEXT, width=1))
                self.add_items(plot, bars, errors)
                if plot is self.change_plot:
                    self.legend.addItem(bars, label)
            moved = ", ".join(f"{name} {100 * c:.3g}%" for name, c in zip(s.layers, s.change[:, step]))
            cka = ", ".join(f"{name} {c:.3f}" for name, c in zip(s.layers, s.cka[:, step]))
            summary.append(f"<b style='color:{color}'>{label}</b> ({s.rule_text}): moved {moved}; CKA {cka}")
        ticks = [[(j, name) for j, name in enumerate(layers)]]
        for plot in (self.change_plot, self.cka_plot):
            plot.getAxis("bottom").setTicks(ticks)
            plot.setXRange(-0.6, len(layers) - 0.4, padding=0)
        tops = [float(np.nanmax(100 * (s.change[:, step] + s.change_ci95[:, step]))) for s in r.stats.values()]
        top = max([t for t in tops if np.isfinite(t)] or [0.0])
        if log:
            self.change_plot.setYRange(np.log10(floor), np.log10(max(top, floor * 10)) + 0.1, padding=0)
        else:
            self.change_plot.setYRange(0, top * 1.08 if top > 0 else 1.0, padding=0)
        self.cka_plot.setYRange(0, 1.05, padding=0)
        self.change_plot.setTitle(f"<span style='color:{TEXT}; font-weight:600'>How far each layer moves</span>"
                                  f"<span style='color:{MUTED}'> · relative change after step {step}</span>")
        self.cka_plot.setTitle(f"<span style='color:{TEXT}; font-weight:600'>How much each representation stays"
                               f"</span><span style='color:{MUTED}'> · linear CKA, step 0 vs {step}</span>")
        self.summary.setText("<br>".join(summary))

    # -- export --------------------------------------------------------------------------------------
    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Save the numbers (every initialization, layer and step) as CSV; asks for a file without `path`."""
        if not self.can_export():
            self.message.emit("Nothing to export yet: compute first")
            return None
        path = self.ask_path(path, "Export per-layer numbers", "maml-lab-per-layer.csv", "CSV (*.csv)", ".csv")
        if path is None:
            return None
        try:
            atomic_write_bytes(path, to_csv(self.result).encode("utf-8"))
        except OSError as exc:
            self.message.emit(f"Could not write {path}: {exc.strerror or exc}")
            return None
        self.message.emit(f"Saved {path}")
        return path


def _applies(kind, algorithms) -> str | None:
    if sampled_from_policy(kind):
        return (f"Per layer compares each layer's activations on fixed support and query sets; {family_label(kind)} "
                "sample their data from the policy")
    return steps_reason("Per layer", algorithms)


VIEW = ViewSpec("per_layer", "Per layer", lambda window: PerLayerView(), applies_to=_applies)
