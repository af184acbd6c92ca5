"""Every algorithm against an independent computation, in float64."""

from collections import OrderedDict

import pytest
import torch
from torch.func import functional_call

from maml_lab.core.algorithms.adaptation import adapt
from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.models.mlp import MLP, clone_params
from maml_lab.core.tasks.losses import mse_per_task
from maml_lab.core.tasks.sinusoid import SinusoidFamily

DT = torch.float64


def setup(sizes=(1, 6, 6, 1), activation="tanh", tasks=4, shots=5, queries=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = MLP(sizes, activation)
    params = model.init_params(g, dtype=DT)
    batch = SinusoidFamily().sample(tasks, shots, queries, g, dtype=DT)
    return model, params, batch


def meta_objective(model, params, batch, steps, lr):
    """Mean post-adaptation query loss, computed without any graph (for finite differences)."""
    res = adapt(model, mse_per_task, params, batch.x_support, batch.y_support, steps, lr)
    with torch.no_grad():
        return mse_per_task(model.forward(res.params, batch.x_query), batch.y_query).mean().item()


def engine_meta_gradient(model, params, batch, steps, lr, first_order):
    algo = make_algorithm(model, "mse", AlgorithmConfig("fomaml" if first_order else "maml", inner_lr=lr,
                                                        inner_steps=steps))
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
    grads, _, _, _ = algo.meta_gradient(leaves, batch, first_order)
    return OrderedDict(zip(params, grads))


def finite_difference(model, params, batch, steps, lr, h=1e-6):
    out = OrderedDict()
    for name, value in params.items():
        grad = torch.zeros_like(value)
        flat = grad.view(-1)
        for i in range(value.numel()):
            plus, minus = clone_params(params), clone_params(params)
            plus[name].view(-1)[i] += h
            minus[name].view(-1)[i] -= h
            flat[i] = (meta_objective(model, plus, batch, steps, lr) -
                       meta_objective(model, minus, batch, steps, lr)) / (2 * h)
        out[name] = grad
    return out


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_matches_finite_differences(steps):
    model, params, batch = setup()
    lr = 0.05
    engine = engine_meta_gradient(model, params, batch, steps, lr, first_order=False)
    numeric = finite_difference(model, params, batch, steps, lr)
    for name in params:
        torch.testing.assert_close(engine[name], numeric[name], rtol=1e-5, atol=1e-7)


def test_fomaml_gradient_is_query_gradient_at_adapted_params_and_differs_from_maml():
    model, params, batch = setup()
    steps, lr = 2, 0.05
    fo = engine_meta_gradient(model, params, batch, steps, lr, first_order=True)
    so = engine_meta_gradient(model, params, batch, steps, lr, first_order=False)
    # independent reference: adapt each task alone, then the query-loss gradient at phi_i, averaged
    expected = OrderedDict((k, torch.zeros_like(v)) for k, v in params.items())
    for i in range(batch.num_tasks):
        task = batch.task(i)
        phi = adapt(model, mse_per_task, params, task.x_support, task.y_support, steps, lr).params
        phi = OrderedDict((k, v[0].detach().requires_grad_(True)) for k, v in phi.items())
        loss = mse_per_task(model.forward(phi, task.x_query), task.y_query).sum()
        for k, g in zip(phi, torch.autograd.grad(loss, list(phi.values()))):
            expected[k] += g / batch.num_tasks
    for name in params:
        torch.testing.assert_close(fo[name], expected[name], rtol=1e-10, atol=1e-12)
    differences = [float((fo[k] - so[k]).abs().max()) for k in params]
    assert max(differences) > 1e-4, "the Hessian term should make MAML and FOMAML differ"


def reference_meta_gradient(module, params, batch, steps, lr, first_order):
    """A straightforward per-task loop on a plain nn.Module through torch.func.functional_call."""
    theta = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
    total = 0.0
    for i in range(batch.num_tasks):
        fast = dict(theta)
        for _ in range(steps):
            pred = functional_call(module, fast, (batch.x_support[i],))
            loss = ((pred - batch.y_support[i]) ** 2).mean()
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
        pred = functional_call(module, fast, (batch.x_query[i],))
        total = total + ((pred - batch.y_query[i]) ** 2).mean()
    grads = torch.autograd.grad(total / batch.num_tasks, list(theta.values()))
    return OrderedDict(zip(theta, grads))


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])  # gelu: the generic autograd path
def test_vectorized_meta_step_equals_per_task_loop(first_order, activation):
    model, params, batch = setup(sizes=(1, 40, 40, 1), activation=activation, tasks=25, shots=10, queries=10)
    module = model.torch_module().to(DT)
    for steps in (1, 2):
        engine = engine_meta_gradient(model, params, batch, steps, 0.01, first_order)
        reference = reference_meta_gradient(module, params, batch, steps, 0.01, first_order)
        for name in params:
            torch.testing.assert_close(engine[name], reference[name], rtol=1e-9, atol=1e-12)


