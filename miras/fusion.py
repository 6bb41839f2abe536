"""Which fused Triton kernel family a model belongs to, or the one reason it has none.

Four families are generated from ``templates/triton/`` with the symbolic engine's printed
Triton code for the bias gradient (and its vector-Jacobian product for the backward pass) and
for the memory's activation with its first two derivatives:

``dual``
    matrix memory (any feature map, applied before the kernel), any bias the symbolic engine
    differentiates, retention ``none`` or ``decay(at=prev)``, GD / momentum / implicit GD,
    Omega window ``c ≤ 16``: chunk-parallel with gradients at the chunk anchor (the dual form).
    A channel-wise decay (on the key dim: GLA) with GD or implicit GD, no window and an
    element-wise feature map.
``exact``
    matrix memory whose update is affine in the weights (``l2``, ``dot``, ``lp(2)`` biases) with
    ``parallel = exact``, GD or implicit GD with a scalar lr, decay ``at=prev`` or ``decayed``:
    DeltaNet, Gated DeltaNet, Longhorn with a per-head step — the WY/UT chunk form, equal to
    the per-token recurrence.
``scan``
    matrix memory with a nonlinear retention (``lq``, ``kl``, ``fdiv``, ``bregman``, a user
    retention, ``elastic_net``, ``soft_threshold``): any feature map and bias as for
    ``dual``, GD / momentum / implicit GD, Omega window ``c ≤ 16``, a channel-wise decay
    (with an element-wise feature map). Per chunk the gradients at the anchor in matmul form,
    then the linear scan ``Z_t = α_t Z_{t−1} + U_t`` one token at a time on chip with the
    per-token weights ``W_t = R(β_t M + Z_t)`` (softmax, p-norm normalisation, mirror map,
    soft-threshold) read by ``φ(q_t)``; the backward recomputes each chunk's scan from its
    checkpoint. The same retentions on a one- or two-layer MLP memory (residual or not, any
    activation, output norm none / layernorm / rmsnorm, hidden ≤ 4·head_dim) with GD or
    momentum, no window, no feature map and constant bias parameters
    (``scan_mlp.py.jinja``): the map acts on each weight matrix, a channel-wise decay on W0's
    input columns and W1's output rows (``ops.channel_scale``), and each token reads
    ``M_{W_t}(q_t)`` with the whole per-token weights on chip: Moneta, Memora.
``mlp``
    one- or two-layer MLP memory or the gated MLP (Atlas++'s ``x + W_out(act(W_in x) ⊙
    W_gate x)``), residual or not, any activation, output norm none / layernorm / rmsnorm
    (TTT-Linear, TTT-MLP), hidden ≤ 4·head_dim, retention ``none`` / ``decay(at=prev)``, GD
    or momentum: chunk-anchored (the dual form per layer). Any feature map (applied before
    the kernel; the residual adds the raw key / query; feature dim ≤ 128): DeepTransformer,
    DLA. Omega window ``c ≤ 16`` with a scalar lr (the c − 1 tokens before a chunk join its
    gradient rows): Dot, SWDT, OmegaNet. Bias parameters that are gates or learned values
    (one per head and token; the other families need constants), read per token beside the
    gradient rows, with their gradients: Yaad's ``huber(delta=gate)``, Cauchy's learned scale.
    A channel-wise decay (``ops.channel_scale``: the input columns of W0 / W_gate, the output
    rows of W1; rows paired through e^(g_t − g_j) ≤ 1) with GD or implicit GD, no window, and
    an element-wise feature map: Yaad.
``muon``
    Muon (momentum orthogonalised by Newton–Schulz) on matrix memory, a one- or two-layer
    MLP memory or the gated MLP (residual or not, any activation, output norm none /
    layernorm / rmsnorm), hidden ≤ 4·head_dim, any feature map (applied before the kernel;
    the residual adds the raw key / query), retention ``none`` / ``decay(at=prev)`` with
    scalar gates, scalar or channel-wise lr (not both a channel-wise lr and a feature map),
    constant bias parameters, Omega window ``c ≤ 16`` (γ-weighted; the c − 1 tokens before a
    chunk join its gradient rows): the inner gradients at the chunk anchor, then token by
    token on chip ``S ← βS + Σ_window γ g``, ``W ← αW − η NS(S)`` and the read. Atlas, its
    hybrids and Atlas++.

Everything else runs the PyTorch chunk path; :func:`decide` says why in one line.

>>> import miras
>>> print(decide(miras.load("examples/longhorn.miras")).reason)
a channel-wise lr in the exact chunk form is not fused (one UT system per value channel)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from miras import ir
from miras.symbolic import NewtonSchulz, lower
from miras.symbolic.errors import SymbolicError

#: The families whose templates are generated today (the others fall back with a reason).
BUILT: frozenset[str] = frozenset({"dual", "exact", "mlp", "muon", "scan"})

#: Largest Omega window the dual, scan and mlp kernels keep on chip.
MAX_WINDOW = 16


@dataclass(frozen=True)
class Fusion:
    """The fused family of a model (``None``: the PyTorch chunk path) and why."""

    family: str | None
    reason: str = ""


def _gate_channel(value: Any) -> bool:
    return bool(getattr(value, "channel", False))


def _common(m: ir.Model) -> str | None:
    """Reasons shared by every family (``None``: nothing blocks fusion)."""
    ret, alg = m.retention, m.algorithm
    if isinstance(m.memory, ir.Nonparametric):
        return "non-parametric memory is attention: it runs through scaled_dot_product_attention"
    if not isinstance(alg, ir.GD | ir.Momentum | ir.Muon | ir.ImplicitGD):
        return f"algorithm '{alg.kind}' has no fused kernel"
    if isinstance(alg, ir.GD) and alg.steps > 1:
        return "multi-step GD re-anchors inside a token; only one step is fused"
    if not isinstance(ret, ir.NoRetention | ir.Decay) and not (
            isinstance(ret, SCAN_RETENTIONS) and isinstance(m.memory, ir.Matrix | ir.MLP)):
        return (f"retention '{ret.kind}' is nonlinear in the weights (needs per-token weights); "
                f"fused retention on {m.memory.kind} memory is none or decay")
    if (isinstance(ret, ir.Decay) and _gate_channel(ret.alpha)
            and not (isinstance(m.memory, ir.Matrix | ir.MLP | ir.GatedMLP)
                     and not isinstance(m.parallel, ir.Exact))):
        return "a channel-wise decay gate is not fused (scalar per head and token only)"
    if isinstance(alg, ir.Momentum | ir.Muon) and _gate_channel(alg.beta):
        return "a channel-wise momentum gate is not fused (scalar per head and token only)"
    if m.read == "before_write":
        return "read = before_write is not fused"
    if lower.bias_triton(m.bias)["uses_k"]:
        return "a bias that reads the key is not fused"
    for name, value in _bias_params(m.bias):
        if isinstance(value, ir.Const):
            continue
        if not isinstance(m.memory, ir.MLP | ir.GatedMLP):
            return (f"bias parameter '{name}' must be a constant to be fused (a gate or "
                    "learned value is fused in the mlp family only)")
        if _gate_channel(value):
            return f"a channel-wise bias parameter '{name}' is not fused (one per token only)"
    return None


def _bias_params(bias: ir.Bias) -> list[tuple[str, Any]]:
    """The bias's hyper-parameters as ``(name, value)``: a user bias's arguments, or a
    built-in's ``delta`` / ``radius`` (names as the spec writes them)."""
    out = [(a.name, a.value) for a in getattr(bias, "args", ())]
    out += [(n, getattr(bias, n)) for n in ("delta", "radius") if hasattr(bias, n)]
    return out


