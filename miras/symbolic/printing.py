"""Printers: sympy → PyTorch code text and sympy → Triton code text.

Both subclass sympy's :class:`~sympy.printing.codeprinter.CodePrinter` but dispatch through
an explicit whitelist: numbers, symbols of a given name map, ``+ − · / ^``, ``Piecewise``,
comparisons and boolean connectives, and the functions of :data:`TORCH_FUNCTIONS` /
:data:`TRITON_FUNCTIONS`. Anything else raises :class:`UnprintableError`; nothing is ever
printed raw. Every symbol must be in the name map, so nothing from the spec text reaches the
generated code except through these printers (the engine names user parameters ``p_<name>``).

Shapes: vectors (``y, v, k``, channel-wise gates) are ``[..., D]`` tensors (``[BT, BD]`` blocks
in Triton), scalars (per-token gates, parameters, sums) ``[..., 1]`` (``[BT, 1]``); everything
broadcasts. :func:`print_block` turns a list of outputs into statements: the sum symbols they
need (``torch.sum(h, dim=-1, keepdim=True)`` / ``tl.sum(h, axis=1)[:, None]``), common
subexpressions, then the outputs.

>>> import sympy as sp
>>> from miras.symbolic.functions import softplus
>>> y, c = sp.symbols("y c", real=True)
>>> names = {y: "y", c: "p_c"}
>>> torch_code(sp.sqrt(y**2 + c) / 2, names)
'0.5*torch.sqrt(p_c + y**2)'
>>> triton_code(softplus(y) + 1, names)
'(tl.maximum(y, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(y)))) + 1.0'
>>> torch_code(sp.besselj(0, y), names)
Traceback (most recent call last):
...
miras.symbolic.errors.UnprintableError: torch printer: besselj is not supported
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import sympy as sp
from sympy.codegen.cfunctions import log1p
from sympy.core.relational import Relational
from sympy.logic.boolalg import BooleanFalse, BooleanTrue
from sympy.printing.codeprinter import CodePrinter
from sympy.printing.precedence import PRECEDENCE

from miras.symbolic.errors import UnprintableError
from miras.symbolic.functions import logcosh, sigmoid, softplus
from miras.symbolic.reductions import DIM, SumTable

__all__ = [
    "TORCH_CALLS",
    "TRITON_CALLS",
    "Block",
    "Code",
    "Shape",
    "Statement",
    "Target",
    "print_block",
    "print_code",
    "torch_code",
    "triton_code",
]

Target = Literal["torch", "triton"]
Shape = Literal["vector", "scalar"]

_LOG2 = repr(math.log(2.0))
_Fmt = Callable[[list[str]], str]


def _paren(text: str) -> str:
    """``text`` as an operand: a name as it is, anything else in parentheses."""
    return text if text.isidentifier() else f"({text})"


def _tanh_triton(a: list[str]) -> str:
    x = _paren(a[0])
    return (f"tl.where(tl.abs({x}) < 0.0625, {x} - {x}*{x}*{x}/3.0 + 2.0*{x}*{x}*{x}*{x}*{x}/15.0, "
            f"2.0*tl.sigmoid(2.0*{x}) - 1.0)")


def _sinh_triton(a: list[str]) -> str:
    x = _paren(a[0])
    return (f"tl.where(tl.abs({x}) < 0.0625, {x} + {x}*{x}*{x}/6.0 + {x}*{x}*{x}*{x}*{x}/120.0, "
            f"0.5*(tl.exp({x}) - tl.exp(-{x})))")


#: Function class → PyTorch code (arguments already printed).
TORCH_FUNCTIONS: dict[type, _Fmt] = {
    sp.exp: lambda a: f"torch.exp({a[0]})",
    sp.log: lambda a: f"torch.log({a[0]})",
    log1p: lambda a: f"torch.log1p({a[0]})",
    sp.tanh: lambda a: f"torch.tanh({a[0]})",
    sp.cosh: lambda a: f"torch.cosh({a[0]})",
    sp.sinh: lambda a: f"torch.sinh({a[0]})",
    sp.atan: lambda a: f"torch.atan({a[0]})",
    sp.erf: lambda a: f"torch.erf({a[0]})",
    sp.Abs: lambda a: f"torch.abs({a[0]})",
    sp.sign: lambda a: f"torch.sign({a[0]})",
    sigmoid: lambda a: f"torch.sigmoid({a[0]})",
    softplus: lambda a: f"torch.nn.functional.softplus({a[0]})",
    logcosh: lambda a: (f"(torch.abs({a[0]}) + torch.nn.functional.softplus(-2.0*torch.abs({a[0]}))"
                        f" - {_LOG2})"),
}

#: Function class → Triton code (``tl.*``, plus ``libdevice.*`` from
#: ``triton.language.extra.libdevice`` for atan, log1p and general powers).
TRITON_FUNCTIONS: dict[type, _Fmt] = {
    sp.exp: lambda a: f"tl.exp({a[0]})",
    sp.log: lambda a: f"tl.log({a[0]})",
    log1p: lambda a: f"libdevice.log1p({a[0]})",
    sp.tanh: _tanh_triton,
    sp.cosh: lambda a: f"(0.5*(tl.exp({a[0]}) + tl.exp(-({a[0]}))))",
    sp.sinh: _sinh_triton,
    sp.atan: lambda a: f"libdevice.atan({a[0]})",
    sp.erf: lambda a: f"tl.erf({a[0]})",
    sp.Abs: lambda a: f"tl.abs({a[0]})",
    sp.sign: lambda a: f"tl.where(({a[0]}) > 0, 1.0, tl.where(({a[0]}) < 0, -1.0, 0.0))",
    sigmoid: lambda a: f"tl.sigmoid({a[0]})",
    softplus: lambda a: f"(tl.maximum({a[0]}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({a[0]}))))",
    logcosh: lambda a: (f"(tl.abs({a[0]}) + tl.log(1.0 + tl.exp(-2.0*tl.abs({a[0]})))"
                        f" - {_LOG2})"),
}

#: Every callable the printed PyTorch code may use.
TORCH_CALLS = frozenset({
    "torch.exp", "torch.log", "torch.log1p", "torch.tanh", "torch.cosh", "torch.sinh",
    "torch.atan", "torch.erf", "torch.abs", "torch.sign", "torch.sigmoid", "torch.sqrt",
    "torch.rsqrt", "torch.where", "torch.maximum", "torch.minimum", "torch.clamp",
    "torch.sum", "torch.zeros_like", "torch.full_like", "torch.nn.functional.softplus",
})
#: Every callable the printed Triton code may use (exist in Triton 3.2–3.9).
TRITON_CALLS = frozenset({
    "tl.exp", "tl.log", "tl.sqrt", "tl.rsqrt", "tl.abs", "tl.where", "tl.sigmoid",
    "tl.maximum", "tl.minimum", "tl.erf", "tl.sum", "tl.zeros_like", "tl.full", "tl.float32",
    "libdevice.pow", "libdevice.atan", "libdevice.log1p",
})

_REL = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "!=": "!="}


class _Printer(CodePrinter):
    """Whitelist dispatch on top of CodePrinter's Add/Mul layout."""

    language = "python"
    target: Target = "torch"
    functions: ClassVar[dict[type, _Fmt]] = {}
    _default_settings: ClassVar[dict[str, Any]] = {**CodePrinter._default_settings,
                                                   "strict": False}

    def __init__(self, names: Mapping[sp.Symbol, str], like: str | None = None) -> None:
        super().__init__({})
        self.names = dict(names)
        self.like = like

    # the whitelist ---------------------------------------------------------------------
    def _print(self, expr: Any, **kwargs: Any) -> str:
        if isinstance(expr, sp.Expr) and not expr.free_symbols and not expr.is_Number:
            value = complex(expr.evalf(20))  # a constant such as sqrt(pi): its value
            if value.imag != 0 or not math.isfinite(value.real):
                raise UnprintableError(f"{self.target} printer: {expr} is not a finite real")
            return self._print(sp.Float(value.real, 17))
        if isinstance(expr, sp.Symbol):
            return self._symbol(expr)
        if isinstance(expr, sp.Function) and type(expr) in self.functions:
            return self.functions[type(expr)]([self._arg(a) for a in expr.args])
        if isinstance(expr, sp.Max | sp.Min):
            return self._minmax(expr)
        for cls, meth in (
            (sp.Integer, self._integer), (sp.Rational, self._rational), (sp.Float, self._float),
            (sp.Add, self._print_Add), (sp.Mul, self._print_Mul), (sp.Pow, self._pow),
            (sp.Piecewise, self._piecewise), (Relational, self._relational),
            (sp.And, self._and), (sp.Or, self._or), (sp.Not, self._not),
            (sp.ITE, self._ite),
            (BooleanTrue, lambda e: "True"), (BooleanFalse, lambda e: "False"),
        ):
            if isinstance(expr, cls):
                return meth(expr)
        if expr is sp.pi:
            return repr(math.pi)
        if expr is sp.E:
            return repr(math.e)
        what = getattr(getattr(expr, "func", None), "__name__", type(expr).__name__)
        raise UnprintableError(f"{self.target} printer: {what} is not supported")

    def parenthesize(self, item: Any, level: int, strict: bool = False) -> str:
        if isinstance(item, sp.Symbol) or (isinstance(item, sp.Number) and item >= 0):
            return self._print(item)
        return str(super().parenthesize(item, level, strict))

    def _arg(self, e: sp.Expr) -> str:
        """A function argument; one made of the head dimension D only (a Python int in the
        generated code) becomes a float tensor first."""
        text = self._print(e)
        if e.free_symbols and e.free_symbols <= {DIM}:
            return self._dim_tensor(text)
        return text

    def _dim_tensor(self, text: str) -> str:
        return text

    def _symbol(self, s: sp.Symbol) -> str:
        if s not in self.names:
            raise UnprintableError(f"{self.target} printer: no name for the symbol {s}")
        return self.names[s]

    # numbers ---------------------------------------------------------------------------
    def _integer(self, e: sp.Integer) -> str:
        return str(int(e))

    def _rational(self, e: sp.Rational) -> str:
        return repr(float(e))

    def _float(self, e: sp.Float) -> str:
        v = float(e)
        if not math.isfinite(v):
            raise UnprintableError(f"{self.target} printer: non-finite number {e}")
        return repr(v)

    # structure -------------------------------------------------------------------------
    def _pow(self, e: sp.Pow) -> str:
        raise NotImplementedError

    def _minmax(self, e: sp.Basic) -> str:
        raise NotImplementedError

    def _where(self, cond: str, a: str, b: str) -> str:
        raise NotImplementedError

    def _piecewise(self, e: sp.Piecewise) -> str:
        # without a True default, sympy has proven the conditions exhaustive (or the value
        # is undefined elsewhere): the last branch serves as the default
        pieces = list(e.args)
        def branch(e: sp.Expr) -> str:  # a float constant: torch.where(c, 1, 0) would be int
            return repr(float(e)) if isinstance(e, sp.Rational) else self._print(e)

        def constant(e: sp.Expr) -> bool:  # no tensor in it (D is a Python int)
            return e.free_symbols <= {DIM}

        out = branch(pieces[-1].expr)
        numeric = constant(pieces[-1].expr)
        for p in reversed(pieces[:-1]):
            if numeric and constant(p.expr):
                out = self._number_tensor(out)
            out = self._where(self._print(p.cond), branch(p.expr), out)
            numeric = False
        return out

    def _number_tensor(self, text: str) -> str:
        return text

    def _relational(self, e: Relational) -> str:
        return f"({self._print(e.lhs)} {_REL[e.rel_op]} {self._print(e.rhs)})"

    def _and(self, e: sp.And) -> str:
        return "(" + " & ".join(self._print(a) for a in e.args) + ")"

    def _or(self, e: sp.Or) -> str:
        return "(" + " | ".join(self._print(a) for a in e.args) + ")"

    def _ite(self, e: sp.ITE) -> str:
        c, a, b = (self._print(x) for x in e.args)
        return self._where(c, a, b)

    def _not(self, e: sp.Not) -> str:
        return f"(~{self._print(e.args[0])})"

    def code(self, expr: sp.Basic) -> str:
        return self._print(sp.sympify(expr))


