"""Plug-ins through entry points: the example package in examples/plugin, made visible without pip by a
`*.dist-info` folder whose entry_points.txt is derived from the package's own pyproject.toml, and broken
plug-ins, which are reported in one line and skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"
PLUGIN_SRC = PLUGIN / "src"
DIST = "maml-lab-example-plugin"
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the panel test builds a widget


def _fake_install(folder: Path, name: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """What `pip install` leaves for importlib.metadata: a dist-info folder with METADATA and entry_points.txt."""
    info = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n", encoding="utf-8")
    text = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
                   for group, eps in entry_points.items())
    (info / "entry_points.txt").write_text(text, encoding="utf-8")
    return folder


def _example_entry_points() -> dict[str, dict[str, str]]:
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["entry-points"]


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    return _fake_install(tmp_path_factory.mktemp("site"), DIST, _example_entry_points())


def _run(args, *paths: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in paths), QT_QPA_PLATFORM="offscreen")
    return subprocess.run([sys.executable, "-m", "maml_lab", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_the_example_declares_one_algorithm_and_one_task_family():
    eps = _example_entry_points()
    assert eps["maml_lab.algorithms"] == {"fomaml_momentum": "maml_lab_example.fomaml_momentum:FOMAMLMomentum"}
    assert eps["maml_lab.tasks"] == {"line": "maml_lab_example.line:LineTasks"}


def test_list_shows_the_example_with_its_source(example_site):
    out = _run(["list"], example_site, PLUGIN_SRC)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "algorithms:" in lines and "task families:" in lines
    algo = next(line for line in lines if line.split()[:1] == ["fomaml_momentum"])
    assert "FOMAML + momentum" in algo and f"{DIST} (maml_lab_example.fomaml_momentum:FOMAMLMomentum)" in algo
    line = next(line for line in lines if line.split()[:1] == ["line"])
    assert "Line regression" in line and f"{DIST} (maml_lab_example.line:LineTasks)" in line
    maml = next(line for line in lines if line.split()[:1] == ["maml"])
    assert maml.endswith("[maml_lab]")
    assert "skipped" not in out.stdout and "skipped" not in out.stderr


def test_train_and_eval_with_the_example(example_site, tmp_path):
    out = tmp_path / "x.safetensors"
    train = _run(["train", "--task", "line", "--algorithm", "fomaml_momentum", "maml", "--iterations", "30",
                  "--meta-batch-size", "4", "--quiet", "--run-dir", tmp_path / "run", "--out", out,
                  "--threads", "1"], example_site, PLUGIN_SRC)
    assert train.returncode == 0, train.stderr
    path = tmp_path / "x-fomaml_momentum.safetensors"
    assert path.is_file() and (tmp_path / "x-maml.safetensors").is_file()

    from maml_lab.core.export import load_initialization

    params, meta, model = load_initialization(path)
    assert meta["algorithm"] == "fomaml_momentum" and meta["task"]["name"] == "line"
    assert meta["task"]["slope"] == [-2.0, 2.0] and meta["hyperparameters"]["inner_lr"] == 0.01
    assert model.spec()["kind"] == "mlp" and all(v.isfinite().all() for v in params.values())

    ev = _run(["eval", path, "--tasks", "20", "--steps", "1", "5", "--threads", "1"], example_site, PLUGIN_SRC)
    assert ev.returncode == 0, ev.stderr
    assert "fomaml_momentum after 30 iterations" in ev.stdout and "MSE" in ev.stdout


def test_plugin_options_from_the_command_line_reach_the_run_and_its_export(example_site, tmp_path):
    out = tmp_path / "x.safetensors"
    train = _run(["train", "--task", "line", "--algorithm", "fomaml_momentum", "--iterations", "5",
                  "--meta-batch-size", "2", "--quiet", "--run-dir", tmp_path / "run", "--out", out, "--threads", "1",
                  "--option", "fomaml_momentum.momentum=0.5", "--task-option", "slope=[-1, 1]"],
                 example_site, PLUGIN_SRC)
    assert train.returncode == 0, train.stderr
    from maml_lab.core.export import load_initialization

    _, meta, _ = load_initialization(out)
    assert meta["hyperparameters"]["momentum"] == 0.5 and meta["hyperparameters"]["nesterov"] is True
    assert meta["task"]["slope"] == [-1.0, 1.0] and meta["task"]["intercept"] == [-2.0, 2.0]
    config = (tmp_path / "run" / "config.toml").read_text()
    assert "[task_options]" in config and "momentum = 0.5" in config
    bad = [(["--task-option", "slope=[3, 1]"], "low <= high"), (["--task-option", "tilt=1"], "has no option"),
           (["--option", "fomaml_momentum.momentum=2"], "momentum"), (["--option", "maml.x=1"], "not among"),
           (["--option", "fomaml_momentum.friction=1"], "unknown setting(s) for fomaml_momentum: friction (its own "
                                                            "options: momentum, nesterov)")]
    for extra, message in bad:
        r = _run(["train", "--task", "line", "--algorithm", "fomaml_momentum", "--iterations", "2", "--quiet",
                  "--run-dir", tmp_path / f"bad{len(message)}{extra[1][:4]}", *extra], example_site, PLUGIN_SRC)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, (extra, r.stderr)


def test_broken_plugins_are_one_line_each_and_skipped(tmp_path):
    pkg = tmp_path / "broken_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("class NotAnAlgorithm:\n    name = 'not_one'\n", encoding="utf-8")
    (pkg / "explodes.py").write_text("raise ImportError('needs a library that is not installed')\n",
                                     encoding="utf-8")
    _fake_install(tmp_path, "broken-plugin", {"maml_lab.algorithms": {
        "explodes": "broken_plugin.explodes:Algo", "not_one": "broken_plugin:NotAnAlgorithm"}})

    listed = _run(["list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    skipped = [line for line in listed.stdout.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 2, listed.stdout
    assert any("'explodes'" in s and "broken-plugin" in s and "ImportError" in s and "needs a library" in s
               for s in skipped)
    assert any("'not_one'" in s and "TypeError" in s and "not a MetaAlgorithm" in s for s in skipped)
    warned = [line for line in listed.stderr.splitlines() if "skipped" in line]
    assert len(warned) == 2 and all(line.startswith("maml-lab: skipped algorithm plug-in") for line in warned)
    assert "Traceback" not in listed.stderr
    assert "maml " in listed.stdout  # the built-ins are all there

    out = tmp_path / "m.safetensors"
    train = _run(["train", "--algorithm", "maml", "--iterations", "5", "--meta-batch-size", "2", "--quiet",
                  "--run-dir", tmp_path / "run", "--out", out, "--threads", "1"], tmp_path)
    assert train.returncode == 0, train.stderr
    assert out.is_file() and "Traceback" not in train.stderr


@pytest.fixture
def plugin_registries(example_site, monkeypatch):
    """The example's entry points in this process, and the registries as they were afterwards."""
    from maml_lab.core.algorithms.registry import ALGORITHMS
    from maml_lab.core.tasks.registry import TASKS

    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    monkeypatch.syspath_prepend(str(example_site))
    ALGORITHMS.reload()
    TASKS.reload()
    yield ALGORITHMS, TASKS
    monkeypatch.undo()
    for module in [m for m in sys.modules if m == "maml_lab_example" or m.startswith("maml_lab_example.")]:
        del sys.modules[module]
    ALGORITHMS.reload()
    TASKS.reload()
    assert "fomaml_momentum" not in ALGORITHMS and "line" not in TASKS


