"""The Adaptation view: the loss (and, for image tasks, the accuracy) after 0..N inner SGD steps on held-out
tasks, for every trained or imported initialization, mean with a 95% confidence band: the MAML paper's
MAML-vs-pretrained figure (Fig. 3, right), with K selectable. Curves are computed off the GUI thread by
core.evaluation.adaptation_curve, all initializations on the same seeded tasks. Each curve comes with its
evaluation card (core/analysis/card.py: tasks, shots, queries, steps, inner optimizer, conventions, CI, the paper
protocol it matches or not), shown under the plot (hover for the full cards) and written into the CSV/JSON export.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel, QSpinBox

from ..core.analysis.card import EvaluationCard
from ..core.export import atomic_write_bytes
from ..lab.initializations import Initialization
from ..lab.inside import CurveRequest, CurveSet, RunPaths, compute_curves
from ..lab.jobs import errors_note
from .colors import algorithm_color, curve_pen, qcolor
from .computed_view import HeldOutView, plain_plot, set_quietly
from .inside_plots import flow_bar, labelled, readable_log_ticks, readout_label
from .theme import MUTED, TEXT, style_plot
from .views import ViewSpec, no_steps_text

BAND_ALPHA = 45


class AdaptationView(HeldOutView):
    title = "adaptation"
    progress_width = 140
    queries = 100
    request_type = CurveRequest
    result_type = CurveSet
    what = "compare how fast each initialization adapts"

    def __init__(self, parent=None):
        super().__init__(parent)
        self.result: CurveSet | None = None
        self.loss_label: str | None = None  # the task family's name for its loss, from the last computation
        # the family's plot_metric: 2-D navigation plots -cost (not `self.metric`: that hides QWidget.metric)
        self.plot_metric: tuple[str, float] | None = None
        self._shots_from_run = True

        self.shots = QSpinBox()
        self.shots.setRange(1, 100)
        self.shots.setValue(10)
        self.shots.valueChanged.connect(self._on_shots)
        self.steps = QSpinBox()
        self.steps.setRange(1, 100)
        self.steps.setValue(10)
        self.steps.valueChanged.connect(lambda _: self._inputs_changed())
        self.tasks = QSpinBox()
        self.tasks.setRange(10, 2000)
        self.tasks.setSingleStep(50)
        self.tasks.setValue(300)
        self.tasks.valueChanged.connect(lambda _: self._inputs_changed())
        # the predictions' batch-norm mode (core/models/batch_norm.py); "running" needs the training classes,
        # which `eval --bn running` rebuilds, so the view offers the three that need only the held-out task
        self.batch_norm = QComboBox()
        self.batch_norm.addItem("own rule", None)
        for mode in ("transductive", "support", "support+query"):
            self.batch_norm.addItem(mode, mode)
        self.batch_norm.currentIndexChanged.connect(lambda _: self._inputs_changed())
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.setChecked(False)
        self.log_scale.toggled.connect(self._on_log)
        self.data_button("Export data…", "Save the curves with their evaluation cards as CSV or JSON",
                         self.export_data)
        self.cards: OrderedDict[str, EvaluationCard] = OrderedDict()
        for spin in (self.shots, self.steps, self.tasks):
            spin.setMaximumWidth(78)
        bar = flow_bar([
            labelled("K (shots)", self.shots, "Support examples per held-out task (per class for images)"),
            labelled("Steps", self.steps, "Adaptation steps, each initialization by its own rule (SGD at its "
                                           "inner lr, its learned rates, or its inner optimizer)"),
            labelled("Tasks", self.tasks, "Held-out tasks the mean and its 95% interval are over"),
            labelled("Batch norm", self.batch_norm,
                     "How batch norm normalizes a task's queries (conv-4): each algorithm's own rule (transductive, "
                     "or Reptile's option); transductive: the queries together, with their own statistics (cbfinn/"
                     "maml); support: the support set's statistics only, so queries could come one at a time; "
                     "support+query: each query in one batch with the support set (supervised-reptile). Adaptation "
                     "is the same in every mode"),
            self.log_scale, self.compute_button, self.cancel_button, self.progress, self.export_image_button,
            self.export_data_button])

        self.loss_plot = plain_plot(self.graphics.addPlot(row=0, col=0))
        readable_log_ticks(self.loss_plot.getAxis("left"))  # its log scale
        self.acc_plot = plain_plot(pg.PlotItem())
        style_plot(self.loss_plot, "Loss on held-out tasks after fine-tuning", "gradient steps", "MSE")
        style_plot(self.acc_plot, "Accuracy on held-out tasks", "gradient steps", "accuracy")
        self.decorate(self.loss_plot, (-10, 8))
        self.summary = readout_label(one_line=False)
        self.card_label = QLabel(" ")  # the evaluation protocol in one line; the full cards in its tooltip
        self.card_label.setProperty("hint", True)
        self.card_label.setWordWrap(True)
        self._acc_shown = False
        self.lay_out([bar], [[self.summary], [self.card_label], [self.status]])

    # -- data in -------------------------------------------------------------------------------------
    def set_initialization(self, init: Initialization) -> None:
        self.inits[init.key] = init
        self._inputs_changed()

    def remove_initialization(self, key: str) -> None:
        if self.inits.pop(key, None) is not None:
            self._inputs_changed()

    def clear_run(self) -> None:
        self._shots_from_run = True
        super().clear_run()

    def clear_result(self) -> None:
        """No curves, cards, summary or title of an earlier result (Export data… goes with them)."""
        super().clear_result()
        self.cards = OrderedDict()
        self._show_cards()
        self.summary.setText(" ")
        self.loss_label = self.plot_metric = None
        self._show_accuracy(False)
        style_plot(self.loss_plot, "Loss on held-out tasks after fine-tuning", "gradient steps", "")
        self.loss_plot.setLabel("left", "")

    def defaults_from(self, run: RunPaths) -> None:
        """The run's K and test steps (fewer tasks for models that cost more)."""
        if self._shots_from_run:
            set_quietly(self.shots, run.shots)
            set_quietly(self.steps, max(run.test_steps(n) for n in run.names) if run.names else 10)
            if run.model_spec.get("kind") != "mlp":
                set_quietly(self.tasks, 100)

    def _on_shots(self, _k: int) -> None:
        self._shots_from_run = False
        self._inputs_changed()

    # -- computing -----------------------------------------------------------------------------------
    def job(self, requests: list, family, queries: int):
        shots, steps, tasks = self.shots.value(), self.steps.value(), self.tasks.value()
        batch_norm = self.batch_norm.currentData()
        return lambda progress, cancel: compute_curves(requests, family, shots, steps, tasks, queries, progress,
                                                       cancel, batch_norm=batch_norm)

    def drawn(self) -> bool:
        return self.result is not None and bool(self.result.curves)

    def can_export(self) -> bool:
        return self.result is not None and bool(self.result.curves)

    def result_text(self, result: CurveSet) -> str:
        return f"{result.num_tasks} held-out tasks, K = {result.shots}" + errors_note(result)

    def show_result(self, result: CurveSet) -> None:
        family = self._computing[0] if self._computing is not None else None
        self.loss_label = _loss_label(family)  # the family names its loss (2-D navigation: cost = -return)
        self.plot_metric = _plot_metric(family)  # (label, sign) of what the loss stands for, or None
        self.cards = self._cards(result)
        self._show_cards()
        self._draw()

    # -- evaluation cards ----------------------------------------------------------------------------
    def _cards(self, result: CurveSet) -> "OrderedDict[str, EvaluationCard]":
        """One card per computed curve: the protocol its numbers were measured under."""
        cards = OrderedDict()
        if self._computing is None:
            return cards
        family, queries, reqs = self._computing
        for r in reqs:
            if r.key not in result.curves:
                continue
            cards[r.key] = EvaluationCard.build(
                getattr(family, "name", "sinusoid"), result.num_tasks, [result.shots], list(range(result.steps + 1)),
                r.adaptation, queries=queries, ways=getattr(family, "ways", None), loss=family.loss, model=r.model,
                algorithm=r.algorithm, batch_norm=result.batch_norm, notes={"initialization": r.label})
        return cards

    def _show_cards(self) -> None:
        if not self.cards:
            self.card_label.setText(" ")
            self.card_label.setToolTip("")
            return
        first = next(iter(self.cards.values()))
        optimizers = sorted({c.inner_optimizer for c in self.cards.values()})
        paper = ("matches the " + first.paper if first.matches_paper else
                 f"differs from the {first.paper}: {'; '.join(first.differences)}"
                 if first.paper else
                 "no paper protocol for this setting")
        modes = sorted({c.batch_norm_mode for c in self.cards.values() if c.batch_norm_mode})
        bn = f"batch norm {' / '.join(modes)}; " if modes else ""
        self.card_label.setText(f"Evaluation card: {first.what()}; {first.convention} conventions; {bn}"
                                f"{first.ci}; {' / '.join(optimizers)}; {paper} · hover for the full cards")
        self.card_label.setToolTip("\n\n".join(f"{self.result.labels.get(k, k)}\n{c.text()}"
                                                for k, c in self.cards.items()))

    def export_data(self, path: str | Path | None = None) -> Path | None:
        """The curves with their evaluation cards: CSV (the cards as leading '#' lines) or JSON; None if cancelled,
        nothing computed, or the file could not be written (a dialog says why)."""
        if not self.can_export():
            return None
        path = self.ask_path(path, "Export adaptation data", "maml-lab-adaptation.csv", "CSV (*.csv);;JSON (*.json)")
        if path is None:
            return None
        try:
            atomic_write_bytes(path, curves_data(self.result, self.cards, path.suffix.lower()))
        except OSError as exc:
            from PySide6.QtWidgets import QMessageBox

            QMessageBox.warning(self, "Export failed", f"{path} was not written:\n{exc}")
            return None
        return path

    # -- drawing -------------------------------------------------------------------------------------
    def _on_log(self, on: bool) -> None:
        # the data are drawn as log10 values (bands and markers included); the axis labels them as powers of 10
        self.loss_plot.getAxis("left").setLogMode(on)
        self._draw()

    def _show_accuracy(self, on: bool) -> None:
        if on == self._acc_shown:
            return
        self._acc_shown = on
        if on:
            self.graphics.addItem(self.acc_plot, row=0, col=1)
        else:
            self.graphics.removeItem(self.acc_plot)

    def _draw(self) -> None:
        r = self.result
        self.clear_items()
        if r is None:
            return
        self.hint.setVisible(not r.curves)
        self._show_accuracy(r.classification)
        loss = self.loss_label or ("cross-entropy" if r.classification else "MSE")
        sign = 1.0
        if self.plot_metric is not None:
            loss, sign = self.plot_metric
        self.loss_plot.setLabel("left", f"<span style='color:{MUTED}'>{loss}</span>")
        self.loss_plot.setTitle(f"<span style='color:{TEXT}; font-weight:600'>{loss[:1].upper() + loss[1:]} after "
                                f"fine-tuning on "
                                f"{r.num_tasks} held-out tasks, K = {r.shots}</span>"
                                f"<span style='color:{MUTED}'> · mean and 95% interval</span>", size="10pt")
        log = self.log_scale.isChecked() and sign > 0  # a return is negative: no log axis
        summary = []
        curves = OrderedDict((k, _signed(c, sign)) for k, c in r.curves.items())
        for i, (key, curve) in enumerate(curves.items()):
            algo = r.algorithms.get(key, key)
            label = r.labels.get(key, key)
            no_steps = no_steps_text(algo)  # ProtoNets: one flat line; Baseline: steps are epochs; said so
            if no_steps:
                label = f"{label} ({no_steps})"
            color = algorithm_color(algo)
            imported = self.imported(key)
            offset = (i - (len(curves) - 1) / 2) * 0.06  # markers of close curves side by side, not on top
            for plot, mean, ci in ((self.loss_plot, curve.loss_mean, curve.loss_ci95),
                                   (self.acc_plot, curve.accuracy_mean, curve.accuracy_ci95)):
                if mean is None:
                    continue
                x = curve.steps.astype(float) + offset
                lo, hi = mean - ci, mean + ci
                if log and plot is self.loss_plot:
                    floor = max(float(np.nanmin(mean[mean > 0])) * 1e-3, 1e-12) if np.any(mean > 0) else 1e-12
                    lo, hi, mean = (np.log10(np.clip(v, floor, None)) for v in (lo, hi, mean))
                upper = pg.PlotDataItem(x, hi, pen=pg.mkPen(None))
                lower = pg.PlotDataItem(x, lo, pen=pg.mkPen(None))
                band = pg.FillBetweenItem(upper, lower, brush=pg.mkBrush(qcolor(color, BAND_ALPHA)))
                band.setZValue(1)
                pen = curve_pen(algo, width=2.6)
                if imported:
                    pen.setStyle(Qt.PenStyle.DotLine)
                line = pg.PlotDataItem(x, mean, pen=pen, symbol="o", symbolSize=6, symbolBrush=pg.mkBrush(color),
                                       symbolPen=pg.mkPen("w", width=1))
                line.setZValue(10)
                self.add_items(plot, upper, lower, band, line)
                if plot is self.loss_plot:
                    self.legend.addItem(line, label)
            n = int(curve.steps[-1])
            if no_steps:
                text = (f"<b style='color:{color}'>{label}</b> {loss} {curve.loss_mean[-1]:.3g} "
                        f"± {curve.loss_ci95[-1]:.2g}")
            else:
                text = (f"<b style='color:{color}'>{label}</b> {loss} {curve.loss_mean[0]:.3g} → "
                        f"{curve.loss_mean[-1]:.3g} ± {curve.loss_ci95[-1]:.2g} after {n} step{'s' if n != 1 else ''}")
            if curve.accuracy_mean is not None:
                text += f", accuracy {100 * curve.accuracy_mean[-1]:.1f}% ± {100 * curve.accuracy_ci95[-1]:.1f}%"
            summary.append(text)
        styles = (Qt.PenStyle.DashLine, Qt.PenStyle.DotLine, Qt.PenStyle.DashDotLine)
        for j, (label, curve) in enumerate(r.references.items()):  # the family's (navigation: random init, oracle)
            curve = _signed(curve, sign)
            x = curve.steps.astype(float)
            line = pg.PlotDataItem(x, curve.loss_mean, pen=pg.mkPen(qcolor(MUTED), width=2,
                                                                     style=styles[j % len(styles)]))
            band = pg.FillBetweenItem(pg.PlotDataItem(x, curve.loss_mean + curve.loss_ci95, pen=pg.mkPen(None)),
                                      pg.PlotDataItem(x, curve.loss_mean - curve.loss_ci95, pen=pg.mkPen(None)),
                                      brush=pg.mkBrush(qcolor(MUTED, BAND_ALPHA)))
            self.add_items(self.loss_plot, band, line)
            self.legend.addItem(line, label)
            summary.append(f"<b>{label}</b> {loss} {curve.loss_mean[0]:.3g} → {curve.loss_mean[-1]:.3g}")
        self.summary.setText(" &nbsp;·&nbsp; ".join(summary) if summary else " ")
        stride = max(1, math.ceil(r.steps / 10))  # whole steps only: no 0.5 ticks
        for plot in (self.loss_plot, self.acc_plot):
            plot.enableAutoRange()
            plot.setXRange(-0.3, r.steps + 0.3, padding=0)
            plot.getAxis("bottom").setTicks([[(s, str(s)) for s in range(0, r.steps + 1, stride)]])
        if not log and sign > 0:  # losses and accuracies start at zero: the axis does too, so gaps are not exaggerated
            tops = [float(np.nanmax(c.loss_mean + c.loss_ci95)) for c in r.curves.values()]
            if tops:
                self.loss_plot.setYRange(0, max(tops) * 1.05, padding=0)
        if r.classification:
            self.acc_plot.setYRange(0, 1.0, padding=0.02)
        self._room_for_legend(from_zero=not log and sign > 0)

    def _room_for_legend(self, from_zero: bool) -> None:
        """Room above the curves for the legend (two columns, top right), so that it covers none of them: every
        corner holds some curve when returns rise from the bottom left (it covered MAML's)."""
        lines = self.legend_lines()
        self.legend.setColumnCount(2 if len(lines) > 2 else 1)
        drawn = [i for plot, i in self.items if plot is self.loss_plot and isinstance(i, pg.PlotDataItem)]  # bands too
        ys = np.concatenate([np.asarray(i.yData, np.float64) for i in drawn if i.yData is not None] or [np.empty(0)])
        ys = ys[np.isfinite(ys)]
        vb = self.loss_plot.getViewBox()
        if not ys.size or vb.height() < 80:
            return
        lo, hi = (0.0 if from_zero else float(ys.min())), float(ys.max())
        span = hi - lo or 1.0
        frac = min((self.legend.boundingRect().height() + 14) / vb.height(), 0.45)  # of the plot's height
        self.loss_plot.setYRange(lo - 0.02 * span, hi + 0.02 * span + span * frac / (1 - frac), padding=0)

    def legend_lines(self) -> list:
        """The curves the legend names (their data: where the legend should not go)."""
        return [sample.item for sample, _label in self.legend.items if isinstance(sample.item, pg.PlotDataItem)]


