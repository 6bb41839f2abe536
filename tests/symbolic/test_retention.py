"""Retention closed forms, evaluated through the printed torch code."""

from __future__ import annotations

from typing import Any

import pytest
import sympy as sp
import torch

import miras
from miras import ir
from miras.symbolic import NoClosedForm, UnsupportedForm, derive_retention
from miras.symbolic.retention import POTENTIALS, W, Z, mirror_inverse

from .reference import F64, run

G = torch.Generator().manual_seed(0)


def _apply(rule: Any, w: torch.Tensor, u: torch.Tensor, **params: Any) -> torch.Tensor:
    """W_t from the printed step/weights code (no normaliser)."""
    z = run(rule.step.torch, {"w": w, "u": u, **params})["z"]
    if rule.weights is None:
        return z
    return run(rule.weights.torch, {"z": z, **params})["w_new"]


def user_retention(body: str, params: str = "lam=0.01") -> ir.UserRetention:
    text = (f"retention r({params}) {body}\n"
            "model m { memory = matrix  bias = l2  retention = r  algorithm = gd }")
    ret = miras.load(text).retention
    assert isinstance(ret, ir.UserRetention)
    return ret


@pytest.mark.parametrize("name", list(POTENTIALS))
def test_bregman_inverse_round_trips(name: str) -> None:
    rule = derive_retention(ir.Bregman(potential=name))
    w = torch.rand(50, generator=G, dtype=F64) * 0.9 + 0.05
    torch.testing.assert_close(_apply(rule, w, torch.zeros_like(w)), w)
    # mirror descent: F′(W_t) = α F′(W_{t−1}) + U
    u = 0.5 * torch.randn(50, generator=G, dtype=F64)
    wn = _apply(rule, w, u)
    fp = sp.lambdify(W, sp.diff(POTENTIALS[name], W), "math")
    got = torch.tensor([fp(float(a)) for a in wn], dtype=F64)
    want = torch.tensor([fp(float(a)) for a in w], dtype=F64) + u
    torch.testing.assert_close(got, want)


def test_bregman_alpha_and_linear_flags() -> None:
    rule = derive_retention(ir.Bregman(potential="entropy", alpha=ir.Gate(role="decay")))
    assert [i.name for i in rule.inputs] == ["alpha"] and rule.positive and not rule.linear
    assert derive_retention(ir.Bregman(potential="quadratic")).linear


@pytest.mark.parametrize("fprime,domain", [
    (sp.log(W) + 1, (0.05, 3.0)), (sp.atanh(W), (-0.9, 0.9)), (W**3, (-2.0, 2.0)),
    (sp.log(W / (1 - W)), (0.05, 0.95)), (W + W**3, (-2.0, 2.0)), (sp.sinh(W), (-2.0, 2.0)),
])
def test_mirror_inverse_round_trips(fprime: sp.Expr, domain: tuple[float, float]) -> None:
    inv = mirror_inverse(fprime)
    for w0 in torch.linspace(domain[0], domain[1], 9).tolist():
        z0 = float(fprime.subs(W, w0))
        assert abs(float(inv.subs(Z, z0)) - w0) < 1e-9


def test_no_closed_form_is_reported() -> None:
    with pytest.raises(NoClosedForm, match="exp"):
        mirror_inverse(sp.exp(W) + W)                       # needs LambertW
    with pytest.raises(UnsupportedForm, match="strictly convex"):
        mirror_inverse(-W)
    ret = user_retention("{ potential = exp(w) + w^2/2 }", params="")
    with pytest.raises(NoClosedForm):
        derive_retention(ret)


def test_user_retention_defaults_and_decay_equivalence() -> None:
    # φ = w²/2 (default), G = λw²/2: plain decay by 1 − λ
    rule = derive_retention(user_retention("= lam * w^2 / 2", params="lam=0.25"))
    w, u = torch.randn(20, generator=G, dtype=F64), torch.randn(20, generator=G, dtype=F64)
    torch.testing.assert_close(_apply(rule, w, u), 0.75 * w + u)
    assert rule.linear and rule.weights is None


def test_user_retention_with_potential_example() -> None:
    model = miras.check("examples/custom_retention.miras").model("bounded_memory")
    rule = derive_retention(model.retention)
    assert rule.weights is not None and "tanh" in rule.weights.torch.source()
    w = torch.rand(30, generator=G, dtype=F64) * 1.8 - 0.9
    u = torch.randn(30, generator=G, dtype=F64)
    want = torch.tanh(torch.atanh(w) - 0.01 * w + u)      # (φ′)⁻¹(φ′(w) − G′(w) + u)
    torch.testing.assert_close(_apply(rule, w, u), want)
    assert "tanh(Z_t)" in rule.formula


