"""Activations (act, act′, act″) and feature maps against torch."""

from __future__ import annotations

import math

import pytest
import torch

import miras
from miras import ir
from miras.symbolic import UnsupportedForm, derive_activation, derive_feature

from .reference import F64, ir_eval, run

TORCH_ACTS = {
    "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu, "relu": torch.relu,
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda x: x,
    "softplus": torch.nn.functional.softplus,
}


@pytest.mark.parametrize("name", list(TORCH_ACTS))
def test_builtin_activation_and_derivatives(name: str) -> None:
    rule = derive_activation(name)  # type: ignore[arg-type]
    x = torch.linspace(-3, 3, 25, dtype=F64)
    x = x[x.abs() > 1e-6].requires_grad_()
    ref = TORCH_ACTS[name](x)
    (d1,) = torch.autograd.grad(ref.sum(), x, create_graph=True)
    d2 = torch.autograd.grad(d1.sum(), x, allow_unused=True)[0] if d1.requires_grad else None
    d2 = torch.zeros_like(x) if d2 is None else d2
    env = {"x": x.detach()}
    torch.testing.assert_close(run(rule.act.torch, env)["act"].expand_as(x), ref.detach())
    torch.testing.assert_close(run(rule.dact.torch, env)["dact"].expand_as(x), d1.detach())
    torch.testing.assert_close(run(rule.d2act.torch, env)["d2act"].expand_as(x), d2)


def test_user_activation() -> None:
    model = miras.check("examples/custom_retention.miras").model("sparse_memory")
    act = model.memory.act
    assert isinstance(act, ir.ActDef)
    rule = derive_activation(act)
    x = torch.linspace(-2, 2, 9, dtype=F64)
    torch.testing.assert_close(run(rule.act.torch, {"x": x})["act"], torch.relu(x) ** 2)
    torch.testing.assert_close(run(rule.dact.torch, {"x": x})["dact"], 2 * torch.relu(x))
    assert "sq_relu" in rule.formula


def test_activation_with_a_reduction_is_unsupported() -> None:
    act = ir.ActDef(name="bad", formula=ir.Fn(name="sum", args=(ir.Var(name="x"),)))
    with pytest.raises(UnsupportedForm, match="reduction"):
        derive_activation(act)


@pytest.mark.parametrize("feature", [ir.Poly(degree=3), ir.Poly(degree=2, learnable=False),
                                     ir.ExpTaylor(order=4)], ids=lambda f: f.kind)
def test_polynomial_kernels(feature: ir.Poly | ir.ExpTaylor) -> None:
    rule = derive_feature(feature)
    deg = rule.degree
    assert deg is not None
    assert rule.coefficients == tuple(1 / math.factorial(i) for i in range(deg + 1))
    s = torch.linspace(-1, 1, 7, dtype=F64)
    env = {"s": s, **{f"a{i}": torch.tensor(c, dtype=F64)
                      for i, c in enumerate(rule.coefficients)}}
    want = sum(c * s**i for i, c in enumerate(rule.coefficients))
    torch.testing.assert_close(run(rule.kernel.torch, env)["kappa"], want)
    dwant = sum(i * c * s ** (i - 1) for i, c in enumerate(rule.coefficients) if i)
    torch.testing.assert_close(run(rule.dkernel.torch, env)["dkappa"].expand_as(s), dwant)
    assert rule.learnable == (isinstance(feature, ir.Poly) and feature.learnable)


def test_sketch_and_identity_are_data() -> None:
    r = derive_feature(ir.Sketch(dim=16, degree=4))
    assert (r.sketch_dim, r.degree, r.out_dim) == (16, 4, "16^2")
    assert derive_feature(ir.Identity()).out_dim == "d"


def test_user_feature_map_and_vjp() -> None:
    text = ("feature unit(eps=learned(init=0.1)) = x / sqrt(sum(x^2) + eps) + tanh(x)\n"
            "model m { memory = matrix  bias = l2  retention = none  algorithm = gd  "
            "feature = unit }")
    feat = miras.load(text).feature
    assert isinstance(feat, ir.UserFeature)
    rule = derive_feature(feat)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=F64).requires_grad_()
    eps = torch.tensor([[0.1], [0.2], [0.3], [0.4]], dtype=F64).requires_grad_()
    ref = ir_eval(feat.definition.formula, {"x": x, "eps": eps}, 6)
    env = {"x": x.detach(), "p_eps": eps.detach(), "D": 6}
    torch.testing.assert_close(run(rule.map.torch, env)["phi"], ref.detach())
    dphi = torch.randn(4, 6, generator=g, dtype=F64)
    dx, deps = torch.autograd.grad(ref, [x, eps], dphi)
    out = run(rule.vjp.torch, {**env, "dphi": dphi})
    torch.testing.assert_close(out["d_x"], dx)
    torch.testing.assert_close(out["d_p_eps"], deps)
