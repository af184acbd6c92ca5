"""The Per-layer view on trained initializations: MAML, ANIL and BOIL side by side in their registry colours, the
rule toggle (head only / body only), the CSV export of its numbers, and a screenshot through `--view`."""

import csv

import numpy as np
import pytest
from PySide6.QtGui import QImage

from maml_lab import app
from maml_lab.ui.colors import algorithm_color

from .test_inside import distinct_colours, has_colour


@pytest.fixture(scope="module")
def trained_config():
    """For the module's main window (conftest's `trained`): MAML, ANIL and BOIL (sinusoid, 60 iterations)."""
    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig

    return ExperimentConfig(algorithms=[AlgorithmConfig.defaults(a) for a in ("maml", "anil", "boil")],
                            iterations=60, meta_batch_size=5, val_every=0, hidden=[16, 16])


def test_per_layer_view_side_by_side_rule_toggle_and_csv(trained, tmp_path):
    view = trained.views["per_layer"]
    assert view is trained.views["per_layer"]
    trained.tabs.setCurrentWidget(view)
    view.tasks.setValue(12)
    view.steps.setValue(3)
    assert view.wait_until_idle(60)
    r = view.result
    assert list(r.stats) == ["maml", "anil", "boil"] and r.rule == "own" and not r.errors
    anil, boil, maml = r.stats["anil"], r.stats["boil"], r.stats["maml"]
    assert anil.layers == ["layer 1", "layer 2", "head"]
    # each by its own rule: ANIL's body and BOIL's head do not move; ANIL's body keeps its representation
    assert np.all(anil.change[:2] == 0) and np.allclose(anil.cka[:2], 1, atol=1e-9)
    assert np.all(boil.change[2] == 0) and np.all(boil.change[:2, 1:] > 0)
    assert np.all(maml.change[:, 1:] > 0)
    image = trained.grab().toImage()
    assert distinct_colours(image) > 60
    for name in ("maml", "anil", "boil"):
        assert has_colour(image, algorithm_color(name)), name
    assert "head only" in view.summary.text()

    # the toggle: every initialization adapted by SGD on the body only
    view.rule.setCurrentIndex(view.rule.findData("body"))
    assert view.wait_until_idle(60)
    assert view.result.rule == "body"
    assert all(np.all(s.change[2] == 0) and np.all(s.change[:2, 1:] > 0) for s in view.result.stats.values())

    path = view.export_csv(tmp_path / "layers.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 3 * 3 * 4  # initializations x layers x steps 0..3
    assert {row["algorithm"] for row in rows} == {"maml", "anil", "boil"}
    assert all("body only" in row["rule"] for row in rows)
    assert float(next(r["relative_change"] for r in rows if r["layer"] == "head" and r["step"] == "3")) == 0


def test_screenshot_of_the_per_layer_view(tmp_path, capsys):
    path = tmp_path / "per_layer.png"
    assert app.main(["--screenshot", str(path), "--iterations", "40", "--view", "per_layer", "--size",
                     "1100x720"]) == 0
    assert "training finished" in capsys.readouterr().out
    image = QImage(str(path))
    assert distinct_colours(image) > 60 and has_colour(image, algorithm_color("maml"))
