"""Parameter paths keep what each algorithm learned besides theta at every snapshot (Meta-SGD's rates and the
like): the recorder keeps them aligned with theta through thinning, the Trainer records copies of them, checkpoints
save and load them with the path, and the Paths view adapts from a checkpoint with the rates of that checkpoint."""

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from maml_lab.core.algorithms.base import LearnedAdaptation
from maml_lab.core.algorithms.config import AlgorithmConfig
from maml_lab.core.analysis.trajectory import TensorLayout, TrajectoryRecorder, unflatten
from maml_lab.core.tasks.losses import loss_function
from maml_lab.core.training import checkpoint as checkpoint_module
from maml_lab.core.training.checkpoint import METADATA_KEY, load_checkpoint, read_checkpoint, save_checkpoint
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the recorder ----------------------------------------------------------------------------------------------
def _learned(it: int) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict([("lr.w", torch.full((3, 2), float(it))),
                        ("inner_adam.step", torch.tensor([float(it)], dtype=torch.float64))])


def test_recorder_keeps_learned_vectors_aligned_with_theta_through_thinning():
    rec = TrajectoryRecorder(capacity=16)
    params = OrderedDict(w=torch.zeros(3, 2))
    for it in range(200):
        params["w"].fill_(it)
        tensors = _learned(it)
        kept = rec.record(it, params, {"it": it}, learned=tensors)
        tensors["lr.w"].fill_(-1.0)  # the recorder keeps a copy: changing the tensor afterwards changes nothing
        assert kept == (rec.iterations[-1] == it)
    assert rec.every > 1 and 2 <= len(rec) < 16 and len(rec.learned) == len(rec)
    assert rec.learned_layout == TensorLayout(("lr.w", "inner_adam.step"), ((3, 2), (1,)), ("float32", "float64"))
    for i, it in enumerate(rec.iterations):
        assert rec.snapshots[i][0] == it and rec.metrics[i] == {"it": it}
        back = rec.learned_at(i)
        assert list(back) == ["lr.w", "inner_adam.step"]
        assert torch.equal(back["lr.w"], torch.full((3, 2), float(it)))
        assert back["inner_adam.step"].dtype == torch.float64 and back["inner_adam.step"].item() == it
    rows, array = rec.learned_rows()
    assert rows.tolist() == list(range(len(rec))) and array.shape == (len(rec), 7) and array.dtype == np.float32
    # the byte counts and limits count the learned vectors
    snapshot_bytes = sum(s.nbytes for s in rec.snapshots)
    assert rec.nbytes(learned=False) == snapshot_bytes and rec.nbytes() == snapshot_bytes + len(rec) * 7 * 4
    big = TrajectoryRecorder(capacity=2000)
    theta = OrderedDict(w=torch.zeros(1000))
    for i in range(300):
        big.record(i, theta, learned=OrderedDict([("lr.w", torch.zeros(1000))]))
    assert big.limit_bytes(100 * 8000, min_capacity=10) == 100  # 4,000 bytes of theta + 4,000 of rates a snapshot
    assert len(big) < 100 and len(big.learned) == len(big) and all(v is not None for v in big.learned)


def test_recording_without_learned_tensors_works_as_before_and_mixes_with_them():
    rec = TrajectoryRecorder(capacity=8)
    params = OrderedDict(w=torch.zeros(2))
    for it in range(4):
        rec.record(it, params)
    assert rec.learned == [None] * 4 and rec.learned_layout is None and rec.learned_at(0) is None
    assert rec.nbytes() == 4 * 8
    for it in range(4, 7):  # e.g. a run resumed from a checkpoint written before the learned tensors were kept
        rec.record(it, params, learned=_learned(it))
    rows, array = rec.learned_rows()
    assert rows.tolist() == [4, 5, 6] and array.shape == (3, 7)
    rec.record(7, params)  # full: thinned, still aligned
    assert rec.iterations == [1, 3, 5, 7] and [v is not None for v in rec.learned] == [False, False, True, False]
    assert rec.learned_at(2)["lr.w"][0, 0] == 5 and rec.learned_at(3) is None
    assert not rec.due(7) and rec.due(8) and not rec.due(9) and rec.due(9, force=True)


# -- a Meta-SGD run: per-checkpoint rates, and the Paths view adapts with them -------------------------------------
def _metasgd_config(**kw):
    base = dict(iterations=6, meta_batch_size=3, val_every=0, hidden=[8, 8], seed=3,
                algorithms=[AlgorithmConfig.defaults("metasgd"), AlgorithmConfig.defaults("maml")])
    base.update(kw)
    return ExperimentConfig(**base)


