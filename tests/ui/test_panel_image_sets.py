"""The experiment panel keeps what a config says about its image sets: several trained as one (`data` a list), a
separate held-out set (`eval_data`) and the split, through the form and back."""

from maml_lab.core.training.config import ExperimentConfig
from maml_lab.ui.experiment_panel import ExperimentPanel


def test_a_list_of_sets_and_a_held_out_set_survive_the_form(qtbot, qapp):
    panel = ExperimentPanel()
    qtbot.addWidget(panel)
    two = ExperimentConfig(task="images", data=["/sets/a.zip", "/sets/b.zip"], eval_data="/sets/c.zip",
                           task_options={"split": "lab"})
    panel.set_config(two)
    assert panel.image_source.currentText() == "a.zip + b.zip"
    back = panel.config()
    assert (back.data, back.eval_data, back.task_option("split")) == (["/sets/a.zip", "/sets/b.zip"], "/sets/c.zip",
                                                                      "lab")
    panel.set_config(ExperimentConfig(task="images", data="/sets/a.zip"))
    assert (panel.config().data, panel.config().eval_data) == ("/sets/a.zip", None)
    count = panel.image_source.count()
    panel.set_config(two)  # the list is found again, not added twice
    assert panel.image_source.count() == count and panel.config().data == ["/sets/a.zip", "/sets/b.zip"]
    panel.set_config(ExperimentConfig(task="images", data="/sets/a.zip", task_options={"split": "paper"}))
    assert panel.config().task_option("split") == "paper"


def test_open_image_set_as_the_held_out_set(window, qtbot, tmp_path, monkeypatch):
    from tests.ui.test_image_sets import _write_set

    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))
    train, held = _write_set(tmp_path / "train", classes=12), _write_set(tmp_path / "held", classes=10)
    for path, button in ((train, "use_button"), (held, "heldout_button")):
        dialog = window.open_image_set(str(path))
        qtbot.waitUntil(lambda d=dialog: not d.runner.busy, timeout=30000)
        assert dialog.image_set is not None, dialog.report_text
        getattr(dialog, button).click()
    config = window.panel.config()
    assert config.data == str(train.resolve()) and config.eval_data == str(held.resolve())
    assert window.panel.heldout.currentText() == "held (held-out set)"
    window.panel.heldout.setCurrentIndex(window.panel.heldout.findData("lab"))  # back to a split of the set
    assert window.panel.config().eval_data is None
