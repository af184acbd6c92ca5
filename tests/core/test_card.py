"""Evaluation cards: what they state, how they compare with the named papers' protocols, and that every output
prints or embeds one (CLI eval text and --json, the benchmark scripts' helpers)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from maml_lab.cli import main
from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.analysis.card import CI_FORMULA, PROTOCOLS, EvaluationCard, paper_protocol
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path_factory.getbasetemp() / "card-cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images_card(convention="cbfinn", **kw):
    args = dict(tasks=600, shots=[1, 5], steps=[3], queries=1, ways=5)
    args.update(kw)
    loss = "cross_entropy_sum" if convention == "cbfinn" else "cross_entropy"
    return EvaluationCard.build("images", args.pop("tasks"), args.pop("shots"), args.pop("steps"),
                                AlgorithmConfig.defaults("maml", task="images"), loss=loss,
                                model=Conv4(convention=convention), **args)


def test_card_states_the_protocol_and_matches_the_maml_paper():
    card = _images_card(shots=[1])
    assert card.paper_key == "maml-omniglot-5way" and card.matches_paper and card.differences == []
    assert card.effective_step_size == pytest.approx(2.0) and card.transductive is True
    text = card.text()
    lines = text.splitlines()
    assert 5 <= len(lines) <= 7
    assert lines[0] == "evaluation card: 5-way 1-shot images, 600 held-out tasks, 1 query per class; maml"
    assert lines[1] == "  adaptation: 3 steps of SGD, inner lr 0.4"
    assert "cbfinn" in lines[2] and "sum" in lines[2]
    assert lines[3].startswith("  batch norm: transductive") and "no scale, eps 1e-3" in lines[3]
    assert lines[4] == f"  {CI_FORMULA}" and "matches the protocol of the MAML paper" in lines[5]
    assert card.batch_norm_mode == "transductive"
    d = card.to_dict()
    assert d["tasks"] == 600 and d["ways"] == 5 and d["shots"] == [1] and d["steps"] == [3] and d["queries"] == 1
    assert d["convention"] == "cbfinn" and d["matches_paper"] is True and d["text"] == text
    json.dumps(d)  # JSON-ready


def test_card_names_what_differs_from_the_paper():
    card = _images_card("lab", tasks=100, steps=[1], queries=15)
    assert not card.matches_paper
    diffs = "; ".join(card.differences)
    assert "tasks 100 (paper: 600)" in diffs and "steps 1 (paper: 3)" in diffs
    assert "15 queries per class (paper's code: K" in diffs
    assert "step size 0.4 = 0.4 on the per-task mean loss (paper: 0.4 on sum / K = 2)" in diffs
    assert "lab loss and batch-norm conventions (paper's code: cbfinn)" in diffs
    assert card.text().splitlines()[-1].startswith("  differs from the MAML paper, Omniglot 5-way")
    # the lab's convention at 5 x the step size is the paper's step, and still not its conventions
    lab2 = EvaluationCard.build("images", 600, [1], [3], 2.0, queries=1, ways=5, loss="cross_entropy",
                                model=Conv4(), algorithm="maml")
    assert not any(d.startswith("step size") for d in lab2.differences) and len(lab2.differences) == 1
    # 20-way has its own protocol; 10-way none
    assert _images_card(ways=20).paper_key == "maml-omniglot-20way"
    ten = _images_card(ways=10)
    assert ten.paper is None and ten.matches_paper is None and "none stated" in ten.text()


def test_protocol_per_family_and_algorithm():
    assert paper_protocol("sinusoid", "maml", None) is PROTOCOLS["maml-sinusoid"]
    assert paper_protocol("sinusoid", "reptile", None) is PROTOCOLS["reptile-sinusoid"]
    assert paper_protocol("images", "reptile", 5) is PROTOCOLS["reptile-omniglot-5way"]
    assert paper_protocol("navigation", "maml", None) is None
    sine = EvaluationCard.build("sinusoid", 600, [5], [1, 5, 10], AlgorithmConfig.defaults("maml"), queries=100,
                                loss="mse", model=MLP())
    assert sine.matches_paper and sine.batch_norm.startswith("none") and sine.transductive is None
    assert sine.text().splitlines()[0] == "evaluation card: K = 5 sinusoid, 600 held-out tasks, 100 query points; maml"
    curve = EvaluationCard.build("sinusoid", 600, [5], list(range(11)), 0.01, queries=100, loss="mse", model=MLP())
    assert "0 to 10 steps" in curve.text() and curve.matches_paper  # the curve contains the paper's steps


def test_cli_eval_prints_the_card_above_the_numbers_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sine.safetensors"
    assert main(["train", "--task", "sinusoid", "--iterations", "2", "--meta-batch-size", "2", "--hidden", "8",
                 "--quiet", "--run-dir", str(tmp_path / "run"), "--out", str(out)]) == 0
    capsys.readouterr()
    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--shots", "5", "--steps", "1", "5", "--tasks", "7", "--json", str(report)]) == 0
    stdout = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(stdout) if line.startswith("evaluation card:"))
    table = next(i for i, line in enumerate(stdout) if "steps" in line and "95% CI" in line)
    assert first < table
    assert stdout[first] == "evaluation card: K = 5 sinusoid, 7 held-out tasks, 100 query points; maml"
    assert "differs from the MAML paper, sinusoid regression" in "\n".join(stdout[first:table])
    data = json.loads(report.read_text())
    (entry,) = data["evaluations"]
    assert entry["algorithm"] == "maml" and entry["card"]["tasks"] == 7 and entry["card"]["shots"] == [5]
    assert [(r["steps"], r["metric"]) for r in entry["results"]] == [(0, "mse"), (1, "mse"), (5, "mse")]
    assert all(r["mean"] > 0 and r["ci95"] >= 0 for r in entry["results"])
    assert main(["eval", str(out), "--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert "--json: folder not found" in capsys.readouterr().err


def test_cli_images_eval_card_with_the_cbfinn_convention(tmp_path, capsys):
    out = tmp_path / "glyphs.safetensors"
    assert main(["train", "--task", "images", "--image-size", "14", "--iterations", "1", "--meta-batch-size", "2",
                 "--convention", "cbfinn", "--quiet", "--run-dir", str(tmp_path / "run"), "--out", str(out)]) == 0
    capsys.readouterr()
    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--tasks", "4", "--queries", "2", "--json", str(report)]) == 0
    stdout = capsys.readouterr().out
    card_at, numbers_at = stdout.index("evaluation card: 5-way 1-shot images, 4 held-out tasks, 2 queries per "
                                       "class; maml"), stdout.index("5-way 1-shot: ")
    assert card_at < numbers_at and "conventions: cbfinn; loss cross-entropy summed" in stdout
    entry = json.loads(report.read_text())["evaluations"][0]
    assert entry["card"]["convention"] == "cbfinn" and entry["card"]["paper_key"] == "maml-omniglot-5way"
    assert entry["card"]["notes"]["data"] == "glyphs"
    (row,) = entry["results"]
    assert row["shots"] == 1 and row["steps"] == 3 and row["metric"] == "accuracy" and 0 <= row["mean"] <= 1


def test_benchmark_scripts_print_cards():
    from maml_lab.core.training.config import ExperimentConfig
    from maml_lab.core.training.trainer import Trainer

    sine = _script("reproduce_sinusoid")
    trainer = Trainer(ExperimentConfig(iterations=1, meta_batch_size=2, hidden=[8], val_every=0,
                                       algorithms=[AlgorithmConfig.defaults("maml")]), record_every=0)
    trainer.run()
    rows = sine.evaluate(trainer, shots=5, tasks=6)
    assert rows[0]["card"]["tasks"] == 6 and rows[0]["card"]["steps"] == [1, 5, 10]
    table = sine.table(rows)
    assert table.startswith("evaluation card: K = 5 sinusoid, 6 held-out tasks") and "| maml |" in table

    omniglot = _script("omniglot_small1")
    config = ExperimentConfig(task="images", image_size=14, iterations=1, meta_batch_size=2, val_every=0,
                              task_options={"convention": "cbfinn"})
    trainer = Trainer(config, record_every=0)
    card = omniglot.evaluation_card(trainer, "maml", trainer.family.validation_family, 600, 3)
    assert card.queries == omniglot.EVAL_QUERIES and card.shots == [1, 5] and card.convention == "cbfinn"
    assert card.notes["heldout_classes"] == 360
    assert card.differences == ["15 queries per class (paper's code: K, as many as the shots)"]


def test_learned_step_sizes_and_adam_are_named_not_compared_as_sgd():
    metasgd = EvaluationCard.build("images", 600, [1], [3], AlgorithmConfig.defaults("metasgd", task="images"),
                                   queries=1, ways=5, loss="cross_entropy_sum", model=Conv4(convention="cbfinn"))
    assert metasgd.step_size is None and metasgd.effective_step_size is None
    assert metasgd.differences == ["inner optimizer: learned per-parameter step sizes (paper: SGD)"]
    adam = EvaluationCard.build("images", 600, [1], [3], AlgorithmConfig.defaults("reptile", task="images"),
                                queries=1, ways=5, loss="cross_entropy", model=Conv4())
    assert adam.paper_key == "reptile-omniglot-5way" and adam.inner_optimizer.startswith("Adam")
    assert not any(d.startswith("inner optimizer") for d in adam.differences)


@pytest.mark.parametrize("name, adapted", [("maml", True), ("anil", False), ("boil", True), ("mamlpp", False)])
def test_the_card_says_whether_the_inner_loop_steps_batch_norm(name, adapted):
    card = EvaluationCard.build("images", 10, 1, 3, AlgorithmConfig.defaults(name, task="images"), ways=5,
                                loss="cross_entropy", model=Conv4(in_channels=1, image_size=28, ways=5))
    assert ("both adapted" in card.batch_norm) == adapted
    assert ("neither adapted in the inner loop" in card.batch_norm) == (not adapted)


@pytest.mark.parametrize("name, subset", [("anil", "head"), ("boil", "body"), ("maml", None)])
def test_head_or_body_only_adaptation_is_not_the_papers_protocol(name, subset):
    """ANIL and BOIL fine-tune a subset of the parameters: their cards must not claim the MAML paper's protocol."""
    card = EvaluationCard.build("sinusoid", 600, [5], [10], AlgorithmConfig.defaults(name), queries=10, loss="mse",
                                model=MLP([1, 40, 40, 1]))
    assert card.paper is not None
    if subset is None:
        assert card.adapts == "all" and card.matches_paper, card.text()
    else:
        assert card.adapts == subset and not card.matches_paper
        assert f"adapts the {subset} only" in card.text() and card.to_dict()["adapts"] == subset


