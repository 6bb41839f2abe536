"""Readable math for :func:`miras.symbolic.explain`: sympy → unicode text or LaTeX.

Sum symbols are shown as the sums they stand for (``Σⱼ(...)``, ``\\sum_{j}``), vector element
symbols with their index (``yⱼ``), parameters by their spec names.

>>> import sympy as sp
>>> from miras.symbolic.reductions import SumTable, Y, V
>>> t = SumTable([Y, V])
>>> e = t.reduce((Y - V)**2) / 2
>>> unicode(e, t, {Y: "y", V: "v"})
'½·Σⱼ (yⱼ − vⱼ)²'
>>> latex(e, t, {Y: "y", V: "v"})
'\\\\frac{\\\\sum_{j} \\\\left(- v_{j} + y_{j}\\\\right)^{2}}{2}'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sympy as sp
from sympy.core.relational import Relational
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.str import StrPrinter

from miras.symbolic.functions import logcosh, sigmoid, softplus
from miras.symbolic.reductions import SumTable

__all__ = ["latex", "unicode"]

_SUP = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
_FRACTIONS = {(1, 2): "½", (1, 3): "⅓", (2, 3): "⅔", (1, 4): "¼", (3, 4): "¾", (1, 6): "⅙",
              (1, 8): "⅛"}
_REL = {"<": "<", "<=": "≤", ">": ">", ">=": "≥", "==": "=", "!=": "≠"}


class _Unicode(StrPrinter):
    def __init__(self, table: SumTable | None, names: Mapping[sp.Symbol, str],
                 vectors: set[sp.Symbol], last: set[sp.Symbol] | None = None) -> None:
        super().__init__({"order": "none"})
        self.table, self.names, self.vectors = table, names, vectors
        self.last = last or set()

    def _print_Symbol(self, s: sp.Symbol) -> str:
        if self.table is not None and s in self.table:
            body = self._print(self.table.definition(s))
            return f"Σⱼ ({body})" if isinstance(self.table.definition(s), sp.Add) \
                else f"Σⱼ {body}"
        name = self.names.get(s, s.name)
        return f"{name}ⱼ" if s in self.vectors else name

    _print_Dummy = _print_Symbol

    def _atomic(self, e: sp.Basic) -> bool:
        return isinstance(e, sp.Symbol | sp.Function | sp.Number) or (
            isinstance(e, sp.Pow) and isinstance(e.base, sp.Symbol | sp.Function))

    def _print_Rational(self, e: sp.Rational) -> str:
        if (int(e.p), int(e.q)) in _FRACTIONS:
            return _FRACTIONS[(int(e.p), int(e.q))]
        if str(e.q).strip("0") == "1":     # a decimal
            if e.p == 1 and e.q >= 1000:
                return "10" + str(-(len(str(e.q)) - 1)).translate(_SUP)
            return repr(float(e))
        return f"{e.p}/{e.q}" if e.q < 100 else repr(float(e))

    def _print_Integer(self, e: sp.Integer) -> str:
        return str(int(e)).replace("-", "−")

    def _print_Float(self, e: sp.Float) -> str:
        return repr(float(e))

    def _print_Pi(self, e: Any) -> str:
        return "π"

    def _print_Pow(self, e: sp.Pow, rational: bool = False) -> str:
        b, x = e.as_base_exp()
        base = self.parenthesize(b, PRECEDENCE["Pow"], strict=True)
        if self.table is not None and b in self.table:
            base = f"({self._print(b)})"
        if x == sp.Rational(1, 2):
            return f"√{base}" if self._atomic(b) else f"√({self._print(b)})"
        if x == -1:
            return f"1/{base}"
        if x.is_Integer and x < 0:
            return f"1/{base}{str(-int(x)).translate(_SUP)}"
        if x.is_Integer:
            return f"{base}{str(int(x)).translate(_SUP)}"
        return f"{base}^({self._print(x)})"

    def _is_sum(self, e: sp.Basic) -> bool:
        return self.table is not None and isinstance(e, sp.Symbol) and e in self.table

    def _print_Mul(self, e: sp.Mul) -> str:
        c, rest = e.as_coeff_Mul()
        sign = ""
        if c < 0:
            sign, c = "−", -c
        num: list[sp.Basic] = []
        den: list[sp.Basic] = []
        for f in sp.Mul.make_args(rest):
            if isinstance(f, sp.Pow) and f.exp.is_Rational and f.exp < 0:
                den.append(sp.Pow(f.base, -f.exp))
            else:
                num.append(f)
        num.sort(key=self._is_sum)  # a sum last: Σ extends to the right
        if den and not c.is_Integer:
            den.insert(0, sp.Integer(c.q))
            c = sp.Integer(c.p)
        parts = [self._print(c)] if c != 1 else []
        for i, f in enumerate(num):
            last = i == len(num) - 1 and not den
            parts.append(self._print(f) if last and self._is_sum(f)
                         else self.parenthesize(f, PRECEDENCE["Mul"]))
        text = "·".join(parts) or "1"
        if den:
            d = "·".join(self.parenthesize(f, PRECEDENCE["Mul"]) for f in den)
            if len(den) > 1:
                d = f"({d})"
            text = f"{text}/{d}"
        return sign + text

    def _print_Add(self, e: sp.Add, order: Any = None) -> str:
        terms = sorted(sp.Add.make_args(e), key=lambda t: (bool(t.free_symbols & self.last),
                                                           t.could_extract_minus_sign()))
        out = ""
        for i, t in enumerate(terms):
            neg = t.could_extract_minus_sign()
            text = self.parenthesize(-t if neg else t, PRECEDENCE["Add"])
            out += (("−" if neg else "") + text) if i == 0 else ((" − " if neg else " + ") + text)
        return out

    def _print_Abs(self, e: sp.Abs) -> str:
        return f"|{self._print(e.args[0])}|"

    def _print_Function(self, e: sp.Function) -> str:
        name = {sigmoid: "σ", softplus: "softplus", logcosh: "log cosh"}.get(type(e),
                                                                         e.func.__name__)
        return f"{name}({', '.join(self._print(a) for a in e.args)})"

    def _print_Piecewise(self, e: sp.Piecewise) -> str:
        parts = [f"{self._print(p.expr)} if {self._print(p.cond)}" for p in e.args[:-1]]
        last = e.args[-1]
        parts.append(self._print(last.expr) + ("" if last.cond is sp.true
                                               else f" if {self._print(last.cond)}"))
        return "{" + "; ".join(parts) + (" otherwise" if last.cond is sp.true else "") + "}"

    def _print_Relational(self, e: Relational) -> str:
        lhs, rhs, op = e.lhs, e.rhs, e.rel_op
        if self._simple(lhs) and not self._simple(rhs):   # δ ≥ ‖e‖ → ‖e‖ ≤ δ
            lhs, rhs = rhs, lhs
            op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
        return f"{self._print(lhs)} {_REL[op]} {self._print(rhs)}"

    def _simple(self, e: sp.Basic) -> bool:
        """No vector element and no sum in it (a parameter or a number)."""
        return not any(s in self.vectors or (self.table is not None and s in self.table)
                       for s in e.free_symbols)

    def _print_Max(self, e: sp.Max) -> str:
        return f"max({', '.join(self._print(a) for a in e.args)})"

    def _print_Min(self, e: sp.Min) -> str:
        return f"min({', '.join(self._print(a) for a in e.args)})"

    def parenthesize(self, item: Any, level: int, strict: bool = False) -> str:
        if self.table is not None and isinstance(item, sp.Symbol) and item in self.table:
            return f"({self._print(item)})" if level >= PRECEDENCE["Mul"] else self._print(item)
        prec = precedence(item)
        if isinstance(item, sp.Rational) and not isinstance(item, sp.Integer):
            return self._print(item)
        if prec < level or (strict and prec == level):
            return f"({self._print(item)})"
        return self._print(item)


def unicode(expr: sp.Basic, table: SumTable | None = None,
            names: Mapping[sp.Symbol, str] | None = None, *,
            last: set[sp.Symbol] | None = None) -> str:
    """Unicode text of ``expr``; element symbols of ``table`` get the index ``ⱼ``; terms of a
    sum that contain a symbol of ``last`` are written last (``α·W + U``)."""
    vectors = set(table.vectors) if table is not None else set()
    text = _Unicode(table, dict(names or {}), vectors, last)._print(expr)
    return text.replace("**", "^")


def latex(expr: sp.Basic, table: SumTable | None = None,
          names: Mapping[sp.Symbol, str] | None = None) -> str:
    """LaTeX of ``expr``: sums as ``\\sum_{j}``, element symbols with the index ``j``."""
    names = dict(names or {})
    symbol_names: dict[sp.Basic, str] = {}
    j = sp.Symbol("j", integer=True)
    mapping: dict[sp.Symbol, sp.Expr] = {}
    if table is not None:
        for s in table.closure([expr]):
            body = table.definition(s).xreplace(mapping)
            mapping[s] = sp.Sum(body, (j, 1, sp.Symbol("D")))
        for v in table.vectors:
            symbol_names[v] = f"{names.get(v, v.name)}_{{j}}"
    for s, n in names.items():
        symbol_names.setdefault(s, n)
    text = sp.latex(expr.xreplace(mapping), symbol_names=symbol_names)
    return str(text).replace("\\sum_{j=1}^{D}", "\\sum_{j}")
