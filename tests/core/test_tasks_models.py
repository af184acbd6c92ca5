import math

import pytest
import torch

from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.sinusoid import SinusoidFamily, user_task
from maml_lab.core.training.device import resolve_device


def test_sinusoid_batches_follow_the_paper_distribution_and_are_reproducible():
    fam = SinusoidFamily()
    b = fam.sample(2000, 10, 15, torch.Generator().manual_seed(1))
    assert b.x_support.shape == (2000, 10, 1) and b.x_query.shape == (2000, 15, 1)
    amp, phase = b.info["amplitude"], b.info["phase"]
    assert 0.1 <= amp.min() and amp.max() <= 5.0 and 0 <= phase.min() and phase.max() <= math.pi
    assert b.x_support.min() >= -5 and b.x_support.max() <= 5
    torch.testing.assert_close(b.y_support, amp.view(-1, 1, 1) * torch.sin(b.x_support - phase.view(-1, 1, 1)))
    again = fam.sample(2000, 10, 15, torch.Generator().manual_seed(1))
    assert torch.equal(again.x_query, b.x_query)


def test_user_task_uses_truth_curve_for_queries_and_refuses_bad_points():
    t = user_task([0.0, 1.0], [0.5, 0.2], truth=lambda x: 2 * x, num_query=11)
    assert t.x_support.shape == (1, 2, 1) and t.x_query.shape == (1, 11, 1)
    torch.testing.assert_close(t.y_query, 2 * t.x_query)
    with pytest.raises(ValueError, match="at least one"):
        user_task([], [])
    with pytest.raises(ValueError, match="differ"):
        user_task([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        user_task([float("nan")], [1.0])


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "silu"])
def test_mlp_functional_forward_equals_nn_sequential(activation):
    model = MLP((1, 8, 8, 2), activation)
    params = model.init_params(torch.Generator().manual_seed(0))
    module = model.torch_module()
    module.load_state_dict(params)
    x = torch.randn(3, 7, 1)
    torch.testing.assert_close(model.forward(params, x), module(x))
    per_task = {k: v.unsqueeze(0).expand(3, *v.shape) for k, v in params.items()}
    torch.testing.assert_close(model.forward(per_task, x), module(x))


def test_bad_model_and_device_specs_are_refused():
    with pytest.raises(ValueError, match="activation"):
        MLP((1, 4, 1), "swish2")
    with pytest.raises(ValueError, match="positive"):
        MLP((1, 0, 1))
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")
    assert resolve_device("auto").type in ("cpu", "cuda")
