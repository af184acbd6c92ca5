"""cbfinn/maml's loss and batch-norm conventions: the loss (sum / K), conv-4 without a batch-norm scale (eps 1e-3,
shift not adapted in the inner loop, Omniglot head on the mean of the final map), their gradients against an
independent autograd computation in float64 on plain PyTorch modules, exports and the task option."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.func import functional_call

from maml_lab.core.algorithms.adaptation import adam_trajectory, adapt, adapt_adam, sgd_trajectory
from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.export import load_initialization
from maml_lab.core.models.conv4 import Conv4
from maml_lab.core.tasks.base import TaskBatch
from maml_lab.core.tasks.losses import cross_entropy_per_task, cross_entropy_sum_per_task, loss_function
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer, make_family, make_model

WAYS, SHOTS, QUERIES, B = 3, 2, 2, 2


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(convention="cbfinn", **kw):
    return Conv4(**{"in_channels": 1, "image_size": 14, "ways": WAYS, "filters": 4, "convention": convention, **kw})


def _theta(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = model.init_params(g, dtype=torch.float64)
    return OrderedDict((k, v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype)) for k, v in params.items())


def _batch(model, queries=QUERIES, seed=1):
    g = torch.Generator().manual_seed(seed)
    c, (h, w) = model.in_channels, model.image_size
    labels = torch.arange(WAYS).repeat_interleave(SHOTS).repeat(B, 1)
    qlabels = torch.arange(WAYS).repeat_interleave(queries).repeat(B, 1)
    return TaskBatch(torch.rand(B, WAYS * SHOTS, c, h, w, generator=g, dtype=torch.float64), labels,
                     torch.rand(B, WAYS * queries, c, h, w, generator=g, dtype=torch.float64), qlabels)


def _cbfinn_loss(logits, labels, per_class):
    """cbfinn/maml's xent: per-image softmax cross-entropy / update_batch_size, summed by tf.gradients."""
    return F.cross_entropy(logits, labels, reduction="sum") / per_class


def _reference_meta_gradient(model, theta, batch, steps, lr, first_order, queries=QUERIES):
    """Per task, on the plain PyTorch module (torch_module + functional_call): inner SGD on sum / K over every
    parameter except the batch-norm shifts, outer loss sum / Q averaged over tasks."""
    module = model.torch_module().double()
    shifts = {f"{name}.bias" for name, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}
    params = OrderedDict((k, v.detach().clone().requires_grad_(True)) for k, v in theta.items())
    total = 0.0
    for i in range(batch.num_tasks):
        fast = dict(params)
        for _ in range(steps):
            loss = _cbfinn_loss(functional_call(module, fast, (batch.x_support[i],)), batch.y_support[i], SHOTS)
            names = [k for k in fast if k not in shifts]
            grads = torch.autograd.grad(loss, [fast[k] for k in names], create_graph=not first_order)
            fast.update({k: fast[k] - lr * g for k, g in zip(names, grads)})
        total = total + _cbfinn_loss(functional_call(module, fast, (batch.x_query[i],)), batch.y_query[i], queries)
    return torch.autograd.grad(total / batch.num_tasks, list(params.values()))


