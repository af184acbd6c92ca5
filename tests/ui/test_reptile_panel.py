"""Reptile's supervised-reptile settings reach the experiment panel: shown per task family, edited as key=value,
bad keys and values refused in the form with the reason."""

import pytest

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.ui.experiment_panel import ExperimentPanel, FormError


def test_reptile_settings_show_edit_and_refuse(qtbot):
    panel = ExperimentPanel()
    qtbot.addWidget(panel)
    panel.set_config(ExperimentConfig(task="sinusoid", algorithms=[AlgorithmConfig.defaults("reptile")]))
    col = panel.columns["reptile"]
    text = col.settings.text()
    assert "inner_optimizer=sgd" in text and "train_shots=50" in text and "inner_batch=10" in text
    col.settings.setText("inner_optimizer=adam, train_shots=12, adam_state=reset, transductive=false")
    cfg = col.config()
    assert cfg.inner_optimizer == "adam" and cfg.option("train_shots") == 12
    assert cfg.option("adam_state") == "reset" and cfg.option("transductive") is False
    assert cfg.option("inner_batch") == 10  # untouched keys keep their values
    col.settings.setText("train_shots=-3")
    with pytest.raises(FormError, match="train_shots must be an integer >= 0"):
        col.config()
    col.settings.setText("momentum=0.9")
    with pytest.raises(FormError, match="no setting 'momentum'"):
        col.config()
    col.settings.setText("train_shots")
    with pytest.raises(FormError, match="key=value"):
        col.config()
    assert not panel.columns["maml"].settings.isEnabled() or not panel.columns["maml"].setting_keys
    col.set_config(AlgorithmConfig.defaults("reptile", task="images"))
    assert "inner_optimizer=adam" in col.settings.text() and "eval_batch=5" in col.settings.text()


def test_a_setting_nested_absurdly_deep_is_refused_not_a_crash(qtbot):
    """The settings field reads values as TOML through the validation layer's parser: a value nested 3,000 deep
    is refused in the form (it would make tomllib recurse until RecursionError)."""
    panel = ExperimentPanel()
    qtbot.addWidget(panel)
    panel.set_config(ExperimentConfig(task="sinusoid", algorithms=[AlgorithmConfig.defaults("reptile")]))
    col = panel.columns["reptile"]
    col.settings.setText("train_shots=" + "[" * 3000 + "]" * 3000)
    with pytest.raises(FormError, match="train_shots"):
        col.config()