def test_the_experiment_panel_shows_the_plugins(plugin_registries, qtbot):
    pytest.importorskip("PySide6")
    from maml_lab.ui.experiment_panel import ExperimentPanel

    algorithms, tasks = plugin_registries
    assert "fomaml_momentum" in algorithms and "line" in tasks
    panel = ExperimentPanel()
    qtbot.addWidget(panel)
    assert panel.task.findData("line") >= 0 and panel.task.findData("sinusoid") >= 0
    assert list(panel.columns)[-1] == "fomaml_momentum"
    col = panel.columns["fomaml_momentum"]
    assert col.meta_lr.toolTip().startswith(algorithms.get("fomaml_momentum").outer_lr_tip)  # + its schedule

    panel.task.setCurrentIndex(panel.task.findData("line"))
    assert not panel.task_form.isRowVisible(panel.ways) and panel.model_form.isRowVisible(panel.hidden)
    col.enabled.setChecked(True)
    col.meta_lr.setText("0.002")
    config = panel.config()
    assert config.task == "line" and config.shots == 5  # the family's own defaults came with it
    mine = config.algorithm("fomaml_momentum")
    assert mine.meta_lr == 0.002 and mine.option("momentum") == 0.9


def test_the_line_family_s_playground_shows_lines(plugin_registries, qtbot, tmp_path):
    """Train the example's line family a few iterations in the app: the Playground is then the line's (its x
    range, slope and intercept fields, the true line as ground truth), not the sinusoid's."""
    pytest.importorskip("PySide6")
    import numpy as np
    from PySide6.QtCore import QSettings

    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.ui.main_window import MainWindow

    window = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat), persist=False,
                        rng=np.random.default_rng(0))
    qtbot.addWidget(window)
    window.resize(1366, 768)
    window.show()
    window.panel.set_config(ExperimentConfig(task="line", algorithms=[AlgorithmConfig.defaults("maml")],
                                             iterations=5, meta_batch_size=2, hidden=[8, 8],
                                             task_options={"slope": [-1.0, 1.0]}))
    assert window.start()
    assert window.wait_for_training(60) == "finished"
    view = window.views["playground"]
    qtbot.waitUntil(lambda: "maml" in view.inits, timeout=5000)
    assert not view.reason and view.curve.noun == "line"
    assert set(view.field_boxes) == {"slope", "intercept"} and "amplitude" not in view.field_boxes
    assert (view.field("slope").minimum(), view.field("slope").maximum()) == (-1.0, 1.0)  # the run's option
    view.random_task(slope=0.5, intercept=-1.0)
    for x, y in view.state.points:
        assert y == pytest.approx(0.5 * x - 1.0)
    xs, ys = view.canvas.truth_item.getData()
    assert np.allclose(ys, 0.5 * xs - 1.0) and xs[0] == -5.0 and xs[-1] == 5.0  # the true line on x's range
    assert "true line" in view.mse_caption.text()
    view.field("slope").setValue(-0.25)  # the fields edit the task
    assert all(y == pytest.approx(-0.25 * x - 1.0) for x, y in view.state.points)
    view.flush()
    assert view.predictions["maml"].mse_kind == "query"
    assert "line" in view.random_button.toolTip() and "y = a x + b" in view.random_button.toolTip()

    window.panel.set_config(ExperimentConfig(task="navigation", algorithms=[AlgorithmConfig.defaults("maml")]))
    assert "Arena" in view.reason and view.pages.currentWidget() is view.unavailable  # a family without one
    window.panel.set_config(ExperimentConfig(task="sinusoid", algorithms=[AlgorithmConfig.defaults("maml")]))
    assert not view.reason and set(view.field_boxes) == {"amplitude", "phase"} and view.state.truth is None
    window.close()
