"""Stage 4: IR + symbolic derivation → :class:`Plan`, plain data for the templates.

The plan holds printed code (from :mod:`miras.symbolic`'s printers, the only way spec text
reaches generated code), structural flags and numbers; no sympy objects. It is JSON-ready
(``miras emit --stage plan``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from miras import catalog, fusion, ir
from miras.printer import print_program
from miras.symbolic import explain
from miras.symbolic import lower as symbolic

#: The activations of deep memories, and their derivatives (standard calculus).
BUILTIN_ACTS: dict[str, tuple[str, str]] = {
    "gelu": ("return torch.nn.functional.gelu(x)",
             "cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))\n"
             "pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)\n"
             "return cdf + x * pdf"),
    "silu": ("return torch.nn.functional.silu(x)",
             "s = torch.sigmoid(x)\nreturn s * (1.0 + x * (1.0 - s))"),
    "relu": ("return torch.relu(x)", "return (x > 0).to(x.dtype)"),
    "tanh": ("return torch.tanh(x)", "return 1.0 - torch.tanh(x) ** 2"),
    "sigmoid": ("return torch.sigmoid(x)", "s = torch.sigmoid(x)\nreturn s * (1.0 - s)"),
    "identity": ("return x", "return torch.ones_like(x)"),
    "softplus": ("return torch.nn.functional.softplus(x)", "return torch.sigmoid(x)"),
}

#: Engine slot of every scalar hyper-parameter without a gate role.
_NON_ROLE_SLOTS = {"threshold": "threshold"}


@dataclass(frozen=True)
class Plan:
    """Everything the templates need for one model."""

    name: str
    spec_hash: str
    spec_text: str
    heads: int | None
    head_dim: int | None
    chunk: int
    parallel: str
    explain: str
    memory: dict[str, Any]
    recipe: tuple[tuple[str, Any], ...]
    slots: tuple[dict[str, Any], ...]
    per_head: tuple[tuple[str, str], ...]
    bias: dict[str, Any]
    act: dict[str, str]
    feature_info: dict[str, Any]
    feature_user: dict[str, Any] | None = None
    mirror: dict[str, str] | None = None
    reg_grad: dict[str, str] | None = None
    nonparametric: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default=())
    #: the fused Triton family and its symbolic pieces (:func:`miras.fusion.kernel_info`)
    kernel: dict[str, Any] = field(default_factory=dict)
    #: the ``hybrid`` choice as plain data (``{"kind": "mac", "segment": 512, ...}``)
    hybrid: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False)


def _slot_name(param: catalog.ParamInfo) -> str:
    return param.role or _NON_ROLE_SLOTS.get(param.name, param.name)


def _slot(name: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "channel": False, "value": None, "gate": None}
    if isinstance(value, ir.Const):
        out.update(source="const", value=value.value)
    elif isinstance(value, ir.Learned):
        out.update(source="learned", value=value.init, channel=value.channel)
    elif isinstance(value, ir.PerHead):
        out.update(source="per_head")
    else:
        assert isinstance(value, ir.Gate)
        out.update(source="gate", channel=value.channel, gate={
            "act": value.act, "rank": value.rank, "init": value.init, "scale": value.scale,
            "per": value.per})
    return out


def _slots(m: ir.Model) -> tuple[list[dict[str, Any]], list[tuple[str, str]], dict[str, str]]:
    """Slots of every scalar hyper-parameter, per-head schedules, and code name → slot."""
    slots: list[dict[str, Any]] = []
    per_head: list[tuple[str, str]] = []
    code_to_slot: dict[str, str] = {}
    for axis in ("bias", "retention", "algorithm", "window"):
        choice = getattr(m, axis)
        if isinstance(choice, ir.UserBias | ir.UserRetention | ir.UserFeature):
            for a in choice.args:
                name = symbolic.user_name(a.name)
                slots.append(_slot(name, a.value))
                code_to_slot[name] = name
                if isinstance(a.value, ir.PerHead):
                    per_head.append((name, symbolic.per_head_code(a.value.expr)))
            continue
        for p in catalog.params_of(type(choice)).values():
            if p.kind != "scalar":
                continue
            value = getattr(choice, p.name)
            name = _slot_name(p)
            slots.append(_slot(name, value))
            code_to_slot[p.name] = name
            if isinstance(value, ir.PerHead):
                per_head.append((name, symbolic.per_head_code(value.expr)))
    return slots, per_head, code_to_slot


def _recipe(m: ir.Model) -> list[tuple[str, Any]]:
    ret, alg = m.retention, m.algorithm
    out: list[tuple[str, Any]] = [("retention", ret.kind)]
    if isinstance(ret, ir.Decay):
        out.append(("decay_at", ret.at))
    if isinstance(ret, ir.Lq):
        r = ret.q if ret.form == "moneta" else ret.q / (ret.q - 1)
        out.append(("lq_r", r))
    if isinstance(ret, ir.KL):
        out += [("mass", ret.scale), ("softmax_axis", ret.softmax_axis), ("lag_token", True)]
    if isinstance(ret, ir.FDiv):
        out += [("mass", ret.scale)]
    if isinstance(ret, ir.ElasticNet):
        out += [("elastic_form", ret.form), ("threshold_smooth", ret.smooth)]
    if isinstance(ret, ir.SoftThreshold):
        out += [("threshold_smooth", ret.smooth)]
    out.append(("algorithm", alg.kind))
    if isinstance(alg, ir.GD) and alg.steps > 1:
        out.append(("gd_steps", alg.steps))
    if isinstance(alg, ir.Muon):
        out.append(("ns_steps", alg.steps))
    if isinstance(m.window, ir.Sliding):
        out.append(("window", m.window.size))
    if m.read == "before_write":
        out.append(("read_before", True))
    if isinstance(m.parallel, ir.Exact):
        out.append(("exact", True))
        # ∂ℓ/∂y = a·y − b·v for the affine built-ins (the UT chunk form needs a and b)
        ab = fusion.affine(m.bias)
        if ab is not None:
            out.append(("affine", ab))
    return out


def _memory(m: ir.Model) -> tuple[dict[str, Any], dict[str, str]]:
    mem = m.memory
    act_value: Any = getattr(mem, "act", "identity")
    info = {"kind": mem.kind, "depth": getattr(mem, "depth", 1), "hidden": 0,
            "expansion": float(getattr(mem, "expansion", 0.0)),
            "residual": bool(getattr(mem, "residual", False)),
            "norm": getattr(mem, "norm", "none"), "init": getattr(mem, "init", "zeros")}
    if isinstance(act_value, ir.ActDef):
        src, grad = symbolic.act_code(act_value)
        act = {"doc": f"act {act_value.name} = {symbolic.formula_text(act_value.formula)}",
               "source": src, "grad_source": grad}
    else:
        src, grad = BUILTIN_ACTS[act_value]
        act = {"doc": act_value, "source": src, "grad_source": grad}
    return info, act


def build(m: ir.Model, program: ir.Program, spec_hash: str) -> Plan:
    """The plan of one model (``program`` supplies the spec text for provenance)."""
    used = ir.Program(definitions=tuple(d for d in program.definitions
                                        if _uses(m, d)), models=(m,))
    text = print_program(used)
    heads, head_dim = m.heads, m.head_dim
    chunk = 1 if isinstance(m.parallel, ir.Recurrent) else m.parallel.size
    feature = m.feature
    finfo: dict[str, Any] = {"kind": feature.kind if not isinstance(feature, ir.UserFeature)
                             else "user", "degree": getattr(feature, "degree", 2),
                             "order": getattr(feature, "order", 2),
                             "dim": getattr(feature, "dim", 32),
                             "learned": bool(getattr(feature, "learned", False)),
                             "learnable": bool(getattr(feature, "learnable", False))}
    if isinstance(m.memory, ir.Nonparametric):
        npm = m.memory
        window = m.window.size if isinstance(m.window, ir.Sliding) else None
        return Plan(
            name=m.name, spec_hash=spec_hash, spec_text=text, heads=heads, head_dim=head_dim,
            chunk=chunk, parallel=m.parallel.kind, explain=explain(m),
            memory={"kind": "nonparametric"}, recipe=(), slots=(), per_head=(),
            bias={"formula": "½‖y − v‖²", "bind": [], "source": "grad = y - v"},
            act={"doc": "identity", "source": "return x", "grad_source":
                 "return torch.ones_like(x)"},
            feature_info=finfo,
            nonparametric={"kernel": npm.kernel, "scale": npm.scale, "degree": npm.degree,
                           "normalize": npm.normalize, "window": window},
            kernel=fusion.kernel_info(m), hybrid=m.hybrid.model_dump())
    slots, per_head, code_to_slot = _slots(m)
    bias = symbolic.bias_code(m.bias)
    bind = [(name, code_to_slot.get(name, name)) for name in bias["params"]]
    memory, act = _memory(m)
    mirror = reg = None
    ret = m.retention
    if isinstance(ret, ir.Bregman | ir.UserRetention):
        maps = symbolic.retention_code(ret)
        if maps.get("mirror"):
            mirror = {"doc": maps["doc"], "source": maps["mirror"], "inv_source": maps["inverse"]}
        if maps.get("reg_grad"):
            reg = {"doc": maps["reg_doc"], "source": maps["reg_grad"]}
    feature_user = None
    if isinstance(feature, ir.UserFeature):
        feature_user = symbolic.feature_code(feature)
    return Plan(
        name=m.name, spec_hash=spec_hash, spec_text=text, heads=heads, head_dim=head_dim,
        chunk=chunk, parallel=m.parallel.kind, explain=explain(m), memory=memory,
        recipe=tuple(_recipe(m)), slots=tuple(slots), per_head=tuple(per_head),
        bias={"formula": bias["formula"], "bind": bind, "source": bias["source"].rstrip()},
        act=act, feature_info=finfo, feature_user=feature_user, mirror=mirror, reg_grad=reg,
        kernel=fusion.kernel_info(m), hybrid=m.hybrid.model_dump())


def _uses(m: ir.Model, d: Any) -> bool:
    """Whether model ``m`` refers to the user definition ``d``."""
    refs = [getattr(getattr(m, axis), "definition", None) for axis in ("bias", "retention",
                                                                        "feature")]
    refs.append(getattr(m.memory, "act", None))
    return any(r == d for r in refs)
