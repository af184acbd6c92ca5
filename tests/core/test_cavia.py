"""CAVIA against independent computations in float64: the reference code's per-task loop (lmzintgraf/cavia,
regression/cavia.py and classification/main.py) on plain PyTorch modules, with the context concatenated to an
`nn.Linear`'s input or FiLM applied by a forward hook; test-time adaptation, exports in plain PyTorch (the
snippets of docs/exports.md), exact resume, and short trainings on the sinusoid and on small1 images."""

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.algorithms.config import test_adapt as adapt_at_test_time
from maml_lab.core.export import load_initialization
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.losses import mse_per_task
from maml_lab.core.tasks.sinusoid import SinusoidFamily
from maml_lab.core.training.checkpoint import load_checkpoint, save_checkpoint
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64
SMALL1 = Path(__file__).resolve().parents[3] / "shared" / "omniglot" / "images_background_small1.zip"


# -- the reference's models, in plain PyTorch ---------------------------------------------------------------------
def mlp_module(model: MLP, theta, net, k: int) -> nn.Sequential:
    """regression/cavia_model.py's CaviaModel: Linear(inputs + k, hidden) on [x, context]."""
    sizes = model.sizes
    layers = [nn.Linear(sizes[0] + k, sizes[1])]
    for i in range(1, len(sizes) - 1):
        layers += [nn.Tanh() if model.activation == "tanh" else nn.ReLU(), nn.Linear(sizes[i], sizes[i + 1])]
    module = nn.Sequential(*layers).to(DT)
    state = {key: v.detach().clone() for key, v in theta.items()}
    state["0.weight"] = torch.cat([state["0.weight"], net["context.0.weight"].detach()], 1)
    module.load_state_dict(state)
    return module


def mlp_forward(module, k):
    return lambda x, c: module(torch.cat([x, c.expand(x.shape[0], k)], 1))


def conv_forward(model: Conv4, module: nn.Sequential, block: int, film_w, film_b):
    """classification/models.py's FiLM on block `block` (here before the ReLU, after batch norm), by a forward hook
    on that block's batch norm."""
    bn = module[int(model._names(block - 1)[1])]

    def forward(x, c):
        gamma, beta = F.linear(c, film_w, film_b).chunk(2)
        hook = bn.register_forward_hook(lambda m, i, out: out * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1))
        try:
            return module(x)
        finally:
            hook.remove()
    return forward


def reference_meta_gradient(forward, params, loss, batch, steps, lr, clip, per_task, first_order=False):
    """The reference's loop, one task at a time: context reset to zero, `steps` SGD steps on it (graph kept unless
    first order), the query loss's gradient w.r.t. every shared parameter; regression clamps each task's gradient,
    classification the average."""
    k = params["k"]
    shared = params["shared"]
    total = [torch.zeros_like(p) for p in shared]
    for i in range(batch.x_support.shape[0]):
        c = torch.zeros(k, dtype=DT, requires_grad=True)
        for _ in range(steps):
            g = torch.autograd.grad(loss(forward(batch.x_support[i], c), batch.y_support[i]), c,
                                    create_graph=not first_order)[0]
            c = c - lr * (g.detach() if first_order else g)
        grads = torch.autograd.grad(loss(forward(batch.x_query[i], c), batch.y_query[i]), shared)
        for t, g in zip(total, grads):
            t += g.clamp(-clip, clip) if per_task and clip else g
    mean = [t / batch.x_support.shape[0] for t in total]
    return [g.clamp(-clip, clip) for g in mean] if clip and not per_task else mean


def _algorithm(model, loss, params, **options):
    steps = options.pop("steps", 2)
    algo = make_algorithm(model, loss, AlgorithmConfig("cavia", inner_lr=0.7, inner_steps=steps, options=options))
    algo.setup(params)
    return algo


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("clip", [0.0, 0.3])  # 0.3: the clamp acts on some entries, per task
def test_mlp_meta_gradient_matches_the_reference_loop(first_order, clip):
    g = torch.Generator().manual_seed(0)
    model = MLP([1, 7, 6, 1], "tanh")
    params = OrderedDict((k, v.requires_grad_(True)) for k, v in model.init_params(g, dtype=DT).items())
    batch = SinusoidFamily().sample(3, 5, 6, g, dtype=DT)
    algo = _algorithm(model, "mse", params, num_context=2, clip=clip, first_order=first_order)
    grads, meta_loss, *_ = algo.meta_gradients(params, batch)
    module = mlp_module(model, params, algo.context_net, 2)
    shared = list(module.parameters())
    ref = reference_meta_gradient(mlp_forward(module, 2), {"k": 2, "shared": shared}, F.mse_loss, batch, 2, 0.7,
                                  clip, per_task=True, first_order=first_order)
    # the module's first layer holds theta's columns, then the context's: split its gradient the same way
    ref_by_name = dict(zip([n for n, _ in module.named_parameters()], ref))
    expected = [ref_by_name["0.weight"][:, :1], *(ref_by_name[n] for n in list(params)[1:]),
                ref_by_name["0.weight"][:, 1:]]
    assert len(grads) == len(expected)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    if clip:  # the clamp did act: the unclamped average differs
        free = reference_meta_gradient(mlp_forward(module, 2), {"k": 2, "shared": shared}, F.mse_loss, batch, 2, 0.7,
                                       0.0, per_task=True, first_order=first_order)
        assert any(not torch.allclose(a, b) for a, b in zip(ref, free))


