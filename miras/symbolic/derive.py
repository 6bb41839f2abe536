"""The whole derivation of a model, as plain data, and its readable explanation.

:func:`derive` collects, for one :class:`miras.ir.Model`, the printed bias derivation, the
retention closed form, the algorithm and window rules, the feature map and the memory
activation. :func:`explain` writes the per-token update rule in unicode math (or LaTeX).

>>> import miras
>>> m = miras.load("model m { memory = matrix  bias = l2  retention = decay(alpha=0.9)  "
...                "algorithm = gd(lr=0.5) }")
>>> d = derive(m)
>>> d.bias.grad.torch.source(), d.retention.kind, d.algorithm.kind, d.affine_update
('grad = -v + y\\n', 'decay', 'gd', True)
>>> print(explain(m), end="")
model m — per-token update (matrix memory, chunk(size=64))
  memory     y = W·φ(k),  φ(x) = x
  loss       ℓ(y, v) = ½·Σⱼ (yⱼ − vⱼ)²
  gradient   ∂ℓ/∂yⱼ = yⱼ − vⱼ
  inner grad g_t = ∇_W ℓ = (∂ℓ/∂y)·φ(k_t)ᵀ at W_{t−1}
  algorithm  U_t = −0.5·g_t
  retention  W_t = 0.9·W_{t−1} + U_t
  read       o_t = W_t·φ(q_t)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy as sp

from miras import ir
from miras.symbolic.algorithm import (
    AlgorithmRule,
    GDRule,
    Hyper,
    ImplicitGDRule,
    MomentumRule,
    MuonRule,
    NonparametricRule,
    WindowRule,
    derive_algorithm,
    derive_window,
)
from miras.symbolic.bias import BiasDerivation, derive_bias, symbolic_bias
from miras.symbolic.features import (
    ActivationRule,
    FeatureRule,
    derive_activation,
    derive_feature,
)
from miras.symbolic.pretty import latex as latex_of
from miras.symbolic.pretty import unicode as unicode_of
from miras.symbolic.reductions import DIM, K, V, Y
from miras.symbolic.retention import RetentionRule, derive_retention

__all__ = ["Derivation", "derive", "explain"]


@dataclass(frozen=True)
class Derivation:
    """Everything the code generator needs about a model's per-token update (plain data).

    ``affine_update`` is the symbolic truth of the ``exact`` form's requirement: a memory
    linear in its weights (matrix, vector, or a one-layer MLP without norm: ``x + Wx``), a
    gradient affine in ``y`` (``bias.affine``), a linear retention (``retention.linear``) and
    gd/momentum/implicit_gd; ``affine_reason`` says why not.
    """

    model: str
    memory: str
    bias: BiasDerivation
    retention: RetentionRule
    algorithm: AlgorithmRule
    window: WindowRule
    feature: FeatureRule
    activation: ActivationRule | None
    read: str
    parallel: str
    affine_update: bool
    affine_reason: str | None


def _affine_reason(m: ir.Model, bias: BiasDerivation, ret: RetentionRule) -> str | None:
    linear_mlp = isinstance(m.memory, ir.MLP) and m.memory.depth == 1 and m.memory.norm == "none"
    if not isinstance(m.memory, ir.Matrix | ir.Vector) and not linear_mlp:
        return f"memory '{m.memory.kind}' is not linear in its weights"
    if not bias.affine:
        return f"the gradient of bias '{bias.name}' is not affine in y"
    if not ret.linear:
        return f"retention '{ret.kind}' is not a linear map"
    if not isinstance(m.algorithm, ir.GD | ir.Momentum | ir.ImplicitGD):
        return f"algorithm '{m.algorithm.kind}' is not linear in the gradient"
    return None


def derive(model: ir.Model) -> Derivation:
    """Derive every symbolic piece of ``model`` (see :class:`Derivation`).

    Raises a :class:`~miras.symbolic.errors.SymbolicError` subclass with a user-facing
    message when a piece cannot be derived (e.g. ``NoClosedForm`` for a user potential).
    """
    bias = derive_bias(model.bias)
    ret = derive_retention(model.retention)
    act = model.memory.act if isinstance(model.memory, ir.MLP | ir.GatedMLP) else None
    reason = _affine_reason(model, bias, ret)
    return Derivation(
        model=model.name,
        memory=model.memory.kind,
        bias=bias,
        retention=ret,
        algorithm=derive_algorithm(model.algorithm, model.memory, model.bias, model.window),
        window=derive_window(model.window),
        feature=derive_feature(model.feature),
        activation=derive_activation(act) if act is not None else None,
        read=model.read,
        parallel=_call(model.parallel),
        affine_update=reason is None,
        affine_reason=reason,
    )


# --------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------

_GREEK = {"lr": ("η", r"\eta"), "beta": ("β", r"\beta"), "gamma": ("γ", r"\gamma"),
          "alpha": ("α", r"\alpha"), "delta": ("δ", r"\delta"), "radius": ("Δ", r"\Delta"),
          "threshold": ("γ", r"\gamma")}


def _call(c: ir.Choice) -> str:
    fields = {k: v for k, v in c.model_dump().items() if k != "kind"}
    return f"{c.kind}({', '.join(f'{k}={v}' for k, v in fields.items())})" if fields \
        else c.kind


def _h(h: Hyper, tex: bool, factor: bool = False) -> str:
    """The display of a hyper-parameter (``factor``: as a factor, "" for 1 and "c·" else)."""
    if h.value is not None:
        if factor:
            return "" if h.value == 1 else f"{h.value:g}·"
        return f"{h.value:g}"
    if factor:
        return _h(h, tex) + "·"
    name = _GREEK.get(h.name, (h.name, h.name))[tex]
    return name + ("_t" if h.gated else "")


def _memory_lines(m: ir.Model, tex: bool) -> tuple[str, str, str]:
    """(memory, inner gradient, read) lines."""
    mem = m.memory
    phi = "\\varphi" if tex else "φ"
    if isinstance(mem, ir.Vector):
        return (f"y = w ⊙ {phi}(k)", f"g_t = ∇_w ℓ = (∂ℓ/∂y) ⊙ {phi}(k_t) at {{at}}",
                f"o_t = w_t ⊙ {phi}(q_t)")
    if isinstance(mem, ir.Matrix):
        return (f"y = W·{phi}(k)", f"g_t = ∇_W ℓ = (∂ℓ/∂y)·{phi}(k_t)ᵀ at {{at}}",
                f"o_t = W_t·{phi}(q_t)")
    if isinstance(mem, ir.MLP | ir.GatedMLP):
        act = mem.act.name if isinstance(mem.act, ir.ActDef) else mem.act
        if isinstance(mem, ir.GatedMLP):
            body = f"W₁·({act}(W₂·x) ⊙ W₃·x)"
        else:
            body = "x"
            for i in range(mem.depth, 0, -1):
                sub = str(i).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))
                body = f"W{sub}·{body}" if i == mem.depth else f"W{sub}·{act}({body})"
        if mem.norm != "none":
            body = f"{'LN' if mem.norm == 'layernorm' else 'RMSNorm'}({body})"
        if mem.residual:
            body = f"x + {body}"
        return (f"y = M(W; {phi}(k)),  M(x) = {body}",
                f"g_t = ∇_W ℓ(M(W; {phi}(k_t)), v_t) at W = {{at}}, back-propagating ∂ℓ/∂y "
                f"through M ({act}′ in the hidden layers)",
                f"o_t = M(W_t; {phi}(q_t))")
    return ("memory = {(k_i, v_i)}", "", "o_t = Σ_i s(q_t, k_i)·v_i / Σ_i s(q_t, k_i)")


_TEX = {
    "·": r" \cdot ", "∇": r"\nabla ", "ℓ": r"\ell ", "∂": r"\partial ", "ᵀ": r"^\top ",
    "−": "-", "‖": r"\|", "φ": r"\varphi ", "α": r"\alpha ", "β": r"\beta ", "η": r"\eta ",
    "γ": r"\gamma ", "δ": r"\delta ", "Δ": r"\Delta ", "ζ": r"\zeta ", "σ": r"\sigma ",
    "Σ": r"\sum ", "⊙": r"\odot ", "←": r"\leftarrow ", "≤": r"\le ", "≥": r"\ge ",
    "ε": r"\varepsilon ", "ⱼ": "_j", "√": r"\surd ", "½": r"\tfrac12 ", "′": "'",
    "⊗": r"\otimes ", "⟨": r"\langle ", "⟩": r"\rangle ", "≈": r"\approx ", "ᵢ": "_i",
    **{c: f"_{i}" for i, c in enumerate("₀₁₂₃₄₅₆₇₈₉")},
    **{c: f"^{i}" for i, c in enumerate("⁰¹²³⁴⁵⁶⁷⁸⁹")},
}
_WORDS = re.compile(r"(?<![\\A-Za-z])([A-Za-z][A-Za-z'\-]{2,}(?:[ ,;]+[A-Za-z][A-Za-z'\-]{2,})*)")


_SHORT = re.compile(r"(?<= )(at|in|of|to|if|by)(?= )")


def _tex(text: str) -> str:
    """Unicode math of the structural lines → LaTeX (English runs in \\text{})."""
    text = _WORDS.sub(lambda mt: rf"\text{{{mt.group(1)}}}", text)
    text = _SHORT.sub(lambda mt: rf"\text{{ {mt.group(1)} }}", text)
    return "".join(_TEX.get(ch, ch) for ch in text)


def _decay_value(m: ir.Model) -> float:
    alpha = getattr(m.retention, "alpha", None)
    return float(alpha.value) if isinstance(alpha, ir.Const) else 1.0


def _algorithm_line(rule: AlgorithmRule, tex: bool) -> str:
    if isinstance(rule, GDRule):
        steps = f"  ({rule.steps} steps per token)" if rule.steps > 1 else ""
        return f"U_t = −{_h(rule.lr, tex, True)}g_t{steps}"
    if isinstance(rule, MomentumRule):
        return (f"S_t = {_h(rule.beta, tex, True)}S_{{t−1}} − {_h(rule.lr, tex, True)}g_t;  "
                "U_t = S_t")
    if isinstance(rule, MuonRule):
        ns = rule.ns
        return (f"S_t = {_h(rule.beta, tex, True)}S_{{t−1}} + g_t;  U_t = −{_h(rule.lr, tex, True)}"
                f"NS_{ns.steps}(S_t),  NS: X₀ = S/(‖S‖_F + {ns.eps:g}), "
                f"X ← {ns.a}·X + ({ns.b}·A + {ns.c}·A²)·X, A = X·Xᵀ")
    if isinstance(rule, ImplicitGDRule):
        lr = _h(rule.lr, tex)
        return (f"W_t = W_{{t−1}} − δ_t·(W_{{t−1}}·k_t − v_t)·k_tᵀ,  δ_t = {lr}/(1 + {lr}·"
                f"k_tᵀk_t)  (implicit GD, closed form for ℓ2)")
    assert isinstance(rule, NonparametricRule)
    return f"append (k_t, v_t); {rule.kernel} kernel" + (
        f", window {rule.window}" if rule.window else "")


def explain(model: ir.Model, latex: bool = False) -> str:
    """The derived per-token update rule of ``model`` as readable math.

    Unicode text by default: the memory, the loss ℓ(y, v), its gradient ∂ℓ/∂y, the inner
    gradient, the algorithm's update U_t, the retention and the read. ``latex=True`` gives
    the same lines as a LaTeX ``aligned`` block.
    """
    sb = symbolic_bias(model.bias)
    d = derive(model)
    gated = {i.name for i in sb.params.inputs if isinstance(i.value, ir.Gate)}
    names: dict[sp.Symbol, str] = {Y: "y", V: "v", K: "k", DIM: "D"}
    for sym, code in sb.params.symbols.items():
        base = code[2:] if code.startswith("p_") else _GREEK.get(code, (code, code))[latex]
        names[sym] = base + ("_t" if code in gated else "")
    mem, inner, read = _memory_lines(model, False)
    if model.read == "before_write":
        read = read.replace("W_t", "W_{t−1}").replace("w_t", "w_{t−1}")
    at = "W_{t−1}"
    if d.retention.grad_at == "decayed":
        alpha = next((i for i in d.retention.inputs if i.name == "alpha"), None)
        at = ("α_t·" if alpha is not None and isinstance(alpha.value, ir.Gate) else
              "α·" if alpha is not None else f"{_decay_value(model):g}·") + "W_{t−1}"
    rows: list[tuple[str, str]] = [
        ("memory", mem + (f",  {d.feature.formula}" if not latex else "")),
    ]
    if latex:
        loss, grad = latex_of(sb.loss, sb.table, names), latex_of(sb.grad, sb.table, names)
        rows += [("loss", rf"\ell(y, v) = {loss}"),
                 ("gradient", rf"\partial \ell / \partial y_j = {grad}")]
    else:
        rows += [("loss", f"ℓ(y, v) = {unicode_of(sb.loss, sb.table, names)}"),
                 ("gradient", f"∂ℓ/∂yⱼ = {unicode_of(sb.grad, sb.table, names)}")]
    for note in d.bias.notes:
        rows.append(("", note))
    if d.window.size > 1:
        rows.append(("window", d.window.formula))
    if inner:
        rows.append(("inner grad", inner.replace("{at}", at)))
    rows.append(("algorithm", _algorithm_line(d.algorithm, latex)))
    if not isinstance(d.algorithm, ImplicitGDRule | NonparametricRule):
        rows.append(("retention", d.retention.latex if latex else d.retention.formula))
    rows.append(("read", read))
    if d.activation is not None:
        rows.append(("activation", d.activation.formula))
    title = (f"model {model.name} — per-token update ({model.memory.kind} memory, "
             f"{d.parallel})")
    if latex:
        proper = {"loss", "gradient", "retention"}    # already LaTeX
        body = " \\\\\n".join(rf"  \text{{{k}}} &\quad {v if k in proper else _tex(v)}"
                              for k, v in rows if k)
        return f"% {title}\n\\begin{{aligned}}\n{body}\n\\end{{aligned}}\n"
    return title + "\n" + "".join(f"  {k:<10} {v}\n" for k, v in rows)
