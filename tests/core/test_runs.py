"""Run folders: what a run leaves behind, and that the usual tools can read it."""

import csv

import numpy as np
import pytest
import torch

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.export import load_initialization
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.runs import RunFolder, RunFolderError, RunLogger, list_runs, tensorboard_available
from maml_lab.core.training.trainer import Trainer


def config(**kw):
    base = dict(iterations=30, meta_batch_size=4, val_every=10, val_tasks=8,
                algorithms=[AlgorithmConfig.defaults(n) for n in ("maml", "reptile")])
    base.update(kw)
    return ExperimentConfig(**base)


def train_in(folder_path, cfg=None, checkpoint_every=10, **run_kw):
    cfg = cfg or config()
    folder = RunFolder.create(folder_path, cfg)
    trainer = Trainer(cfg, record_every=0)
    logger = RunLogger(folder, checkpoint_every=checkpoint_every)
    logger.start(trainer)
    trainer.observers.append(logger)
    trainer.run(**run_kw)
    return folder, trainer


def test_a_run_folder_holds_config_metrics_checkpoints_and_exports(tmp_path):
    folder, trainer = train_in(tmp_path / "run")
    assert ExperimentConfig.load_toml(folder.config_path).to_dict() == trainer.config.to_dict()
    status = folder.status()
    assert status["status"] == "finished" and status["iteration"] == 30 and status["total"] == 30
    assert status["algorithms"] == ["maml", "reptile"] and status["exports"]["maml"] == "exports/maml.safetensors"
    assert [it for it, _ in folder.checkpoints()] == [20, 30]  # the latest two are kept
    assert folder.latest_checkpoint() == folder.checkpoint_path(30)
    with open(folder.metrics_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 60 and [r["algorithm"] for r in rows[:2]] == ["maml", "reptile"]
    assert rows[-1]["iteration"] == "30" and float(rows[-1]["post_loss"]) > 0
    assert sum(1 for r in rows if r["val_post_loss"]) == 6  # validation every 10 iterations, both algorithms
    metrics = folder.read_metrics()
    np.testing.assert_allclose(metrics["maml"]["post_loss"],
                               trainer.runs["maml"].log.tail_columns()["post_loss"], rtol=1e-6)
    for name in ("maml", "reptile"):
        params, meta, _ = load_initialization(folder.export_path(name))
        assert meta["algorithm"] == name and meta["iterations"] == 30
        for k, v in params.items():
            assert torch.equal(v, trainer.runs[name].params[k].detach())
    assert [r.name for r in list_runs(tmp_path)] == ["run"]


def test_a_stopped_run_checkpoints_where_it_stopped_and_refuses_reuse(tmp_path):
    folder, trainer = train_in(tmp_path / "run", checkpoint_every=0, iterations=7)
    assert trainer.state == "stopped" and folder.status()["status"] == "stopped"
    assert [it for it, _ in folder.checkpoints()] == [7]
    with pytest.raises(RunFolderError, match="already holds a run"):
        RunFolder.create(folder.path, config())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="exists and is not empty"):
        RunFolder.create(tmp_path / "other", config())
    with pytest.raises(RunFolderError, match="not a MAML Lab run folder"):
        RunFolder.open(tmp_path / "other")
    # a damaged newest checkpoint is passed over for the one before it
    folder.checkpoint_path(9).write_bytes(b"garbage")
    assert folder.latest_checkpoint() == folder.checkpoint_path(7)


def test_a_diverged_run_keeps_its_last_finite_parameters(tmp_path):
    cfg = config(algorithms=[AlgorithmConfig.defaults("maml", inner_lr=1e6, meta_lr=1e6)], val_every=0)
    folder, trainer = train_in(tmp_path / "run", cfg)
    assert trainer.state == "diverged"
    status = folder.status()
    assert status["status"] == "diverged" and "non-finite" in status["reason"]
    params, _, _ = load_initialization(folder.export_path("maml"))  # refuses non-finite tensors
    assert all(torch.isfinite(v).all() for v in params.values())


@pytest.mark.skipif(not tensorboard_available(), reason="the tensorboard extra is not installed")
def test_tensorboard_reads_the_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, trainer = train_in(tmp_path / "run")
    events = EventAccumulator(str(folder.tensorboard_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"maml/pre_loss", "maml/post_loss", "maml/val_post_loss", "reptile/post_loss"} <= tags
    steps = [e.step for e in events.Scalars("maml/post_loss")]
    assert steps == [10, 20, 30]
    first_ten = np.mean(trainer.runs["maml"].log.tail_columns()["post_loss"][:10])
    assert events.Scalars("maml/post_loss")[0].value == pytest.approx(first_ten, rel=1e-5)
    assert [e.step for e in events.Scalars("maml/val_post_loss")] == [10, 20, 30]