@pytest.mark.parametrize("downsample,size", [("stride", 16), ("maxpool", 16)])
def test_conv4_meta_gradient_with_film_matches_the_reference_loop(downsample, size):
    g = torch.Generator().manual_seed(1)
    model = Conv4(1, size, 3, filters=4, downsample=downsample)
    params = OrderedDict((k, v.requires_grad_(True)) for k, v in model.init_params(g, dtype=DT).items())
    x = torch.randn(2, 6, 1, size, size, generator=g, dtype=DT)
    y = torch.tensor([0, 1, 2, 0, 1, 2]).repeat(2, 1)
    batch = type("Batch", (), {"x_support": x[:, :3], "y_support": y[:, :3], "x_query": x[:, 3:],
                               "y_query": y[:, 3:], "num_tasks": 2})()
    algo = _algorithm(model, "cross_entropy", params, num_context=5, film_block=3, clip=0.05)
    grads, *_ = algo.meta_gradients(params, batch)
    module = model.torch_module().to(DT)
    module.load_state_dict({k: v.detach().clone() for k, v in params.items()})
    film_w, film_b = (t.detach().clone().requires_grad_(True) for t in algo.context_net.values())
    shared = [*module.parameters(), film_w, film_b]
    ref = reference_meta_gradient(conv_forward(model, module, 3, film_w, film_b), {"k": 5, "shared": shared},
                                  F.cross_entropy, batch, 2, 0.7, 0.05, per_task=False)
    assert list(algo.context_net) == ["context.film3.weight", "context.film3.bias"]
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_test_time_adaptation_moves_only_the_context_from_zero():
    g = torch.Generator().manual_seed(2)
    model = MLP([1, 8, 8, 1])
    params = OrderedDict((k, v.requires_grad_(True)) for k, v in model.init_params(g, dtype=DT).items())
    batch = SinusoidFamily().sample(4, 10, 5, g, dtype=DT)
    algo = _algorithm(model, "mse", params, num_context=2, steps=1)
    adapted = adapt_at_test_time(algo.adaptation(), model, mse_per_task, params, batch.x_support, batch.y_support, 3)
    assert adapted["context"].shape == (4, 2) and adapted["context"].abs().sum() > 0
    for k, v in params.items():
        assert torch.equal(adapted[k][0], v.detach()), k
    # the same three steps by the reference's loop, task 1
    module = mlp_module(model, params, algo.context_net, 2)
    c = torch.zeros(2, dtype=DT, requires_grad=True)
    for _ in range(3):
        loss = F.mse_loss(mlp_forward(module, 2)(batch.x_support[1], c), batch.y_support[1])
        c = (c - 0.7 * torch.autograd.grad(loss, c)[0]).detach().requires_grad_(True)
    torch.testing.assert_close(adapted["context"][1], c.detach(), rtol=1e-10, atol=1e-12)
    # without the context network (theta imported alone) there is nothing for the context to move
    bare = adapt_at_test_time(algo.config, model, mse_per_task, params, batch.x_support, batch.y_support, 2)
    assert "context" not in bare and torch.equal(bare["0.weight"][0], params["0.weight"].detach())


