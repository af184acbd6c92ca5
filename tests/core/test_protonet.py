"""ProtoNet (Snell et al. 2017): its loss and meta-gradient in float64 against an independent computation (the
plain nn.Sequential, prototypes by a loop over classes), its test-time rule (prototypes, no steps), the reference's
learning-rate halving, the families that refuse it, exact resume, and a short run on Omniglot small1."""

from __future__ import annotations

from collections import OrderedDict, deque
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from maml_lab.cli import main
from maml_lab.core.algorithms import config as algorithm_config
from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm, predict
from maml_lab.core.algorithms.protonet import ProtoNet, prototype_logits
from maml_lab.core.algorithms.registry import algorithm_class
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.base import TaskBatch
from maml_lab.core.training.config import ExperimentConfig

SMALL1 = Path(__file__).resolve().parents[3] / "shared" / "omniglot" / "images_background_small1.zip"
ACCURACY = "5-way {}-shot: "


def _episodes(model, b=2, ways=3, shots=2, queries=2, seed=0):
    """B tasks of `ways` classes with `shots` support and `queries` query images each, labels shuffled."""
    g = torch.Generator().manual_seed(seed)
    c, (h, w) = model.in_channels, model.image_size

    def images(n):
        return torch.rand(b, n, c, h, w, generator=g, dtype=torch.float64)

    def labels(per_class):
        return torch.stack([torch.arange(ways).repeat_interleave(per_class)[torch.randperm(ways * per_class,
                                                                                          generator=g)]
                            for _ in range(b)])

    return TaskBatch(images(ways * shots), labels(shots), images(ways * queries), labels(queries))


def _reference_loss(module, batch, ways):
    """Snell et al.'s episode loss, written independently: each task's support and queries through the body in
    one batch (train-mode batch norm), each class's prototype by a loop over classes, squared distances,
    cross-entropy averaged over the queries, then over the tasks."""
    body = module[:-1]
    losses = []
    for i in range(batch.x_support.shape[0]):
        xs, ys, xq, yq = batch.x_support[i], batch.y_support[i], batch.x_query[i], batch.y_query[i]
        z = body(torch.cat([xs, xq]))
        zs, zq = z[:len(xs)], z[len(xs):]
        dists = []
        for c in range(ways):
            prototype = zs[ys == c].mean(0)
            dists.append(((zq - prototype) ** 2).sum(1))
        losses.append(F.cross_entropy(-torch.stack(dists, 1), yq))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("kw", [dict(downsample="stride"), dict(downsample="maxpool"),
                                dict(downsample="stride", convention="cbfinn")], ids=["stride", "maxpool", "cbfinn"])
