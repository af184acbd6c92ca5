import pytest
import torch

from maml_lab.core.algorithms.optim import Adam


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outer_adam_matches_torch_optim_adam(fused, dtype):
    g = torch.Generator().manual_seed(0)
    shapes = [(40, 1), (40,), (40, 40), (1,)]
    ours = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    theirs = [p.clone().requires_grad_(True) for p in ours]
    opt = Adam(ours, lr=3e-3)
    opt._fused = opt._fused and fused
    ref = torch.optim.Adam(theirs, lr=3e-3, foreach=False)
    for _ in range(25):
        grads = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
        opt.step(grads)
        for p, gr in zip(theirs, grads):
            p.grad = gr.clone()
        ref.step()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.detach(), **tol)


def test_state_round_trip():
    p = [torch.zeros(3)]
    opt = Adam(p, lr=0.1)
    opt.step([torch.ones(3)])
    other = Adam([torch.zeros(3)], lr=0.5)
    other.load_state_dict(opt.state_dict())
    assert float(other.steps[0]) == 1 and other.lr == 0.1
    with pytest.raises(ValueError, match="does not match"):
        Adam([torch.zeros(3), torch.zeros(2)], lr=0.1).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("fused", [True, False])
def test_gradients_laid_out_unlike_their_parameters_update_the_right_entries(fused):
    """autograd may return a gradient with other strides than its parameter (a transposed view): the update
    must follow the values, not the memory order."""
    g = torch.Generator().manual_seed(1)
    ours = [torch.randn(6, 4, 3, 3, generator=g), torch.randn(5, 7, generator=g)]
    theirs = [p.clone().requires_grad_(True) for p in ours]
    opt = Adam(ours, lr=1e-2)
    opt._fused = opt._fused and fused
    ref = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for _ in range(3):
        grads = [torch.randn(6, 3, 3, 4, generator=g).permute(0, 3, 1, 2), torch.randn(7, 5, generator=g).t()]
        assert any(gr.stride() != p.stride() for gr, p in zip(grads, ours))
        opt.step(grads)
        for p, gr in zip(theirs, grads):
            p.grad = gr.contiguous()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.detach())