@pytest.mark.parametrize("mode, words", [("support", "support-set statistics"),
                                         ("support+query", "each query with the support set"),
                                         ("running", "running statistics")])
def test_the_card_states_the_batch_norm_mode_and_a_non_transductive_one_differs_from_the_paper(mode, words):
    card = _images_card(shots=[1], batch_norm=mode)
    assert card.batch_norm_mode == mode and card.transductive is False
    assert f"  batch norm: {words}" in card.text()
    assert not card.matches_paper and any(d.startswith(f"batch norm {mode} (paper: transductive)")
                                          for d in card.differences)
    # Reptile's own option picks its default mode; an evaluation's choice wins
    reptile = AlgorithmConfig.defaults("reptile", task="images", options={"transductive": False})
    own = EvaluationCard.build("images", 600, [1], [50], reptile, loss="cross_entropy", model=Conv4())
    assert own.batch_norm_mode == "support+query"
    chosen = EvaluationCard.build("images", 600, [1], [50], reptile, loss="cross_entropy", model=Conv4(),
                                  batch_norm="transductive")
    assert chosen.batch_norm_mode == "transductive" and chosen.transductive


def test_a_rule_without_steps_is_stated_as_the_rule():
    from maml_lab.core.algorithms.registry import ALGORITHMS

    if "protonet" not in ALGORITHMS.names():
        pytest.skip("ProtoNets not registered")
    card = EvaluationCard.build("images", 100, [1], [0], AlgorithmConfig.defaults("protonet", task="images"),
                                loss="cross_entropy", model=Conv4())
    assert card.text().splitlines()[1].startswith("  adaptation: prototypes")
    maml = EvaluationCard.build("images", 100, [1], [0], AlgorithmConfig.defaults("maml", task="images"),
                                loss="cross_entropy", model=Conv4())
    assert maml.text().splitlines()[1] == "  adaptation: 0 steps of SGD, inner lr 0.4"
