"""The typed IR of a ``.miras`` program: frozen pydantic models, discriminated unions.

This module is also the catalog's source of truth: every built-in choice is one class here,
whose fields (declared with :func:`P`) are its parameters, with defaults, ranges, gate roles
and documentation, and whose docstring and ``ref`` are its documentation and paper reference.
:mod:`miras.catalog` only collects these classes; the validator and ``miras list`` read them.

Positions are not part of the IR (two specs that differ only in layout have equal IR); the
validator keeps them beside it in :attr:`miras.validate.Checked.origins`.

>>> m = Matrix()
>>> m.kind, m.init
('matrix', 'zeros')
>>> Decay(alpha=Const(value=0.9)) == Decay(alpha=Const(value=0.9))
True
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

# --------------------------------------------------------------------------------------------
# Base class and parameter declarations
# --------------------------------------------------------------------------------------------

#: Gate roles: the fixed names by which data-dependent gates are passed everywhere later.
Role = Literal["lr", "decay", "momentum", "delta", "gamma"]
ROLES: tuple[str, ...] = ("lr", "decay", "momentum", "delta", "gamma")


class IRNode(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def P(default: Any, doc: str, **meta: Any) -> Any:
    """Declare a catalog parameter: its default, documentation and validation metadata.

    ``meta`` keys: ``ge``/``gt``/``le``/``lt`` (range), ``role`` (the gate role; only a
    parameter with a role accepts ``gate(...)``), ``learnable`` (default True for scalars;
    False means literal only), ``even`` (integers that must be even).
    """
    return Field(default=default, description=doc, json_schema_extra={"miras": meta})


# --------------------------------------------------------------------------------------------
# Formula expressions (user definitions, per-head schedules)
# --------------------------------------------------------------------------------------------

#: Whitelisted formula functions and their arities (min, max). Nothing else can be called.
FUNCTIONS: dict[str, tuple[int, int]] = {
    "abs": (1, 1), "sign": (1, 1), "exp": (1, 1), "log": (1, 1), "log1p": (1, 1),
    "sqrt": (1, 1), "tanh": (1, 1), "sigmoid": (1, 1), "softplus": (1, 1), "cosh": (1, 1),
    "sinh": (1, 1), "atan": (1, 1), "erf": (1, 1), "relu": (1, 1),
    "min": (2, 2), "max": (2, 2), "where": (3, 3),
    "sum": (1, 1), "norm": (1, 2), "dot": (2, 2),
}
#: Functions that reduce a vector to a scalar.
REDUCTIONS = frozenset({"sum", "norm", "dot"})
#: Named constants usable in formulas.
CONSTANTS: dict[str, float] = {"pi": math.pi}

FunctionName = Literal[
    "abs", "sign", "exp", "log", "log1p", "sqrt", "tanh", "sigmoid", "softplus", "cosh",
    "sinh", "atan", "erf", "relu", "min", "max", "where", "sum", "norm", "dot",
]


class Num(IRNode):
    node: Literal["num"] = "num"
    value: float

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        # canonical form: a negative number is Neg(Num(x)), as the parser reads "-x"
        if not math.isfinite(v) or v < 0:
            raise ValueError("formula numbers in the IR are finite and non-negative")
        return v


class Var(IRNode):
    """A formula variable (``y``, ``v``, ``k``, ``w``, ``x``, ``h``), a parameter or ``pi``."""

    node: Literal["var"] = "var"
    name: str


class Neg(IRNode):
    node: Literal["neg"] = "neg"
    arg: Expr


class BinOp(IRNode):
    node: Literal["bin"] = "bin"
    op: Literal["+", "-", "*", "/", "^"]
    left: Expr
    right: Expr


class Cmp(IRNode):
    node: Literal["cmp"] = "cmp"
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    left: Expr
    right: Expr


class Fn(IRNode):
    node: Literal["fn"] = "fn"
    name: FunctionName
    args: tuple[Expr, ...]


Expr = Annotated[Union[Num, Var, Neg, BinOp, Cmp, Fn], Field(discriminator="node")]  # noqa: UP007


# --------------------------------------------------------------------------------------------
# Hyper-parameter values: literal, learned constant, per-head schedule, data-dependent gate
# --------------------------------------------------------------------------------------------

GateAct = Literal["sigmoid", "softplus", "exp", "identity", "tanh", "mamba"]


class Const(IRNode):
    """A literal number."""

    kind: Literal["const"] = "const"
    value: float


class Learned(IRNode):
    """``learned(init=...)``: a trained constant per head (or per channel)."""

    kind: Literal["learned"] = "learned"
    name: ClassVar[str] = "learned"
    init: float = P(1.0, "initial value")
    channel: bool = P(False, "one value per channel of the head instead of one per head")


class PerHead(IRNode):
    """``per_head(expr)``: a fixed schedule over heads; ``h`` is the head index from 0.

    RetNet's decays are ``per_head(1 - 2^(-5 - h))``.
    """

    kind: Literal["per_head"] = "per_head"
    name: ClassVar[str] = "per_head"
    expr: Expr


class Gate(IRNode):
    """``gate(...)``: a data-dependent value per token and head (or per channel).

    Produced from the layer input by a linear map (low-rank ``x → R^rank → R^d`` when
    ``channel=true``) followed by ``act``; ``init`` sets the projection bias so that the
    gate starts near that value; ``scale`` multiplies the activation (Titans' max lr).
    ``act=mamba`` is Mamba2's decay ``exp(−A·softplus(W x + b))`` with a learned ``A > 0``
    per head. Channel-wise decays act on the key (input) dimension of the memory.
    """

    kind: Literal["gate"] = "gate"
    name: ClassVar[str] = "gate"
    role: Role = P("lr", "the role the gate plays (set from where it is used)", internal=True)
    channel: bool = P(False, "one value per channel instead of one per head")
    rank: int = P(32, "rank of the low-rank projection of a channel-wise gate", ge=1, le=4096)
    act: GateAct = P("sigmoid", "activation producing the gate value")
    init: float | None = P(None, "initial gate value (before scale); None: the layer's choice")
    scale: float = P(1.0, "multiplier after the activation", gt=0)
    per: Literal["token", "chunk"] = P(
        "token", "token: a value per token; chunk: from the chunk mean of the input (Titans §3.1)")


Scalar = Annotated[Union[Const, Learned, PerHead, Gate], Field(discriminator="kind")]  # noqa: UP007

BuiltinAct = Literal["gelu", "silu", "relu", "tanh", "sigmoid", "identity", "softplus"]


# --------------------------------------------------------------------------------------------
# User definitions by formula
# --------------------------------------------------------------------------------------------


class ParamDef(IRNode):
    name: str
    default: Scalar | None = None


class BiasDef(IRNode):
    """``bias NAME(params) = expr`` with variables ``y`` (memory output), ``v``, ``k``."""

    def_kind: Literal["bias"] = "bias"
    name: str
    params: tuple[ParamDef, ...] = ()
    formula: Expr


class RetentionDef(IRNode):
    """``retention NAME(params) = G(w)`` or ``{ regularizer = G(w)  potential = φ(w) }``.

    ``regularizer`` is the global retention G summed over the weights; ``potential`` is the
    mirror-map potential φ whose Bregman divergence is the local retention (default w²/2).
    """

    def_kind: Literal["retention"] = "retention"
    name: str
    params: tuple[ParamDef, ...] = ()
    regularizer: Expr | None = None
    potential: Expr | None = None


class FeatureDef(IRNode):
    """``feature NAME(params) = expr``: an element-wise map of ``x`` (may use reductions)."""

    def_kind: Literal["feature"] = "feature"
    name: str
    params: tuple[ParamDef, ...] = ()
    formula: Expr


class ActDef(IRNode):
    """``act NAME = expr``: a scalar activation of ``x``."""

    def_kind: Literal["act"] = "act"
    name: str
    formula: Expr


Definition = Annotated[Union[BiasDef, RetentionDef, FeatureDef, ActDef],  # noqa: UP007
                       Field(discriminator="def_kind")]
Act = Union[BuiltinAct, ActDef]  # noqa: UP007


class UserArg(IRNode):
    name: str
    value: Scalar


# --------------------------------------------------------------------------------------------
# The choices. Each class: docstring = documentation, `ref` = paper reference.
# --------------------------------------------------------------------------------------------

#: ``uniform`` is positive: the constant 1/fan_in for linear memory, a positive random draw
#: (mean 1/fan_in) for deep memory so that hidden units differ.
Init = Literal["zeros", "normal", "uniform", "identity"]
#: Initialisations that make every memory weight positive (needed by log/logit retention).
POSITIVE_INITS = frozenset({"uniform"})


class Choice(IRNode):
    axis: ClassVar[str]
    ref: ClassVar[str] = ""


# ---- memory architecture -------------------------------------------------------------------


class Vector(Choice):
    """Element-wise (diagonal) memory: ``M(k) = w ⊙ k`` with ``w ∈ R^d``."""

    axis: ClassVar[str] = "memory"
    ref: ClassVar[str] = "[M] Table 1 (RetNet row, 'Vector')"
    kind: Literal["vector"] = "vector"
    init: Init = P("zeros", "initial memory; 'uniform' is the positive constant 1/d")


class Matrix(Choice):
    """Linear memory ``M(k) = W k`` with ``W ∈ R^{d_v×d_k}`` (online linear regression)."""

    axis: ClassVar[str] = "memory"
    ref: ClassVar[str] = "[M] Table 1; [T] §3.1 (L_M = 1)"
    kind: Literal["matrix"] = "matrix"
    init: Init = P("zeros", "initial memory; 'uniform' is the positive constant 1/d_k per row")


class MLP(Choice):
    """Deep memory: ``depth`` layers, ``M(x) = x + norm(W₁ act(W₂ x))`` for depth 2.

    ``residual`` adds the input; ``norm`` normalises the MLP branch before the residual
    (Miras' ``x + LN(W₁σ(W₂x))``); hidden width is ``expansion · head_dim``.
    """

    axis: ClassVar[str] = "memory"
    ref: ClassVar[str] = "[T] §3.1; [M] §5.3 ; [A] Eq 42"
    kind: Literal["mlp"] = "mlp"
    depth: int = P(2, "number of linear layers (1 is a matrix memory)", ge=1, le=16)
    expansion: float = P(4.0, "hidden width as a multiple of the head dimension", gt=0, le=64)
    act: Act = P("gelu", "activation between layers (a built-in name or a user 'act')")
    residual: bool = P(True, "add the input to the output")
    norm: Literal["none", "layernorm", "rmsnorm"] = P("none", "normalisation of the MLP branch")
    init: Init = P("normal", "initial weights ('uniform': positive, for KL/logit retention)")


class GatedMLP(Choice):
    """Gated deep memory (Atlas++): ``M(x) = x + W₁(act(W₂x) ⊙ W₃x)``."""

    axis: ClassVar[str] = "memory"
    ref: ClassVar[str] = "[A] Eq 43"
    kind: Literal["gated_mlp"] = "gated_mlp"
    expansion: float = P(4.0, "hidden width as a multiple of the head dimension", gt=0, le=64)
    act: Act = P("gelu", "activation of the gate branch")
    residual: bool = P(True, "add the input to the output")
    norm: Literal["none", "layernorm", "rmsnorm"] = P("none", "normalisation of the MLP branch")
    init: Init = P("normal", "initial weights")


class Nonparametric(Choice):
    """Non-parametric memory (Nadaraya–Watson): keeps every (k, v); softmax attention.

    With a ``window`` it is sliding-window attention. ``scale`` multiplies ``qᵀk``
    (0 means ``1/sqrt(head_dim)``).
    """

    axis: ClassVar[str] = "memory"
    ref: ClassVar[str] = "[M] §4 (softmax attention); [A] Eq 17-18"
    kind: Literal["nonparametric"] = "nonparametric"
    kernel: Literal["softmax", "poly"] = P("softmax", "similarity: exp(s·qᵀk) or (qᵀk)^degree")
    scale: float = P(0.0, "scale s of qᵀk; 0 means 1/sqrt(head_dim)", ge=0)
    degree: int = P(4, "degree of the polynomial kernel", ge=1, le=8)
    normalize: bool = P(True, "divide by the sum of the similarities (plus 1 for 'poly')")


# ---- attentional bias ----------------------------------------------------------------------

Smooth = Literal["none", "sqrt", "tanh"]


class Dot(Choice):
    """Dot-product bias ``ℓ = −⟨y, v⟩``: GD gives the Hebbian write ``+η v kᵀ``."""

    axis: ClassVar[str] = "bias"
    ref: ClassVar[str] = "[M] Eq 8; [A] Eq 19"
    kind: Literal["dot"] = "dot"


class L2(Choice):
    """ℓ2 regression ``ℓ = ½‖y − v‖²`` (the delta rule)."""

    axis: ClassVar[str] = "bias"
    ref: ClassVar[str] = "[M] Eq 9; [T] Eq 12 (with ½ as in App C)"
    kind: Literal["l2"] = "l2"


class L1(Choice):
    """ℓ1 regression ``ℓ = ‖y − v‖₁`` ('value-less' memory); sign smoothed per ``smooth``."""

    axis: ClassVar[str] = "bias"
    ref: ClassVar[str] = "[M] Eq 12, Remark 5"
    kind: Literal["l1"] = "l1"
    smooth: Smooth = P("sqrt", "|x| ≈ sqrt(x² + eps) ('sqrt'), sign ≈ tanh(sharpness·x)")
    eps: float = P(1e-6, "epsilon of the sqrt smoothing", ge=0)
    sharpness: float = P(10.0, "slope of the tanh smoothing of sign", gt=0)


class Lp(Choice):
    """ℓp regression ``ℓ = ‖y − v‖_p^p`` (Moneta uses p = 3); ``lp(p=2)`` is ``2·l2``."""

    axis: ClassVar[str] = "bias"
    ref: ClassVar[str] = "[M] Eq 10-11, Remark 5"
    kind: Literal["lp"] = "lp"
    p: float = P(3.0, "the exponent p", ge=1, le=16, learnable=False)
    smooth: Smooth = P("sqrt", "|x| ≈ sqrt(x² + eps) ('sqrt'), sign ≈ tanh(sharpness·x)")
    eps: float = P(1e-6, "epsilon of the sqrt smoothing", ge=0)
    sharpness: float = P(10.0, "slope of the tanh smoothing of sign", gt=0)


class Huber(Choice):
    """Yaad's switch: the ℓ2 gradient when ``‖y − v‖₂ ≤ δ``, else ``δ`` times the ℓ1 gradient."""

    axis: ClassVar[str] = "bias"
    ref: ClassVar[str] = "[M] Eq 16, 26 (Yaad)"
    kind: Literal["huber"] = "huber"
    delta: Scalar = P(Const(value=1.0), "threshold δ", gt=0, role="delta", channel_ok=False)


class HuberCoord(Choice):
    """Coordinate-wise Huber ``ℓ = Σ_j H_δ(y_j − v_j)``."""

    axis: ClassVar[str] = "bias"
    ref: ClassVar[str] = "[M] Eq 13-14"
    kind: Literal["huber_coord"] = "huber_coord"
    delta: Scalar = P(Const(value=1.0), "threshold δ", gt=0, role="delta")


class HuberNorm(Choice):
    """Huber on the error norm ``ℓ = H_δ(‖y − v‖₂)``."""

    axis: ClassVar[str] = "bias"
    ref: ClassVar[str] = "[M] Eq 15"
    kind: Literal["huber_norm"] = "huber_norm"
    delta: Scalar = P(Const(value=1.0), "threshold δ", gt=0, role="delta", channel_ok=False)


class RobustShift(Choice):
    """Robust to value shifts: ``max_{‖δv‖≤Δ} ½‖y − v − δv‖² = ½‖e‖² + Δ‖e‖ + ½Δ²``."""

    axis: ClassVar[str] = "bias"
    ref: ClassVar[str] = "[M] Eq 17"
    kind: Literal["robust_shift"] = "robust_shift"
    radius: Scalar = P(Const(value=0.1), "radius Δ of the value perturbation", ge=0,
                       role="delta", channel_ok=False)


class UserBias(Choice):
    """A bias defined by formula in the spec (``bias NAME(params) = expr``)."""

    axis: ClassVar[str] = "bias"
    kind: Literal["user"] = "user"
    definition: BiasDef
    args: tuple[UserArg, ...] = ()


# ---- retention gate ------------------------------------------------------------------------


class NoRetention(Choice):
    """No retention: the memory keeps everything it wrote."""

    axis: ClassVar[str] = "retention"
    ref: ClassVar[str] = "[M] Table 1 ('–' rows)"
    kind: Literal["none"] = "none"


class Decay(Choice):
    """Multiplicative decay: the memory keeps the fraction ``alpha`` per token.

    ``at=prev`` takes the gradient at the previous memory (Titans:
    ``M_t = α M_{t−1} − η∇ℓ(M_{t−1})``); ``at=decayed`` takes it at the decayed memory
    (Gated DeltaNet: ``M_t = α M_{t−1} − η∇ℓ(α M_{t−1})``).
    """

    axis: ClassVar[str] = "retention"
    ref: ClassVar[str] = "[M] Eq 8-9; [T] Eq 13-14; Gated DeltaNet"
    kind: Literal["decay"] = "decay"
    alpha: Scalar = P(Const(value=1.0), "fraction of the memory kept", ge=0, le=1, role="decay")
    at: Literal["prev", "decayed"] = P("prev", "where the gradient is taken")


class Lq(Choice):
    """ℓq memory stability (Moneta): ``A_t = α A_{t−1} − η∇ℓ``, ``W_t = A_t / ‖A_t‖_r^{r−2}``.

    ``form=moneta`` normalises with r = q as Moneta's Eq 24 prints; ``form=ftrl`` with the
    dual exponent r = q/(q−1) of the FTRL derivation (V4). q = 2 is plain decay.
    """

    axis: ClassVar[str] = "retention"
    ref: ClassVar[str] = "[M] §5.2 V4, Eq 24 (Moneta)"
    kind: Literal["lq"] = "lq"
    q: float = P(4.0, "the exponent q", gt=1, le=16, learnable=False)
    alpha: Scalar = P(Const(value=1.0), "decay of the accumulator A", ge=0, le=1, role="decay")
    form: Literal["moneta", "ftrl"] = P("moneta", "which normalisation exponent (see above)")


class KL(Choice):
    """KL / entropy retention (Memora): ``W_t = c·Softmax(α log W_{t−1} − η∇ℓ)``.

    ``axis`` chooses the softmax slice (the paper leaves it open): each row of each weight
    matrix (default, stable), or all entries of a weight matrix.
    """

    axis: ClassVar[str] = "retention"
    ref: ClassVar[str] = "[M] Eq 19-21, 27 (Memora)"
    kind: Literal["kl"] = "kl"
    alpha: Scalar = P(Const(value=1.0), "weight α of log W_{t−1} (1 − λ)", ge=0, le=1,
                      role="decay")
    scale: float = P(1.0, "total mass c of each softmax slice", gt=0)
    softmax_axis: Literal["row", "all"] = P("row", "the softmax slice")


class ElasticNet(Choice):
    """Elastic-net retention: ``W_t = S_γ(α W_{t−1} − η∇ℓ)`` (soft-threshold S_γ).

    ``form=retaining`` is V2 (Learning-Retaining, Eq 22); ``form=ftrl`` is V3
    (``A_t = A_{t−1} − η∇ℓ``, ``W_t = S_γ(A_t)``, Eq 23). ``smooth`` uses the surrogate
    ``|z|·atan(z/γ)/(π/2)``.
    """

    axis: ClassVar[str] = "retention"
    ref: ClassVar[str] = "[M] §5.2 V2-V3, Eq 22-23"
    kind: Literal["elastic_net"] = "elastic_net"
    alpha: Scalar = P(Const(value=1.0), "ℓ2 shrinkage λ (fraction kept)", ge=0, le=1,
                      role="decay")
    threshold: Scalar = P(Const(value=1e-3), "soft-threshold γ", ge=0)
    form: Literal["retaining", "ftrl"] = P("retaining", "V2 or V3 (see above)")
    smooth: bool = P(False, "use the smooth surrogate of the soft-threshold")


class SoftThreshold(Choice):
    """Proximal ℓ1 step: ``W_t = S_γ(W_{t−1} − η∇ℓ)``, ``S_γ(z) = sign(z)·max(0, |z| − γ)``."""

    axis: ClassVar[str] = "retention"
    ref: ClassVar[str] = "[M] Eq 22 (λ = 1)"
    kind: Literal["soft_threshold"] = "soft_threshold"
    threshold: Scalar = P(Const(value=1e-3), "soft-threshold γ", ge=0)
    smooth: bool = P(False, "use the smooth surrogate of the soft-threshold")


class FDiv(Choice):
    """f-divergence retention on the scaled simplex: ``W_t = W_{t−1} ⊙ g(−ζ − η∇ℓ)``.

    ``g = (f′)⁻¹``; ζ normalises every slice to total mass ``scale``.
    """

    axis: ClassVar[str] = "retention"
    ref: ClassVar[str] = "[M] §5.2 V1, Eq 18"
    kind: Literal["fdiv"] = "fdiv"
    f: Literal["kl", "hellinger"] = P("kl", "the f of the divergence (τ log τ or (√τ − 1)²)")
    scale: float = P(1.0, "total mass c of each slice", gt=0)


class Bregman(Choice):
    """Bregman retention / mirror descent: ``W_t = (F′)⁻¹(α F′(W_{t−1}) − η∇ℓ)``.

    ``potential`` is F per entry: ``quadratic`` (τ²/2: plain decayed GD), ``entropy``
    (τ log τ: an exponentiated update), ``logit`` (entries stay in (0, 1): a sigmoid update).
    """

    axis: ClassVar[str] = "retention"
    ref: ClassVar[str] = "[M] §5.2 V5"
    kind: Literal["bregman"] = "bregman"
    potential: Literal["quadratic", "entropy", "logit"] = P("entropy", "the potential F")
    alpha: Scalar = P(Const(value=1.0), "weight α of F′(W_{t−1})", ge=0, le=1, role="decay")


class UserRetention(Choice):
    """A retention defined by formula in the spec."""

    axis: ClassVar[str] = "retention"
    kind: Literal["user"] = "user"
    definition: RetentionDef
    args: tuple[UserArg, ...] = ()


# ---- memory learning algorithm -------------------------------------------------------------


class GD(Choice):
    """Gradient descent: ``U_t = −lr·∇ℓ`` (``steps`` > 1: several steps per token, MGD)."""

    axis: ClassVar[str] = "algorithm"
    ref: ClassVar[str] = "[M] Eq 5"
    kind: Literal["gd"] = "gd"
    lr: Scalar = P(Const(value=1.0), "learning rate η (multiplies the gradient)", gt=0, role="lr")
    steps: int = P(1, "gradient steps per token (MGD, DeltaProduct-style)", ge=1, le=8)


class Momentum(Choice):
    """GD with momentum: ``S_t = beta·S_{t−1} − lr·∇ℓ``, ``U_t = S_t`` (Titans' surprise)."""

    axis: ClassVar[str] = "algorithm"
    ref: ClassVar[str] = "[T] Eq 13-14"
    kind: Literal["momentum"] = "momentum"
    lr: Scalar = P(Const(value=1.0), "learning rate θ (multiplies the gradient)", gt=0, role="lr")
    beta: Scalar = P(Const(value=0.9), "momentum decay η (multiplies S_{t−1})", ge=0, le=1,
                     role="momentum")


class Muon(Choice):
    """Muon: momentum, then ``U_t = −lr·NS_steps(S_t)`` (Newton–Schulz orthogonalisation).

    ``X₀ = G/(‖G‖_F + 1e-7)``; quintic iteration with (3.4445, −4.7750, 2.0315).
    """

    axis: ClassVar[str] = "algorithm"
    ref: ClassVar[str] = "[A] Eq 32-33, 57-58; Muon (Jordan et al.)"
    kind: Literal["muon"] = "muon"
    lr: Scalar = P(Const(value=1.0), "learning rate η", gt=0, role="lr")
    beta: Scalar = P(Const(value=0.9), "momentum decay θ", ge=0, le=1, role="momentum")
    steps: int = P(5, "Newton–Schulz iterations", ge=1, le=16)


class ImplicitGD(Choice):
    """Implicit (proximal) GD, Longhorn's closed form for ℓ2 and matrix memory.

    ``M_t = M_{t−1} − δ_t (M_{t−1}k − v) kᵀ`` with ``δ_t = lr/(1 + lr·kᵀk)``.
    """

    axis: ClassVar[str] = "algorithm"
    ref: ClassVar[str] = "[M] Table 1 (Longhorn); [T] Eq 35"
    kind: Literal["implicit_gd"] = "implicit_gd"
    lr: Scalar = P(Const(value=1.0), "step β", gt=0, role="lr")


class NonparametricAlg(Choice):
    """Non-parametric 'learning': append (k, v) and read by kernel regression."""

    axis: ClassVar[str] = "algorithm"
    ref: ClassVar[str] = "[M] Table 1 (Transformer row)"
    kind: Literal["nonparametric"] = "nonparametric"


# ---- feature map φ (applied to keys and queries) --------------------------------------------


class Identity(Choice):
    """``φ(x) = x``."""

    axis: ClassVar[str] = "feature"
    kind: Literal["identity"] = "identity"


class Poly(Choice):
    """Polynomial features ``φ(x) = [√a_i x^{⊗i}]_{i ≤ degree}``, ``a_i`` initialised 1/i!."""

    axis: ClassVar[str] = "feature"
    ref: ClassVar[str] = "[A] Eq 5, 22; Prop 2"
    kind: Literal["poly"] = "poly"
    degree: int = P(2, "highest degree", ge=1, le=4)
    learnable: bool = P(True, "train the coefficients a_i")


class ExpTaylor(Choice):
    """Truncated exponential map ``φ*(x) = (1, x, x^{⊗2}/√2!, …)`` up to ``order``."""

    axis: ClassVar[str] = "feature"
    ref: ClassVar[str] = "[A] Eq 22-23"
    kind: Literal["exp_taylor"] = "exp_taylor"
    order: int = P(2, "highest order", ge=1, le=4)


class Sketch(Choice):
    """PolySketch features: a degree-``degree`` polynomial kernel sketched to ``dim`` dims.

    Random Gaussian sketch, or the learned sketch of PolySketchFormer (``learned=true``).
    """

    axis: ClassVar[str] = "feature"
    ref: ClassVar[str] = "[P] polysketch_attention.py, sketch_layer.py"
    kind: Literal["sketch"] = "sketch"
    dim: int = P(32, "sketch size r", ge=1, le=1024)
    degree: int = P(4, "polynomial degree (even)", ge=2, le=8, even=True)
    learned: bool = P(False, "learned sketch instead of a random one")


class UserFeature(Choice):
    """A feature map defined by formula in the spec."""

    axis: ClassVar[str] = "feature"
    kind: Literal["user"] = "user"
    definition: FeatureDef
    args: tuple[UserArg, ...] = ()


# ---- window (Omega rule / sliding-window attention) -----------------------------------------


class NoWindow(Choice):
    """The online rule: each update uses the current token only (c = 1)."""

    axis: ClassVar[str] = "window"
    kind: Literal["none"] = "none"


class Sliding(Choice):
    """The Omega rule: the loss sums the last ``size`` tokens weighted by gates ``gamma``.

    For non-parametric memory it is the attention window.
    """

    axis: ClassVar[str] = "window"
    ref: ClassVar[str] = "[A] Eq 8-10, §3.3"
    kind: Literal["sliding"] = "sliding"
    size: int = P(4, "window length c", ge=1, le=1_000_000)
    gamma: Scalar = P(Const(value=1.0), "weight γ of each token in the window", ge=0, le=1,
                      role="gamma")


# ---- parallel form --------------------------------------------------------------------------


class Recurrent(Choice):
    """Token by token (the reference)."""

    axis: ClassVar[str] = "parallel"
    kind: Literal["recurrent"] = "recurrent"


class Chunk(Choice):
    """Chunk-parallel: gradients inside a chunk are taken at the chunk's starting memory."""

    axis: ClassVar[str] = "parallel"
    ref: ClassVar[str] = "[T] §3.2; [M] §5.4; [A] §3.3"
    kind: Literal["chunk"] = "chunk"
    size: int = P(64, "chunk length", ge=1, le=65536)


class Exact(Choice):
    """Exact chunk-parallel form (WY/UT transform): equal to the token-by-token recurrence.

    Only for updates affine in the memory weights (DeltaNet, Gated DeltaNet, ...).
    """

    axis: ClassVar[str] = "parallel"
    ref: ClassVar[str] = "DeltaNet / Gated DeltaNet chunkwise form"
    kind: Literal["exact"] = "exact"
    size: int = P(64, "chunk length", ge=1, le=65536)


# ---- hybrid ---------------------------------------------------------------------------------


class NoHybrid(Choice):
    """The memory layer alone."""

    axis: ClassVar[str] = "hybrid"
    kind: Literal["none"] = "none"


class MAC(Choice):
    """Memory as Context: attention over [persistent ‖ memory read ‖ segment]."""

    axis: ClassVar[str] = "hybrid"
    ref: ClassVar[str] = "[T] §4.1, Eq 21-25"
    kind: Literal["mac"] = "mac"
    segment: int = P(512, "segment length C", ge=1, le=1_000_000)
    persistent: int = P(16, "number of persistent tokens N_p", ge=0, le=4096)


class MAG(Choice):
    """Memory as Gate: sliding-window attention gated with the memory branch."""

    axis: ClassVar[str] = "hybrid"
    ref: ClassVar[str] = "[T] §4.2, Eq 26-28"
    kind: Literal["mag"] = "mag"
    window: int = P(512, "attention window", ge=1, le=1_000_000)
    persistent: int = P(16, "number of persistent tokens N_p", ge=0, le=4096)


class MAL(Choice):
    """Memory as Layer: the memory layer followed by sliding-window attention."""

    axis: ClassVar[str] = "hybrid"
    ref: ClassVar[str] = "[T] §4.3, Eq 29-31"
    kind: Literal["mal"] = "mal"
    window: int = P(512, "attention window", ge=1, le=1_000_000)
    persistent: int = P(16, "number of persistent tokens N_p", ge=0, le=4096)


class Samba(Choice):
    """'-H' stacking: memory layers and sliding-window attention layers alternate."""

    axis: ClassVar[str] = "hybrid"
    ref: ClassVar[str] = "[M] §5.4 (Moneta-H, Yaad-H, Memora-H)"
    kind: Literal["samba"] = "samba"
    window: int = P(2048, "attention window", ge=1, le=1_000_000)


def _union(*classes: type) -> Any:
    return Annotated[Union[classes], Field(discriminator="kind")]  # noqa: UP007


Memory = _union(Vector, Matrix, MLP, GatedMLP, Nonparametric)
Bias = _union(Dot, L2, L1, Lp, Huber, HuberCoord, HuberNorm, RobustShift, UserBias)
Retention = _union(NoRetention, Decay, Lq, KL, ElasticNet, SoftThreshold, FDiv, Bregman,
                   UserRetention)
Algorithm = _union(GD, Momentum, Muon, ImplicitGD, NonparametricAlg)
Feature = _union(Identity, Poly, ExpTaylor, Sketch, UserFeature)
Window = _union(NoWindow, Sliding)
Parallel = _union(Recurrent, Chunk, Exact)
Hybrid = _union(NoHybrid, MAC, MAG, MAL, Samba)


# --------------------------------------------------------------------------------------------
# Model and program
# --------------------------------------------------------------------------------------------


class Model(IRNode):
    """One sequence-model layer: the four Miras choices and their surroundings."""

    name: str
    memory: Memory = P(..., "memory architecture")
    bias: Bias = P(..., "attentional bias: the inner loss the memory minimises")
    retention: Retention = P(..., "retention gate: how the memory forgets")
    algorithm: Algorithm = P(..., "memory learning algorithm")
    feature: Feature = P(Identity(), "feature map φ applied to keys and queries")
    window: Window = P(NoWindow(), "Omega sliding window (or the attention window)")
    parallel: Parallel = P(Chunk(), "training form")
    heads: int | None = P(None, "number of heads (None: the layer decides)", ge=1, le=4096)
    head_dim: int | None = P(None, "head dimension (None: the layer decides)", ge=1, le=4096)
    read: Literal["after_write", "before_write"] = P(
        "after_write", "token t reads the memory after (default) or before its own write")
    hybrid: Hybrid = P(NoHybrid(), "hybrid with attention (built by the hybrid issue)")


class Program(IRNode):
    """Everything a file declares, included files first, in source order."""

    definitions: tuple[Definition, ...] = ()
    models: tuple[Model, ...] = ()

    @property
    def main(self) -> str | None:
        """The default model: the last one declared (a file's own models follow its includes)."""
        return self.models[-1].name if self.models else None

    def model(self, name: str | None = None) -> Model:
        """The model called ``name``, or the main model."""
        wanted = name or self.main
        for m in self.models:
            if m.name == wanted:
                return m
        raise KeyError(f"no model named {wanted!r}")


for _cls in (Neg, BinOp, Cmp, Fn, PerHead, ParamDef, BiasDef, RetentionDef, FeatureDef, ActDef,
             UserArg, Model, Program):
    _cls.model_rebuild()
