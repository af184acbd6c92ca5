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