class TorchPrinter(_Printer):
    """sympy → PyTorch expression text (tensors broadcast; ``**`` for powers)."""

    target: Target = "torch"
    functions: ClassVar[dict[type, _Fmt]] = TORCH_FUNCTIONS

    def _integer(self, e: sp.Integer) -> str:
        return str(int(e))

    def _pow(self, e: sp.Pow) -> str:
        b, x = e.as_base_exp()
        if x == sp.Rational(1, 2):
            return f"torch.sqrt({self._arg(b)})"
        if x == -sp.Rational(1, 2):
            return f"torch.rsqrt({self._arg(b)})"
        if x == -1:
            return f"1/{self.parenthesize(b, PRECEDENCE['Pow'], strict=True)}"
        base = self.parenthesize(b, PRECEDENCE["Pow"], strict=True)
        ex = self._print(x)
        if not (x.is_Integer and x >= 0) and not isinstance(x, sp.Symbol):
            ex = f"({ex})"
        return f"{base}**{ex}"

    def _minmax(self, e: sp.Basic) -> str:
        name, bound = ("maximum", "min") if isinstance(e, sp.Max) else ("minimum", "max")
        nums = [a for a in e.args if a.free_symbols <= {DIM}]   # Python numbers in the code
        rest = [self._print(a) for a in e.args if not a.free_symbols <= {DIM}]
        out = rest[0]
        for r in rest[1:]:
            out = f"torch.{name}({out}, {r})"
        for n in nums:
            value = self._print(n if n.free_symbols else sp.Float(n.evalf(17)))
            out = f"torch.clamp({out}, {bound}={value})"
        return out

    def _where(self, cond: str, a: str, b: str) -> str:
        return f"torch.where({cond}, {a}, {b})"

    def _number_tensor(self, text: str) -> str:
        # torch.where(c, 1.0, 0.0) would be float32 whatever the inputs: take like's dtype
        return f"torch.full_like({self.like}[..., :1], {text})" if self.like else text

    def _dim_tensor(self, text: str) -> str:
        if not self.like:
            raise UnprintableError("torch printer: a function of D needs a reference tensor")
        return f"torch.full_like({self.like}[..., :1], {text})"