def test_the_playground_draws_the_curve_the_adapted_context_gives():
    import numpy as np

    from maml_lab.lab.initializations import Initialization
    from maml_lab.lab.playground import SupportTask, predict

    g = torch.Generator().manual_seed(5)
    model = MLP([1, 8, 8, 1])
    params = OrderedDict((k, v.requires_grad_(True)) for k, v in model.init_params(g, dtype=DT).items())
    algo = _algorithm(model, "mse", params, num_context=2, steps=1)
    theta = OrderedDict((k, v.detach()) for k, v in params.items())
    init = Initialization("cavia", "cavia", "CAVIA", model, theta, algo.adaptation())
    x = np.array([-3.0, -1.0, 0.5, 2.0])
    shown = predict(init, SupportTask(x, 2 * np.sin(x)), steps=2)
    xs = torch.as_tensor(x, dtype=DT).reshape(1, -1, 1)
    adapted = adapt_at_test_time(init.adaptation, model, mse_per_task, theta, xs, 2 * torch.sin(xs), 2)
    grid = torch.as_tensor(shown.grid, dtype=DT).reshape(1, -1, 1)
    with torch.no_grad():
        expected = model.forward(adapted, grid)[0, :, 0].numpy()
    np.testing.assert_allclose(shown.curves[-1], expected, atol=1e-9)
    assert not np.allclose(shown.curves[0], shown.curves[-1])


def _trainer(iterations=8, **kw):
    config = ExperimentConfig(iterations=iterations, meta_batch_size=3, val_every=0, hidden=[8, 8], seed=5,
                              algorithms=[AlgorithmConfig.defaults("cavia")], **kw)
    return Trainer(config, record_every=0)


def test_resumes_exactly_from_a_checkpoint(tmp_path):
    straight = _trainer()
    straight.run()
    first = _trainer()
    first.run(iterations=4)
    path = save_checkpoint(first, tmp_path / "half.safetensors")
    resumed = _trainer()
    load_checkpoint(resumed, path)
    resumed.run()
    a, b = straight.runs["cavia"], resumed.runs["cavia"]
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    for k, v in a.algorithm.export_tensors().items():
        assert torch.equal(v, b.algorithm.export_tensors()[k]), k
    assert not torch.equal(a.algorithm.context_net["context.0.weight"],
                           first.runs["cavia"].algorithm.context_net["context.0.weight"])