def test_loss_and_meta_gradient_match_an_independent_computation(kw):
    ways = 3
    model = Conv4(in_channels=1, image_size=16, ways=ways, filters=5, **kw)
    params = model.init_params(torch.Generator().manual_seed(1), dtype=torch.float64)
    for v in params.values():
        v.requires_grad_(True)  # theta's leaves, as the Trainer holds them
    batch = _episodes(model, ways=ways)
    algo = make_algorithm(model, "cross_entropy", AlgorithmConfig.defaults("protonet", task="images"))
    grads, loss, _, logits = algo.meta_gradient(params, batch)

    module = model.torch_module().double()
    module.load_state_dict({k: v.detach() for k, v in params.items()})
    expected = _reference_loss(module, batch, ways)
    expected_grads = torch.autograd.grad(expected, list(module.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, expected.detach())
    names = list(module.state_dict())
    for name, g, e in zip(names, grads, expected_grads):
        e = torch.zeros_like(g) if e is None else e
        torch.testing.assert_close(g, e, msg=name)
    head = set(model.head_names())
    assert all(torch.count_nonzero(g) == 0 for name, g in zip(params, grads) if name in head)
    assert logits.shape == (2, ways * 2, ways)


def test_prototype_logits_on_an_mlp_by_hand():
    """The rule on a model whose features are easy to follow: prototypes are class means, logits -d^2."""
    model = MLP([2, 3, 2])
    params = model.init_params(torch.Generator().manual_seed(0), dtype=torch.float64)
    xs = torch.randn(1, 4, 2, dtype=torch.float64)
    ys = torch.tensor([[0, 1, 0, 1]])
    xq = torch.randn(1, 3, 2, dtype=torch.float64)
    z = model.features(params, torch.cat([xs, xq], 1))[0]
    p0, p1 = z[[0, 2]].mean(0), z[[1, 3]].mean(0)
    expected = -torch.stack([((z[4:] - p0) ** 2).sum(1), ((z[4:] - p1) ** 2).sum(1)], 1)
    torch.testing.assert_close(prototype_logits(model, params, xs, ys, xq, ways=2)[0], expected)


def test_test_time_rule_is_prototypes_without_steps():
    model = Conv4(in_channels=1, image_size=16, ways=3, filters=4)
    params = model.init_params(torch.Generator().manual_seed(0), dtype=torch.float64)
    batch = _episodes(model)
    config = AlgorithmConfig.defaults("protonet", task="images")
    assert config.inner_steps == 0 and config.test_inner_steps == 0
    trajectory = list(algorithm_config.test_trajectory(config, model, None, params, batch.x_support,
                                                       batch.y_support, 3))
    assert len(trajectory) == 4  # steps read as steps: theta after 0..3 of them, the same each time
    for fast in trajectory:
        assert all(torch.equal(fast[k][i], params[k]) for k in params for i in range(2))
    logits = predict(config, model, trajectory[-1], batch.x_support, batch.y_support, batch.x_query)
    torch.testing.assert_close(logits, prototype_logits(model, params, batch.x_support, batch.y_support,
                                                        batch.x_query))
    cls = algorithm_class("protonet")
    assert cls.adaptation_kind == "prototypes" and cls.classification_only and cls.color == "#117733"


def test_the_reference_halves_the_learning_rate_every_2000_steps():
    model = Conv4(in_channels=1, image_size=16, ways=3, filters=4)
    algo = make_algorithm(model, "cross_entropy", AlgorithmConfig.defaults("protonet", task="images"))
    assert [algo.meta_lr(i) for i in (0, 1999, 2000, 4000)] == [1e-3, 1e-3, 5e-4, 2.5e-4]
    constant = AlgorithmConfig.defaults("protonet", task="images", options={"halve_lr_every": 0})
    assert make_algorithm(model, "cross_entropy", constant).meta_lr(10 ** 6) == 1e-3
    with pytest.raises(ValueError, match="halve_lr_every must be a whole number"):
        AlgorithmConfig.defaults("protonet", task="images", options={"halve_lr_every": -1})


@pytest.mark.parametrize("task", ["sinusoid", "navigation"])
def test_families_that_regress_or_act_refuse_it_in_one_line(task, capsys):
    with pytest.raises(ValueError, match="ProtoNet classifies only") as err:
        ExperimentConfig(task=task, algorithms=[AlgorithmConfig.defaults("protonet", task=task)])
    assert "\n" not in str(err.value)
    assert main(["train", "--task", task, "--algorithm", "protonet", "--iterations", "1", "--quiet"]) == 2
    line = capsys.readouterr().err.strip()
    assert "ProtoNet classifies only" in line and len(line.splitlines()) == 1


def test_trains_and_resumes_exactly_from_the_cli(tmp_path, monkeypatch, capsys):
    """Glyphs, with the rate halved every 2 steps so that a resume must restore the step count and Adam's state."""
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))
    common = ["train", "--task", "images", "--algorithm", "protonet", "--meta-batch-size", "2", "--image-size", "14",
              "--option", "protonet.halve_lr_every=2", "--threads", "1", "--quiet", "--checkpoint-every", "2"]
    assert main([*common, "--iterations", "6", "--run-dir", str(tmp_path / "whole")]) == 0
    assert main([*common, "--iterations", "3", "--run-dir", str(tmp_path / "part")]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--iterations", "6", "--quiet", "--threads", "1"]) == 0
    capsys.readouterr()
    a = load_file(tmp_path / "whole" / "exports" / "protonet.safetensors")
    b = load_file(tmp_path / "part" / "exports" / "protonet.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / "metrics.csv").read_text() == (tmp_path / "part" / "metrics.csv").read_text()


@pytest.mark.skipif(not SMALL1.is_file(), reason=f"Omniglot test data not found at {SMALL1}")
def test_a_short_run_on_small1_is_far_above_chance(tmp_path, monkeypatch, capsys):
    """40 episodic steps of 4 tasks on Omniglot small1, then `eval` on 100 held-out 5-way tasks: chance is 20%."""
    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "pn.safetensors"
    assert main(["train", "--task", "images", "--data", str(SMALL1), "--algorithm", "protonet", "--iterations", "40",
                 "--meta-batch-size", "4", "--threads", "1", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--tasks", "100", "--shots", "1", "5", "--threads", "1"]) == 0
    stdout = capsys.readouterr().out
    assert "after 0 fine-tuning steps (prototypes" in stdout
    accuracy = {k: float(line.split(": ")[1].split("%")[0]) for k in (1, 5) for line in stdout.splitlines()
                if line.startswith(ACCURACY.format(k))}
    assert accuracy[1] > 60 and accuracy[5] > 75, stdout
    assert accuracy[5] > accuracy[1]


def test_a_per_task_batch_is_the_loop_over_tasks():
    """predict on per-task parameters (as test_trajectory yields them) equals each task alone."""
    model = Conv4(in_channels=1, image_size=16, ways=3, filters=4)
    params = model.init_params(torch.Generator().manual_seed(0), dtype=torch.float64)
    batch = _episodes(model, b=3)
    fast = deque(ProtoNet.test_trajectory(None, model, None, params, batch.x_support, batch.y_support, 1),
                 maxlen=1)[0]
    out = ProtoNet.predict(None, model, fast, batch.x_support, batch.y_support, batch.x_query)
    for i in range(3):
        one = OrderedDict((k, v[i]) for k, v in fast.items())
        torch.testing.assert_close(out[i:i + 1], ProtoNet.predict(None, model, one, batch.x_support[i:i + 1],
                                                                  batch.y_support[i:i + 1], batch.x_query[i:i + 1]))


def test_batch_norm_modes_reach_the_prototypes():
    """Under support-set statistics (eval --bn support) the support set and each query are embedded as the mode
    says: a query's logits do not depend on the other queries; transductively (the training episode) they do."""
    model = Conv4(in_channels=1, image_size=16, ways=3, filters=4)
    params = model.init_params(torch.Generator().manual_seed(0), dtype=torch.float64)
    batch = _episodes(model, b=2, queries=3)
    config = AlgorithmConfig.defaults("protonet", task="images")
    for mode, independent in (("support", True), ("support+query", True), ("transductive", False)):
        both = predict(config, model, params, batch.x_support, batch.y_support, batch.x_query, batch_norm=mode)
        alone = predict(config, model, params, batch.x_support, batch.y_support, batch.x_query[:, :1],
                        batch_norm=mode)
        assert both.shape == (2, 9, 3)
        assert torch.allclose(both[:, :1], alone) == independent, mode


def _exports_snippet() -> str:
    """The ProtoNet lines of docs/exports.md, as written there."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "exports.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    return next(b for b in blocks if b.startswith("# ProtoNet: classify one task by prototypes"))


def test_the_exports_plain_pytorch_snippet_reproduces_eval(tmp_path, monkeypatch, capsys):
    """docs/exports.md's lines, with no maml_lab inside them, classify `eval`'s held-out tasks to `eval`'s accuracy."""
    import json

    from safetensors import safe_open

    from maml_lab.core.tasks.images import heldout_family_from_metadata

    monkeypatch.setenv("MAML_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "images", "--algorithm", "protonet", "--iterations", "3", "--meta-batch-size", "2",
                 "--image-size", "14", "--threads", "1", "--quiet", "--out", "init-protonet.safetensors"]) == 0
    assert main(["eval", "init-protonet.safetensors", "--tasks", "20", "--shots", "5", "--threads", "1",
                 "--json", "eval.json"]) == 0
    capsys.readouterr()
    evaluation = json.loads((tmp_path / "eval.json").read_text())["evaluations"][0]
    accuracy, queries = evaluation["results"][0]["mean"], evaluation["card"]["queries"]

    with safe_open("init-protonet.safetensors", "pt") as f:
        meta = json.loads(f.metadata()["maml_lab"])
    namespace = {"model": Conv4.from_spec(meta["model"]).torch_module()}
    exec(compile(_exports_snippet(), "docs/exports.md", "exec"), namespace)
    family = heldout_family_from_metadata(meta["task"])  # eval's held-out tasks: its seed, 2017
    batch = family.sample(20, 5, queries, torch.Generator().manual_seed(2017))
    correct = total = 0
    for i in range(20):
        logits = namespace["classify"](batch.x_support[i], batch.y_support[i], batch.x_query[i], family.ways)
        correct += int((logits.argmax(1) == batch.y_query[i]).sum())
        total += len(batch.y_query[i])
    assert abs(correct / total - accuracy) <= 2 / total, (correct / total, accuracy)  # a near-tie may flip
