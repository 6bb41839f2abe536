"""Vector semantics: sum symbols over the head dimension and the chain rule through them.

Formulas over the vectors ``y, v, k`` (index j over the head dimension) are element-wise
except the reductions. Each reduction becomes a scalar *sum symbol*
``s_r = Σ_j h_r(y_j, v_j, k_j, s_<r, params)``, recorded in a :class:`SumTable` (definitions
may use earlier sums, so the table is in topological order). An element-wise expression is
then an ordinary sympy expression in the *element* symbols ``y, v, k`` (standing for
``y_j, v_j, k_j``), the sum symbols and scalar parameters.

Derivatives follow from the chain rule through the sums:

* :func:`gradient` — ``∂F/∂x_j`` of a scalar ``F`` by reverse mode (adjoints of the sums in
  reverse topological order);
* :func:`jacobian` — the Jacobian of an element-wise ``G`` with respect to ``x``, always of
  the form ``∂G_j/∂x_l = δ_jl·d_j + Σ_r u_r,j·w_r,l`` (a diagonal plus one rank-one term per
  sum symbol ``G`` uses; ``w_r = ds_r/dx`` is the total derivative of the sum);
* :func:`vjp` — the vector-Jacobian product a backward pass needs.

>>> import sympy as sp
>>> t = SumTable([Y, V])
>>> loss = t.reduce((Y - V)**2) / 2          # ½ Σ_j (y_j − v_j)²
>>> gradient(loss, Y, t)
-v + y
>>> n = sp.sqrt(t.reduce((Y - V)**2))        # ‖y − v‖₂
>>> g = gradient(n, Y, t)
>>> sp.simplify(g * n - (Y - V))
0
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sympy as sp

from miras.symbolic.errors import ConversionError
from miras.symbolic.functions import clean

__all__ = [
    "DIM",
    "DY",
    "Jacobian",
    "K",
    "SumTable",
    "V",
    "X",
    "Y",
    "gradient",
    "jacobian",
    "vjp",
]

#: Element symbols of the vector variables (y_j, v_j, k_j; x_j of feature maps).
Y = sp.Symbol("y", real=True)
V = sp.Symbol("v", real=True)
K = sp.Symbol("k", real=True)
X = sp.Symbol("x", real=True)
#: The upstream gradient of a backward pass (element j).
DY = sp.Symbol("dgrad", real=True)
#: The head dimension D (the length of the reduced vectors).
DIM = sp.Symbol("D", positive=True, integer=True)


class SumTable:
    """The sum symbols of one derivation, in topological (creation) order.

    ``vectors`` are the element symbols whose presence makes an expression a vector.
    :meth:`reduce` of an expression that is not a vector is ``D·h`` (``Σ_j c = D·c``).

    >>> t = SumTable([Y])
    >>> a = t.reduce(2 * Y**2)
    >>> b = t.reduce(Y**2)
    >>> a == 2 * b, len(t)
    (True, 1)
    >>> t.reduce(sp.Integer(3))
    3*D
    """

    def __init__(self, vectors: Iterable[sp.Symbol] = (), dim: sp.Symbol = DIM) -> None:
        self.vectors: set[sp.Symbol] = set(vectors)
        self.dim = dim
        self._defs: dict[sp.Symbol, sp.Expr] = {}
        self._index: dict[sp.Expr, sp.Symbol] = {}
        self._order: dict[sp.Symbol, int] = {}

    def __len__(self) -> int:
        return len(self._defs)

    def __contains__(self, sym: object) -> bool:
        return sym in self._defs

    def add_vector(self, sym: sp.Symbol) -> None:
        """Declare another element symbol as a vector (e.g. a channel-wise parameter)."""
        self.vectors.add(sym)

    def is_vector(self, expr: sp.Basic) -> bool:
        """Whether ``expr`` depends on the head index (contains a vector element symbol)."""
        return bool(expr.free_symbols & self.vectors)

    def reduce(self, h: sp.Expr) -> sp.Expr:
        """``Σ_j h``: a (new or shared) sum symbol times the scalar factors of ``h``."""
        h = sp.sympify(h)
        if h == 0:
            return sp.Integer(0)
        if not self.is_vector(h):
            return self.dim * h
        scalars, body = [], []
        for f in sp.Mul.make_args(h):
            (body if self.is_vector(f) else scalars).append(f)
        key = sp.Mul(*body)
        sym = self._index.get(key)
        if sym is None:
            sym = sp.Dummy(f"s{len(self._defs)}", real=True)
            self._defs[sym] = key
            self._index[key] = sym
            self._order[sym] = len(self._order)
        return sp.Mul(*scalars) * sym

    def definition(self, sym: sp.Symbol) -> sp.Expr:
        """The element-wise body ``h`` of the sum symbol ``sym``."""
        return self._defs[sym]

    def sums_in(self, expr: sp.Basic) -> list[sp.Symbol]:
        """The sum symbols ``expr`` uses directly, in table order."""
        return sorted((s for s in expr.free_symbols if s in self._defs), key=self._order.get)

    def closure(self, exprs: Iterable[sp.Basic]) -> list[sp.Symbol]:
        """Every sum symbol the expressions need, directly or through other sums, in order."""
        seen: set[sp.Symbol] = set()
        stack = [s for e in exprs for s in self.sums_in(e)]
        while stack:
            s = stack.pop()
            if s not in seen:
                seen.add(s)
                stack += self.sums_in(self._defs[s])
        return sorted(seen, key=self._order.get)

    def index(self, sym: sp.Symbol) -> int:
        """The position of a sum symbol in the table."""
        return self._order[sym]

    def substitute(self, expr: sp.Expr, values: dict[sp.Symbol, sp.Expr]) -> sp.Expr:
        """Substitute element symbols everywhere, inside the sums too (new sums as needed)."""
        mapping: dict[sp.Symbol, sp.Expr] = {}
        for s in self.closure([expr]):
            body = self._defs[s].xreplace(mapping).xreplace(values)
            mapping[s] = self.reduce(body)
        return expr.xreplace(mapping).xreplace(values)

    def depends(self, expr: sp.Basic, x: sp.Symbol) -> bool:
        """Structural dependence of ``expr`` on ``x``, directly or through sum symbols."""
        if x in expr.free_symbols:
            return True
        return any(x in self._defs[s].free_symbols for s in self.closure([expr]))


def _d(expr: sp.Expr, x: sp.Symbol) -> sp.Expr:
    return clean(sp.diff(expr, x)) if x in expr.free_symbols else sp.Integer(0)


def _check_scalar(expr: sp.Expr, table: SumTable, what: str) -> None:
    if table.is_vector(expr):
        raise ConversionError(f"{what} must be a scalar (reduce vectors with sum, norm or dot)")


def gradient(F: sp.Expr, x: sp.Symbol, table: SumTable) -> sp.Expr:
    """``∂F/∂x``: element-wise (``x_j``) when ``x`` is a vector, a scalar otherwise.

    ``F`` is a scalar expression of sum symbols and scalars. Reverse mode: the adjoint of
    every sum, ``a_r = ∂F/∂s_r + Σ_q a_q·Σ_j ∂h_q/∂s_r``, then
    ``∂F/∂x_j = Σ_r a_r·∂h_r/∂x_j``.

    >>> t = SumTable([Y])
    >>> gradient(t.reduce(Y * t.reduce(Y)), Y, t)   # (Σ y)², so 2·Σ y
    2*_s0
    """
    _check_scalar(F, table, "the differentiated expression")
    order = table.closure([F])
    adj: dict[sp.Symbol, sp.Expr] = {s: _d(F, s) for s in order}
    for q in reversed(order):
        a_q = adj[q]
        if a_q == 0:
            continue
        h_q = table.definition(q)
        for r in table.sums_in(h_q):
            adj[r] = adj[r] + a_q * table.reduce(_d(h_q, r))
    vector = x in table.vectors
    out = sp.Integer(0) if vector else _d(F, x)
    for s in order:
        if adj[s] == 0:
            continue
        dh = _d(table.definition(s), x)
        out += adj[s] * (dh if vector else table.reduce(dh))
    return out


def total_derivative(s: sp.Symbol, x: sp.Symbol, table: SumTable,
                     memo: dict[tuple[sp.Symbol, sp.Symbol], sp.Expr] | None = None) -> sp.Expr:
    """``ds/dx`` of a sum symbol: element-wise (index l) for a vector ``x``, else a scalar."""
    memo = {} if memo is None else memo
    key = (s, x)
    if key in memo:
        return memo[key]
    h = table.definition(s)
    dh = _d(h, x)
    out = dh if x in table.vectors else table.reduce(dh)
    for q in table.sums_in(h):
        t_q = total_derivative(q, x, table, memo)
        if t_q != 0:
            out += table.reduce(_d(h, q)) * t_q
    memo[key] = out
    return out


@dataclass(frozen=True)
class Jacobian:
    """``∂G_j/∂x_l = δ_jl·diag_j + Σ_r u_r,j · w_r,l`` (for a scalar x: ``diag_j + Σ u_r,j·w_r``).

    ``diag`` and every ``u`` are element-wise in j; every ``w`` is element-wise in l (a
    scalar when ``x`` is a scalar). Internal: holds sympy expressions.
    """

    x: sp.Symbol
    diag: sp.Expr
    terms: tuple[tuple[sp.Expr, sp.Expr], ...]


def jacobian(G: sp.Expr, x: sp.Symbol, table: SumTable) -> Jacobian:
    """The Jacobian of the element-wise ``G`` with respect to ``x`` (diagonal + rank-one terms).

    >>> t = SumTable([Y, V])
    >>> n2 = t.reduce((Y - V)**2)
    >>> J = jacobian(sp.sqrt(n2) * (Y - V), Y, t)
    >>> J.diag == sp.sqrt(n2), len(J.terms)
    (True, 1)
    """
    memo: dict[tuple[sp.Symbol, sp.Symbol], sp.Expr] = {}
    diag = _d(G, x)
    terms = []
    for s in table.sums_in(G):
        u = _d(G, s)
        if u == 0:
            continue
        w = total_derivative(s, x, table, memo)
        if w != 0:
            terms.append((u, w))
    return Jacobian(x=x, diag=diag, terms=tuple(terms))


def vjp(G: sp.Expr, x: sp.Symbol, dg: sp.Symbol, table: SumTable) -> sp.Expr:
    """``Σ_j dg_j ∂G_j/∂x`` (element-wise in x for a vector, a scalar otherwise).

    >>> t = SumTable([Y, V, DY])
    >>> vjp((Y - V)**3, Y, DY, t) == 3 * DY * (Y - V)**2
    True
    """
    J = jacobian(G, x, table)
    vector = x in table.vectors
    out = dg * J.diag if vector else table.reduce(dg * J.diag)
    for u, w in J.terms:
        out += w * table.reduce(dg * u)
    return out


_PROBES = 5


def _zero(expr: sp.Expr) -> bool:
    """Whether ``expr`` is identically zero: structurally, else numerically at random points.

    Every free symbol (element symbols, sums, parameters) gets independent pseudo-random
    values; points where the expression is not a finite real are skipped. Too few valid
    points count as "not zero" (the conservative answer for the affine check).
    """
    expr = sp.sympify(expr)
    if expr == 0:
        return True
    if not expr.free_symbols:
        return bool(abs(complex(expr.evalf())) < 1e-12)
    import random

    rng = random.Random(20250101)
    symbols = sorted(expr.free_symbols, key=str)
    valid = 0
    for _ in range(4 * _PROBES):
        point = {s: sp.Float(rng.uniform(0.15, 1.4) * (1 if s.is_positive or rng.random() < 0.6
                                                        else -1), 30) for s in symbols}
        try:
            value = complex(expr.evalf(30, subs=point))
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if not (abs(value.imag) < 1e-20 and abs(value.real) < 1e300):
            continue
        if abs(value.real) > 1e-15:
            return False
        valid += 1
        if valid == _PROBES:
            return True
    return False


def varies(expr: sp.Expr, x: sp.Symbol, table: SumTable) -> bool:
    """Whether ``expr`` really changes with ``x`` (directly or through sums), up to simplify.

    A piecewise-constant dependence (``sign``, a ``Piecewise`` condition) counts as varying
    even though its derivative is zero almost everywhere.
    """
    if not table.depends(expr, x):
        return False
    if x in expr.free_symbols and not _zero(clean(sp.diff(expr, x))):
        return True
    for s in table.sums_in(expr):
        if varies(table.definition(s), x, table) and not _zero(clean(sp.diff(expr, s))):
            return True
    return jumps(expr, x, table)


def jumps(expr: sp.Expr, x: sp.Symbol, table: SumTable) -> bool:
    """Whether ``expr`` has a piecewise-constant dependence on ``x`` (``sign``, ``Heaviside``,
    a ``Piecewise`` condition), directly or inside the sums it uses."""
    for e in [expr, *(table.definition(s) for s in table.closure([expr]))]:
        for node in sp.preorder_traversal(e):
            if isinstance(node, sp.sign | sp.Heaviside) and table.depends(node, x):
                return True
            if isinstance(node, sp.Piecewise) and any(table.depends(c, x)
                                                      for _, c in node.args):
                return True
    return False


def is_affine(G: sp.Expr, x: sp.Symbol, table: SumTable) -> bool:
    """Whether the element-wise ``G`` is affine in the vector ``x`` (constant Jacobian).

    >>> t = SumTable([Y, V])
    >>> is_affine(Y - V, Y, t), is_affine(Y**2, Y, t), is_affine(t.reduce(Y) + V, Y, t)
    (True, False, True)
    >>> is_affine(sp.Piecewise((Y, Y > 0), (2 * Y, True)), Y, t)   # piecewise linear
    False
    >>> is_affine(sp.sign(Y - V), Y, t)                              # piecewise constant
    False
    """
    if jumps(G, x, table):
        return False
    J = jacobian(G, x, table)
    if varies(J.diag, x, table):
        return False
    return not any(varies(u * w, x, table) for u, w in J.terms)
