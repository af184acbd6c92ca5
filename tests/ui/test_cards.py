"""Evaluation cards in the views: the Adaptation view's label, tooltip and CSV/JSON export, the Tasks view's label
(offscreen, tiny models, no training)."""

from __future__ import annotations

import csv
import io
import json
from collections import OrderedDict

import pytest
import torch

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP
from maml_lab.lab.initializations import Initialization


@pytest.fixture(scope="module")
def glyph_heldout(tmp_path_factory):
    """The held-out classes of the built-in glyphs at 14x14, in cbfinn's convention."""
    from maml_lab.core.tasks.images import image_family_from_config
    from maml_lab.core.training.config import ExperimentConfig

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAML_LAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        config = ExperimentConfig(task="images", image_size=14, task_options={"convention": "cbfinn"})
        yield image_family_from_config(config, split="heldout")


def _mlp_init(key: str, adaptation) -> Initialization:
    model = MLP((1, 8, 8, 1))
    params = model.init_params(torch.Generator().manual_seed(0))
    return Initialization(key, key if key in ("maml", "pretrained") else "unknown", key.upper(), model, params,
                          adaptation)


def _conv_init(convention: str) -> Initialization:
    model = Conv4(1, 14, 5, filters=4, convention=convention)
    params = model.init_params(torch.Generator().manual_seed(0))
    return Initialization("maml", "maml", "MAML", model, OrderedDict(params),
                          AlgorithmConfig.defaults("maml", task="images"))


def test_adaptation_view_cards_in_label_tooltip_and_exports(qtbot, tmp_path):
    from maml_lab.ui.adaptation_view import AdaptationView

    view = AdaptationView()
    qtbot.addWidget(view, before_close_func=lambda v: v.shutdown())
    view.set_initialization(_mlp_init("maml", AlgorithmConfig.defaults("maml")))
    view.set_initialization(_mlp_init("file", 0.05))
    view.tasks.setValue(20)
    view.steps.setValue(3)
    view.shots.setValue(5)
    assert not view.export_data_button.isEnabled() and view.export_data(tmp_path / "none.csv") is None
    with qtbot.waitSignal(view.computed, timeout=60000):
        assert view.compute()
    assert set(view.cards) == {"maml", "file"}
    card = view.cards["maml"]
    assert card.tasks == 20 and card.shots == [5] and card.steps == [0, 1, 2, 3]
    text = view.card_label.text()
    assert text.startswith("Evaluation card: K = 5 sinusoid, 20 held-out tasks, 100 query points") and "lab" in text
    assert "SGD, inner lr 0.01" in text and "SGD, inner lr 0.05" in text
    assert "1.96 std / sqrt(tasks)" in view.card_label.toolTip() and "differs from the MAML paper" in \
        view.card_label.toolTip()
    assert view.export_data_button.isEnabled()

    out = view.export_data(tmp_path / "curves.csv")
    lines = out.read_text().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    assert "# MAML" in comments and "# FILE" in comments
    assert sum(line.startswith("# evaluation card: K = 5 sinusoid, 20 held-out tasks") for line in comments) == 2
    rows = list(csv.DictReader(io.StringIO("\n".join(line for line in lines if not line.startswith("#")))))
    assert len(rows) == 8 and rows[0]["steps"] == "0" and float(rows[3]["loss_mean"]) > 0

    data = json.loads(view.export_data(tmp_path / "curves.json").read_text())
    by_key = {c["key"]: c for c in data["curves"]}
    assert by_key["maml"]["card"]["tasks"] == 20 and by_key["maml"]["card"]["inner_optimizer"] == "SGD, inner lr 0.01"
    assert by_key["file"]["card"]["step_size"] == 0.05 and by_key["file"]["card"]["paper_key"] == "maml-sinusoid"
    assert by_key["maml"]["curve"]["steps"] == [0, 1, 2, 3] and data["num_tasks"] == 20


def test_adaptation_view_card_states_cbfinn_conventions(qtbot, glyph_heldout, tmp_path):
    from maml_lab.lab.inside import RunPaths
    from maml_lab.ui.adaptation_view import AdaptationView

    view = AdaptationView()
    qtbot.addWidget(view, before_close_func=lambda v: v.shutdown())
    view.set_run(RunPaths(1, 1, {"kind": "conv4"}, glyph_heldout.loss, "images", 1, 2, OrderedDict(), {},
                          eval_family=glyph_heldout))
    view.set_initialization(_conv_init("cbfinn"))
    view.tasks.setValue(10)
    view.steps.setValue(3)
    view.shots.setValue(1)
    with qtbot.waitSignal(view.computed, timeout=60000):
        assert view.compute()
    card = view.cards["maml"]
    assert card.convention == "cbfinn" and card.ways == 5 and card.queries == 2 and card.transductive
    assert "sum" in card.loss and "no scale, eps 1e-3" in card.batch_norm
    assert "5-way 1-shot images, 10 held-out tasks, 2 queries per class" in view.card_label.text()
    assert "cbfinn conventions" in view.card_label.text()
    data = json.loads(view.export_data(tmp_path / "c.json").read_text())
    assert data["curves"][0]["card"]["convention"] == "cbfinn"
    assert "accuracy_mean" in data["curves"][0]["curve"]
    assert "tasks 10 (paper: 600)" in data["curves"][0]["card"]["differences"]


