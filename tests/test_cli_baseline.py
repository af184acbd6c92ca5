"""Baseline and Baseline++ from the CLI and a TOML config, their exports in plain PyTorch (docs/exports.md's lines),
and `eval --probe`: a linear probe of any image initialization printed beside its rows, with the card saying so."""

from __future__ import annotations

import json
import re

import pytest
import torch

from maml_lab.cli import main

ACCURACY = re.compile(r"5-way (\d+)-shot: (\d{1,3}\.\d)% \+- \d{1,3}\.\d%(.*)")
TINY = ["--task", "images", "--iterations", "2", "--meta-batch-size", "2", "--image-size", "14", "--quiet"]


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(stdout: str) -> list[tuple[str, str]]:
    return [(m.group(2), m.group(3)) for m in map(ACCURACY.fullmatch, stdout.splitlines()) if m]


def test_both_train_from_a_toml_config_beside_maml_and_export(tmp_path):
    """A TOML config with Baseline, Baseline++ and MAML (the flags' path is the other tests'): each exports, with
    the all-class head beside theta under the reference's names."""
    from safetensors import safe_open

    from maml_lab.core.algorithms.config import AlgorithmConfig
    from maml_lab.core.training.config import ExperimentConfig

    config = ExperimentConfig(task="images", iterations=2, meta_batch_size=2, image_size=14, val_every=0,
                              algorithms=[AlgorithmConfig.defaults("baseline", "images"),
                                          AlgorithmConfig.defaults("baselinepp", "images", inner_steps=3),
                                          AlgorithmConfig.defaults("maml", "images")])
    path = tmp_path / "c.toml"
    config.save_toml(path)
    loaded = ExperimentConfig.load_toml(path)
    assert loaded.to_dict() == config.to_dict()
    assert (loaded.algorithm("baselinepp").inner_steps, loaded.algorithm("baselinepp").inner_lr) == (3, 0.01)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "init.safetensors"), "--quiet"]) == 0
    extras = {}
    for name in ("baseline", "baselinepp", "maml"):
        with safe_open(str(tmp_path / f"init-{name}.safetensors"), "pt") as f:
            extras[name] = json.loads(f.metadata()["maml_lab"]).get("extra_tensors") or []
    assert extras == {"baseline": ["classifier.weight", "classifier.bias"],
                      "baselinepp": ["classifier.L.weight_g", "classifier.L.weight_v"], "maml": []}


def test_eval_probe_prints_a_linear_probe_beside_the_rows_with_the_card_saying_so(tmp_path, capsys):
    out = tmp_path / "glyphs.pt"
    assert main(["train", *TINY, "--algorithm", "maml", "--out", str(out)]) == 0
    capsys.readouterr()
    json_path = tmp_path / "eval.json"
    assert main(["eval", str(out), "--tasks", "3", "--queries", "2", "--steps", "1", "--bn", "transductive",
                 "support", "--probe", "--json", str(json_path)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("  linear probe beside it, on the same tasks: SGD (lr 0.01, momentum 0.9") == 2
    head = "linear probe, the body frozen and a new linear head fit on each support set (100 epochs):"
    assert head in stdout
    after = stdout.split(head)[1]
    assert [extra for _, extra in _rows(after)] == ["  (batch norm transductive)", "  (batch norm support)"]
    ev = json.loads(json_path.read_text())["evaluations"][0]
    assert [(r.get("rule"), r["steps"], r["batch_norm"]) for r in ev["results"]] == [
        (None, 1, "transductive"), (None, 1, "support"), ("linear probe", 100, "transductive"),
        ("linear probe", 100, "support")]
    assert ev["card"]["probe"].startswith("SGD (lr 0.01") and ev["card"]["probe"].endswith("100 epochs")


def test_the_probe_of_a_baseline_is_its_own_evaluation(tmp_path, capsys):
    """The probe is Baseline's test-time rule on the same seeded tasks: for a Baseline export both rows agree."""
    out = tmp_path / "glyphs.pt"
    assert main(["train", *TINY, "--algorithm", "baseline", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--tasks", "4", "--queries", "3", "--probe"]) == 0
    stdout = capsys.readouterr().out
    assert "after 100 fine-tuning steps (SGD (lr 0.01" in stdout and "Closer Look paper" in stdout
    rows = _rows(stdout)
    assert len(rows) == 2 and rows[0] == rows[1]


def test_eval_probe_refuses_a_regression_initialization_in_one_line(tmp_path, capsys):
    out = tmp_path / "sine.pt"
    assert main(["train", "--task", "sinusoid", "--iterations", "1", "--meta-batch-size", "2", "--hidden", "4",
                 "--algorithm", "maml", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--tasks", "2", "--probe"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--probe: sine.pt is a sinusoid initialization" in err and len(err.splitlines()) == 1
