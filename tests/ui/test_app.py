"""Starting the app: the no-display message, `--screenshot`, the history kept for plots and CSV."""

import sys

import numpy as np
import pytest
from PySide6.QtGui import QImage

from maml_lab import app
from maml_lab.core.algorithms.registry import ALGORITHMS
from maml_lab.lab.metrics_history import MetricsHistory
from maml_lab.ui.colors import algorithm_color
from maml_lab.ui.training_plots import ema, nice_ceil


def test_no_display_says_so_in_one_line(monkeypatch, capsys):
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert app.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no display" in err and "xvfb-run" in err and "--screenshot" in err


def test_bad_arguments_are_a_usage_error(capsys):
    assert app.main(["--iterations", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_screenshot_trains_and_saves_a_picture_that_is_not_blank(tmp_path, capsys):
    path = tmp_path / "shot.png"
    assert app.main(["--screenshot", str(path), "--iterations", "20", "--size", "1100x720"]) == 0
    assert "training finished after 20 iterations" in capsys.readouterr().out
    image = QImage(str(path))
    assert (image.width(), image.height()) == (1100, 720)
    small = image.scaled(220, 144)
    colors = {small.pixel(x, y) for x in range(small.width()) for y in range(small.height())}
    assert len(colors) > 50  # a drawn window, not a blank or single-colour rectangle
    maml = algorithm_color("maml").lstrip("#").lower()
    found = any(f"{image.pixel(x, y) & 0xFFFFFF:06x}" == maml
                for x in range(0, image.width(), 2) for y in range(0, image.height(), 2))
    assert found  # MAML's curve is on it


def test_screenshot_with_wait_stops_the_run_and_pictures_the_stopped_run(tmp_path, capsys):
    """--wait bounds a screenshot's training: the run is stopped (never pictured while it moves) and says so."""
    path = tmp_path / "shot.png"
    assert app.main(["--screenshot", str(path), "--iterations", "1000000", "--wait", "3", "--size", "1366x768"]) == 0
    out = capsys.readouterr()
    assert "training stopped after" in out.out and "stopped when --wait 3 s ran out" in out.out
    assert "training 1,000,000 iterations for the screenshot (at most 3 s)" in out.err
    assert QImage(str(path)).width() == 1366


def test_screenshot_to_a_missing_folder_fails_cleanly(tmp_path, capsys):
    assert app.main(["--screenshot", str(tmp_path / "no" / "shot.png"), "--iterations", "2"]) == 1
    assert "could not save" in capsys.readouterr().err


def test_colours_are_okabe_ito_and_distinct():
    assert len({a.color for a in ALGORITHMS}) == len(ALGORITHMS.names())
    assert algorithm_color("maml") == "#0072B2" and algorithm_color("pretrained") == "#D55E00"
    assert algorithm_color("something else") == algorithm_color("something else")


def test_history_bins_and_csv():
    h = MetricsHistory()
    for start in range(0, 3000, 500):
        its = np.arange(start + 1, start + 501)
        h.add_chunk({"train": {"maml": {"iteration": its, "pre_loss": its * 0 + 2.0, "post_loss": its * 1.0}}})
    h.add_chunk({"val": {"maml": {"iteration": [1000, 2000], "val_pre_loss": [3, 3], "val_post_loss": [1, 0.5]}}})
    x, y = h.series("maml", "post_loss", max_points=300)
    assert len(x) <= 300 and x[-1] == 3000 and y[0] == pytest.approx(5.5)
    assert h.last_iteration() == 3000
    csv = h.to_csv().splitlines()
    assert len(csv) == 3001 and csv[1000] == "1000,maml,2,1000,,,3,1,,"  # the run folder's metrics.csv format


def test_ema_smooths_and_skips_nan():
    y = np.array([1.0, np.nan, 3.0, 3.0])
    out = ema(y, 0.5)
    assert out[0] == 1.0 and out[1] == 1.0 and 1.0 < out[2] < 3.0
    assert np.array_equal(ema(y, 0.0), y, equal_nan=True)


def test_x_axis_grows_in_nice_steps():
    assert [nice_ceil(v) for v in (0.7, 1, 3, 12.5, 160, 2001, 5000)] == [1, 1, 5, 20, 200, 5000, 5000]


def test_csv_of_an_image_run_has_accuracy_columns():
    h = MetricsHistory()
    h.add_chunk({"train": {"maml": {"iteration": [1, 2], "pre_loss": [1.6, 1.5], "post_loss": [1.0, 0.9],
                                    "pre_accuracy": [0.2, 0.25], "post_accuracy": [0.6, 0.7]}}})
    h.add_chunk({"val": {"maml": {"iteration": [2], "val_pre_loss": [1.6], "val_post_loss": [0.8],
                                  "val_pre_accuracy": [0.2], "val_post_accuracy": [0.75]}}})
    rows = h.to_csv().splitlines()
    assert rows[0] == ("iteration,algorithm,pre_loss,post_loss,pre_accuracy,post_accuracy,"
                       "val_pre_loss,val_post_loss,val_pre_accuracy,val_post_accuracy")
    assert rows[1] == "1,maml,1.6,1,0.2,0.6,,,,"
    assert rows[2] == "2,maml,1.5,0.9,0.25,0.7,1.6,0.8,0.2,0.75"
