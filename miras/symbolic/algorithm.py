"""Memory learning algorithms and the Omega window, as plain data.

The algorithms are structural (which states exist, which constants), so they are dataclasses,
not sympy; the one piece of algebra, the implicit (proximal) GD step of Longhorn, is solved
by sympy in :func:`implicit_step`.

=============== ===========================================================================
kind            update (g_t: the gradient, or the Omega-window sum of gradients)
=============== ===========================================================================
gd              ``U_t = −η·g_t`` (``steps`` > 1: several steps per token)
momentum        ``S_t = β·S_{t−1} − η·g_t``, ``U_t = S_t``
muon            ``S_t = β·S_{t−1} + g_t``, ``U_t = −η·NS_k(S_t)``
implicit_gd     ``W_t = W_{t−1} − δ_t (W_{t−1}k − v) kᵀ``, ``δ_t = η/(1 + η kᵀk)`` (ℓ2 only)
nonparametric   keep every (k, v); read by kernel regression (softmax attention)
=============== ===========================================================================

Newton–Schulz (:class:`NewtonSchulz`): ``X₀ = G/(‖G‖_F + eps)``, transposed if rows > cols;
``steps`` times ``A = X Xᵀ``, ``X ← a·X + (b·A + c·A²)·X``; transposed back.

>>> from miras import ir
>>> rule = derive_algorithm(ir.Muon(steps=3))
>>> rule.ns.steps, rule.ns.a, rule.states
(3, 3.4445, ('S',))
>>> derive_algorithm(ir.ImplicitGD()).delta.torch.source()
's0 = torch.sum(k**2, dim=-1, keepdim=True)\\ndelta = 1/(s0 + 1)\\n'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sympy as sp

from miras import ir
from miras.symbolic.errors import UnsupportedForm
from miras.symbolic.params import is_channel
from miras.symbolic.printing import Code, print_both
from miras.symbolic.reductions import K, SumTable

__all__ = [
    "AlgorithmRule",
    "GDRule",
    "Hyper",
    "ImplicitGDRule",
    "MomentumRule",
    "MuonRule",
    "NewtonSchulz",
    "NonparametricRule",
    "WindowRule",
    "derive_algorithm",
    "derive_window",
    "hyper",
    "implicit_step",
]


@dataclass(frozen=True)
class Hyper:
    """A hyper-parameter: ``value`` when it is a literal, else an input named ``name``
    (``[..., 1]``, or ``[..., D]`` when ``shape == 'vector'``), produced from ``source``."""

    name: str
    value: float | None
    shape: Literal["scalar", "vector"]
    source: ir.Const | ir.Learned | ir.PerHead | ir.Gate

    @property
    def gated(self) -> bool:
        """Data-dependent (a gate): one value per token."""
        return isinstance(self.source, ir.Gate)


def hyper(name: str, value: ir.Const | ir.Learned | ir.PerHead | ir.Gate) -> Hyper:
    """The :class:`Hyper` of a hyper-parameter value.

    >>> hyper("lr", ir.Const(value=0.1)).value, hyper("lr", ir.Gate(channel=True)).shape
    (0.1, 'vector')
    """
    const = float(value.value) if isinstance(value, ir.Const) else None
    return Hyper(name, const, "vector" if is_channel(value) else "scalar", value)


@dataclass(frozen=True)
class NewtonSchulz:
    """Muon's quintic Newton–Schulz orthogonalisation (coefficients of Jordan et al.)."""

    steps: int
    a: float = 3.4445
    b: float = -4.7750
    c: float = 2.0315
    eps: float = 1e-7
    transpose_if_tall: bool = True


@dataclass(frozen=True)
class GDRule:
    """``U_t = −lr·g_t``; ``steps`` gradient steps per token."""

    lr: Hyper
    steps: int
    kind: Literal["gd"] = "gd"
    states: tuple[str, ...] = ()
    formula: str = "U_t = −η·g_t"


@dataclass(frozen=True)
class MomentumRule:
    """``S_t = beta·S_{t−1} − lr·g_t``, ``U_t = S_t`` (state ``S``, same shapes as W)."""

    lr: Hyper
    beta: Hyper
    kind: Literal["momentum"] = "momentum"
    states: tuple[str, ...] = ("S",)
    formula: str = "S_t = β·S_{t−1} − η·g_t;  U_t = S_t"


@dataclass(frozen=True)
class MuonRule:
    """``S_t = beta·S_{t−1} + g_t``, ``U_t = −lr·NS(S_t)`` per weight matrix."""

    lr: Hyper
    beta: Hyper
    ns: NewtonSchulz
    kind: Literal["muon"] = "muon"
    states: tuple[str, ...] = ("S",)
    formula: str = "S_t = β·S_{t−1} + g_t;  U_t = −η·NS_k(S_t)"


@dataclass(frozen=True)
class ImplicitGDRule:
    """Longhorn's closed-form implicit step for ℓ2 (``delta`` reads ``k`` and ``lr``, outputs
    ``delta``, ``[..., 1]`` for matrix memory, ``[..., D]`` for vector memory):
    ``W_t = W_{t−1} − delta·(W_{t−1}k − v)kᵀ`` (vector memory: ``w −= delta⊙(w⊙k − v)⊙k``)."""

    lr: Hyper
    delta: Code
    kind: Literal["implicit_gd"] = "implicit_gd"
    states: tuple[str, ...] = ()
    formula: str = "W_t = W_{t−1} − δ_t·(W_{t−1}k_t − v_t)·k_tᵀ,  δ_t = η/(1 + η·k_tᵀk_t)"