def test_maml_meta_step_applies_adam_to_the_meta_gradient():
    model, params, batch = setup()
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
    algo = make_algorithm(model, "mse", AlgorithmConfig("maml", inner_lr=0.05, meta_lr=1e-2))
    algo.setup(leaves)
    grads = engine_meta_gradient(model, params, batch, 1, 0.05, False)
    algo.meta_step(leaves, batch)
    # Adam's first step moves every coordinate by lr * sign(g) (bias-corrected m / sqrt(v) = g / |g|)
    for k in params:
        expected = params[k] - 1e-2 * grads[k] / (grads[k].abs() + 1e-8)
        torch.testing.assert_close(leaves[k].detach(), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("inner_optimizer", ["sgd"])  # Adam (supervised-reptile's): tests/core/test_reptile.py
def test_reptile_update_is_epsilon_times_mean_displacement(inner_optimizer):
    model, params, batch = setup(tasks=5)
    k, lr = 4, 0.02
    cfg = AlgorithmConfig.defaults("reptile", inner_steps=k, inner_lr=lr, outer_lr_start=0.7, outer_lr_end=0.1,
                                   inner_optimizer=inner_optimizer, options={"inner_batch": 0, "meta_batch": 0})
    algo = make_algorithm(model, "mse", cfg, total_iterations=10)
    algo.setup(params)
    leaves = clone_params(params)
    algo.meta_step(leaves, batch, iteration=5)
    eps = 0.7 + 0.5 * (0.1 - 0.7)
    # reference: each task trained alone with a torch.optim optimizer on an nn.Module copy
    module = model.torch_module().to(DT)
    mean_delta = OrderedDict((n, torch.zeros_like(v)) for n, v in params.items())
    for i in range(batch.num_tasks):
        module.load_state_dict(params)
        opt = (torch.optim.SGD(module.parameters(), lr=lr) if inner_optimizer == "sgd"
               else torch.optim.Adam(module.parameters(), lr=lr, betas=(0.0, 0.999)))
        for _ in range(k):
            opt.zero_grad()
            ((module(batch.x_support[i]) - batch.y_support[i]) ** 2).mean().backward()
            opt.step()
        for n, v in module.state_dict().items():
            mean_delta[n] += (v - params[n]) / batch.num_tasks
    for n in params:
        torch.testing.assert_close(leaves[n], params[n] + eps * mean_delta[n], rtol=1e-9, atol=1e-12)


def test_reptile_with_one_inner_step_warns():
    model, _, _ = setup()
    with pytest.warns(UserWarning, match="joint training"):
        make_algorithm(model, "mse", AlgorithmConfig("reptile", inner_steps=1))


def test_pretrained_baseline_minimizes_joint_loss_without_adaptation():
    model, params, batch = setup()
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
    algo = make_algorithm(model, "mse", AlgorithmConfig("pretrained", meta_lr=1e-2))
    algo.setup(leaves)
    x, y = batch.joint()
    joint = mse_per_task(model.forward(params, x), y).mean()
    theta = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
    grads = torch.autograd.grad(mse_per_task(model.forward(theta, x), y).mean(), list(theta.values()))
    algo.meta_step(leaves, batch)
    for (k, v), g in zip(params.items(), grads):
        torch.testing.assert_close(leaves[k].detach(), v - 1e-2 * g / (g.abs() + 1e-8), rtol=1e-6, atol=1e-9)
    assert mse_per_task(model.forward(leaves, x), y).mean() < joint


@pytest.mark.parametrize("bad", [{"inner_lr": -0.1}, {"meta_lr": 0.0}, {"inner_steps": 0}, {"name": "mamll"},
                                 {"inner_optimizer": "rmsprop"}, {"inner_lr": float("nan")}])
def test_invalid_algorithm_config_is_refused(bad):
    with pytest.raises(ValueError):
        AlgorithmConfig(**{"name": "maml", **bad})


def test_cosine_meta_lr_schedule_anneals_to_zero():
    model, _, _ = setup()
    algo = make_algorithm(model, "mse", AlgorithmConfig("maml", meta_lr=1e-3, meta_lr_schedule="cosine"), 100)
    assert algo.meta_lr(0) == pytest.approx(1e-3)
    assert algo.meta_lr(50) == pytest.approx(5e-4)
    assert algo.meta_lr(100) == pytest.approx(0.0, abs=1e-12)
    assert make_algorithm(model, "mse", AlgorithmConfig("maml"), 100).meta_lr(70) == 1e-3
    with pytest.raises(ValueError, match="meta.lr.schedule"):
        AlgorithmConfig("maml", meta_lr_schedule="step")


@pytest.mark.parametrize("first_order", [False, True])
def test_step_loss_weights_weight_the_query_loss_after_each_inner_step(first_order):
    model, params, batch = setup()
    module = model.torch_module().to(DT)
    lr, weights = 0.05, [0.3, 0.0, 0.7]
    name = "fomaml" if first_order else "maml"
    algo = make_algorithm(model, "mse", AlgorithmConfig(name, inner_lr=lr, inner_steps=3, step_loss_weights=weights))
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in params.items())
    grads, loss, res, _ = algo.meta_gradient(leaves, batch, first_order)
    # the meta-gradient is linear in the objective: the weighted sum of the s-step meta-gradients
    per_step = [reference_meta_gradient(module, params, batch, s, lr, first_order) for s in (1, 2, 3)]
    for k, g in zip(params, grads):
        expected = sum(w * ref[k] for w, ref in zip(weights, per_step))
        torch.testing.assert_close(g, expected, rtol=1e-9, atol=1e-12)
    assert float(loss) == pytest.approx(meta_objective(model, params, batch, 3, lr), rel=1e-12)  # after the last step
    assert len(res.support_losses) == 3
    # weight only on the last step: the plain (unweighted) meta-gradient
    last_only = make_algorithm(model, "mse", AlgorithmConfig(name, inner_lr=lr, inner_steps=3,
                                                             step_loss_weights=[0, 0, 1]))
    plain = engine_meta_gradient(model, params, batch, 3, lr, first_order)
    for k, g in zip(params, last_only.meta_gradient(leaves, batch, first_order)[0]):
        torch.testing.assert_close(g, plain[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad", [{"step_loss_weights": [0.5]}, {"step_loss_weights": [0.5, -0.5]},
                                 {"step_loss_weights": [0.0, 0.0]}, {"step_loss_weights": [1.0, float("inf")]},
                                 {"name": "reptile", "step_loss_weights": [0.5, 0.5]}])
