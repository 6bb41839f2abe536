"""The printers: whitelists, Triton code that parses, torch code that evaluates right."""

from __future__ import annotations

import ast
import math

import pytest
import sympy as sp
import torch

from miras import ir
from miras.symbolic import TORCH_CALLS, TRITON_CALLS, UnprintableError, derive, derive_bias
from miras.symbolic.functions import ELEMENTWISE, logcosh, sigmoid, softplus
from miras.symbolic.printing import print_block, torch_code, triton_code
from miras.symbolic.reductions import SumTable, V, Y

from .reference import F64, assert_only_calls

x, c = sp.symbols("x c", real=True)
NAMES = {x: "x", c: "p_c"}

ALL_FUNCTIONS = [f(x) for name, f in ELEMENTWISE.items() if name not in ("min", "max", "where")]
ALL_FUNCTIONS += [sp.Min(x, c), sp.Max(x, 0), sp.Piecewise((x, x > c), (c, True)), logcosh(x),
                  x**3, x**-2, x**sp.Rational(3, 2), x**c, 2**x, sp.sqrt(x), 1 / sp.sqrt(x),
                  sp.sqrt(sp.pi) * x, sp.ITE(x > 0, x > c, x < c)]


@pytest.mark.parametrize("expr", ALL_FUNCTIONS, ids=str)
def test_every_function_prints_for_both_targets(expr: sp.Expr) -> None:
    t = triton_code(expr, NAMES)
    ast.parse(t)
    assert_only_calls(t, TRITON_CALLS, {"x", "p_c"})
    p = torch_code(expr, NAMES)
    assert_only_calls(p, TORCH_CALLS, {"x", "p_c"})


@pytest.mark.parametrize("expr", [e for e in ALL_FUNCTIONS if not isinstance(e, sp.ITE)], ids=str)
def test_torch_code_evaluates_like_sympy(expr: sp.Expr) -> None:
    xs = torch.tensor([0.3, 0.7, 1.9], dtype=F64)
    cs = torch.tensor(0.5, dtype=F64)
    out = eval(torch_code(expr, NAMES), {"torch": torch, "x": xs, "p_c": cs})
    for i, xv in enumerate(xs.tolist()):
        want = complex(expr.subs({x: xv, c: 0.5}).evalf(30))
        got = float(torch.as_tensor(out).expand(3)[i])
        assert math.isclose(got, want.real, rel_tol=1e-9, abs_tol=1e-12), (expr, xv)


def test_unknown_things_raise() -> None:
    f = sp.Function("f")
    for bad in (sp.besselj(0, x), sp.gamma(x), sp.Integral(x, x), sp.Derivative(f(x), x),
                sp.Symbol("unnamed") + x, sp.zoo * x, f(x)):
        with pytest.raises(UnprintableError):
            torch_code(bad, NAMES)
        with pytest.raises(UnprintableError):
            triton_code(bad, NAMES)


def test_stable_forms() -> None:
    assert "softplus" in torch_code(softplus(x), NAMES)
    assert triton_code(sigmoid(x), NAMES) == "tl.sigmoid(x)"
    big = torch.tensor([800.0], dtype=F64)
    assert torch.isfinite(eval(torch_code(logcosh(x), NAMES), {"torch": torch, "x": big}))
    assert "libdevice.pow" not in triton_code(x**3 + x**sp.Rational(-1, 2), NAMES)


def test_triton_tanh_helper_is_accurate() -> None:
    # evaluate the Triton helper with torch stand-ins for tl.*
    class TL:
        abs = staticmethod(torch.abs)
        exp = staticmethod(torch.exp)
        sigmoid = staticmethod(torch.sigmoid)

        @staticmethod
        def where(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.where(c, a, b)

    xs = torch.tensor([-3.0, -0.5, -0.01, 1e-5, 0.05, 0.07, 2.0], dtype=F64)
    for f, ref in ((sp.tanh(x), torch.tanh), (sp.sinh(x), torch.sinh)):
        got = eval(triton_code(f, NAMES), {"tl": TL, "x": xs})
        torch.testing.assert_close(got, ref(xs), rtol=1e-9, atol=1e-12)


def test_block_masks_reductions_in_triton() -> None:
    t = SumTable([Y, V])
    b = print_block([("grad", (Y - V) / sp.sqrt(t.reduce((Y - V) ** 2)), "vector")], t,
                    {Y: "y", V: "v"}, "triton", mask="dmask")
    assert "tl.sum(tl.where(dmask," in b.source()
    assert b.inputs == ("v", "y", "dmask")


SPECS = [ir.Dot(), ir.L2(), ir.L1(smooth="tanh"), ir.Lp(), ir.Huber(), ir.HuberCoord(),
         ir.HuberNorm(), ir.RobustShift()]


@pytest.mark.parametrize("bias", SPECS, ids=lambda b: b.kind)
def test_bias_triton_blocks_parse_and_use_whitelisted_names(bias: ir.Bias) -> None:
    d = derive_bias(bias)
    blocks = [d.loss, d.grad, d.vjp] + [j.code for j in d.jacobians]
    for code in blocks:
        src = code.triton.source()
        ast.parse(src)
        bound = set(code.triton.inputs) | {s.name for s in code.triton.statements} | {"dmask"}
        assert_only_calls(src, TRITON_CALLS, bound)
        tsrc = code.torch.source()
        assert_only_calls(tsrc, TORCH_CALLS, set(code.torch.inputs)
                          | {s.name for s in code.torch.statements})


def test_every_example_prints_whitelisted_triton() -> None:
    import glob

    import miras

    for path in sorted(glob.glob("examples/*.miras")):
        for m in miras.check(path).models:
            d = derive(m)
            codes = [d.bias.grad, d.bias.vjp, d.retention.step]
            codes += [x for x in (d.retention.weights, d.retention.slice_term) if x is not None]
            if d.activation is not None:
                codes += [d.activation.act, d.activation.dact, d.activation.d2act]
            for code in codes:
                src = code.triton.source()
                ast.parse(src)
                bound = (set(code.triton.inputs) | {s.name for s in code.triton.statements}
                         | {"dmask"})
                assert_only_calls(src, TRITON_CALLS, bound)


def test_user_names_cannot_collide() -> None:
    # a parameter called like an engine name or a Python builtin is prefixed
    text = ("bias b(torch=1.0, s0=2.0, y2=learned(init=1)) = sum(torch * (y - v)^2 + s0 * y2 * y)\n"
            "model m { memory = matrix  bias = b  retention = none  algorithm = gd }")
    import miras

    d = derive_bias(miras.load(text).bias)
    names = {i.name for i in d.inputs}
    assert "p_y2" in names and "y2" not in names
    assert "torch *" not in d.grad.torch.source()