def _depth(mem: ir.Memory) -> int:
    """Weight layers from input to output: the gated MLP is two deep (W_in and W_gate side
    by side, then W_out)."""
    return 2 if isinstance(mem, ir.GatedMLP) else int(getattr(mem, "depth", 1))


def _window(m: ir.Model) -> int:
    return m.window.size if isinstance(m.window, ir.Sliding) else 1


def _window_limit(m: ir.Model, window: int) -> str | None:
    """Why the dual, scan and mlp kernels cannot run this Omega window (``None``: they can)."""
    if window > MAX_WINDOW:
        return f"an Omega window of {window} tokens is more than the fused kernel's {MAX_WINDOW}"
    if window > 1 and _gate_channel(getattr(m.algorithm, "lr", None)):
        return ("a channel-wise lr with an Omega window is not fused (its coefficients differ "
                "per channel)")
    return None


def _channel_decay(m: ir.Model, window: int) -> str | None:
    """Why the dual or mlp kernels cannot run a channel-wise decay (``None``: they can)."""
    # (a feature map that widens φ(k) is refused with a channel-wise decay by validation, E136)
    if isinstance(m.algorithm, ir.Momentum):
        return "a channel-wise decay with momentum is not fused (the two scans mix per channel)"
    if window > 1:
        return "a channel-wise decay with an Omega window is not fused"
    return None