def test_invalid_step_loss_weights_are_refused(bad):
    with pytest.raises(ValueError, match="step.loss.weights"):
        AlgorithmConfig(**{"name": "maml", "inner_steps": 2, **bad})


def _per_task_adam(model, params, batch, steps, lr):
    """Reference: fresh Adam (beta1 = 0) per task in TF's form (eps added to sqrt(v), lr * sqrt(1 - beta2^t)), on
    the per-example loss summed over the support set, as supervised-reptile adapts."""
    out = []
    n = batch.x_support.shape[1]
    for i in range(batch.num_tasks):
        p = {k: v.detach().clone() for k, v in params.items()}
        v2 = {k: torch.zeros_like(v) for k, v in p.items()}
        for t in range(1, steps + 1):
            leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
            pred = model.forward({k: v.unsqueeze(0) for k, v in leaves.items()}, batch.x_support[i:i + 1])
            grads = torch.autograd.grad(n * mse_per_task(pred, batch.y_support[i:i + 1]).sum(), list(leaves.values()))
            for (k, w), g in zip(p.items(), grads):
                v2[k] = 0.999 * v2[k] + 0.001 * g * g
                p[k] = w - lr * (1 - 0.999 ** t) ** 0.5 * g / (v2[k].sqrt() + 1e-8)
        out.append(p)
    return out


def test_reptile_with_inner_adam_fine_tunes_with_adam_in_evaluation_and_validation():
    """The bug: Reptile trained with inner Adam was validated, evaluated and previewed with SGD."""
    from maml_lab.core.algorithms.config import test_adapt, test_trajectory
    from maml_lab.core.analysis.evaluation import per_task_curve

    model, params, batch = setup()
    cfg = AlgorithmConfig("reptile", inner_lr=0.02, inner_steps=3, inner_optimizer="adam")
    adapted = test_adapt(cfg, model, mse_per_task, params, batch.x_support, batch.y_support, 4)
    reference = _per_task_adam(model, params, batch, 4, 0.02)
    for i, ref in enumerate(reference):
        for k in params:
            torch.testing.assert_close(adapted[k][i], ref[k], rtol=1e-10, atol=1e-12)
    sgd = test_adapt(AlgorithmConfig("reptile", inner_lr=0.02, inner_steps=3), model, mse_per_task, params,
                     batch.x_support, batch.y_support, 4)
    assert not torch.allclose(sgd["0.weight"], adapted["0.weight"])
    steps = list(test_trajectory(cfg, model, mse_per_task, params, batch.x_support, batch.y_support, 4))
    assert len(steps) == 5 and torch.equal(steps[-1]["0.weight"], adapted["0.weight"])
    losses, _ = per_task_curve(model, "mse", params, batch, 4, cfg)  # what validation and eval call
    with torch.no_grad():
        expected = [mse_per_task(model.forward({k: v.unsqueeze(0) for k, v in ref.items()}, batch.x_query[i:i + 1]),
                                 batch.y_query[i:i + 1]).item() for i, ref in enumerate(reference)]
    assert losses[-1] == pytest.approx(expected, rel=1e-9)
