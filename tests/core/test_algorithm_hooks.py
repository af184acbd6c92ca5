"""The base class's meta_gradient is MAML's: algorithms that adapt with tensors they learn get an error from it,
never plain MAML's gradient under their name (issue 24)."""

import pytest
import torch

from maml_lab.core.algorithms.config import AlgorithmConfig, make_algorithm
from maml_lab.core.models.mlp import MLP
from maml_lab.core.tasks.sinusoid import SinusoidFamily


def _setup(name: str):
    torch.manual_seed(0)
    model = MLP((1, 8, 8, 1))
    params = model.init_params(torch.Generator().manual_seed(0))
    for v in params.values():
        v.requires_grad_(True)
    algo = make_algorithm(model, "mse", AlgorithmConfig(name=name, inner_steps=5 if name == "reptile" else 1))
    algo.setup(params)
    batch = SinusoidFamily().sample(3, 5, 5, torch.Generator().manual_seed(1))
    return algo, params, batch


@pytest.mark.parametrize("name", ["metasgd", "mamlpp", "reptile"])
def test_meta_gradient_refuses_algorithms_with_learned_tensors(name):
    algo, params, batch = _setup(name)
    with pytest.raises(TypeError, match="learns besides theta"):
        algo.meta_gradient(params, batch, first_order=False)
    algo.meta_step(params, batch)  # their own meta-update is unaffected


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "boil"])
def test_meta_gradient_still_serves_maml_and_its_subsets(name):
    algo, params, batch = _setup(name)
    grads = algo.meta_gradient(params, batch, first_order=name == "fomaml")[0]
    assert len(grads) == len(params) and all(torch.isfinite(g).all() for g in grads)