def test_loss_is_sum_over_k_and_an_n_times_larger_step():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, WAYS * SHOTS, WAYS, generator=g, dtype=torch.float64)
    labels = torch.arange(WAYS).repeat_interleave(SHOTS).repeat(4, 1)
    expected = torch.stack([_cbfinn_loss(logits[i], labels[i], SHOTS) for i in range(4)])
    torch.testing.assert_close(cross_entropy_sum_per_task(logits, labels), expected)
    torch.testing.assert_close(cross_entropy_sum_per_task(logits, labels),
                               WAYS * cross_entropy_per_task(logits, labels))
    assert loss_function("cross_entropy_sum") is cross_entropy_sum_per_task
    # an inner SGD step of alpha on sum / K is a step of N * alpha on the lab's mean
    model, theta = _model("lab"), _theta(_model("lab"))
    batch = _batch(model)
    a = adapt(model, cross_entropy_sum_per_task, theta, batch.x_support, batch.y_support, 1, 0.1).params
    b = adapt(model, cross_entropy_per_task, theta, batch.x_support, batch.y_support, 1, 0.1 * WAYS).params
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_cbfinn_conv4_layout_and_plain_pytorch_logits():
    lab, cb = _model("lab"), _model("cbfinn")
    assert cb.eps == 1e-3 and lab.eps == 1e-5 and cb.head_pool == "mean" and lab.head_pool == "flatten"
    shapes = cb.param_shapes()
    assert not any(k in shapes for k in ("1.weight", "4.weight", "7.weight", "10.weight"))
    assert shapes["1.bias"] == (4,) and shapes[f"{cb._head}.weight"] == (WAYS, 4)  # head on the mean: [N, F]
    assert cb.inner_frozen == ("1.bias", "4.bias", "7.bias", "10.bias") and lab.inner_frozen == ()
    assert Conv4.from_spec(cb.spec()).spec() == cb.spec() and cb.spec()["convention"] == "cbfinn"
    assert "convention" not in lab.spec()  # lab specs keep their format
    assert _model("cbfinn", downsample="maxpool", image_size=32).head_pool == "flatten"  # MiniImagenet flattens
    x = _batch(cb).x_support
    for model in (lab, cb, _model("cbfinn", downsample="maxpool", image_size=32)):
        theta = _theta(model)
        xs = x if model.image_size == (14, 14) else torch.rand(B, 4, 1, 32, 32, dtype=torch.float64)
        module = model.torch_module().double()
        assert list(module.state_dict()) == list(model.param_shapes())
        module.load_state_dict(theta)
        with torch.no_grad():
            reference = torch.stack([module(xs[i]) for i in range(B)])
            module.eval()  # no running statistics: the same in eval mode
            torch.testing.assert_close(torch.stack([module(xs[i]) for i in range(B)]), reference)
        per_task = OrderedDict((k, v.unsqueeze(0).expand(B, *v.shape).clone()) for k, v in theta.items())
        for batched in ("loop", "grouped", "vmap"):
            model.batched = batched
            torch.testing.assert_close(model.forward(per_task, xs), reference)
        model.batched = "auto"
        torch.testing.assert_close(model.forward(theta, xs), reference)  # shared, folded
    with pytest.raises(ValueError, match="unknown convention 'tf'"):
        Conv4(convention="tf")


def test_inner_loop_never_adapts_the_batch_norm_shift():
    model = _model()
    theta, batch = _theta(model), _batch(model)
    loss = cross_entropy_sum_per_task
    runs = {"sgd": adapt(model, loss, theta, batch.x_support, batch.y_support, 2, 0.1).params,
            "adam": adapt_adam(model, loss, theta, batch.x_support, batch.y_support, 2, 0.01).params,
            "sgd trajectory": list(sgd_trajectory(model, loss, theta, batch.x_support, batch.y_support, 2, 0.1))[-1],
            "adam trajectory": list(adam_trajectory(model, loss, theta, batch.x_support, batch.y_support, 2, 0.01))[-1]}
    head = f"{model._head}.weight"
    for name, fast in runs.items():
        for k in model.inner_frozen:
            assert torch.equal(fast[k], theta[k].expand_as(fast[k])), (name, k)
        for k in ("0.weight", "3.weight", head):
            assert not torch.equal(fast[k], theta[k].expand_as(fast[k])), (name, k)
    # in the lab's convention the shifts adapt
    lab = _model("lab")
    fast = adapt(lab, cross_entropy_per_task, _theta(lab), batch.x_support, batch.y_support, 1, 0.1).params
    assert not torch.equal(fast["1.bias"][0], _theta(lab)["1.bias"])


@pytest.mark.parametrize("name,steps,batched", [("maml", 1, "auto"), ("fomaml", 1, "auto"), ("maml", 2, "auto"),
                                                ("maml", 1, "grouped")])
def test_meta_gradient_matches_independent_autograd_in_float64(name, steps, batched):
    model = _model(batched=batched)
    theta, batch = _theta(model), _batch(model)
    config = AlgorithmConfig(name=name, inner_lr=0.3, inner_steps=steps)
    algorithm = make_algorithm(model, "cross_entropy_sum", config)
    assert model.explicit_meta_gradient(theta, batch, cross_entropy_sum_per_task, steps, 0.3, False) is None
    assert model.batched_loss_grad(theta, batch.x_support, batch.y_support, cross_entropy_sum_per_task) is None
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    grads, meta_loss, _, _ = algorithm.meta_gradient(leaves, batch, algorithm.first_order)
    expected = _reference_meta_gradient(model, theta, batch, steps, 0.3, algorithm.first_order)
    for k, g, e in zip(theta, grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12, msg=k)
    # the shifts are trained by the outer loop
    assert all(g.abs().sum() > 0 for k, g in zip(theta, grads) if k in model.inner_frozen)