@dataclass(frozen=True)
class NonparametricRule:
    """Keep every (k, v); read ``Σ_i s(q, k_i) v_i / Σ_i s(q, k_i)``: ``kernel`` softmax
    (``s = exp(scale·qᵀk)``, ``scale = 0``: 1/√d) or poly (``(qᵀk)^degree``, denominator
    ``1 + Σ``); ``window``: the last ``window`` tokens only."""

    kernel: Literal["softmax", "poly"]
    scale: float
    degree: int
    normalize: bool
    window: int | None
    kind: Literal["nonparametric"] = "nonparametric"
    states: tuple[str, ...] = ()
    formula: str = "o_t = Σ_{i≤t} s(q_t, k_i)·v_i / Σ_{i≤t} s(q_t, k_i)"


AlgorithmRule = GDRule | MomentumRule | MuonRule | ImplicitGDRule | NonparametricRule


@dataclass(frozen=True)
class WindowRule:
    """The Omega rule: ``g_t = Σ_{i=t−size+1..t} gamma_i ∇ℓ(W; k_i, v_i)`` (size 1: online)."""

    size: int
    gamma: Hyper | None
    formula: str


def implicit_step(memory: Literal["matrix", "vector"] = "matrix") -> tuple[sp.Expr, SumTable]:
    """Solve the implicit ℓ2 step ``W' = W − η(W'k − v)kᵀ`` for the step size δ of
    ``W' = W − δ(Wk − v)kᵀ``; returns δ (in ``lr`` and the sum ``kᵀk``) and its table.

    >>> delta, table = implicit_step()
    >>> delta
    lr/(_s0*lr + 1)
    """
    lr = sp.Symbol("lr", positive=True)
    y, v, p = sp.symbols("y v p", real=True)           # y = Wk, p = W'k (one coordinate)
    table = SumTable([K])
    kk = table.reduce(K**2) if memory == "matrix" else K**2
    (sol,) = sp.solve(sp.Eq(p, y - lr * (p - v) * kk), p)
    # W' = W − η(p − v)kᵀ = W − δ(y − v)kᵀ
    delta = sp.simplify(lr * (sol - v) / (y - v))
    return delta, table


def derive_algorithm(alg: ir.Algorithm, memory: ir.Memory | None = None,
                     bias: ir.Bias | None = None, window: ir.Window | None = None
                     ) -> AlgorithmRule:
    """The rule of an algorithm choice (``memory``, ``bias`` and ``window`` refine or check it).

    Raises :class:`UnsupportedForm` for ``implicit_gd`` with a bias other than ``l2`` or a
    memory other than matrix/vector (the closed form only exists there).
    """
    if isinstance(alg, ir.GD):
        return GDRule(hyper("lr", alg.lr), alg.steps)
    if isinstance(alg, ir.Momentum):
        return MomentumRule(hyper("lr", alg.lr), hyper("beta", alg.beta))
    if isinstance(alg, ir.Muon):
        return MuonRule(hyper("lr", alg.lr), hyper("beta", alg.beta), NewtonSchulz(alg.steps))
    if isinstance(alg, ir.ImplicitGD):
        if bias is not None and not isinstance(bias, ir.L2):
            raise UnsupportedForm(f"implicit_gd has a closed form for the l2 bias only, not "
                                  f"'{bias.kind}'")
        kind: Literal["matrix", "vector"] = "vector" if isinstance(memory, ir.Vector) \
            else "matrix"
        if memory is not None and not isinstance(memory, ir.Matrix | ir.Vector):
            raise UnsupportedForm(f"implicit_gd needs a matrix or vector memory, not "
                                  f"'{memory.kind}'")
        lr = hyper("lr", alg.lr)
        delta, table = implicit_step(kind)
        lr_sym = sp.Symbol("lr", positive=True)
        if lr.value is not None:
            delta = delta.subs(lr_sym, sp.Rational(repr(lr.value)))
        shape: Literal["vector", "scalar"] = "vector" if kind == "vector" else "scalar"
        code = print_both([("delta", delta, shape)], table, {K: "k", lr_sym: "lr"}, like="k")
        return ImplicitGDRule(lr, code)
    if isinstance(alg, ir.NonparametricAlg):
        mem = memory if isinstance(memory, ir.Nonparametric) else ir.Nonparametric()
        size = window.size if isinstance(window, ir.Sliding) else None
        return NonparametricRule(mem.kernel, mem.scale, mem.degree, mem.normalize, size)
    raise UnsupportedForm(f"unknown algorithm '{alg.kind}'")  # pragma: no cover


def derive_window(window: ir.Window) -> WindowRule:
    """The Omega-window rule (``size = 1``, no γ, for the online rule).

    >>> derive_window(ir.Sliding(size=4)).formula
    'g_t = Σ_{i=t−3..t} γ_i·∇ℓ(W; k_i, v_i)'
    """
    if isinstance(window, ir.Sliding):
        return WindowRule(window.size, hyper("gamma", window.gamma),
                          f"g_t = Σ_{{i=t−{window.size - 1}..t}} γ_i·∇ℓ(W; k_i, v_i)")
    return WindowRule(1, None, "g_t = ∇ℓ(W; k_t, v_t)")