@pytest.fixture(scope="module")
def metasgd_trainer():
    trainer = Trainer(_metasgd_config(), record_every=1)
    trainer.run()
    return trainer


def test_a_metasgd_path_keeps_the_rates_of_each_checkpoint(metasgd_trainer):
    from maml_lab.lab.inside import collect_paths

    trainer = metasgd_trainer
    rec = trainer.recorders["metasgd"]
    assert rec.iterations == list(range(7)) and all(v is not None for v in rec.learned)
    assert trainer.recorders["maml"].learned_layout is None  # MAML learns nothing besides theta
    inner_lr = trainer.config.algorithm("metasgd").inner_lr
    live = trainer.runs["metasgd"].algorithm.lrs
    first, last = rec.learned_at(0), rec.learned_at(-1)
    assert list(first) == [f"lr.{k}" for k in live]
    for k, v in live.items():
        assert torch.equal(first[f"lr.{k}"], torch.full_like(v.detach(), inner_lr))  # where the rates started
        assert torch.equal(last[f"lr.{k}"], v.detach())  # where they are now (float32: exactly)
    assert any(not torch.equal(first[k], last[k]) for k in first)  # they were trained in between
    paths = collect_paths(trainer)
    path = paths.paths["metasgd"]
    assert len(path.learned) == len(path) and not path.learned[0].flags.writeable
    for i in range(len(path)):
        for k, v in path.learned_at(i).items():
            assert torch.equal(v, rec.learned_at(i)[k])
    assert paths.paths["maml"].learned_at(0) is None


