"""Memory architectures: the explicit backward pass equals autograd (fp64)."""

from __future__ import annotations

import pytest
import torch

from miras.runtime import memory as mem
from miras.runtime.memory import MemoryShape

SHAPES = [
    MemoryShape("vector"),
    MemoryShape("matrix", init="normal"),
    MemoryShape("mlp", depth=1, init="normal"),
    MemoryShape("mlp", depth=2, hidden=7, residual=True, init="normal"),
    MemoryShape("mlp", depth=3, hidden=5, residual=False, norm="rmsnorm", init="normal"),
    MemoryShape("mlp", depth=2, hidden=6, residual=True, norm="layernorm", init="uniform"),
    MemoryShape("gated_mlp", hidden=6, residual=True, norm="layernorm", init="normal"),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.kind}-{s.depth}-{s.norm}")
@pytest.mark.parametrize("act", [torch.nn.functional.gelu, torch.tanh, torch.nn.functional.silu])
def test_backward_equals_autograd(shape: MemoryShape, act) -> None:
    torch.manual_seed(0)
    B, H, N, D = 2, 3, 5, 4
    w = {n: x.expand(B, *x.shape).clone().normal_() * 0.5
         for n, x in mem.init_weights(shape, D, D, H, dtype=torch.float64).items()}
    x = torch.randn(B, H, N, D, dtype=torch.float64)
    y, trace = mem.forward(shape, w, x, x, act)
    dy = torch.randn_like(y)

    def act_grad(z: torch.Tensor) -> torch.Tensor:
        zz = z.detach().requires_grad_()
        (g,) = torch.autograd.grad(act(zz).sum(), zz)
        return g

    factors = mem.backward(shape, w, trace, dy, act_grad)
    grads = mem.contract(shape, factors, torch.ones(B, H, N, dtype=torch.float64))
    leaves = {n: t.clone().requires_grad_() for n, t in w.items()}
    out, _ = mem.forward(shape, leaves, x, x, act)
    (out * dy).sum().backward()
    for n in w:
        torch.testing.assert_close(grads[n], leaves[n].grad, rtol=1e-10, atol=1e-10)


def test_shapes_and_init() -> None:
    s = MemoryShape("mlp", depth=2, hidden=16)
    assert s.shapes(8, 8) == {"W0": (16, 8), "W1": (8, 16)}
    w = mem.init_weights(MemoryShape("matrix", init="uniform"), 4, 4, 2)
    assert torch.allclose(w["W"], torch.full((2, 4, 4), 0.25))
    pos = mem.init_weights(MemoryShape("mlp", depth=2, hidden=8, init="uniform"), 4, 4, 2)
    assert all(bool((t > 0).all()) for t in pos.values())
    assert not torch.equal(pos["W0"][0, 0], pos["W0"][0, 1])  # hidden units differ
