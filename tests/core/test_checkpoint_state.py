"""Checkpoints carry each algorithm's state through MetaAlgorithm.state_dict and stay the same size however long
the run has been (the metrics in them are bounded logs)."""

import json

import pytest
import torch
from safetensors import safe_open

from maml_lab.core.algorithms import AlgorithmConfig
from maml_lab.core.algorithms.base import MetaAlgorithm
from maml_lab.core.training.checkpoint import METADATA_KEY, CheckpointError, load_checkpoint, save_checkpoint
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def config(iterations=300):
    return ExperimentConfig(iterations=iterations, meta_batch_size=2, val_every=50, val_tasks=2, hidden=[8], seed=4,
                            algorithms=[AlgorithmConfig.defaults(n) for n in ("maml", "reptile")])


def test_algorithm_state_goes_through_state_dict_and_the_size_stays_put(tmp_path, monkeypatch):
    t = Trainer(config(), record_every=0)
    t.run(iterations=10)
    early = save_checkpoint(t, tmp_path / "early.safetensors").stat().st_size
    t.run()
    late_path = save_checkpoint(t, tmp_path / "late.safetensors")
    assert abs(late_path.stat().st_size - early) < 0.05 * early  # 30x the iterations, the same size (to the
    # rows not yet folded into bins, at most MetricsLog.block per log)

    calls = []
    original = MetaAlgorithm.load_state_dict
    monkeypatch.setattr(MetaAlgorithm, "load_state_dict",
                        lambda self, state: (calls.append((self.name, state)), original(self, state)))
    resumed = Trainer(config(), record_every=0)
    load_checkpoint(resumed, late_path)
    assert [name for name, _ in calls] == ["maml", "reptile"]
    maml_state = dict(calls)["maml"]
    assert maml_state["optimizer"]["lr"] == t.runs["maml"].algorithm.optimizer.lr
    for mine, saved in zip(t.runs["maml"].algorithm.optimizer.exp_avg, maml_state["optimizer"]["exp_avg"]):
        assert torch.equal(mine, saved)
    assert dict(calls)["reptile"]["optimizer"] is None  # Reptile's outer update has no optimizer
    assert resumed.runs["maml"].log == t.runs["maml"].log and resumed.runs["maml"].last_val == t.runs["maml"].last_val


def test_a_checkpoint_of_the_previous_format_is_refused_clearly(tmp_path):
    from safetensors.torch import save_file

    t = Trainer(config(iterations=2), record_every=0)
    t.run()
    path = save_checkpoint(t, tmp_path / "c.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()[METADATA_KEY])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    header["format_version"] = 1
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={METADATA_KEY: json.dumps(header)})
    with pytest.raises(CheckpointError, match="older MAML Lab"):
        load_checkpoint(Trainer(config(iterations=2), record_every=0), tmp_path / "old.safetensors")


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "pretrained", "mamlpp", "metasgd", "anil", "boil"])
def test_every_algorithm_resumes_exactly_from_a_checkpoint(name, tmp_path):
    """8 iterations straight == 4, a checkpoint, a fresh Trainer, 4 more: theta and what it learned besides theta
    (Meta-SGD's rates, MAML++'s rates and batch-norm rows, Reptile's carried Adam state) bit for bit."""
    def make():
        return Trainer(ExperimentConfig(iterations=8, meta_batch_size=2, val_every=0, hidden=[8, 8], seed=5,
                                        algorithms=[AlgorithmConfig.defaults(name)]), record_every=0)

    straight = make()
    straight.run()
    first = make()
    first.run(iterations=4)
    path = save_checkpoint(first, tmp_path / "half.safetensors")
    resumed = make()
    load_checkpoint(resumed, path)
    resumed.run()
    assert resumed.iteration == straight.iteration == 8
    a, b = straight.runs[name], resumed.runs[name]
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    learned_a, learned_b = a.algorithm.export_tensors(), b.algorithm.export_tensors()
    assert list(learned_a) == list(learned_b)
    for k in learned_a:
        assert torch.equal(learned_a[k], learned_b[k]), k
    assert any(not torch.equal(a.params[k], first.runs[name].params[k]) for k in a.params)  # the last 4 trained