def test_paths_adapts_from_checkpoint_0_with_the_initial_rates(metasgd_trainer):
    from maml_lab.core.algorithms.config import test_adapt
    from maml_lab.lab.inside import (
        ARROW_SEED,
        adaptation_points,
        build_model_and_like,
        collect_paths,
        project_paths,
        sample_tasks,
        task_arrows,
    )

    trainer = metasgd_trainer
    run = collect_paths(trainer)
    name, tasks = "metasgd", 3
    model, like = build_model_and_like(run.model_spec)
    theta0 = unflatten(np.asarray(run.paths[name].snapshots[0], np.float64), like)
    batch = sample_tasks(run.family, tasks, run.shots, run.queries, ARROW_SEED)
    fn = loss_function(run.loss)
    steps = run.inner_steps(name)
    config = trainer.runs[name].algorithm.config
    initial = LearnedAdaptation(config, {f"lr.{k}": torch.full_like(v, config.inner_lr) for k, v in like.items()})

    def adapted(adaptation):
        out = test_adapt(adaptation, model, fn, theta0, batch.x_support, batch.y_support, steps)
        with torch.no_grad():
            loss = fn(model.forward(out, batch.x_query), batch.y_query).double().numpy()
        return torch.cat([v.detach().reshape(tasks, -1).double() for v in out.values()], 1).numpy(), loss

    by_hand, by_hand_loss = adapted(initial)
    sgd, _ = adapted(config.inner_lr)  # the initial rates are the inner lr everywhere: plain SGD, computed apart
    np.testing.assert_allclose(by_hand, sgd, rtol=1e-6, atol=1e-7)
    rule = run.adaptation(name, 0)
    assert isinstance(rule, LearnedAdaptation)
    points, losses = adaptation_points(model, run.loss, theta0, batch, steps, rule)
    np.testing.assert_allclose(points[:, -1], by_hand, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(losses[:, -1], by_hand_loss, rtol=1e-6)
    newest, _ = adapted(run.adaptation(name))  # the newest rates would adapt checkpoint 0 differently
    assert np.abs(newest - by_hand).max() > 1e-5
    # the Paths view's arrows from checkpoint 0: the same losses and end points, and it says whose rates they are
    projected = project_paths(run, "init", name)
    arrows = task_arrows(run, projected.plane, name, 0, tasks)
    np.testing.assert_allclose(arrows.losses[:, -1], by_hand_loss, rtol=1e-6)
    np.testing.assert_allclose(np.stack([s[-1] for s in arrows.steps]), projected.plane.project(by_hand),
                               rtol=1e-5, atol=1e-6)
    assert "lr.* as learned by this checkpoint (iteration 0)" in arrows.rule
    last = task_arrows(run, projected.plane, name, len(run.paths[name]) - 1, tasks)
    assert "lr.* as learned by this checkpoint (iteration 6)" in last.rule


# -- checkpoints -------------------------------------------------------------------------------------------------
def _assert_same_learned(rec: TrajectoryRecorder, other: TrajectoryRecorder):
    assert rec.iterations == other.iterations and rec.learned_layout == other.learned_layout
    assert len(rec.learned) == len(other.learned)
    for a, b in zip(rec.learned, other.learned):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_a_checkpoint_keeps_the_paths_learned_tensors(metasgd_trainer, tmp_path):
    from maml_lab.lab.run_library import paths_from_checkpoint

    trainer = metasgd_trainer
    path = save_checkpoint(trainer, tmp_path / "c.safetensors")
    tensors, header = read_checkpoint(path)
    assert "runs/metasgd/path/learned" in tensors and "runs/maml/path/learned" not in tensors
    assert header["runs"]["metasgd"]["path"]["learned"] == trainer.recorders["metasgd"].learned_layout.to_dict()
    resumed = Trainer(_metasgd_config(), record_every=1)
    load_checkpoint(resumed, path)
    for name in ("metasgd", "maml"):
        _assert_same_learned(trainer.recorders[name], resumed.recorders[name])
    opened = paths_from_checkpoint(tensors, header, trainer.config)
    saved = opened.paths["metasgd"]
    for i in range(len(saved)):
        for k, v in saved.learned_at(i).items():
            assert torch.equal(v, trainer.recorders["metasgd"].learned_at(i)[k])
    inner_lr = trainer.config.algorithm("metasgd").inner_lr
    rates = opened.adaptation("metasgd", 0).tensors  # the initial rates, not the latest checkpoint's
    assert set(rates) == set(opened.learned["metasgd"]) and all(bool((v == inner_lr).all()) for v in rates.values())
    assert any(not torch.equal(rates[k], v) for k, v in opened.learned["metasgd"].items())
    assert "as learned by this checkpoint (iteration 0)" in opened.checkpoint_rule("metasgd", 0)[1]


def test_a_checkpoint_without_the_paths_learned_tensors_still_loads(metasgd_trainer, tmp_path):
    """A checkpoint written before the learned tensors were kept with the path: it resumes and opens as before, the
    views adapt every checkpoint with the newest tensors (and say so), and the resumed path records them again."""
    from maml_lab.lab.run_library import paths_from_checkpoint

    first = Trainer(_metasgd_config(), record_every=1)
    first.run(iterations=3)
    path = save_checkpoint(first, tmp_path / "new.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()[METADATA_KEY])
        tensors = {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith("runs/metasgd/path/learned")}
    del header["runs"]["metasgd"]["path"]["learned"]
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={METADATA_KEY: json.dumps(header)})

    resumed = Trainer(_metasgd_config(), record_every=1)
    load_checkpoint(resumed, old)
    rec = resumed.recorders["metasgd"]
    assert rec.iterations == [0, 1, 2, 3] and rec.learned == [None] * 4 and rec.learned_layout is None
    resumed.run()
    assert [v is not None for v in rec.learned] == [False] * 4 + [True] * 3
    live = resumed.runs["metasgd"].algorithm.export_tensors()
    assert list(rec.learned_at(-1)) == list(live)
    assert all(torch.equal(v, live[k].detach()) for k, v in rec.learned_at(-1).items())
    old_tensors, old_header = read_checkpoint(old)
    opened = paths_from_checkpoint(old_tensors, old_header, first.config)
    assert opened.paths["metasgd"].learned == [] and opened.paths["metasgd"].learned_at(0) is None
    rule, text = opened.checkpoint_rule("metasgd", 0)
    assert isinstance(rule, LearnedAdaptation) and set(rule.tensors) == set(opened.learned["metasgd"])
    assert "held fixed at their iteration-3 values (the newest" in text


def test_paths_too_big_with_their_learned_tensors_are_kept_without_them(metasgd_trainer, tmp_path, monkeypatch):
    trainer = metasgd_trainer
    theta_only = sum(r.nbytes(learned=False) for r in trainer.recorders.values())
    assert sum(r.nbytes() for r in trainer.recorders.values()) > theta_only
    monkeypatch.setattr(checkpoint_module, "MAX_PATHS_BYTES", theta_only)
    tensors, header = read_checkpoint(save_checkpoint(trainer, tmp_path / "c.safetensors"))
    assert "runs/metasgd/path/snapshots" in tensors and "runs/metasgd/path/learned" not in tensors
    assert "learned" not in header["runs"]["metasgd"]["path"]
    monkeypatch.setattr(checkpoint_module, "MAX_PATHS_BYTES", theta_only - 1)
    tensors, header = read_checkpoint(save_checkpoint(trainer, tmp_path / "d.safetensors"))
    assert "runs/metasgd/path/snapshots" not in tensors and "path" not in header["runs"]["metasgd"]