def _anchored_limits(m: ir.Model, window: int) -> str | None:
    """Why the dual or mlp kernels cannot run this window or channel-wise decay."""
    why = _window_limit(m, window)
    if why is None and isinstance(m.retention, ir.Decay) and _gate_channel(m.retention.alpha):
        why = _channel_decay(m, window)
    return why


def _mlp_size(mem: ir.MLP | ir.GatedMLP, what: str) -> str | None:
    """Why no fused kernel holds this MLP's layers; ``what`` names the case in the reason
    (``"MLP memory"``, ``"Muon on an MLP memory"``, ...)."""
    if isinstance(mem, ir.MLP) and mem.depth > 2:
        return f"{what} of depth {mem.depth} is not fused (depth 1 and 2 are)"
    if _depth(mem) == 2 and mem.expansion > 4:
        return f"{what} wider than 4 × head_dim is not fused"
    return None


def _runtime_bias_param(m: ir.Model) -> str | None:
    """The first bias parameter that is a gate or a learned value (``None``: all constants)."""
    return next((n for n, v in _bias_params(m.bias) if not isinstance(v, ir.Const)), None)


def affine(bias: ir.Bias) -> tuple[float, float] | None:
    """``(a, b)`` with ``∂ℓ/∂y = a·y − b·v`` for the affine built-in biases, else ``None``."""
    if isinstance(bias, ir.L2):
        return (1.0, 1.0)
    if isinstance(bias, ir.Dot):
        return (0.0, 1.0)
    if isinstance(bias, ir.Lp) and bias.p == 2:
        return (2.0, 2.0)
    return None


#: Nonlinear retentions whose per-token weights the 'scan' kernels compute (matrix or MLP
#: memory).
SCAN_RETENTIONS = (ir.Lq, ir.KL, ir.FDiv, ir.Bregman, ir.UserRetention, ir.ElasticNet,
                   ir.SoftThreshold)


def _scan(m: ir.Model) -> Fusion:
    """The 'scan' family (matrix or MLP memory, nonlinear retention), or why it falls back."""
    ret = m.retention
    if isinstance(m.parallel, ir.Exact):
        return Fusion(None, f"parallel = exact with retention '{ret.kind}' runs the per-token "
                      "recurrence (not fused)")
    why = _window_limit(m, _window(m))
    if why:
        return Fusion(None, why)
    if _gate_channel(getattr(ret, "threshold", None)):
        return Fusion(None, f"a channel-wise threshold in retention '{ret.kind}' is not fused "
                      "(scalar per head and token only)")
    if isinstance(ret, ir.Bregman | ir.UserRetention):
        try:
            lower.retention_triton(ret)
        except SymbolicError as e:
            return Fusion(None, f"the mirror map of retention '{ret.kind}' has no printed "
                          f"Triton form ({e})")
    if isinstance(m.memory, ir.MLP):
        why = _scan_mlp(m)
        if why:
            return Fusion(None, why)
    return Fusion("scan")


def _scan_mlp(m: ir.Model) -> str | None:
    """Why the 'scan' kernels cannot run ``m``'s MLP memory (``None``: they can): the
    per-token weights of each layer stay whole on chip, token by token (scan_mlp.py.jinja)."""
    mem, ret = m.memory, m.retention
    head = f"retention '{ret.kind}' on an MLP memory"
    why = _mlp_size(mem, head)
    if why:
        return why
    if not isinstance(m.algorithm, ir.GD | ir.Momentum):
        return f"{head} is fused with GD or momentum only (not '{m.algorithm.kind}')"
    if _window(m) > 1:
        return f"{head} with an Omega window is not fused"
    if not isinstance(m.feature, ir.Identity):
        return f"{head} with a feature map is not fused"
    if (name := _runtime_bias_param(m)) is not None:
        return f"{head} with bias parameter '{name}' not a constant is not fused"
    if isinstance(ret, ir.UserRetention) and ret.definition.regularizer is not None:
        return f"{head} with a regulariser is not fused"
    return None