def test_query_divisor_is_queries_per_class():
    """On the query set sum / Q (cbfinn's generator makes Q = K); checked with Q != K."""
    model = _model()
    theta, batch = _theta(model), _batch(model, queries=3)
    algorithm = make_algorithm(model, "cross_entropy_sum", AlgorithmConfig(name="maml", inner_lr=0.3))
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in theta.items())
    grads = algorithm.meta_gradient(leaves, batch, False)[0]
    expected = _reference_meta_gradient(model, theta, batch, 1, 0.3, False, queries=3)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_lab_convention_keeps_the_explicit_meta_gradient():
    model = _model("lab")
    theta, batch = _theta(model), _batch(model)
    assert model.explicit_meta_gradient(theta, batch, cross_entropy_per_task, 1, 0.3, False) is not None


def test_task_option_trains_exports_and_reloads(tmp_path):
    with pytest.raises(ValueError, match="convention must be one of lab, cbfinn, got 'tf'"):
        ExperimentConfig(task="images", image_size=14, task_options={"convention": "tf"})
    config = ExperimentConfig(task="images", image_size=14, meta_batch_size=2, iterations=2, val_every=0,
                              task_options={"convention": "cbfinn"})
    assert config.to_dict()["task_options"] == {"convention": "cbfinn", "split": "lab"}  # defaults recorded
    assert ExperimentConfig.from_dict(config.to_dict()).task_option("convention") == "cbfinn"
    family = make_family(config)
    model = make_model(config, family)
    assert family.loss == "cross_entropy_sum" and family.validation_family.loss == "cross_entropy_sum"
    assert isinstance(model, Conv4) and model.convention == "cbfinn"
    trainer = Trainer(config, family=family, model=model)
    assert trainer.run() == "finished"
    assert 0 <= trainer.runs["maml"].last_metrics["post_accuracy"] <= 1
    out = tmp_path / "cbfinn.safetensors"
    trainer.export("maml", out)
    params, meta, loaded = load_initialization(out)
    assert meta["task"]["convention"] == "cbfinn" and loaded.spec() == model.spec()
    module = loaded.torch_module()
    module.load_state_dict(load_file(out))
    x = family.validation_family.sample(1, 1, 2, torch.Generator().manual_seed(0)).x_query
    with torch.no_grad():
        torch.testing.assert_close(module(x[0]), loaded.forward(params, x)[0], atol=1e-5, rtol=1e-5)
    from maml_lab.core.tasks.images import heldout_family_from_metadata

    assert heldout_family_from_metadata(meta["task"]).loss == "cross_entropy_sum"
    # exports from before conventions read as the lab's
    assert heldout_family_from_metadata({k: v for k, v in meta["task"].items() if k != "convention"}).loss == \
        "cross_entropy"


def test_an_initialization_adapts_with_its_own_convention_on_other_tasks():
    """A cbfinn conv-4 evaluated on the lab's tasks (and the reverse) still fine-tunes on its own loss."""
    from maml_lab.core.analysis.evaluation import per_task_curve
    from maml_lab.core.tasks.losses import model_loss

    cb, lab = _model("cbfinn"), _model("lab")
    assert model_loss("cross_entropy", cb) == "cross_entropy_sum" and model_loss("cross_entropy_sum", lab) == \
        "cross_entropy" and model_loss("mse", cb) == "mse"
    theta, batch = _theta(cb), _batch(cb)
    on_lab_tasks = per_task_curve(cb, "cross_entropy", theta, batch, 2, 0.2)
    on_own_tasks = per_task_curve(cb, "cross_entropy_sum", theta, batch, 2, 0.2)
    assert on_lab_tasks[1] is not None
    torch.testing.assert_close(on_lab_tasks[1], on_own_tasks[1])  # the same adaptation: the same accuracies
    # the lab's loss would have taken N times smaller steps
    plain = list(sgd_trajectory(cb, cross_entropy_per_task, theta, batch.x_support, batch.y_support, 1, 0.2))[-1]
    own = list(sgd_trajectory(cb, cross_entropy_sum_per_task, theta, batch.x_support, batch.y_support, 1, 0.2))[-1]
    assert not torch.equal(plain["0.weight"], own["0.weight"])