def test_user_retention_learned_parameter_is_an_input() -> None:
    rule = derive_retention(user_retention("= lam * sqrt(w^2 + 1e-6)",
                                           params="lam=learned(init=0.01)"))
    assert [i.name for i in rule.inputs] == ["p_lam"]
    w, u = torch.randn(5, generator=G, dtype=F64), torch.zeros(5, dtype=F64)
    lam = torch.tensor(0.1, dtype=F64)
    torch.testing.assert_close(_apply(rule, w, u, p_lam=lam),
                               w - 0.1 * w / torch.sqrt(w * w + 1e-6))


def test_decay_and_none() -> None:
    w, u = torch.randn(8, generator=G, dtype=F64), torch.randn(8, generator=G, dtype=F64)
    torch.testing.assert_close(_apply(derive_retention(ir.NoRetention()), w, u), w + u)
    rule = derive_retention(ir.Decay(alpha=ir.Gate(role="decay"), at="decayed"))
    a = torch.tensor(0.8, dtype=F64)
    torch.testing.assert_close(_apply(rule, w, u, alpha=a), 0.8 * w + u)
    assert rule.grad_at == "decayed" and rule.linear


@pytest.mark.parametrize("form,r", [("moneta", 4.0), ("ftrl", 4 / 3)])
def test_lq_normalisation(form: str, r: float) -> None:
    rule = derive_retention(ir.Lq(q=4, form=form, alpha=ir.Const(value=0.5)))
    assert rule.state == "accumulator" and rule.normalizer == "lq" and rule.exponent == r
    a, u = torch.randn(3, 6, generator=G, dtype=F64), torch.randn(3, 6, generator=G, dtype=F64)
    z = run(rule.step.torch, {"w": a, "u": u})["z"]
    torch.testing.assert_close(z, 0.5 * a + u)
    h = run(rule.slice_term.torch, {"z": z})["h"]
    S = h.sum(-1, keepdim=True)                              # the slice reduction
    wn = run(rule.weights.torch, {"z": z, "S": S})["w_new"]
    norm = z.abs().pow(r).sum(-1, keepdim=True).pow(1 / r)
    torch.testing.assert_close(wn, z / norm ** (r - 2))


def test_kl_and_fdiv_kl_are_softmax() -> None:
    rule = derive_retention(ir.KL(alpha=ir.Const(value=0.7), scale=2.0, softmax_axis="all"))
    assert (rule.normalizer, rule.slice, rule.scale, rule.positive) == ("softmax", "all", 2.0, True)
    w = torch.rand(4, 5, generator=G, dtype=F64) + 0.1
    u = torch.randn(4, 5, generator=G, dtype=F64)
    z = run(rule.step.torch, {"w": w, "u": u})["z"]
    torch.testing.assert_close(z, 0.7 * torch.log(w) + u)
    fd = derive_retention(ir.FDiv(f="kl", scale=1.0))
    assert fd.normalizer == "softmax"
    zf = run(fd.step.torch, {"w": w, "u": u})["z"]
    # W ⊙ g(u − ζ) normalised = softmax(log w + u): the constant −1 of g does not matter
    torch.testing.assert_close(torch.softmax(zf, -1), w * torch.exp(u) / (w * torch.exp(u)).sum(-1,
                                                                                               keepdim=True))


def test_hellinger_needs_a_solve() -> None:
    rule = derive_retention(ir.FDiv(f="hellinger", scale=1.0))
    assert rule.normalizer == "simplex_solve" and rule.solve is not None
    assert rule.solve.upper == 1.0 and rule.solve.lower is None
    a = torch.tensor([-2.0, 0.0, 0.5], dtype=F64)
    g = run(rule.solve.g.torch, {"a": a})["g"]
    torch.testing.assert_close(g, 1 / (1 - a) ** 2)          # (f′)⁻¹ of f′(τ) = 1 − 1/√τ
    dg = run(rule.solve.dg.torch, {"a": a})["dg"]
    torch.testing.assert_close(dg, 2 / (1 - a) ** 3)
    assert "1-D solve" in rule.formula


@pytest.mark.parametrize("smooth", [False, True])
def test_soft_threshold(smooth: bool) -> None:
    rule = derive_retention(ir.SoftThreshold(threshold=ir.Const(value=0.1), smooth=smooth))
    w = torch.tensor([-1.0, -0.05, 0.02, 0.5], dtype=F64)
    got = _apply(rule, w, torch.zeros_like(w))
    if smooth:
        want = w.abs() * torch.atan(w / 0.1) / (torch.pi / 2)
    else:
        want = torch.sign(w) * torch.clamp(w.abs() - 0.1, min=0)
    torch.testing.assert_close(got, want)
    en = derive_retention(ir.ElasticNet(form="ftrl", threshold=ir.Learned(init=0.01)))
    assert en.state == "accumulator" and [i.name for i in en.inputs] == ["alpha", "threshold"][1:]
