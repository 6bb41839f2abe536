"""IR → sympy: numbers, the function whitelist, reductions, smoothing, errors."""

from __future__ import annotations

import pytest
import sympy as sp

from miras import ir
from miras.symbolic import ConversionError
from miras.symbolic.convert import Converter, number
from miras.symbolic.functions import Smoothing, logcosh
from miras.symbolic.reductions import DIM, SumTable, V, Y, is_affine

y, v = ir.Var(name="y"), ir.Var(name="v")


def conv(e: ir.Expr, smoothing: Smoothing | None = None) -> tuple[sp.Expr, SumTable]:
    t = SumTable([Y, V])
    return Converter(t, {"y": Y, "v": V, "c": sp.Symbol("c", real=True)}, smoothing)(e), t


def test_numbers_are_exact_decimals() -> None:
    assert number(0.1) == sp.Rational(1, 10) and number(3.0) == 3
    assert number(-2.5) == sp.Rational(-5, 2)


@pytest.mark.parametrize("name", sorted(ir.FUNCTIONS))
def test_every_ir_function_converts(name: str) -> None:
    lo, _ = ir.FUNCTIONS[name]
    args: tuple[ir.Expr, ...] = (y, v, v)[:lo]
    if name == "where":
        args = (ir.Cmp(op=">", left=y, right=v), y, v)
    out, _ = conv(ir.Fn(name=name, args=args))  # type: ignore[arg-type]
    assert isinstance(out, sp.Expr)


def test_reductions_share_sums() -> None:
    e = ir.BinOp(op="+", left=ir.Fn(name="dot", args=(y, v)),
                 right=ir.Fn(name="sum", args=(ir.BinOp(op="*", left=v, right=y),)))
    out, t = conv(e)
    assert len(t) == 1 and out == 2 * t.sums_in(out)[0]
    scalar, _ = conv(ir.Fn(name="sum", args=(ir.Var(name="c"),)))
    assert scalar == DIM * sp.Symbol("c", real=True)
    n3, t3 = conv(ir.Fn(name="norm", args=(y, ir.Num(value=3.0))))
    assert n3 == t3.sums_in(n3)[0] ** sp.Rational(1, 3)


def test_smoothing_applies_before_differentiation() -> None:
    e = ir.Fn(name="abs", args=(y,))
    eps = sp.Rational(1, 100)
    assert conv(e, Smoothing("sqrt", eps=eps))[0] == sp.sqrt(Y**2 + eps)
    tanh_abs = conv(e, Smoothing("tanh", sharpness=4))[0]
    assert tanh_abs == logcosh(4 * Y) / 4 and sp.diff(tanh_abs, Y) == sp.tanh(4 * Y)
    assert conv(ir.Fn(name="sign", args=(y,)), Smoothing("tanh", sharpness=3))[0] == sp.tanh(3 * Y)


def test_errors() -> None:
    with pytest.raises(ConversionError, match="unknown variable"):
        conv(ir.Var(name="q"))
    with pytest.raises(ConversionError, match="division by zero"):
        conv(ir.BinOp(op="/", left=y, right=ir.Num(value=0.0)))
    with pytest.raises(ConversionError, match="norm"):
        conv(ir.Fn(name="norm", args=(y, v)))


def test_substitute_rebuilds_sums() -> None:
    t = SumTable([Y, V])
    g = t.reduce(Y * V) * Y + t.reduce(V)
    at0 = t.substitute(g, {Y: sp.Integer(0)})
    assert at0 == t.reduce(V)
    assert is_affine(t.reduce(Y * V) * V, Y, t) and not is_affine(t.reduce(Y**2) * Y, Y, t)