class TritonPrinter(_Printer):
    """sympy → Triton expression text (``tl.*`` and ``libdevice.*``; no ``**`` in Triton)."""

    target: Target = "triton"
    functions: ClassVar[dict[type, _Fmt]] = TRITON_FUNCTIONS

    def _integer(self, e: sp.Integer) -> str:
        return f"{int(e)}.0"

    def _pow(self, e: sp.Pow) -> str:
        b, x = e.as_base_exp()
        if x == sp.Rational(1, 2):
            return f"tl.sqrt({self._arg(b)})"
        if x == -sp.Rational(1, 2):
            return f"tl.rsqrt({self._arg(b)})"
        if (2 * x).is_Integer and 1 <= abs(2 * x) <= 8:
            base = self.parenthesize(b, PRECEDENCE["Mul"], strict=True)
            n = int(abs(x))
            parts = [base] * n + ([f"tl.sqrt({self._arg(b)})"] if not x.is_Integer else [])
            chain = "*".join(parts)
            return f"({chain})" if x > 0 else f"(1.0/({chain}))"
        if b.is_Number and b > 0:
            return f"tl.exp({self._print(x)}*{self._print(sp.log(b).evalf(17))})"
        return f"libdevice.pow({self._arg(b)}, {self._print(x)})"

    def _minmax(self, e: sp.Basic) -> str:
        name = "tl.maximum" if isinstance(e, sp.Max) else "tl.minimum"
        args = [self._print(a) for a in e.args]
        out = args[0]
        for r in args[1:]:
            out = f"{name}({out}, {r})"
        return out

    def _where(self, cond: str, a: str, b: str) -> str:
        return f"tl.where({cond}, {a}, {b})"

    def _dim_tensor(self, text: str) -> str:
        return f"tl.full([1, 1], {text}, tl.float32)"


