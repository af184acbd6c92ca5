"""Checkpoint and resume: exact continuation, refusal of another experiment's checkpoint, damaged files."""

import pytest
import torch

from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.training.checkpoint import (
    CheckpointError,
    config_difference,
    load_checkpoint,
    params_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer

ALL = ("maml", "fomaml", "reptile", "pretrained")


pytestmark = pytest.mark.usefixtures("one_thread")


def config(**kw):
    base = dict(iterations=40, meta_batch_size=4, val_every=10, val_tasks=8, seed=5,
                algorithms=[AlgorithmConfig.defaults(n, meta_lr_schedule="cosine") for n in ALL])
    base.update(kw)
    return ExperimentConfig(**base)


def assert_same_state(a: Trainer, b: Trainer):
    assert a.iteration == b.iteration
    for name in a.runs:
        for k in a.runs[name].params:
            assert torch.equal(a.runs[name].params[k], b.runs[name].params[k]), (name, k)
        assert a.runs[name].log == b.runs[name].log  # bounded logs continue exactly (bins, raw tail, last row)
        assert a.runs[name].val_log == b.runs[name].val_log
        assert a.runs[name].last_metrics == b.runs[name].last_metrics and a.runs[name].last_val == b.runs[name].last_val
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_resumed_run_ends_exactly_like_the_uninterrupted_one(tmp_path):
    whole = Trainer(config(), record_every=3)
    whole.run()

    first = Trainer(config(), record_every=3)
    first.run(iterations=17)  # a checkpoint mid-run, between validations and off the recording interval
    path = save_checkpoint(first, tmp_path / "ckpt.safetensors")
    del first

    resumed = Trainer(config(), record_every=3)
    header = load_checkpoint(resumed, path)
    assert header["iteration"] == 17 and resumed.iteration == 17
    assert len(resumed.runs["maml"].log) == 17 and len(resumed.runs["maml"].val_log) == 1
    resumed.run()
    assert_same_state(whole, resumed)
    for name in whole.recorders:  # the parameter paths continue too (with a point where the first part stopped)
        kept, again = set(whole.recorders[name].iterations), set(resumed.recorders[name].iterations)
        assert kept <= again and again - kept == {17}
    exported = params_from_checkpoint(path)
    assert set(exported) == set(ALL) and list(exported["maml"]) == list(whole.runs["maml"].params)


def test_resume_in_float64_and_on_image_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))
    cfg = dict(task="images", image_size=14, meta_batch_size=2, iterations=6, val_every=0, val_tasks=2,
               algorithms=[AlgorithmConfig.defaults(n, task="images") for n in ("maml", "reptile")])
    whole = Trainer(ExperimentConfig(**cfg), record_every=0)
    whole.run()
    part = Trainer(ExperimentConfig(**cfg), family=whole.family, record_every=0)
    part.run(iterations=3)
    path = save_checkpoint(part, tmp_path / "img.safetensors")
    resumed = Trainer(ExperimentConfig(**cfg), family=whole.family, record_every=0)
    load_checkpoint(resumed, path)
    resumed.run()
    assert_same_state(whole, resumed)
    assert "pre_accuracy" in resumed.runs["maml"].log.tail_rows()[0]

    whole64 = Trainer(config(dtype="float64", iterations=12), record_every=0)
    whole64.run()
    part64 = Trainer(config(dtype="float64", iterations=12), record_every=0)
    part64.run(iterations=5)
    path = save_checkpoint(part64, tmp_path / "f64.safetensors")
    resumed64 = Trainer(config(dtype="float64", iterations=12), record_every=0)
    load_checkpoint(resumed64, path)
    resumed64.run()
    assert_same_state(whole64, resumed64)


def test_a_checkpoint_of_another_experiment_is_refused_naming_the_difference(tmp_path):
    t = Trainer(config(iterations=4), record_every=0)
    t.run()
    path = save_checkpoint(t, tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match=r"hidden: \[40, 40\] in the checkpoint, \[64\] here"):
        load_checkpoint(Trainer(config(iterations=4, hidden=[64]), record_every=0), path)
    other = config(iterations=4)
    other.algorithms[0].inner_lr = 0.05
    with pytest.raises(CheckpointError, match="maml inner_lr: 0.01 in the checkpoint, 0.05 here"):
        load_checkpoint(Trainer(other, record_every=0), path)
    with pytest.raises(CheckpointError, match="algorithm pretrained is in the checkpoint but not here"):
        load_checkpoint(Trainer(config(iterations=4, algorithms=[AlgorithmConfig.defaults(n) for n in ALL[:3]]),
                                record_every=0), path)
    # where it runs and how long it runs are not a different experiment
    assert config_difference(config(device="cpu").to_dict(), config(device="cuda", iterations=9).to_dict()) == []
    longer = Trainer(config(iterations=8), record_every=0)
    load_checkpoint(longer, path)
    assert longer.run() == "finished" and longer.iteration == 8


def test_damaged_or_foreign_files_are_refused_clearly(tmp_path):
    t = Trainer(config(iterations=2), record_every=0)
    t.run()
    good = save_checkpoint(t, tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.safetensors")
    t.export("maml", tmp_path / "init.safetensors")  # an initialization is not a checkpoint
    with pytest.raises(CheckpointError, match="not a MAML Lab checkpoint"):
        read_checkpoint(tmp_path / "init.safetensors")


def test_an_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    t = Trainer(config(iterations=3), record_every=0)
    t.run()
    path = save_checkpoint(t, tmp_path / "c.safetensors")
    before = path.read_bytes()

    def dies_halfway(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(t, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left behind
