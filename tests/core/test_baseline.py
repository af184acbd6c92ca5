"""Baseline and Baseline++ (Chen et al. 2019) against independent computations in float64: the all-class training
gradient against plain torch on a conv-4 and an MLP written with nn.functional, the head fit against the reference's
loop (nn.Linear / a weight-normed distLinear, optim.SGD, shuffled batches of 4: same seed, same result), the cosine
head's logits against distLinear's; then training on small1, exact resume, the CLI."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maml_lab.core.algorithms import head_fit
from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.base import TaskBatch
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer

DT = torch.float64
NAMES = ("baseline", "baselinepp")


# -- the head fit -------------------------------------------------------------------------------------------------

def support_features(tasks=3, ways=5, shots=3, dim=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(tasks, ways * shots, dim, generator=g, dtype=DT).relu() + 0.1 * torch.randn(
        tasks, ways * shots, dim, generator=g, dtype=DT)
    labels = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    return feats, labels


def distlinear(weight: torch.Tensor) -> nn.Module:
    """The reference's distLinear layer (bias-free nn.Linear under weight norm over dim 0) with this initial weight."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(DT)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return nn.utils.parametrizations.weight_norm(layer, dim=0)


def distlinear_scores(layer: nn.Module, x: torch.Tensor, classes: int) -> torch.Tensor:
    scale = 2.0 if classes <= 200 else 10.0
    return scale * layer(x / (torch.norm(x, p=2, dim=1, keepdim=True) + 0.00001))


def snapshot(kind, layer):
    return layer.weight.detach().clone(), (layer.bias.detach().clone() if kind == "linear" else None)


