"""Retention gates: the closed-form memory update of each retention choice.

Every retention turns the previous state ``w`` (the weights W_{t−1}, or the accumulator
A_{t−1} for the accumulator forms) and the algorithm's update ``u`` = U_t (e.g. −η∇ℓ) into the
new weights, in three steps the code generator implements:

1. ``step``: the element-wise new state ``z`` (code reading ``w``, ``u`` and parameters);
2. ``normalizer``: a reduction over a slice of each weight matrix, if any
   (``lq``: ``S = Σ_slice |z|^r``; ``softmax``: ``W = c·softmax_slice(z)``; ``simplex_solve``:
   find ζ with ``Σ_slice w·g(z − ζ) = c``);
3. ``weights``: the element-wise map to the new weights ``w_new`` (reading ``z`` and ``S``);
   ``None`` means ``W_t = z``.

============== ========================================================================
kind           update
============== ========================================================================
none           ``W = w + u``
decay          ``W = α·w + u`` (``grad_at``: gradient at W_{t−1} or at α·W_{t−1})
lq             ``A = α·A + u``, ``W = A / ‖A‖_r^{r−2}``; r = q (moneta) or q/(q−1) (ftrl)
kl             ``W = c·softmax_slice(α·log w + u)``
elastic_net    ``W = S_γ(α·w + u)`` (retaining) or ``A = α·A + u``, ``W = S_γ(A)`` (ftrl)
soft_threshold ``W = S_γ(w + u)``; ``S_γ(z) = sign(z)·max(0, |z| − γ)``, smooth:
               ``|z|·atan(z/γ)/(π/2)``
fdiv           ``W = w ⊙ g(u − ζ)``, g = (f′)⁻¹, ζ normalising each slice to mass c
               (closed form = ``c·softmax(log w + u)`` for f = kl; a 1-D solve for hellinger)
bregman        ``W = (F′)⁻¹(α·F′(w) + u)`` for F = quadratic, entropy, logit
user           ``W = (φ′)⁻¹(φ′(w) − G′(w) + u)`` (φ defaults to w²/2)
============== ========================================================================

Inverses ``(F′)⁻¹`` are solved by sympy from the potential (and checked numerically); when
sympy finds no usable closed form, :class:`~miras.symbolic.errors.NoClosedForm` says so.

>>> from miras import ir
>>> r = derive_retention(ir.Bregman(potential="logit"))
>>> print(r.step.torch.source() + r.weights.torch.source(), end="")
z = u + torch.log(w) - torch.log(1 - w)
w_new = torch.sigmoid(z)
>>> r.formula
'Z_t = log(W_{t−1}) − log(1 − W_{t−1}) + U_t;  W_t = σ(Z_t)'
>>> derive_retention(ir.Decay(alpha=ir.Gate(role="decay"))).linear
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import sympy as sp

from miras import ir
from miras.symbolic.convert import Converter, number
from miras.symbolic.errors import NoClosedForm, SymbolicError, UnprintableError, UnsupportedForm
from miras.symbolic.functions import clean, stabilise
from miras.symbolic.params import Input, Params, user_name
from miras.symbolic.pretty import latex as latex_of
from miras.symbolic.pretty import unicode as unicode_of
from miras.symbolic.printing import Code, print_both, print_code
from miras.symbolic.reductions import SumTable

__all__ = [
    "POTENTIALS",
    "RetentionRule",
    "SimplexSolve",
    "derive_retention",
    "mirror_inverse",
]

#: Symbols of the retention formulas (one memory weight each).
W = sp.Symbol("w", real=True)
U = sp.Symbol("u", real=True)
Z = sp.Symbol("z", real=True)
S = sp.Symbol("S", positive=True)
A = sp.Symbol("a", real=True)
_TAU = sp.Symbol("tau", positive=True)

#: The built-in Bregman potentials F(τ) (per entry).
POTENTIALS: dict[str, sp.Expr] = {
    "quadratic": W**2 / 2,
    "entropy": W * sp.log(W),
    "logit": W * sp.log(W) + (1 - W) * sp.log(1 - W),
}

#: The f of the f-divergences, f(τ) with f(1) = 0.
F_DIVERGENCES: dict[str, sp.Expr] = {
    "kl": _TAU * sp.log(_TAU),
    "hellinger": (sp.sqrt(_TAU) - 1) ** 2,
}

#: ε of the ℓq normalisation: ‖A‖ is clamped below (A = 0 at the start).
LQ_EPS = 1e-12

_SAMPLES = (-2.5, -0.9, -0.6, -0.3, -0.05, 0.05, 0.2, 0.45, 0.7, 0.95, 1.7, 3.0)
_PARAM_PROBE = sp.Rational(37, 100)


@dataclass(frozen=True)
class SimplexSolve:
    """ζ of an f-divergence retention without closed form: ``Σ_slice w·g(z − ζ) = scale``.

    ``g`` (code reading ``a``, output ``g``) and ``dg`` (output ``dg`` = g′(a)) are
    increasing; g is defined for ``lower < a < upper`` (``None``: unbounded), so a root lies
    in ``ζ > max_slice(z) − upper``. The residual is decreasing in ζ: bisection or Newton
    (``dR/dζ = −Σ w·g′(z − ζ)``) converge.
    """

    g: Code
    dg: Code
    lower: float | None
    upper: float | None
    scale: float


@dataclass(frozen=True)
class RetentionRule:
    """The closed form of a retention (plain data, printed code; see the module docs).

    ``step`` reads ``w`` (W_{t−1}, or A_{t−1} when ``state == 'accumulator'``) and ``u``
    (U_t) and outputs ``z``; ``weights`` (``None``: W_t = z) reads ``z`` and, for ``lq``, ``S``
    (the slice sum of ``slice_term``'s output ``h``) and outputs ``w_new``. ``slice`` is the
    part of each weight matrix a normaliser reduces over (``matrix``: the whole matrix of a
    head, ``row``: each row, ``all``: every entry of the matrix). ``linear``: W_t is a linear
    function of (W_{t−1}, U_t). ``positive``: needs a positive memory (a log of the weights).
    """

    kind: str
    state: Literal["weights", "accumulator"]
    grad_at: Literal["prev", "decayed"]
    inputs: tuple[Input, ...]
    step: Code
    weights: Code | None
    normalizer: Literal["none", "lq", "softmax", "simplex_solve"]
    slice: Literal["none", "matrix", "row", "all"]
    slice_term: Code | None
    exponent: float | None
    scale: float | None
    eps: float | None
    solve: SimplexSolve | None
    linear: bool
    positive: bool
    formula: str
    latex: str


_NAMES = {W: "w", U: "u", Z: "z", S: "S", A: "a"}


def _check_real(value: sp.Expr) -> float | None:
    try:
        c = complex(value.evalf(30))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if abs(c.imag) > 1e-12 or not math.isfinite(c.real):
        return None
    return c.real


def _odd_roots(expr: sp.Expr) -> sp.Expr:
    """b^(p/q), q odd, → the real root sign(b)^p·|b|^(p/q) (sympy's principal root is complex
    for b < 0)."""
    return expr.replace(
        lambda e: isinstance(e, sp.Pow) and e.exp.is_Rational and not e.exp.is_Integer
        and e.exp.q % 2 == 1,
        lambda e: sp.sign(e.base) ** e.exp.p * sp.Abs(e.base) ** e.exp)


def mirror_inverse(fprime: sp.Expr, w: sp.Symbol = W, z: sp.Symbol = Z,
                   what: str = "φ′") -> sp.Expr:
    """Solve ``fprime(w) = z`` for ``w`` with sympy: the inverse mirror map, checked numerically.

    The branch is the one that round-trips, ``inverse(fprime(w₀)) = w₀``, at every sample
    point ``w₀`` where ``fprime`` is finite and real; ``fprime`` must be increasing there
    (a strictly convex potential). Raises :class:`NoClosedForm` when sympy finds no such
    branch, or only one that the printers cannot express (e.g. LambertW).

    >>> mirror_inverse(sp.log(W) + 1)
    exp(z - 1)
    >>> mirror_inverse(sp.atanh(W))
    tanh(z)
    >>> mirror_inverse(W**3)           # the real cube root
    Abs(z)**(1/3)*sign(z)
    """
    params = {s: _PARAM_PROBE for s in fprime.free_symbols if s not in (w, z)}
    dom = []
    for x in _SAMPLES:
        xv = sp.Rational(repr(x))
        fv = _check_real(fprime.subs(params).subs(w, xv))
        if fv is None:
            continue
        slope = _check_real(sp.diff(fprime, w).subs(params).subs(w, xv))
        if slope is None:
            continue
        if slope <= 0:
            raise UnsupportedForm(f"{what}(w) = {fprime} is not increasing at w = {x} (the "
                                  "potential must be strictly convex): it has no inverse")
        dom.append((xv, fv))
    if len(dom) < 2:
        raise NoClosedForm(f"{what}(w) = {fprime} is not real on the sample points: "
                           "cannot choose an inverse")
    try:
        solutions = sp.solve(sp.Eq(fprime, z), w)
    except (NotImplementedError, ValueError) as err:
        raise NoClosedForm(f"sympy finds no closed form for the inverse of {what}(w) = "
                           f"{fprime}: {err}") from None
    unprintable = []
    for sol in solutions:
        for cand in (sol, _odd_roots(sol)):
            if cand.has(sp.I):
                continue
            ok = True
            for xv, fv in dom:
                back = _check_real(cand.subs(params).subs(z, sp.Float(fv, 30)))
                if back is None or abs(back - float(xv)) > 1e-8 * (1 + abs(float(xv))):
                    ok = False
                    break
            if not ok:
                continue
            cand = stabilise(cand)
            try:
                names = {s: str(s) for s in cand.free_symbols}
                print_code(cand, names, "torch")
                print_code(cand, names, "triton")
            except UnprintableError:
                unprintable.append(cand)
                continue
            return cand
    if unprintable:
        raise NoClosedForm(f"the inverse of {what}(w) = {fprime} is {unprintable[0]}, which "
                           "uses functions the PyTorch/Triton printers do not have")
    raise NoClosedForm(f"sympy finds no closed form for the inverse of {what}(w) = {fprime}")


def _soft_threshold(z: sp.Expr, gamma: sp.Expr, smooth: bool) -> sp.Expr:
    if gamma == 0:
        return z
    if smooth:
        return sp.Abs(z) * sp.atan(z / gamma) / (sp.pi / 2)
    return sp.sign(z) * sp.Max(0, sp.Abs(z) - gamma)


def _affine(expr: sp.Expr, xs: tuple[sp.Symbol, ...]) -> bool:
    if any(expr.has(f) for f in (sp.sign, sp.Abs, sp.Max, sp.Min, sp.Piecewise)):
        return False
    return all(clean(sp.diff(expr, a, b)) == 0 for a in xs for b in xs)


def derive_retention(ret: ir.Retention, *, fold: bool = True) -> RetentionRule:
    """The :class:`RetentionRule` of a retention choice.

    Raises :class:`NoClosedForm` (no usable inverse of a user potential) or
    :class:`UnsupportedForm` (a potential that is not strictly convex).

    >>> from miras import ir
    >>> r = derive_retention(ir.Lq(q=4, form="ftrl"))
    >>> r.state, r.exponent, r.slice_term.torch.source()
    ('accumulator', 1.3333333333333333, 'h = torch.abs(z)**(1.3333333333333333)\\n')
    """
    params = Params()
    kind = ret.kind
    state: Literal["weights", "accumulator"] = "weights"
    grad_at: Literal["prev", "decayed"] = "prev"
    normalizer: Literal["none", "lq", "softmax", "simplex_solve"] = "none"
    slc: Literal["none", "matrix", "row", "all"] = "none"
    exponent = scale = eps = None
    solve = None
    positive = False
    weights: sp.Expr | None = None
    slice_term: sp.Expr | None = None

    def alpha_of(r: ir.Decay | ir.Lq | ir.KL | ir.ElasticNet | ir.Bregman) -> sp.Expr:
        return params.scalar("alpha", r.alpha, "retention α (fraction kept)", fold=fold)

    if isinstance(ret, ir.NoRetention):
        z = W + U
    elif isinstance(ret, ir.Decay):
        z = alpha_of(ret) * W + U
        grad_at = ret.at
    elif isinstance(ret, ir.Lq):
        state, normalizer, slc = "accumulator", "lq", "matrix"
        q = number(ret.q)
        r = q if ret.form == "moneta" else q / (q - 1)
        exponent, eps = float(r), LQ_EPS
        z = alpha_of(ret) * W + U
        slice_term = sp.Abs(Z) ** r
        weights = Z * sp.Max(S, sp.Float(LQ_EPS)) ** ((2 - r) / r)
    elif isinstance(ret, ir.KL):
        normalizer, positive = "softmax", True
        slc = ret.softmax_axis
        scale = float(ret.scale)
        z = alpha_of(ret) * sp.log(W) + U
    elif isinstance(ret, ir.ElasticNet | ir.SoftThreshold):
        gamma = params.scalar("threshold", ret.threshold, "soft-threshold γ", fold=fold)
        if isinstance(ret, ir.ElasticNet):
            z = alpha_of(ret) * W + U
            if ret.form == "ftrl":
                state = "accumulator"
        else:
            z = W + U
        weights = _soft_threshold(Z, gamma, ret.smooth)
    elif isinstance(ret, ir.FDiv):
        positive, slc, scale = True, "row", float(ret.scale)
        f = F_DIVERGENCES[ret.f]
        fprime = sp.diff(f, _TAU).subs(_TAU, W)
        g = mirror_inverse(fprime, what="f′").subs(Z, A)
        zeta = sp.Symbol("zeta", real=True)
        ratio = sp.simplify(g.subs(A, A - zeta) / g)
        if A not in ratio.free_symbols:
            # g(a − ζ) = g(a)·c(ζ): ζ only rescales, W = c·(w·g(u))/Σ(w·g(u)) = softmax
            normalizer = "softmax"
            z = sp.log(W) + sp.log(g.subs(A, U))
            z = sp.expand_log(z, force=True)
        else:
            normalizer = "simplex_solve"
            z = U
            lo = sp.limit(fprime, W, 0, "+")
            hi = sp.limit(fprime, W, sp.oo)
            table = SumTable([A])
            solve = SimplexSolve(
                g=print_both([("g", g, "vector")], table, _NAMES, like="a"),
                dg=print_both([("dg", clean(sp.diff(g, A)), "vector")], table, _NAMES,
                              like="a"),
                lower=float(lo) if lo.is_finite else None,
                upper=float(hi) if hi.is_finite else None,
                scale=float(ret.scale))
    elif isinstance(ret, ir.Bregman):
        F = POTENTIALS[ret.potential]
        Fp = sp.diff(F, W)
        positive = ret.potential != "quadratic"
        z = alpha_of(ret) * Fp + U
        inv = mirror_inverse(Fp, what="F′")
        weights = None if inv == Z else inv
    elif isinstance(ret, ir.UserRetention):
        z, weights = _user(ret, params, fold)
    else:  # pragma: no cover - the IR union is closed
        raise UnsupportedForm(f"unknown retention '{ret.kind}'")

    z = stabilise(z)
    table = SumTable([W, U, Z, A, *params.vectors])
    names = {**_NAMES, **params.symbols}
    step = print_both([("z", z, "vector")], table, names, like="w")
    wcode = (print_both([("w_new", weights, "vector")], table, names, like="z")
             if weights is not None else None)
    tcode = (print_both([("h", slice_term, "vector")], table, names, like="z")
             if slice_term is not None else None)
    linear = normalizer == "none" and _affine(z, (W, U)) and (
        weights is None or _affine(weights, (Z,)))

    gated = frozenset(i.name for i in params.inputs if isinstance(i.value, ir.Gate))
    formula, latex = _formulas(ret, z, weights, state, normalizer, slc, exponent, scale,
                               params.symbols, gated)
    return RetentionRule(
        kind=kind, state=state, grad_at=grad_at, inputs=tuple(params.inputs), step=step,
        weights=wcode, normalizer=normalizer, slice=slc, slice_term=tcode, exponent=exponent,
        scale=scale, eps=eps, solve=solve, linear=linear, positive=positive,
        formula=formula, latex=latex)


_GREEK = {"alpha": ("α", r"\alpha"), "threshold": ("γ", r"\gamma")}


def _display(names: dict[sp.Symbol, str], tex: bool,
             gated: frozenset[str] = frozenset()) -> dict[sp.Symbol, str]:
    out = {}
    for sym, n in names.items():
        out[sym] = _GREEK[n][tex] if n in _GREEK else (n[2:] if n.startswith("p_") else n)
        if n in gated:
            out[sym] += "_t"
    return out


def _formulas(ret: ir.Retention, z: sp.Expr, weights: sp.Expr | None, state: str,
              normalizer: str, slc: str, exponent: float | None, scale: float | None,
              symbols: dict[sp.Symbol, str], gated: frozenset[str]) -> tuple[str, str]:
    """The update as unicode and LaTeX lines (gates get the index t)."""
    uni, tex = _display(symbols, False, gated), _display(symbols, True, gated)
    prev = ("A_{t−1}", "A_{t-1}") if state == "accumulator" else ("W_{t−1}", "W_{t-1}")
    uni.update({W: prev[0], U: "U_t"})
    tex.update({W: prev[1], U: "U_t"})
    last = {U}
    left = "A_t" if state == "accumulator" else (
        "W_t" if weights is None and normalizer == "none" else "Z_t")
    if normalizer == "simplex_solve":
        assert isinstance(ret, ir.FDiv)
        g = mirror_inverse(sp.diff(F_DIVERGENCES[ret.f], _TAU).subs(_TAU, W), what="f′")
        return (f"W_t = W_{{t−1}} ⊙ g(U_t − ζ_t),  g(a) = {unicode_of(g.subs(Z, A))},  "
                f"ζ_t such that Σ_{slc} W_t = {scale:g} (a 1-D solve per {slc})",
                rf"W_t = W_{{t-1}} \odot g(U_t - \zeta_t),\ g(a) = {latex_of(g.subs(Z, A))}")
    lines = [f"{left} = {unicode_of(z, None, uni, last=last)}"]
    ltex = [f"{left} = {latex_of(z, None, tex)}"]
    if normalizer == "lq":
        r = sp.nsimplify(exponent)
        sub = unicode_of(r) if r.is_Integer else f"({unicode_of(r)})"
        sup = unicode_of(r - 2) if (r - 2).is_Integer else f"({unicode_of(r - 2)})"
        lines.append(f"W_t = A_t / ‖A_t‖_{sub}^{sup}  (entry-wise norm "
                     f"over each weight matrix, clamped at ε = {LQ_EPS:g})")
        ltex.append(rf"W_t = A_t / \lVert A_t \rVert_{{{sp.latex(r)}}}^{{{sp.latex(r - 2)}}}")
    elif normalizer == "softmax":
        c = "" if scale == 1 else f"{scale:g}·"
        lines.append(f"W_t = {c}softmax_{slc}(Z_t)")
        ltex.append(rf"W_t = {c.rstrip('·')}\,\mathrm{{softmax}}_{{\text{{{slc}}}}}(Z_t)")
    elif weights is not None:
        shown = weights.xreplace({Z: sp.Symbol(left)})
        lines.append(f"W_t = {unicode_of(shown, None, uni)}")
        ltex.append(f"W_t = {latex_of(shown, None, tex)}")
    return ";  ".join(lines), r",\quad ".join(ltex)


def _user(ret: ir.UserRetention, params: Params, fold: bool) -> tuple[sp.Expr, sp.Expr | None]:
    """z = φ′(w) − G′(w) + u and W = (φ′)⁻¹(z) for a user retention."""
    d = ret.definition
    given = {a.name: a.value for a in ret.args}
    env: dict[str, sp.Expr] = {"w": W}
    for p in d.params:
        value = given.get(p.name, p.default)
        if value is None:
            raise SymbolicError(f"parameter '{p.name}' of retention '{d.name}' has no value")
        env[p.name] = params.scalar(user_name(p.name), value,
                                    f"parameter '{p.name}' of retention '{d.name}'", fold=fold)
    table = SumTable([W])
    conv = Converter(table, env)
    phi = conv(d.potential) if d.potential is not None else W**2 / 2
    G = conv(d.regularizer) if d.regularizer is not None else sp.Integer(0)
    if len(table) or phi.has(table.dim) or G.has(table.dim):
        raise UnsupportedForm(f"retention '{d.name}' uses a reduction (sum, norm, dot): its "
                              "terms are functions of one weight w")
    phip = clean(sp.diff(phi, W))
    z = phip - clean(sp.diff(G, W)) + U
    inv = mirror_inverse(phip, what=f"φ′ of retention '{d.name}'")
    return z, (None if inv == Z else inv)