def _muon(m: ir.Model) -> Fusion:
    """The 'muon' family (Newton–Schulz on chip, token by token), or why a Muon spec is not
    in it. ``_common`` has already passed ``m``."""
    mem, ret = m.memory, m.retention
    if isinstance(m.parallel, ir.Exact):
        return Fusion(None, "Muon with parallel = exact is not fused (chunk anchoring is)")
    if not isinstance(ret, ir.NoRetention | ir.Decay):
        return Fusion(None, f"Muon with retention '{ret.kind}' is not fused (none or decay is)")
    if (name := _runtime_bias_param(m)) is not None:
        return Fusion(None, f"Muon with bias parameter '{name}' not a constant is not fused")
    if isinstance(ret, ir.Decay) and (ret.at != "prev" or _gate_channel(ret.alpha)):
        return Fusion(None, "Muon is fused with decay(at=prev) and a scalar decay gate only")
    if _window(m) > MAX_WINDOW:
        return Fusion(None, f"an Omega window of {_window(m)} tokens is more than the fused "
                      f"kernel's {MAX_WINDOW}")
    # (η multiplies NS(S_t) after the window's sum: a channel-wise lr is no obstacle to it)
    if _gate_channel(getattr(m.algorithm, "lr", None)) and not isinstance(m.feature,
                                                                         ir.Identity):
        return Fusion(None, "Muon with a channel-wise lr and a feature map is not fused")
    if isinstance(mem, ir.Matrix):
        return Fusion("muon")
    if not isinstance(mem, ir.MLP | ir.GatedMLP):
        return Fusion(None, f"Muon on {mem.kind} memory is not fused (matrix, 1- or 2-layer "
                      "and gated MLP are)")
    why = _mlp_size(mem, "Muon on an MLP memory")
    return Fusion(None, why) if why else Fusion("muon")


def _family(m: ir.Model) -> Fusion:
    why = _common(m)
    if why:
        return Fusion(None, why)
    if isinstance(m.algorithm, ir.Muon):
        return _muon(m)
    mem, ret = m.memory, m.retention
    if isinstance(ret, SCAN_RETENTIONS):
        return _scan(m)
    window = _window(m)
    if isinstance(m.parallel, ir.Exact):
        if not isinstance(mem, ir.Matrix):
            return Fusion(None, "the exact chunk form is fused for matrix memory only")
        if not lower.bias_triton(m.bias)["affine"]:
            return Fusion(None, "the exact chunk form needs a bias whose gradient is affine in y")
        if window > 1 or isinstance(m.algorithm, ir.Momentum):
            return Fusion(None, "the exact chunk form is fused for GD without a window")
        if affine(m.bias) is None:
            return Fusion(None, "the exact chunk form is fused for the l2, dot and lp(2) biases")
        if _gate_channel(getattr(m.algorithm, "lr", None)):
            return Fusion(None, "a channel-wise lr in the exact chunk form is not fused (one "
                          "UT system per value channel)")
        return Fusion("exact")
    if isinstance(ret, ir.Decay) and ret.at != "prev":
        return Fusion(None, "decay(at=decayed) with chunk anchoring is not fused (use at=prev "
                      "or parallel = exact)")
    if isinstance(mem, ir.Matrix):
        why = _anchored_limits(m, window)
        return Fusion(None, why) if why else Fusion("dual")
    if isinstance(mem, ir.MLP | ir.GatedMLP):
        why = _mlp_size(mem, "MLP memory") or _anchored_limits(m, window)
        return Fusion(None, why) if why else Fusion("mlp")
    return Fusion(None, f"{mem.kind} memory is not fused (matrix, 1- or 2-layer and gated MLP "
                  "are)")


def decide(m: ir.Model) -> Fusion:
    """The family of ``m`` if its template is generated, else the reason it falls back."""
    f = _family(m)
    if f.family is not None and f.family not in BUILT:
        return Fusion(None, f"the fused '{f.family}' kernels are not generated yet")
    return f