def reference_fit(kind, feats, labels, ways, epochs, lr, seed=head_fit.HEAD_FIT_SEED):
    """methods/baselinefinetune.py's loop, one task at a time, on the random numbers head_fit draws in its order (the
    fresh heads for every task, then each epoch's order of every task's support set): the head after each epoch."""
    tasks, size, dim = feats.shape
    g = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(dim)
    w0 = ((torch.rand(tasks, ways, dim, generator=g) * 2 - 1) * bound).to(DT)
    b0 = ((torch.rand(tasks, ways, generator=g) * 2 - 1) * bound).to(DT) if kind == "linear" else None
    orders = [torch.rand(tasks, size, generator=g).argsort(dim=1) for _ in range(epochs)]
    out = [[] for _ in range(epochs + 1)]
    for i in range(tasks):
        if kind == "linear":
            layer = nn.Linear(dim, ways).to(DT)
            with torch.no_grad():
                layer.weight.copy_(w0[i])
                layer.bias.copy_(b0[i])
        else:
            layer = distlinear(w0[i])
        opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, dampening=0.9, weight_decay=0.001)

        out[0].append(snapshot(kind, layer))
        for epoch in range(epochs):
            rand_id = orders[epoch][i]
            for start in range(0, size, 4):
                selected = rand_id[start:min(start + 4, size)]
                z, y = feats[i, selected], labels[i, selected]
                scores = layer(z) if kind == "linear" else distlinear_scores(layer, z, ways)
                loss = nn.CrossEntropyLoss()(scores, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            out[epoch + 1].append(snapshot(kind, layer))
    return out


@pytest.mark.parametrize("kind", head_fit.HEADS)
@pytest.mark.parametrize("shots", [1, 3])
def test_the_head_fit_is_the_reference_loop_epoch_by_epoch(kind, shots):
    feats, labels = support_features(shots=shots)
    ways, epochs, lr = 5, 6, 0.05  # a larger step than the reference's 0.01, so that a wrong term would show
    ours = list(head_fit.fit_trajectory(kind, feats, labels, ways, epochs, lr))
    theirs = reference_fit(kind, feats, labels, ways, epochs, lr)
    assert len(ours) == epochs + 1
    for epoch, ((weight, bias), reference) in enumerate(zip(ours, theirs)):
        ref_w = torch.stack([w for w, _ in reference])
        assert torch.allclose(weight, ref_w, rtol=1e-10, atol=1e-12), (kind, epoch)
        if kind == "linear":
            assert torch.allclose(bias, torch.stack([b for _, b in reference]), rtol=1e-10, atol=1e-12)
        else:
            assert torch.equal(bias, torch.zeros_like(bias))
    assert not torch.allclose(ours[0][0], ours[-1][0])  # it moved


def test_the_head_fit_repeats_exactly_and_its_seed_is_what_it_draws_from():
    feats, labels = support_features()
    a = deque(head_fit.fit_trajectory("linear", feats, labels, 5, 4, 0.01), maxlen=1)[0]
    b = deque(head_fit.fit_trajectory("linear", feats, labels, 5, 4, 0.01), maxlen=1)[0]
    c = deque(head_fit.fit_trajectory("linear", feats, labels, 5, 4, 0.01, seed=1), maxlen=1)[0]
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_the_cosine_head_scores_as_distlinear_does():
    g = torch.Generator().manual_seed(3)
    for classes in (5, 200, 380):  # the scale: 2 up to 200 classes, 10 above
        v = torch.randn(classes, 9, generator=g, dtype=DT)
        layer = distlinear(v)
        with torch.no_grad():  # a learned length unlike |v|
            layer.parametrizations.weight.original0.mul_(torch.rand(classes, 1, generator=g, dtype=DT) + 0.5)
        x = torch.randn(4, 6, 9, generator=g, dtype=DT)
        expected = torch.stack([distlinear_scores(layer, x[i], classes) for i in range(4)])
        norm = layer.parametrizations.weight
        weight = head_fit.weight_normed(norm.original0, norm.original1)
        ours = head_fit.head_logits("cosine", weight, None, x)
        assert torch.allclose(ours, expected, rtol=1e-12, atol=1e-12), classes
        assert head_fit.cosine_scale(classes) == (2.0 if classes <= 200 else 10.0)


# -- the all-class training step ----------------------------------------------------------------------------------

def image_batch(tasks=2, ways=3, shots=1, queries=2, classes=7, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    per = ways * (shots + queries)
    x = torch.rand(tasks, per, 1, size, size, generator=g, dtype=DT)
    chosen = torch.stack([torch.randperm(classes, generator=g)[:ways] for _ in range(tasks)])
    ys = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    yq = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return TaskBatch(x[:, :ways * shots], ys, x[:, ways * shots:], yq, {"classes": chosen, "num_classes": classes})


def conv4_features(model, params, x):
    """The lab's conv-4 body, task by task, in nn.functional: [conv 3x3 stride 2 -> batch norm on the task's images
    -> ReLU] x 4, flattened."""
    out = []
    for i in range(x.shape[0]):
        h = x[i]
        for k in range(4):
            conv, bn = str(3 * k), str(3 * k + 1)
            h = F.conv2d(h, params[f"{conv}.weight"], params[f"{conv}.bias"], stride=2, padding=1)
            h = F.relu(F.batch_norm(h, None, None, params[f"{bn}.weight"], params[f"{bn}.bias"], training=True,
                                    eps=1e-5))
        out.append(h.flatten(1))
    return torch.stack(out)


def mlp_features(model, params, x):
    h = x
    for i in range(model.num_layers - 1):
        h = F.relu(F.linear(h, params[f"{2 * i}.weight"], params[f"{2 * i}.bias"]))
    return h


def reference_loss(name, body_features, classifier, batch):
    x = torch.cat([batch.x_support, batch.x_query], 1)
    y = torch.cat([batch.y_support, batch.y_query], 1)
    labels = torch.gather(batch.info["classes"], 1, y)
    feats = body_features(x)
    if name == "baseline":
        logits = F.linear(feats, classifier["classifier.weight"], classifier["classifier.bias"])
    else:
        g, v = classifier["classifier.L.weight_g"], classifier["classifier.L.weight_v"]
        weight = g * v / torch.norm(v, dim=1, keepdim=True)
        scale = 2.0 if v.shape[0] <= 200 else 10.0
        logits = scale * F.linear(feats / (torch.norm(feats, dim=-1, keepdim=True) + 1e-5), weight)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["conv4", "mlp"])
def test_the_all_class_gradient_is_plain_torch_on_an_independent_network(name, kind):
    if kind == "conv4":
        model = Conv4(in_channels=1, image_size=12, ways=3)
        batch, reference = image_batch(), conv4_features
    else:
        model = MLP([4, 6, 5, 3], "relu")
        g = torch.Generator().manual_seed(1)
        batch = image_batch()
        batch = TaskBatch(torch.randn(2, 3, 4, generator=g, dtype=DT), batch.y_support,
                          torch.randn(2, 6, 4, generator=g, dtype=DT), batch.y_query, batch.info)
        reference = mlp_features
    params = OrderedDict((k, v.requires_grad_(True)) for k, v in model.init_params(
        torch.Generator().manual_seed(2), dtype=DT).items())
    algo = make_algorithm(model, "cross_entropy", AlgorithmConfig.defaults(name, "images"))
    algo.setup(params)
    loss, theta_grads, classifier_grads = algo.all_class_gradients(params, batch)
    classifier = OrderedDict((k, v.detach().clone().requires_grad_(True)) for k, v in algo.classifier.items())
    assert classifier[next(iter(classifier))].shape[0] == 7
    theta = OrderedDict((k, v.detach().clone().requires_grad_(True)) for k, v in params.items())
    head = set(model.head_names())
    body = [k for k in theta if k not in head]
    expected = reference_loss(name, lambda x: reference(model, theta, x), classifier, batch)
    grads = torch.autograd.grad(expected, [theta[k] for k in body] + list(classifier.values()))
    assert torch.allclose(loss, expected.detach(), rtol=1e-12)
    ours = dict(zip(theta, theta_grads))
    for k, gr in zip(body, grads):
        assert torch.allclose(ours[k], gr, rtol=1e-9, atol=1e-12), k
    for k in head:  # theta's N-way head is not read in training
        assert torch.equal(ours[k], torch.zeros_like(ours[k]))
    for k, mine, gr in zip(algo.classifier, classifier_grads, grads[len(body):]):
        assert torch.allclose(mine, gr, rtol=1e-9, atol=1e-12), k


def test_a_batch_without_global_classes_is_refused_in_one_sentence():
    model = MLP([4, 6, 3], "relu")
    params = model.init_params(torch.Generator().manual_seed(0), dtype=DT)
    algo = make_algorithm(model, "cross_entropy", AlgorithmConfig.defaults("baseline", "images"))
    algo.setup(params)
    batch = image_batch()
    batch = TaskBatch(torch.randn(2, 3, 4, dtype=DT), batch.y_support, torch.randn(2, 6, 4, dtype=DT), batch.y_query)
    with pytest.raises(ValueError, match="class in the training set"):
        algo.meta_step(params, batch)


# -- the test-time rule on a model --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_the_test_time_rule_is_the_head_fit_on_the_frozen_body(name):
    """Each step's parameters are theta's body and the fit's head after that many epochs; the queries are classified
    by that head on the body's features, also when predicted while the fit runs (the evaluation's order, where the
    query features are computed once) and under another batch-norm mode (support-set statistics)."""
    from maml_lab.core.algorithms.config import predict

    model = Conv4(in_channels=1, image_size=12, ways=3)
    params = model.init_params(torch.Generator().manual_seed(2), dtype=DT)
    algo = make_algorithm(model, "cross_entropy", AlgorithmConfig.defaults(name, "images"))
    config = algo.config
    batch = image_batch(shots=2, queries=3)
    xs, xq = batch.x_support, batch.x_query
    feats = conv4_features(model, params, xs)
    fit = list(head_fit.fit_trajectory(algo.head, feats, batch.y_support, 3, 3, config.inner_lr))
    query = conv4_features(model, params, xq)
    with torch.no_grad():  # the support set's statistics for the queries
        query_support_bn = model.features(params, torch.cat([xs, xq], 1), norm=xs.shape[1])[:, xs.shape[1]:]
    w_name, b_name = model.head_names()

    def expected(weight, bias, q):
        if name == "baseline":
            return torch.baddbmm(bias.unsqueeze(1), q, weight.transpose(1, 2))
        return 2.0 * torch.matmul(q / (q.norm(dim=-1, keepdim=True) + 1e-5), weight.transpose(1, 2))

    steps = 0
    for fast, (weight, bias) in zip(algo.test_trajectory(config, model, None, params, xs, batch.y_support, 3), fit):
        steps += 1
        for k, v in params.items():  # the body is theta's, for every task
            if k not in (w_name, b_name):
                assert torch.equal(fast[k], v.expand_as(fast[k]))
        assert torch.allclose(fast[w_name], weight, rtol=1e-10, atol=1e-12)
        logits = predict(config, model, fast, xs, batch.y_support, xq)
        assert torch.allclose(logits, expected(weight, bias, query), rtol=1e-9, atol=1e-12)
        logits = predict(config, model, fast, xs, batch.y_support, xq, batch_norm="support")
        assert torch.allclose(logits, expected(weight, bias, query_support_bn), rtol=1e-9, atol=1e-12)
    assert steps == 4


# -- training on Omniglot, resuming, the CLI ------------------------------------------------------------------------

SMALL1 = Path(__file__).resolve().parents[3] / "shared" / "omniglot" / "images_background_small1.zip"
needs_small1 = pytest.mark.skipif(not SMALL1.is_file(), reason=f"Omniglot test data not found at {SMALL1}")


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """Decoded sets cached once for the module, away from the user's cache; one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAML_LAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
    torch.set_num_threads(threads)


def small1(**kw) -> ExperimentConfig:
    base = dict(task="images", data=str(SMALL1), image_size=14, meta_batch_size=8, iterations=20, val_every=0,
                seed=3, algorithms=[AlgorithmConfig.defaults(n, "images") for n in NAMES])
    base.update(kw)
    return ExperimentConfig(**base)


@needs_small1
def test_both_train_on_small1_well_above_chance(private_cache):
    """20 iterations of 8 tasks (4,800 images over 380 training classes): the head fit on held-out characters is
    far above the 20% of 5-way chance, and far above the same fit on the untrained body."""
    from maml_lab.core.tasks.images import accuracy_after_steps

    trainer = Trainer(small1(), record_every=0)
    initial = trainer.snapshot()
    trainer.run()
    heldout = trainer.validation_family
    for name in NAMES:
        run = trainer.runs[name]
        assert run.algorithm.classifier[next(iter(run.algorithm.classifier))].shape[0] == 380
        config = run.algorithm.config
        trained = accuracy_after_steps(trainer.model, heldout, trainer.snapshot()[name], 1, [0, 100], config,
                                       num_tasks=100, queries=5)
        untrained = accuracy_after_steps(trainer.model, heldout, initial[name], 1, [100], config, num_tasks=100,
                                         queries=5)
        assert trained[0][0] < 0.3  # step 0: a fresh head
        assert trained[100][0] > 0.4 and trained[100][0] > untrained[100][0] + 0.05, (name, trained, untrained)


@needs_small1
def test_both_resume_exactly_from_a_checkpoint(private_cache, tmp_path):
    """4 iterations straight == 2, a checkpoint, a fresh Trainer, 2 more: theta, the all-class head and its Adam
    state bit for bit (the resumed run has taken no step when its head is restored)."""
    from maml_lab.core.training.checkpoint import load_checkpoint, save_checkpoint

    def make():
        algos = [AlgorithmConfig.defaults(n, "images", inner_steps=2) for n in NAMES]
        return Trainer(small1(iterations=4, meta_batch_size=2, algorithms=algos), record_every=0)

    straight = make()
    straight.run()
    first = make()
    first.run(iterations=2)
    path = save_checkpoint(first, tmp_path / "half.safetensors")
    resumed = make()
    load_checkpoint(resumed, path)
    resumed.run()
    for name in NAMES:
        a, b = straight.runs[name], resumed.runs[name]
        for k in a.params:
            assert torch.equal(a.params[k], b.params[k]), (name, k)
        assert list(a.algorithm.export_tensors()) == list(b.algorithm.export_tensors())
        for k, v in a.algorithm.export_tensors().items():
            assert torch.equal(v, b.algorithm.export_tensors()[k]), (name, k)
        for x, y in zip(a.algorithm.classifier_optimizer.exp_avg_sq, b.algorithm.classifier_optimizer.exp_avg_sq):
            assert torch.equal(x, y)
        assert not torch.equal(next(iter(a.algorithm.classifier.values())),
                               next(iter(first.runs[name].algorithm.classifier.values())))


def test_the_memory_estimate_counts_no_inner_graph_for_the_head_fit(monkeypatch):
    """The training-memory check counts inner steps as graph depth only for algorithms that adapt by gradient
    steps: a head fit's 100 epochs run on detached features (the default image config was refused, 'needs about 31
    GB', on a 24 GB machine)."""
    from maml_lab.core import validation

    needed = []
    monkeypatch.setattr(validation, "check_memory", lambda n, what: needed.append(n))
    for steps in (100, 1):
        ExperimentConfig(task="images", algorithms=[AlgorithmConfig.defaults(n, "images", inner_steps=steps)
                                                    for n in NAMES])
    ExperimentConfig(task="images", algorithms=[AlgorithmConfig.defaults("maml", "images", inner_steps=100)])
    assert needed[0] == needed[1] and needed[2] > 10 * needed[1]


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")  # the reference's own WeightNorm, deprecated
@pytest.mark.parametrize("name", NAMES)
def test_the_plain_pytorch_lines_of_docs_exports_reproduce_eval(name, tmp_path):
    """docs/exports.md's lines on an export (the all-class head beside theta): a fresh head fit on the body's support
    features with torch.optim.SGD gives the engine's logits for the task, and the all-class head loads into the
    reference's modules."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from maml_lab.core.algorithms.config import predict
    from maml_lab.core.algorithms.config import test_adapt as adapt_at_test_time
    from maml_lab.core.export import build_metadata, export_initialization, load_initialization
    from maml_lab.core.tasks.losses import cross_entropy_per_task
    from maml_lab.lab.initializations import adaptation_from_metadata

    engine_model = Conv4(in_channels=1, image_size=12, ways=5)
    params = OrderedDict((k, v.requires_grad_(True)) for k, v in engine_model.init_params(
        torch.Generator().manual_seed(4)).items())
    algo = make_algorithm(engine_model, "cross_entropy", AlgorithmConfig.defaults(name, "images", inner_steps=1))
    algo.setup(params)
    batch = image_batch(tasks=2, ways=5, shots=2, queries=3, classes=9)
    batch = TaskBatch(batch.x_support.float(), batch.y_support, batch.x_query.float(), batch.y_query, batch.info)
    algo.meta_step(params, batch)
    path = tmp_path / f"init-{name}.safetensors"
    meta = build_metadata(name, engine_model.spec(), {"name": "images"}, algo.config.to_dict(), 1)
    export_initialization(path, params, meta, extra_tensors=algo.export_tensors())
    model = engine_model.torch_module()
    x_support, y_support, x_query = batch.x_support[0], batch.y_support[0], batch.x_query[0]
    # the lines of docs/exports.md, as written there
    tensors = load_file(path)
    with safe_open(str(path), "pt") as f:
        extra = json.loads(f.metadata()["maml_lab"])["extra_tensors"]
    model.load_state_dict({k: v for k, v in tensors.items() if k not in extra})
    body = model[:-1]
    with torch.no_grad():
        z_support, z_query = body(x_support), body(x_query)
    ways, dim = int(y_support.max()) + 1, z_support.shape[1]
    g = torch.Generator().manual_seed(0)
    if name == "baseline":
        head = torch.nn.Linear(dim, ways)
        with torch.no_grad():
            head.weight.copy_((torch.rand(ways, dim, generator=g) * 2 - 1) / math.sqrt(dim))
            head.bias.copy_((torch.rand(ways, generator=g) * 2 - 1) / math.sqrt(dim))
        scores = head
    else:
        head = torch.nn.Linear(dim, ways, bias=False)
        with torch.no_grad():
            head.weight.copy_((torch.rand(ways, dim, generator=g) * 2 - 1) / math.sqrt(dim))
        head = torch.nn.utils.parametrizations.weight_norm(head, dim=0)

        def scores(z):
            return 2 * head(z / (z.norm(dim=1, keepdim=True) + 1e-5))
    opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)
    for _epoch in range(100):
        order = torch.rand(len(z_support), generator=g).argsort()
        for i in range(0, len(order), 4):
            rows = order[i:i + 4]
            loss = torch.nn.functional.cross_entropy(scores(z_support[rows]), y_support[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    logits = scores(z_query)
    # the engine, from the same file, on a batch of this one task
    theta, extras, meta, loaded = load_initialization(path, with_extras=True)
    adaptation = adaptation_from_metadata(meta, tensors=extras)
    one = (x_support.unsqueeze(0), y_support.unsqueeze(0), x_query.unsqueeze(0))
    adapted = adapt_at_test_time(adaptation, loaded, cross_entropy_per_task, theta, one[0], one[1], 100)
    engine = predict(adaptation, loaded, adapted, *one)[0]
    torch.testing.assert_close(logits.detach(), engine, rtol=1e-4, atol=1e-5)
    # the all-class head in the reference's modules
    if name == "baseline":
        reference = torch.nn.Linear(dim, 9)
        reference.load_state_dict({"weight": tensors["classifier.weight"], "bias": tensors["classifier.bias"]})
    else:
        reference = torch.nn.utils.weight_norm(torch.nn.Linear(dim, 9, bias=False), dim=0)
        reference.load_state_dict({"weight_g": tensors["classifier.L.weight_g"],
                                   "weight_v": tensors["classifier.L.weight_v"]})
    with torch.no_grad():
        expected = algo.classifier_logits(z_query)
        ours = reference(z_query) if name == "baseline" else 2 * reference(
            z_query / (z_query.norm(dim=1, keepdim=True) + 1e-5))
    torch.testing.assert_close(ours, expected)


def test_the_paper_preset_leaves_the_head_fit_its_own_settings():
    """`--preset paper` is the MAML paper's Omniglot settings: its inner steps and step size are MAML's gradient
    adaptation, not a head fit's epochs and step size (Baseline keeps the reference's 100 epochs of 0.01)."""
    from maml_lab.core.training.config import apply_preset

    data = apply_preset({"task": "images", "algorithms": {"maml": {}, "baseline": {}, "baselinepp": {}}}, "images",
                        "paper")
    paper = ExperimentConfig.from_dict(data)
    assert paper.iterations == 60000 and paper.algorithm("maml").test_inner_steps == 3
    for name in NAMES:
        config = paper.algorithm(name)
        assert (config.inner_lr, config.inner_steps, config.test_inner_steps) == (0.01, 100, 100)