def test_adaptation_view_batch_norm_setting_reaches_the_curves_and_cards(qtbot, glyph_heldout):
    from maml_lab.lab.inside import RunPaths
    from maml_lab.ui.adaptation_view import AdaptationView

    view = AdaptationView()
    qtbot.addWidget(view, before_close_func=lambda v: v.shutdown())
    view.set_run(RunPaths(1, 1, {"kind": "conv4"}, glyph_heldout.loss, "images", 1, 2, OrderedDict(), {},
                          eval_family=glyph_heldout))
    view.set_initialization(_conv_init("lab"))
    view.tasks.setValue(10)
    view.steps.setValue(1)
    view.shots.setValue(1)
    curves = {}
    for mode in ("transductive", "support"):
        view.batch_norm.setCurrentIndex(view.batch_norm.findData(mode))
        with qtbot.waitSignal(view.computed, timeout=60000):
            assert view.compute()
        card = view.cards["maml"]
        assert card.batch_norm_mode == mode and f"batch norm {mode};" in view.card_label.text()
        curves[mode] = view.result.curves["maml"].loss_mean
    assert "support-set statistics" in view.cards["maml"].batch_norm
    assert not (curves["support"] == curves["transductive"]).all()  # the mode changes the query predictions


def test_tasks_view_card_under_the_predictions(qtbot, glyph_heldout):
    from maml_lab.ui.tasks_view import TasksView

    view = TasksView()
    qtbot.addWidget(view, before_close_func=lambda v: v.shutdown())
    view.resize(1100, 800)
    view.show()
    view.steps.setValue(2)
    from maml_lab.core.training.config import ExperimentConfig

    view.config = ExperimentConfig(task="images", image_size=14, task_options={"convention": "cbfinn"})
    view._on_family("family", (("test",), glyph_heldout))  # as if the view had loaded the held-out classes
    view.set_initialization(_conv_init("cbfinn"))
    assert view.wait_until_idle(60)
    qtbot.waitUntil(lambda: "maml" in view.cards, timeout=60000)
    card = view.cards["maml"]
    assert card.tasks == 1 and card.ways == 5 and card.steps == [2] and card.convention == "cbfinn"
    assert view.card_label.text().startswith("Evaluation card: 5-way 1-shot images, 1 held-out task")
    assert "MAML: SGD, inner lr 0.4, cbfinn conventions" in view.card_label.text()
    assert "evaluation card:" in view.card_label.toolTip() and "sum" in view.card_label.toolTip()


def test_panel_offers_the_conventions_for_image_tasks(qtbot):
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.ui.experiment_panel import ExperimentPanel

    panel = ExperimentPanel()
    qtbot.addWidget(panel)
    panel.task.setCurrentIndex(panel.task.findData("images"))
    assert panel.config().task_option("convention") == "lab"
    panel.convention.setCurrentIndex(panel.convention.findData("cbfinn"))
    config = panel.config()
    assert config.task == "images" and config.task_options == {"convention": "cbfinn", "split": "lab"}
    panel.set_config(ExperimentConfig(task="images", task_options={"convention": "lab"}))
    assert panel.convention.currentData() == "lab"
    panel.set_config(config)
    assert panel.convention.currentData() == "cbfinn" and panel.config().task_option("convention") == "cbfinn"
    # another family: the images' option does not follow it
    panel.task.setCurrentIndex(panel.task.findData("sinusoid"))
    assert panel.valid and panel.config().task == "sinusoid" and panel.config().task_options == {}


def test_exported_metrics_json_carries_the_validation_cards():
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.metrics import CSV_HEADER
    from maml_lab.ui.file_actions import metrics_json

    algorithms = [AlgorithmConfig.defaults(name, task="images") for name in ("maml", "fomaml")]
    config = ExperimentConfig(task="images", val_tasks=40, algorithms=algorithms, task_options={"convention": "cbfinn"})
    header = ",".join(CSV_HEADER)
    row = ["1", "maml"] + ["0.5"] * (len(CSV_HEADER) - 2)
    row[CSV_HEADER.index("val_pre_loss")] = ""
    data = json.loads(metrics_json(f"{header}\n{','.join(row)}\n", config))
    assert set(data["validation_cards"]) == {"maml", "fomaml"}
    card = data["validation_cards"]["maml"]
    assert card["tasks"] == 40 and card["shots"] == [1] and card["queries"] == 5 and card["steps"] == [1]
    assert card["convention"] == "cbfinn" and card["notes"]["what"] == "validation during training"
    assert data["rows"][0]["iteration"] == 1 and data["rows"][0]["algorithm"] == "maml"
    assert data["rows"][0]["val_pre_loss"] is None and data["rows"][0]["pre_loss"] == 0.5
