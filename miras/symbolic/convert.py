"""IR formula expressions (:mod:`miras.ir` ``Expr``) → sympy.

Numbers become exact decimals (``0.1`` → 1/10), so that integer exponents stay integers and
printed constants are the spec's. Variables come from an environment (the formula's
variables and parameters); functions go through the whitelist of
:mod:`miras.symbolic.functions` (``abs``/``sign`` through the :class:`Smoothing`);
reductions become sum symbols of a :class:`~miras.symbolic.reductions.SumTable`:

* ``sum(x)`` = ``Σ_j x_j``; ``dot(a, b)`` = ``Σ_j a_j·b_j``;
* ``norm(x, p)`` = ``(Σ_j |x_j|^p)^(1/p)``, ``p`` = 2 by default (``|x|² = x²`` for p = 2).

>>> from miras import ir
>>> from miras.symbolic.reductions import SumTable, Y, V
>>> t = SumTable([Y, V])
>>> conv = Converter(t, {"y": Y, "v": V})
>>> e = ir.Fn(name="norm", args=(ir.BinOp(op="-", left=ir.Var(name="y"), right=ir.Var(name="v")),))
>>> conv(e)
sqrt(_s0)
>>> t.definition(t.sums_in(conv(e))[0])
(-v + y)**2
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy as sp

from miras import ir
from miras.symbolic.errors import ConversionError
from miras.symbolic.functions import ELEMENTWISE, Smoothing
from miras.symbolic.reductions import SumTable

__all__ = ["Converter", "number"]

_CMP = {"<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge, "==": sp.Eq, "!=": sp.Ne}


def number(value: float) -> sp.Expr:
    """An IR number as an exact decimal: ``number(0.5)`` is 1/2, ``number(2.0)`` is 2.

    >>> number(0.1), number(2.0), number(1e-06)
    (1/10, 2, 1/1000000)
    """
    return sp.Rational(repr(float(value)))


class Converter:
    """Convert IR expressions with a fixed environment, sum table and smoothing.

    ``env`` maps IR variable names (formula variables, parameters) to sympy expressions;
    ``pi`` is always available. An unknown name raises :class:`ConversionError`.
    """

    def __init__(self, table: SumTable, env: Mapping[str, sp.Expr],
                 smoothing: Smoothing | None = None) -> None:
        self.table = table
        self.env = dict(env)
        self.smoothing = smoothing or Smoothing()

    def __call__(self, expr: ir.Expr) -> sp.Expr:
        out = self._conv(expr)
        if isinstance(out, sp.Basic) and out.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            raise ConversionError("the formula is not finite (a division by zero?)")
        return out

    def _conv(self, e: ir.Expr) -> sp.Expr:
        if isinstance(e, ir.Num):
            return number(e.value)
        if isinstance(e, ir.Var):
            if e.name in self.env:
                return self.env[e.name]
            if e.name in ir.CONSTANTS:
                return sp.pi if e.name == "pi" else number(ir.CONSTANTS[e.name])
            raise ConversionError(f"unknown variable '{e.name}' in a formula")
        if isinstance(e, ir.Neg):
            return -self._conv(e.arg)
        if isinstance(e, ir.BinOp):
            a, b = self._conv(e.left), self._conv(e.right)
            if e.op == "+":
                return a + b
            if e.op == "-":
                return a - b
            if e.op == "*":
                return a * b
            if e.op == "/":
                if b == 0:
                    raise ConversionError("division by zero in a formula")
                return a / b
            return sp.Pow(a, b)
        if isinstance(e, ir.Cmp):
            return _CMP[e.op](self._conv(e.left), self._conv(e.right))
        if isinstance(e, ir.Fn):
            return self._fn(e)
        raise ConversionError(f"unknown formula node {type(e).__name__}")

    def _fn(self, e: ir.Fn) -> sp.Expr:
        name = e.name
        lo, hi = ir.FUNCTIONS[name]
        if not lo <= len(e.args) <= hi:
            raise ConversionError(f"'{name}' takes {lo}..{hi} arguments, got {len(e.args)}")
        if name == "where" and not isinstance(e.args[0], ir.Cmp):
            raise ConversionError("the condition of where(...) must be a comparison")
        args = [self._conv(a) for a in e.args]
        t = self.table
        if name == "sum":
            return t.reduce(args[0])
        if name == "dot":
            return t.reduce(args[0] * args[1])
        if name == "norm":
            p = args[1] if len(args) == 2 else sp.Integer(2)
            if t.is_vector(p):
                raise ConversionError("the order p of norm(x, p) must be a scalar")
            if p == 2:
                return sp.sqrt(t.reduce(args[0] ** 2))
            return t.reduce(self.smoothing.abs(args[0]) ** p) ** (1 / p)
        if name == "abs":
            return self.smoothing.abs(args[0])
        if name == "sign":
            return self.smoothing.sign(args[0])
        if name == "where":
            cond = args[0]
            if cond is sp.true:
                return args[1]
            if cond is sp.false:
                return args[2]
        return ELEMENTWISE[name](*args)