_PRINTERS: dict[str, type[_Printer]] = {"torch": TorchPrinter, "triton": TritonPrinter}


def print_code(expr: sp.Basic, names: Mapping[sp.Symbol, str], target: Target) -> str:
    """Print one expression for ``target`` (``torch`` or ``triton``)."""
    if target not in _PRINTERS:
        raise UnprintableError(f"unknown target {target!r}")
    return _PRINTERS[target](names).code(expr)


def torch_code(expr: sp.Basic, names: Mapping[sp.Symbol, str]) -> str:
    """PyTorch expression text for ``expr`` (every symbol named by ``names``)."""
    return print_code(expr, names, "torch")


def triton_code(expr: sp.Basic, names: Mapping[sp.Symbol, str]) -> str:
    """Triton expression text for ``expr`` (every symbol named by ``names``)."""
    return print_code(expr, names, "triton")


# --------------------------------------------------------------------------------------------
# Blocks of statements
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One assignment ``name = code``; ``kind`` is ``sum`` (a reduction over the head
    dimension, shape ``[..., 1]``), ``temp`` (a common subexpression) or ``output``."""

    name: str
    code: str
    kind: Literal["sum", "temp", "output"]


@dataclass(frozen=True)
class Block:
    """Straight-line code for one target: run the statements in order; ``outputs`` name the
    results. ``inputs`` are the names the code reads (bound by the caller)."""

    target: Target
    statements: tuple[Statement, ...]
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]

    def source(self, indent: str = "") -> str:
        """The statements as Python source lines.

        >>> b = Block("torch", (Statement("grad", "y - v", "output"),), ("grad",), ("y", "v"))
        >>> b.source("    ")
        '    grad = y - v\\n'
        """
        return "".join(f"{indent}{s.name} = {s.code}\n" for s in self.statements)


@dataclass(frozen=True)
class Code:
    """The same computation printed for both targets."""

    torch: Block
    triton: Block

    def __getitem__(self, target: Target) -> Block:
        return self.torch if target == "torch" else self.triton


def _toposort(items: list[tuple[sp.Symbol, sp.Expr]]) -> list[tuple[sp.Symbol, sp.Expr]]:
    defined = {s for s, _ in items}
    done: set[sp.Symbol] = set()
    out: list[tuple[sp.Symbol, sp.Expr]] = []
    pending = list(items)
    while pending:
        for i, (s, e) in enumerate(pending):
            if all(d in done or d not in defined for d in e.free_symbols):
                out.append((s, e))
                done.add(s)
                del pending[i]
                break
        else:  # pragma: no cover - cse and sum tables are acyclic
            raise UnprintableError("cyclic statements")
    return out


def print_block(outputs: Sequence[tuple[str, sp.Expr, Shape]], table: SumTable,
                names: Mapping[sp.Symbol, str], target: Target, *, like: str = "y",
                mask: str | None = None, cse: bool = True) -> Block:
    """Statements computing ``outputs`` (name, expression, shape) for ``target``.

    The sum symbols the outputs need come first (in table order, each printed as a
    reduction of its element-wise body), then common subexpressions (``t0, t1, ...``), then
    the outputs. A ``vector`` output that does not depend on the head index is broadcast
    with ``zeros_like(like)``. ``mask`` (Triton only) names a boolean ``[BT, BD]``-broadcastable
    tensor of valid lanes: every reduction then ignores the padded lanes.

    >>> import sympy as sp
    >>> from miras.symbolic.reductions import DIM, SumTable, Y, V
    >>> t = SumTable([Y, V])
    >>> n = sp.sqrt(t.reduce((Y - V)**2))
    >>> b = print_block([("grad", (Y - V) / n, "vector")], t, {Y: "y", V: "v"}, "torch")
    >>> print(b.source(), end="")
    t0 = -v + y
    s0 = torch.sum(t0**2, dim=-1, keepdim=True)
    grad = t0/torch.sqrt(s0)
    >>> b = print_block([("grad", (Y - V) / n, "vector")], t, {Y: "y", V: "v"}, "triton")
    >>> print(b.source(), end="")
    t0 = -v + y
    s0 = tl.sum((t0*t0), axis=1)[:, None]
    grad = t0/tl.sqrt(s0)
    """
    exprs = [sp.sympify(e) for _, e, _ in outputs]
    for (name, e, shape) in outputs:
        if shape == "scalar" and table.is_vector(e):
            raise UnprintableError(f"output '{name}' is declared scalar but is a vector")
    sums = table.closure(exprs)
    bodies = [table.definition(s) for s in sums]
    temps: list[tuple[sp.Symbol, sp.Expr]] = []
    if cse and exprs:
        repl, reduced = sp.cse(bodies + exprs, symbols=sp.numbered_symbols("t", cls=sp.Dummy),
                               order="none")
        # a constant temp would be a Python float in the code: keep constants inline
        inline: dict[sp.Symbol, sp.Expr] = {}
        for t_sym, e in repl:
            e = e.xreplace(inline)
            if e.free_symbols <= {DIM}:
                inline[t_sym] = e
            else:
                temps.append((t_sym, e))
        reduced = [e.xreplace(inline) for e in reduced]
        bodies, exprs = list(reduced[:len(bodies)]), list(reduced[len(bodies):])
    allnames: dict[sp.Symbol, str] = dict(names)
    for i, (t_sym, _) in enumerate(temps):
        allnames[t_sym] = f"t{i}"
    for i, s in enumerate(sums):
        allnames[s] = f"s{i}"
    kinds: dict[sp.Symbol, str] = {}
    items: list[tuple[sp.Symbol, sp.Expr]] = []
    for t_sym, e in temps:
        items.append((t_sym, e))
        kinds[t_sym] = "temp"
    for s, body in zip(sums, bodies, strict=True):
        items.append((s, body))
        kinds[s] = "sum"
    printer = _PRINTERS[target](allnames, like)
    statements: list[Statement] = []
    for sym, e in _toposort(items):
        code = printer.code(e)
        if kinds[sym] == "sum":
            if target == "torch":
                code = f"torch.sum({code}, dim=-1, keepdim=True)"
            elif mask is not None:
                code = f"tl.sum(tl.where({mask}, {code}, 0.0), axis=1)[:, None]"
            else:
                code = f"tl.sum({code}, axis=1)[:, None]"
        statements.append(Statement(allnames[sym], code, kinds[sym]))  # type: ignore[arg-type]
    for (name, original, shape), e in zip(outputs, exprs, strict=True):
        code = printer.code(e)
        zeros = "torch.zeros_like" if target == "torch" else "tl.zeros_like"
        if shape == "vector" and not table.is_vector(sp.sympify(original)):
            code = f"{zeros}({like}) + ({code})"
        elif shape == "scalar" and not sp.sympify(original).free_symbols:
            code = (f"torch.zeros_like({like}[..., :1]) + ({code})" if target == "torch"
                    else f"tl.sum(tl.zeros_like({like}), axis=1)[:, None] + ({code})")
        statements.append(Statement(name, code, "output"))
    inputs = sorted({n for s, n in names.items()
                     if any(s in e.free_symbols for _, e in items)
                     or any(s in sp.sympify(o).free_symbols for _, o, _ in outputs)})
    if any(f"_like({like}" in st.code for st in statements) and like not in inputs:
        inputs.append(like)
    if mask is not None and target == "triton" and any(st.kind == "sum" for st in statements):
        inputs.append(mask)
    return Block(target, tuple(statements), tuple(n for n, _, _ in outputs), tuple(inputs))


def print_both(outputs: Sequence[tuple[str, sp.Expr, Shape]], table: SumTable,
               names: Mapping[sp.Symbol, str], *, like: str = "y",
               mask: str | None = "dmask") -> Code:
    """:func:`print_block` for both targets (Triton reductions masked by ``mask``)."""
    return Code(print_block(outputs, table, names, "torch", like=like),
                print_block(outputs, table, names, "triton", like=like, mask=mask))