def curves_data(result: CurveSet, cards: dict, suffix: str) -> bytes:
    """An adaptation result as CSV (each card as '#' lines, then one row per initialization and step) or JSON
    ({"curves": [{key, label, algorithm, card, curve}]})."""
    if suffix == ".json":
        rows = [{"key": k, "label": result.labels.get(k, k), "algorithm": result.algorithms.get(k, k),
                 "card": cards[k].to_dict() if k in cards else None, "curve": c.to_dict()}
                for k, c in result.curves.items()]
        return json.dumps({"shots": result.shots, "steps": result.steps, "num_tasks": result.num_tasks,
                           "curves": rows}, indent=2).encode("utf-8")
    lines = []
    for k in result.curves:
        if k in cards:
            lines.append(f"# {result.labels.get(k, k)}")
            lines += cards[k].csv_comments()
    header = ["initialization", "algorithm", "steps", "loss_mean", "loss_ci95"]
    if result.classification:
        header += ["accuracy_mean", "accuracy_ci95"]
    lines.append(",".join(header))
    for k, c in result.curves.items():
        for i, step in enumerate(c.steps):
            row = [result.labels.get(k, k).replace(",", " "), result.algorithms.get(k, k), str(int(step)),
                   f"{c.loss_mean[i]:.6g}", f"{c.loss_ci95[i]:.6g}"]
            if result.classification and c.accuracy_mean is not None:
                row += [f"{c.accuracy_mean[i]:.6g}", f"{c.accuracy_ci95[i]:.6g}"]
            lines.append(",".join(row))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _loss_label(family) -> str | None:
    """How the task family's registry entry names its loss in plots (None: unknown family)."""
    from ..core.tasks.registry import task_family

    try:
        return task_family(getattr(family, "name", "")).loss_label
    except ValueError:
        return None


def _plot_metric(family) -> tuple[str, float] | None:
    """What the family's registry entry plots instead of its loss: (label, sign), or None."""
    from ..core.tasks.registry import task_family

    try:
        return task_family(getattr(family, "name", "")).plot_metric
    except ValueError:
        return None


def _signed(curve, sign: float):
    """The curve with its loss times `sign` (2-D navigation: cost -> return); the interval's half-width stays."""
    if sign == 1.0:
        return curve
    return dataclasses.replace(curve, loss_mean=sign * curve.loss_mean)


VIEW = ViewSpec("adaptation", "Adaptation", lambda window: AdaptationView())