def test_the_exports_plain_pytorch_snippet_reproduces_eval(tmp_path):
    from maml_lab.lab.initializations import adaptation_from_metadata

    trainer = _trainer(iterations=5, dtype="float64")
    trainer.run()
    path = tmp_path / "init-cavia.safetensors"
    trainer.export("cavia", path)
    g = torch.Generator().manual_seed(3)
    batch = SinusoidFamily().sample(1, 10, 20, g, dtype=DT)
    x_support, y_support, x_query = batch.x_support[0], batch.y_support[0], batch.x_query[0]
    # the lines of docs/exports.md, as written there
    tensors = load_file(path)
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["maml_lab"])
    hyper = meta["hyperparameters"]
    k, lr, steps = hyper["num_context"], hyper["inner_lr"], hyper["test_inner_steps"]
    model = nn.Sequential(nn.Linear(1 + k, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    state = {name: v for name, v in tensors.items() if name not in meta["extra_tensors"]}
    state["0.weight"] = torch.cat([state["0.weight"], tensors["context.0.weight"]], 1)  # the context's columns
    model.load_state_dict(state)
    context = torch.zeros(k, dtype=torch.float64, requires_grad=True)  # every task starts at zero
    for _ in range(steps):
        loss = F.mse_loss(model(torch.cat([x_support, context.expand(len(x_support), k)], 1)), y_support)
        context = context - lr * torch.autograd.grad(loss, context)[0]
    prediction = model(torch.cat([x_query, context.detach().expand(len(x_query), k)], 1))
    # the engine: eval's adaptation of the same export
    params, extras, meta2, engine_model = load_initialization(path, with_extras=True)
    assert sorted(extras) == ["context.0.weight"] and meta2["hyperparameters"]["num_context"] == 2
    rule = adaptation_from_metadata(meta2, tensors=extras)
    adapted = adapt_at_test_time(rule, engine_model, mse_per_task, params, batch.x_support, batch.y_support, steps)
    engine = engine_model.forward(adapted, batch.x_query)[0]
    torch.testing.assert_close(prediction.detach(), engine, rtol=1e-10, atol=1e-12)


def test_conv4_film_snippet_reproduces_the_engine():
    """docs/exports.md's FiLM lines (a forward hook on the block's batch norm) give the engine's logits."""
    g = torch.Generator().manual_seed(4)
    engine_model = Conv4(1, 16, 5, filters=4)
    params = engine_model.init_params(g, dtype=DT)
    extras = engine_model.context_init(7, g, layer=3, dtype=DT)
    x = torch.randn(1, 10, 1, 16, 16, generator=g, dtype=DT)
    context = torch.randn(7, generator=g, dtype=DT)
    engine = engine_model.forward({**params, **extras, "context": context}, x)[0]
    model = engine_model.torch_module().double()
    model.load_state_dict(params)
    tensors = {**params, **extras}
    # the lines of docs/exports.md
    film = next(n for n in tensors if n.startswith("context.film") and n.endswith(".weight"))  # "context.film3.weight"
    block = int(film[len("context.film"):-len(".weight")])
    bn = [m for m in model if isinstance(m, nn.BatchNorm2d)][block - 1]
    gamma, beta = F.linear(context, tensors[film], tensors[film.replace("weight", "bias")]).chunk(2)
    bn.register_forward_hook(lambda m, i, out: out * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1))
    torch.testing.assert_close(model(x[0]), engine, rtol=1e-10, atol=1e-12)


def test_trains_on_sinusoids_with_its_defaults():
    config = ExperimentConfig(iterations=300, val_every=0, seed=0, algorithms=[AlgorithmConfig.defaults("cavia")])
    algo = config.algorithms[0]
    assert (algo.inner_lr, algo.inner_steps, algo.meta_lr, algo.option("num_context")) == (1.0, 1, 1e-3, 2)
    trainer = Trainer(config, record_every=0)
    trainer.run()
    rows = trainer.runs["cavia"].log.tail_rows()
    first = sum(r["post_loss"] for r in rows[:30]) / 30
    last = sum(r["post_loss"] for r in rows[-30:]) / 30
    assert last < 0.6 * first, (first, last)
    assert last < sum(r["pre_loss"] for r in rows[-30:]) / 30  # adapting the context helps


@pytest.mark.skipif(not SMALL1.is_file(), reason=f"Omniglot test data not found at {SMALL1}")
def test_trains_on_small1_images():
    config = ExperimentConfig(task="images", data=str(SMALL1), iterations=100, meta_batch_size=4,
                              val_every=0, seed=0, algorithms=[AlgorithmConfig.defaults("cavia", task="images")])
    algo = config.algorithms[0]
    assert (algo.inner_lr, algo.inner_steps, algo.test_inner_steps, algo.option("num_context")) == (1.0, 2, 2, 100)
    trainer = Trainer(config, record_every=0)
    assert list(trainer.runs["cavia"].algorithm.context_net) == ["context.film3.weight", "context.film3.bias"]
    trainer.run()
    rows = trainer.runs["cavia"].log.tail_rows()
    early = sum(r["post_accuracy"] for r in rows[:10]) / 10
    late = sum(r["post_accuracy"] for r in rows[-10:]) / 10
    assert late > 0.35 and late > early + 0.1, (early, late)  # chance is 0.2


@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
def test_every_conv4_path_applies_the_same_film(downsample):
    """The per-task loop (CPU), grouped convolutions (CUDA's path), the batch-norm modes' reference loop and the
    per-layer activations all apply FiLM alike."""
    g = torch.Generator().manual_seed(6)
    model = Conv4(1, 16, 5, filters=4, downsample=downsample)
    params = {**model.init_params(g, dtype=DT), **model.context_init(3, g, layer=2, dtype=DT),
              "context": torch.randn(2, 3, generator=g, dtype=DT)}
    x = torch.randn(2, 4, 1, 16, 16, generator=g, dtype=DT)
    loop = model.forward(params, x)
    without = model.forward({k: v for k, v in params.items() if not k.startswith("context")}, x)
    assert not torch.allclose(loop, without)  # the context reaches the logits
    outs = [model.forward(params, x, norm=x.shape[1]), model.layer_activations(params, x)[-1]]
    model.batched = "grouped"
    outs.append(model.forward(params, x))
    for out in outs:
        torch.testing.assert_close(out, loop, rtol=1e-10, atol=1e-12)


def test_image_meta_lr_decays_as_the_references_steplr():
    """classification/main.py: StepLR(meta_optimiser, 5000, 0.9), stepped at the start of every iteration, so
    iteration i (from 0) updates with 0.001 * 0.9 ** ((i + 1) // 5000)."""
    model = MLP([1, 4, 1])
    params = OrderedDict((k, v.requires_grad_(True)) for k, v in model.init_params(torch.Generator()).items())
    algo = make_algorithm(model, "cross_entropy", AlgorithmConfig.defaults("cavia", task="images"))
    algo.setup(params)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], 1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 5000, 0.9)
    for i in range(12001):
        optimizer.step()  # PyTorch wants this first; the lr then in force is the one the reference's iteration i used
        scheduler.step()
        if i in (0, 4997, 4998, 4999, 9998, 9999, 12000):
            assert algo.meta_lr(i) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), i
    assert AlgorithmConfig.defaults("cavia").option("meta_lr_decay") == 1.0  # sinusoid: constant
