"""Work outside the meta-step kept off the critical path: validation within a time budget, checkpoints written on a
background thread from a copy of the state taken first."""

import pytest
import torch

from maml_lab.core.training.checkpoint import CheckpointWriter, read_checkpoint, save_checkpoint, trainer_state
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.runs import RunFolder, RunLogger
from maml_lab.core.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw):
    base = dict(iterations=12, meta_batch_size=2, val_every=3, val_tasks=4, hidden=[8], shots=3, queries=3, seed=1)
    base.update(kw)
    return ExperimentConfig(**base)


def test_without_a_budget_validation_runs_every_val_every_iterations():
    trainer = Trainer(tiny(), record_every=0)
    trainer.run()
    assert [r["iteration"] for r in trainer.runs["maml"].val_log.tail_rows()] == [3, 6, 9, 12]
    assert trainer.val_seconds > 0 and trainer.train_seconds > 0


def test_a_budget_skips_due_validations_once_validation_time_exceeds_it():
    none = Trainer(tiny(), record_every=0)
    none.val_budget = 0.0  # any validation exceeds it: the first due one runs, then none but the last iteration's
    none.run()
    assert [r["iteration"] for r in none.runs["maml"].val_log.tail_rows()] == [3, 12]
    ample = Trainer(tiny(), record_every=0)
    ample.val_budget = 1e9
    ample.run()
    assert [r["iteration"] for r in ample.runs["maml"].val_log.tail_rows()] == [3, 6, 9, 12]


def test_validation_never_changes_what_is_trained():
    a, b = Trainer(tiny(), record_every=0), Trainer(tiny(val_every=0), record_every=0)
    a.val_budget = 0.0
    a.run()
    b.run()
    for k, v in a.runs["maml"].params.items():
        assert torch.equal(v, b.runs["maml"].params[k])


def _same_state(path, tensors, header):
    saved, saved_header = read_checkpoint(path)
    assert set(saved) == set(tensors)
    for k, v in tensors.items():
        assert saved[k].dtype == v.dtype and (saved[k].shape == v.shape) and (
            torch.equal(saved[k], v) or torch.allclose(saved[k], v, rtol=0, atol=0, equal_nan=True)), k
    assert {k: v for k, v in saved_header.items() if k != "created"} == \
        {k: v for k, v in header.items() if k != "created"}


def test_background_checkpoint_holds_the_state_at_save_time_even_if_training_moves_on(tmp_path):
    trainer = Trainer(tiny(), record_every=1)
    trainer.run(iterations=4)
    expected, header = trainer_state(trainer)
    writer = CheckpointWriter()
    seen = []
    writer.save(trainer, tmp_path / "a.safetensors", then=seen.append)
    trainer.run(iterations=3)  # training goes on (and changes every tensor in place) while the file is written
    with torch.no_grad():
        for v in trainer.runs["maml"].params.values():
            v.add_(1.0)
    writer.wait()
    assert seen == [tmp_path / "a.safetensors"] and not writer.busy
    _same_state(tmp_path / "a.safetensors", expected, header)
    save_checkpoint(trainer, tmp_path / "b.safetensors")  # the synchronous path: the state now
    later, _ = read_checkpoint(tmp_path / "b.safetensors")
    assert int(later["runs/maml/params/0.weight"].ne(expected["runs/maml/params/0.weight"]).sum()) > 0


def test_a_failed_background_write_is_raised_by_wait_and_by_the_next_save(tmp_path):
    trainer = Trainer(tiny(), record_every=0)
    writer = CheckpointWriter()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint's folder should be")
    writer.save(trainer, blocker / "x.safetensors")
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # the error is reported once
    writer.save(trainer, blocker / "y.safetensors")
    with pytest.raises(OSError):
        writer.save(trainer, tmp_path / "z.safetensors")


@pytest.mark.parametrize("background", [True, False])
def test_run_folder_checkpoints_status_and_pruning_with_and_without_background_writes(tmp_path, background):
    cfg = tiny(iterations=10)
    folder = RunFolder.create(tmp_path / "run", cfg)
    trainer = Trainer(cfg, record_every=0)
    logger = RunLogger(folder, checkpoint_every=3, tensorboard=False, background=background)
    logger.start(trainer)
    trainer.observers.append(logger)
    assert trainer.run() == "finished"
    assert [it for it, _ in folder.checkpoints()] == [9, 10]  # the latest two, the final one included
    status = folder.status()
    assert status["status"] == "finished" and status["checkpoint"] == folder.checkpoint_path(10).name
    tensors, header = read_checkpoint(folder.latest_checkpoint())
    assert header["iteration"] == 10
    assert torch.equal(tensors["runs/maml/params/0.weight"], trainer.runs["maml"].params["0.weight"].detach())
