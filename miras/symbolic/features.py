"""Feature maps φ (applied to keys and queries) and memory activations, with derivatives.

Feature maps:

* ``identity``: φ(x) = x.
* ``poly(degree)``: φ(x) = [√a_i · x^{⊗i}]_{i=0..degree}, ``a_i`` initialised 1/i!
  (learnable or fixed); ⟨φ(q), φ(k)⟩ = κ(s) = Σ_i a_i s^i with s = qᵀk ([A] Eq 5).
* ``exp_taylor(order)``: φ*(x) = (1, x, x^{⊗2}/√2!, ...): κ(s) = Σ_{i ≤ order} s^i/i!.
* ``sketch(dim, degree, learned)``: PolySketch: a degree-``degree``/2 sketch φ′ to ``dim``
  dims (Gaussian ``N(0, 1)/√dim``, or the learned sketch), then self-tensoring:
  κ ≈ ⟨φ′(q), φ′(k)⟩² ([P]).
* user ``feature NAME = expr``: element-wise in ``x`` (reductions allowed, e.g.
  ``x / norm(x)``): printed map and its vector-Jacobian product.

Activations (``act=`` of MLP memories): ``gelu`` (exact, erf), ``silu``, ``relu``, ``tanh``,
``sigmoid``, ``identity``, ``softplus`` or a user ``act``; each with ``act′`` (the memory's
inner backprop) and ``act″`` (the outer backward through the inner gradient).

>>> r = derive_activation("silu")
>>> print(r.dact.torch.source(), end="")
t0 = torch.sigmoid(x)
dact = t0*x*(1 - t0) + t0
>>> derive_feature(ir.Poly(degree=2)).kernel.torch.source()
'kappa = a0 + a1*s + a2*s**2\\n'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

from miras import ir
from miras.symbolic.convert import Converter
from miras.symbolic.errors import UnsupportedForm
from miras.symbolic.functions import clean, sigmoid, softplus
from miras.symbolic.params import Input, Params, user_name
from miras.symbolic.pretty import unicode as unicode_of
from miras.symbolic.printing import Code, print_both
from miras.symbolic.reductions import DIM, DY, SumTable, X, vjp

__all__ = ["ACTIVATIONS", "ActivationRule", "FeatureRule", "derive_activation",
           "derive_feature"]

_SQRT1_2 = 1 / sp.sqrt(2)

#: Built-in activations as sympy functions of x.
ACTIVATIONS: dict[str, sp.Expr] = {
    "gelu": X * (1 + sp.erf(X * _SQRT1_2)) / 2,
    "silu": X * sigmoid(X),
    "relu": sp.Max(0, X),
    "tanh": sp.tanh(X),
    "sigmoid": sigmoid(X),
    "identity": X,
    "softplus": softplus(X),
}

S_ = sp.Symbol("s", real=True)


@dataclass(frozen=True)
class ActivationRule:
    """An activation and its first two derivatives: code reading ``x``, outputs ``act``,
    ``dact``, ``d2act`` (element-wise; relu′ and relu″ are taken as 0 at 0, with ½ at the
    kink of relu′ as for max ties)."""

    name: str
    act: Code
    dact: Code
    d2act: Code
    formula: str


@dataclass(frozen=True)
class FeatureRule:
    """A feature map (see the module docs).

    ``out_dim``: the feature dimension as a formula in the head dimension ``d``.
    ``coefficients``: the initial a_i (poly, exp_taylor). ``kernel``/``dkernel``: κ(s) and
    κ′(s) of s = qᵀk (code reading ``s`` and ``a0, a1, ...`` when learnable; outputs
    ``kappa``/``dkappa``). ``map``/``vjp``: a user feature, reading ``x`` (and ``dphi`` for
    the vjp, outputs ``phi`` / ``d_x`` and ``d_<param>``).
    """

    kind: str
    out_dim: str
    degree: int | None
    coefficients: tuple[float, ...]
    learnable: bool
    kernel: Code | None
    dkernel: Code | None
    sketch_dim: int | None
    sketch_learned: bool
    map: Code | None
    vjp: Code | None
    inputs: tuple[Input, ...]
    formula: str


def _act_rule(name: str, f: sp.Expr) -> ActivationRule:
    table = SumTable([X])
    names = {X: "x"}
    d1 = clean(sp.diff(f, X))
    d2 = clean(sp.diff(d1, X))
    return ActivationRule(
        name=name,
        act=print_both([("act", f, "vector")], table, names, like="x"),
        dact=print_both([("dact", d1, "vector")], table, names, like="x"),
        d2act=print_both([("d2act", d2, "vector")], table, names, like="x"),
        formula=f"{name}(x) = {unicode_of(f)}",
    )


def derive_activation(act: ir.Act) -> ActivationRule:
    """The :class:`ActivationRule` of a built-in activation name or a user ``act``.

    >>> derive_activation("relu").act.triton.source()
    'act = tl.maximum(0.0, x)\\n'
    """
    if isinstance(act, ir.ActDef):
        table = SumTable([X])
        f = Converter(table, {"x": X})(act.formula)
        if len(table) or f.has(DIM):
            raise UnsupportedForm(f"act '{act.name}' uses a reduction: an activation is a "
                                  "function of one scalar x")
        return _act_rule(act.name, f)
    if act not in ACTIVATIONS:
        raise UnsupportedForm(f"unknown activation '{act}'")
    return _act_rule(act, ACTIVATIONS[act])


def _kernel(coeffs: list[sp.Expr]) -> tuple[sp.Expr, sp.Expr]:
    k = sum((c * S_**i for i, c in enumerate(coeffs)), sp.Integer(0))
    return k, sp.diff(k, S_)


def derive_feature(feature: ir.Feature, *, fold: bool = True) -> FeatureRule:
    """The :class:`FeatureRule` of a feature map choice."""
    table = SumTable([X, DY])
    empty = SumTable()
    if isinstance(feature, ir.Identity):
        return FeatureRule("identity", "d", None, (), False, None, None, None, False, None,
                           None, (), "φ(x) = x")
    if isinstance(feature, ir.Poly | ir.ExpTaylor):
        deg = feature.degree if isinstance(feature, ir.Poly) else feature.order
        learn = isinstance(feature, ir.Poly) and feature.learnable
        init = tuple(1 / math.factorial(i) for i in range(deg + 1))
        syms = [sp.Symbol(f"a{i}", positive=True) for i in range(deg + 1)]
        coeffs = syms if learn else [sp.Rational(1, math.factorial(i)) for i in range(deg + 1)]
        k, dk = _kernel(list(coeffs))
        names = {S_: "s", **{s: f"a{i}" for i, s in enumerate(syms)}}
        inputs = tuple(Input(f"a{i}", "scalar", f"coefficient a_{i} (init 1/{i}!)")
                       for i in range(deg + 1)) if learn else ()
        if isinstance(feature, ir.Poly):
            formula = f"φ(x) = [√a_i·x^⊗i]_(i=0..{deg}), a_i = 1/i! initially"
        else:
            formula = f"φ*(x) = [x^⊗i/√i!]_(i=0..{deg})"
        out = " + ".join(["1", "d"] + [f"d^{i}" for i in range(2, deg + 1)])
        return FeatureRule(feature.kind, out, deg, init, learn,
                           print_both([("kappa", k, "scalar")], empty, names, like="s"),
                           print_both([("dkappa", dk, "scalar")], empty, names, like="s"),
                           None, False, None, None, inputs,
                           formula + f";  ⟨φ(q), φ(k)⟩ = {_poly_text(coeffs)}, s = qᵀk")
    if isinstance(feature, ir.Sketch):
        half = feature.degree // 2
        k = S_**2
        names = {S_: "s"}
        return FeatureRule(
            "sketch", f"{feature.dim}^2", feature.degree, (), feature.learned,
            print_both([("kappa", k, "scalar")], empty, names, like="s"),
            print_both([("dkappa", sp.diff(k, S_), "scalar")], empty, names, like="s"),
            feature.dim, feature.learned, None, None, (),
            f"φ′: degree-{half} sketch to {feature.dim} dims; ⟨φ(q), φ(k)⟩ = ⟨φ′(q), φ′(k)⟩² "
            f"≈ (qᵀk)^{feature.degree}")
    if isinstance(feature, ir.UserFeature):
        params = Params()
        env: dict[str, sp.Expr] = {"x": X}
        given = {a.name: a.value for a in feature.args}
        d = feature.definition
        for p in d.params:
            value = given.get(p.name, p.default)
            if value is None:
                raise UnsupportedForm(f"parameter '{p.name}' of feature '{d.name}' has no "
                                      "value")
            env[p.name] = params.scalar(user_name(p.name), value,
                                        f"parameter '{p.name}' of feature '{d.name}'",
                                        fold=fold)
        for s in params.vectors:
            table.add_vector(s)
        phi = Converter(table, env)(d.formula)
        names = {X: "x", DY: "dphi", DIM: "D", **params.symbols}
        outs = [("d_x", vjp(phi, X, DY, table), "vector")]
        outs += [(f"d_{n}", vjp(phi, s, DY, table),
                  "vector" if s in params.vectors else "scalar")
                 for s, n in params.symbols.items()]
        return FeatureRule(
            "user", "d", None, (), bool(params.inputs), None, None, None, False,
            print_both([("phi", phi, "vector")], table, names, like="x"),
            print_both(outs, table, names, like="x"), tuple(params.inputs),
            f"φ(x)ⱼ = {unicode_of(phi, table, {X: 'x', **_strip(params.symbols)})}")
    raise UnsupportedForm(f"unknown feature map '{feature.kind}'")  # pragma: no cover


def _poly_text(coeffs: list[sp.Expr]) -> str:
    terms = []
    for i, c in enumerate(coeffs):
        power = ""
        if i == 1:
            power = "s"
        elif i > 1:
            power = "s" + str(i).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
        coef = unicode_of(c)
        terms.append(coef if not power else (power if coef == "1" else f"{coef}·{power}"))
    return " + ".join(terms)


def _strip(symbols: dict[sp.Symbol, str]) -> dict[sp.Symbol, str]:
    return {s: n[2:] if n.startswith("p_") else n for s, n in symbols.items()}

