"""Algorithm rules: plain data, and the implicit step solved by sympy."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from miras import ir
from miras.symbolic import (
    GDRule,
    ImplicitGDRule,
    MomentumRule,
    MuonRule,
    NonparametricRule,
    UnsupportedForm,
    derive_algorithm,
    derive_window,
)

from .reference import F64, run


def test_rules_are_frozen_plain_data() -> None:
    for alg in (ir.GD(steps=2), ir.Momentum(), ir.Muon(), ir.ImplicitGD(), ir.NonparametricAlg()):
        rule = derive_algorithm(alg)
        assert dataclasses.is_dataclass(rule)
        with pytest.raises(dataclasses.FrozenInstanceError):
            rule.kind = "x"  # type: ignore[misc]


def test_constants_and_states() -> None:
    gd = derive_algorithm(ir.GD(lr=ir.Const(value=0.25), steps=3))
    assert isinstance(gd, GDRule) and gd.lr.value == 0.25 and gd.steps == 3 and gd.states == ()
    mom = derive_algorithm(ir.Momentum(lr=ir.Gate(channel=True), beta=ir.Const(value=0.9)))
    assert isinstance(mom, MomentumRule) and mom.states == ("S",)
    assert mom.lr.gated and mom.lr.shape == "vector" and mom.beta.value == 0.9
    muon = derive_algorithm(ir.Muon(steps=7))
    assert isinstance(muon, MuonRule)
    assert (muon.ns.steps, muon.ns.a, muon.ns.b, muon.ns.c, muon.ns.eps) == (
        7, 3.4445, -4.7750, 2.0315, 1e-7)
    np_rule = derive_algorithm(ir.NonparametricAlg(), ir.Nonparametric(kernel="poly", degree=2),
                               window=ir.Sliding(size=128))
    assert isinstance(np_rule, NonparametricRule)
    assert (np_rule.kernel, np_rule.degree, np_rule.window) == ("poly", 2, 128)
    w = derive_window(ir.Sliding(size=8, gamma=ir.Gate(role="gamma")))
    assert w.size == 8 and w.gamma is not None and w.gamma.gated
    assert derive_window(ir.NoWindow()).size == 1


@pytest.mark.parametrize("memory", [ir.Matrix(), ir.Vector()], ids=lambda m: m.kind)
def test_implicit_step_is_the_proximal_solution(memory: ir.Matrix | ir.Vector) -> None:
    rule = derive_algorithm(ir.ImplicitGD(lr=ir.Gate()), memory, ir.L2())
    assert isinstance(rule, ImplicitGDRule)
    g = torch.Generator().manual_seed(0)
    d = 5
    k = torch.randn(1, d, generator=g, dtype=F64)
    v = torch.randn(d, generator=g, dtype=F64)
    lr = torch.tensor([[0.7]], dtype=F64)
    delta = run(rule.delta.torch, {"k": k, "lr": lr})["delta"]
    if isinstance(memory, ir.Matrix):
        W = torch.randn(d, d, generator=g, dtype=F64)
        new = W - delta * torch.outer(W @ k[0] - v, k[0])
        # implicit: new = W − η (new·k − v) kᵀ
        torch.testing.assert_close(new, W - 0.7 * torch.outer(new @ k[0] - v, k[0]))
    else:
        w = torch.randn(d, generator=g, dtype=F64)
        new = w - delta[0] * (w * k[0] - v) * k[0]
        torch.testing.assert_close(new, w - 0.7 * (new * k[0] - v) * k[0])


def test_implicit_gd_needs_l2() -> None:
    with pytest.raises(UnsupportedForm, match="l2"):
        derive_algorithm(ir.ImplicitGD(), ir.Matrix(), ir.Dot())
    with pytest.raises(UnsupportedForm, match="matrix or vector"):
        derive_algorithm(ir.ImplicitGD(), ir.MLP(), ir.L2())
