"""The whitelisted formula functions: IR function name → sympy, plus the engine's own functions.

Every function of :data:`miras.ir.FUNCTIONS` has an entry in :data:`ELEMENTWISE` (element-wise
functions) or is a reduction (``sum``, ``norm``, ``dot``, handled by
:mod:`miras.symbolic.reductions`). Three functions are defined here as sympy ``Function``
classes so that the printers can emit stable code for them and derivatives stay compact:
``sigmoid`` (1/(1+e⁻ˣ)), ``softplus`` (log(1+eˣ)) and ``logcosh`` (log cosh x, the
antiderivative of tanh, used by the ``smooth=tanh`` smoothing of ``|x|``).

>>> import sympy as sp
>>> x = sp.Symbol("x", real=True)
>>> sp.diff(softplus(x), x)
sigmoid(x)
>>> sp.diff(logcosh(x), x)
tanh(x)
>>> ELEMENTWISE["relu"](x)
Max(0, x)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy as sp
from sympy.codegen.cfunctions import log1p

from miras import ir
from miras.symbolic.errors import UnsupportedForm

__all__ = [
    "ELEMENTWISE",
    "Smoothing",
    "clean",
    "logcosh",
    "sigmoid",
    "softplus",
]


class sigmoid(sp.Function):
    """The logistic function 1/(1 + exp(−x))."""

    nargs = 1

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_zero:
            return sp.Rational(1, 2)
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_rewrite_as_exp(self, x: sp.Expr, **kwargs: Any) -> sp.Expr:
        return 1 / (1 + sp.exp(-x))

    def _eval_evalf(self, prec: int) -> sp.Expr:
        return (1 / (1 + sp.exp(-self.args[0])))._eval_evalf(prec)

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_real else None


class softplus(sp.Function):
    """log(1 + exp(x)); its derivative is :class:`sigmoid`."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, x: sp.Expr, **kwargs: Any) -> sp.Expr:
        return sp.log(1 + sp.exp(x))

    def _eval_rewrite_as_log(self, x: sp.Expr, **kwargs: Any) -> sp.Expr:
        return sp.log(1 + sp.exp(x))

    def _eval_evalf(self, prec: int) -> sp.Expr:
        return sp.log(1 + sp.exp(self.args[0]))._eval_evalf(prec)

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_real else None


class logcosh(sp.Function):
    """log(cosh(x)); its derivative is tanh(x). Printed in a form that cannot overflow."""

    nargs = 1

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_zero:
            return sp.Integer(0)
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.tanh(self.args[0])

    def _eval_rewrite_as_log(self, x: sp.Expr, **kwargs: Any) -> sp.Expr:
        return sp.log(sp.cosh(x))

    def _eval_evalf(self, prec: int) -> sp.Expr:
        return sp.log(sp.cosh(self.args[0]))._eval_evalf(prec)

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real


class Smoothing:
    """How ``abs`` and ``sign`` are smoothed before differentiation (the ``smooth`` option).

    * ``none``: exact ``|x|`` and ``sign(x)`` (the derivative of ``|x|`` is ``sign(x)``, and
      that of ``sign`` is taken as 0, its value almost everywhere).
    * ``sqrt``: ``|x| ≈ sqrt(x² + eps)`` and ``sign(x) ≈ x/sqrt(x² + eps)`` (the derivative
      of the smoothed ``|x|``), [M] Remark 5 with ε = ``eps``.
    * ``tanh``: ``sign(x) ≈ tanh(s·x)`` with s = ``sharpness`` ([M] Remark 5), and
      ``|x| ≈ log(cosh(s·x))/s``, the antiderivative of that smoothed sign, so that
      ``d|x|/dx`` is exactly ``tanh(s·x)`` (it differs from ``|x|`` by at most log(2)/s).

    >>> import sympy as sp
    >>> x = sp.Symbol("x", real=True)
    >>> Smoothing("sqrt", eps=sp.Rational(1, 100)).abs(x)
    sqrt(x**2 + 1/100)
    >>> Smoothing("tanh", sharpness=10).sign(x)
    tanh(10*x)
    """

    def __init__(self, mode: str = "none", eps: sp.Expr | float = 0,
                 sharpness: sp.Expr | float = 1) -> None:
        if mode not in ("none", "sqrt", "tanh"):
            raise UnsupportedForm(f"unknown smoothing {mode!r} (none, sqrt or tanh)")
        self.mode = mode
        self.eps = sp.sympify(eps)
        self.sharpness = sp.sympify(sharpness)

    def abs(self, x: sp.Expr) -> sp.Expr:
        if self.mode == "sqrt":
            return sp.sqrt(x**2 + self.eps)
        if self.mode == "tanh":
            return logcosh(self.sharpness * x) / self.sharpness
        return sp.Abs(x)

    def sign(self, x: sp.Expr) -> sp.Expr:
        if self.mode == "sqrt":
            return x / sp.sqrt(x**2 + self.eps)
        if self.mode == "tanh":
            return sp.tanh(self.sharpness * x)
        return sp.sign(x)


