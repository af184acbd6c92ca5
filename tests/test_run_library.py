"""Opening a past run (lab.run_library): its parameter paths carry what each algorithm adapts with besides theta,
so the Paths and Landscape views fine-tune an opened Meta-SGD or MAML++ run by its own rule, not by SGD (the
Paths view with the tensors each checkpoint of the path had)."""

import torch

from maml_lab.core.algorithms.base import LearnedAdaptation
from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.runs import RunFolder, RunLogger
from maml_lab.core.training.trainer import Trainer
from maml_lab.lab.run_library import open_run


def test_an_opened_run_adapts_with_the_learned_tensors_of_its_checkpoint(tmp_path):
    cfg = ExperimentConfig(iterations=6, meta_batch_size=3, val_every=0, hidden=[8, 8],
                           algorithms=[AlgorithmConfig.defaults(n) for n in ("maml", "metasgd", "mamlpp")])
    folder = RunFolder.create(tmp_path / "run", cfg)
    trainer = Trainer(cfg, record_every=1)
    logger = RunLogger(folder, checkpoint_every=3)
    logger.start(trainer)
    trainer.observers.append(logger)
    trainer.run()

    opened = open_run(folder.path)
    paths = opened.paths
    assert paths is not None and set(paths.paths) == {"maml", "metasgd", "mamlpp"}
    assert "maml" not in paths.learned  # plain SGD learns nothing besides theta
    assert paths.learned_iteration == 6
    for name in ("metasgd", "mamlpp"):
        live = trainer.runs[name].algorithm.adaptation().tensors
        assert set(paths.learned[name]) == set(live) and live
        for k, v in live.items():
            assert torch.equal(paths.learned[name][k], v), (name, k)
        rule = paths.adaptation(name)
        assert isinstance(rule, LearnedAdaptation) and set(rule.tensors) == set(live)
    # the rates were trained away from the inner lr they started at, so using them is not SGD in disguise
    rates = paths.learned["metasgd"]
    assert any(not torch.allclose(v, torch.full_like(v, cfg.algorithm("metasgd").inner_lr)) for v in rates.values())
    # each checkpoint of an opened run's path adapts with the learned tensors it had (saved with the path)
    for name in ("metasgd", "mamlpp"):
        path, recorder = paths.paths[name], trainer.recorders[name]
        assert list(path.iterations) == recorder.iterations and len(path.learned) == len(path)
        for i in range(len(path)):
            mine, saved = recorder.learned_at(i), path.learned_at(i)
            assert list(saved) == list(mine) and all(torch.equal(saved[k], mine[k]) for k in mine), (name, i)
        assert "as learned by this checkpoint (iteration 0)" in paths.checkpoint_rule(name, 0)[1]
    first = paths.adaptation("metasgd", 0).tensors
    assert all(torch.equal(v, torch.full_like(v, cfg.algorithm("metasgd").inner_lr)) for v in first.values())
    assert not paths.paths["maml"].learned and paths.adaptation("maml", 0) == paths.adaptation("maml")


def test_a_run_summary_names_its_familys_metric():
    """Past runs read a navigation run as an average return (higher is better), not as a loss."""
    from pathlib import Path

    from maml_lab.lab.run_library import RunSummary

    nav = RunSummary(Path("n"), "n", task="navigation", algorithms=["maml", "pretrained"],
                     post_loss={"maml": 15.7, "pretrained": 40.1})
    assert nav.result_text() == "average return MAML -15.7 · Pretrained -40.1"
    assert "higher is better" in nav.result_tip()
    sine = RunSummary(Path("s"), "s", task="sinusoid", algorithms=["maml"], post_loss={"maml": 0.25})
    assert sine.result_text() == "MSE 0.25" and "lower is better" in sine.result_tip()
    images = RunSummary(Path("i"), "i", task="images", algorithms=["maml"], post_loss={"maml": 0.5},
                        post_accuracy={"maml": 0.9})
    assert images.result_text().endswith("0.5 (90.0%)")
    assert RunSummary(Path("e"), "e", task="sinusoid").result_text() == ""


def test_a_finished_run_whose_newest_checkpoint_is_damaged_is_listed_as_damaged(tmp_path):
    """Past runs does not call a run "finished" when its last checkpoint fails its checksum (resume would fall
    back to an older one): the status says damaged, the problems say which checkpoint, and mending it clears it."""
    from maml_lab.lab.run_library import summarize
    from tests.test_fault_runs import flip_parameter_byte

    cfg = ExperimentConfig(iterations=4, meta_batch_size=2, val_every=0, hidden=[8, 8],
                           algorithms=[AlgorithmConfig.defaults("maml")])
    folder = RunFolder.create(tmp_path / "run", cfg)
    trainer = Trainer(cfg, record_every=1)
    logger = RunLogger(folder, checkpoint_every=2)
    logger.start(trainer)
    trainer.observers.append(logger)
    trainer.run()

    good = summarize(folder)
    assert good.status_text() == "finished" and not good.problems, good.problems
    newest = folder.checkpoints()[-1][1]
    original = newest.read_bytes()
    flip_parameter_byte(newest)
    bad = summarize(folder)
    assert bad.status_text() == "damaged" and bad.damaged_checkpoint
    said = [p for p in bad.problems if "newest checkpoint (iteration 4) is damaged" in p and "checksum" in p]
    assert said, bad.problems
    newest.write_bytes(original)
    assert summarize(folder).status_text() == "finished"