def kernel_info(m: ir.Model) -> dict[str, Any]:
    """Plain data for ``templates/triton`` (``family`` is ``None`` with a ``reason``)."""
    f = decide(m)
    out: dict[str, Any] = {"family": f.family, "reason": f.reason}
    if f.family is None:
        return out
    bias = lower.bias_triton(m.bias)
    # a user bias's parameters are named p_<name> in the printed code
    user = isinstance(m.bias, ir.UserBias)
    consts = [(lower.user_name(n) if user else n, float(v.value))
              for n, v in _bias_params(m.bias) if isinstance(v, ir.Const)]
    out["bias"] = {"grad": bias["grad"], "vjp": bias["vjp"], "separable": bias["separable"],
                   "consts": [c for c in consts if c[0] in bias["params"]],
                   # gates and learned values (mlp family only, _common): code names, which
                   # are also their slot names; the kernels read them per token [B, H, T]
                   "runtime": [p for p in bias["params"] if p not in dict(consts)]}
    act = getattr(m.memory, "act", "identity")
    out["act"] = lower.act_triton(act)
    out["residual"] = bool(getattr(m.memory, "residual", False))
    out["depth"] = _depth(m.memory)
    out["gated"] = isinstance(m.memory, ir.GatedMLP)
    out["feature"] = "user" if isinstance(m.feature, ir.UserFeature) else m.feature.kind
    out["norm"] = str(getattr(m.memory, "norm", "none"))
    out["window"] = _window(m)
    out["algorithm"] = m.algorithm.kind
    out["retention"] = m.retention.kind
    out["decay_at"] = getattr(m.retention, "at", "prev")
    out["affine"] = affine(m.bias)
    if isinstance(m.algorithm, ir.Muon):
        ns = NewtonSchulz(int(m.algorithm.steps))
        out["ns"] = {"steps": ns.steps, "a": ns.a, "b": ns.b, "c": ns.c, "eps": ns.eps}
        out["expansion"] = float(getattr(m.memory, "expansion", 1.0))
        out["matrix"] = isinstance(m.memory, ir.Matrix)
    if f.family == "scan":
        out["scan"] = _scan_info(m.retention)
        # an MLP memory: scan_mlp.py.jinja (the per-token weights of each layer)
        out["scan"]["mlp"] = isinstance(m.memory, ir.MLP)
        out["expansion"] = float(getattr(m.memory, "expansion", 1.0))
    return out


def _scan_info(ret: ir.Retention) -> dict[str, Any]:
    """The retention map of the 'scan' kernels as plain data (see ``scan.py.jinja``)."""
    kinds = {"lq": "lq", "kl": "kl", "fdiv": "fdiv", "bregman": "mirror", "user": "mirror",
             "elastic_net": "threshold", "soft_threshold": "threshold"}
    kind = kinds[ret.kind]
    whole = kind == "lq" or getattr(ret, "softmax_axis", "row") == "all"
    out: dict[str, Any] = {
        "kind": kind,
        # ℓq and FTRL elastic net carry an accumulator A (the retention's base)
        "accum": isinstance(ret, ir.Lq) or getattr(ret, "form", "") == "ftrl",
        "lag": isinstance(ret, ir.KL),  # Memora's lag token: a chunk's first token alone
        "decays": isinstance(ret, ir.Lq | ir.KL | ir.Bregman | ir.ElasticNet),
        "r": float(ret.q if ret.form == "moneta" else ret.q / (ret.q - 1))
        if isinstance(ret, ir.Lq) else 2.0,
        "mass": float(getattr(ret, "scale", 1.0)),
        "whole": whole,  # the map normalises the whole matrix (no value blocks)
        "smooth": bool(getattr(ret, "smooth", False)),
        "reg": isinstance(ret, ir.UserRetention) and ret.definition.regularizer is not None,
        "code": {},
    }
    if isinstance(ret, ir.Bregman | ir.UserRetention):
        out["code"] = lower.retention_triton(ret)
    # the header imports libdevice when some printed or template code calls it
    out["libdevice"] = " ".join(out["code"].values())
    return out


def table(models: list[ir.Model]) -> str:
    """A Markdown table of the models' fused family, or why each falls back.

    >>> import miras
    >>> print(table([miras.load("examples/retnet.miras")]))
    | model | fused family | or why not |
    |---|---|---|
    | retnet | dual |  |
    """
    rows = ["| model | fused family | or why not |", "|---|---|---|"]
    for m in models:
        f = decide(m)
        rows.append(f"| {m.name} | {f.family or '—'} | {f.reason} |")
    return "\n".join(rows)