def _where(cond: sp.Basic, a: sp.Expr, b: sp.Expr) -> sp.Expr:
    return sp.Piecewise((a, cond), (b, True))


#: IR element-wise function name → sympy constructor (abs/sign: unsmoothed; see Smoothing).
ELEMENTWISE: dict[str, Callable[..., sp.Expr]] = {
    "abs": sp.Abs,
    "sign": sp.sign,
    "exp": sp.exp,
    "log": sp.log,
    "log1p": log1p,
    "sqrt": sp.sqrt,
    "tanh": sp.tanh,
    "sigmoid": sigmoid,
    "softplus": softplus,
    "cosh": sp.cosh,
    "sinh": sp.sinh,
    "atan": sp.atan,
    "erf": sp.erf,
    "relu": lambda x: sp.Max(0, x),
    "min": sp.Min,
    "max": sp.Max,
    "where": _where,
}

assert set(ELEMENTWISE) | ir.REDUCTIONS == set(ir.FUNCTIONS), "every IR function has a rule"


def _heaviside(arg: sp.Expr, *h0: sp.Expr) -> sp.Expr:
    # ½ at the kink, as torch.maximum/minimum split ties: max(y, y) then has derivative 1
    return sp.Piecewise((1, arg > 0), (sp.Rational(1, 2), sp.Eq(arg, 0)), (0, True))


def clean(expr: sp.Expr) -> sp.Expr:
    """Post-process a derivative: Heaviside → Piecewise (½ at 0, the convention of torch for
    ties of max/min), DiracDelta → 0 (its value almost everywhere).

    Raises :class:`UnsupportedForm` when sympy left an unevaluated derivative or a
    non-finite / complex constant.

    >>> import sympy as sp
    >>> x = sp.Symbol("x", real=True)
    >>> clean(sp.diff(sp.Max(0, x), x))
    Piecewise((1, x > 0), (1/2, Eq(x, 0)), (0, True))
    >>> clean(sp.diff(sp.sign(x), x))
    0
    """
    if expr.has(sp.DiracDelta):
        expr = expr.replace(sp.DiracDelta, lambda *a: sp.Integer(0))
    if expr.has(sp.Heaviside):
        expr = expr.replace(sp.Heaviside, _heaviside)
    if expr.has(sp.Derivative, sp.Subs):
        raise UnsupportedForm(f"sympy could not differentiate {expr}")
    if expr.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise UnsupportedForm(f"the expression {expr} is not finite")
    if expr.has(sp.I):
        raise UnsupportedForm(f"the expression {expr} is complex")
    return expr


def stabilise(expr: sp.Expr) -> sp.Expr:
    """Rewrite overflow-prone patterns: e^a/(e^a + 1) → sigmoid(a), log(1 + e^a) → softplus(a).

    >>> import sympy as sp
    >>> u = sp.Symbol("u", real=True)
    >>> stabilise(sp.exp(u) / (sp.exp(u) + 1))
    sigmoid(u)
    """
    a = sp.Wild("a")
    expr = expr.replace(sp.exp(a) / (sp.exp(a) + 1), sigmoid(a))
    expr = expr.replace(1 / (1 + sp.exp(-a)), sigmoid(a))
    expr = expr.replace(sp.log(sp.exp(a) + 1), softplus(a))
    return expr
