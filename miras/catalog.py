"""The registry of built-in choices, read from the IR classes (the single source of truth).

>>> lookup("bias", "lp").params["p"].default
3.0
>>> sorted(AXES)[:3]
['algorithm', 'bias', 'feature']
>>> lookup("retention", "decay").params["alpha"].role
'decay'
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from miras import ir

#: Model fields whose value is a choice, with the union of IR classes for each.
AXES: dict[str, tuple[type[ir.Choice], ...]] = {
    "memory": (ir.Vector, ir.Matrix, ir.MLP, ir.GatedMLP, ir.Nonparametric),
    "bias": (ir.Dot, ir.L2, ir.L1, ir.Lp, ir.Huber, ir.HuberCoord, ir.HuberNorm, ir.RobustShift),
    "retention": (ir.NoRetention, ir.Decay, ir.Lq, ir.KL, ir.ElasticNet, ir.SoftThreshold,
                  ir.FDiv, ir.Bregman),
    "algorithm": (ir.GD, ir.Momentum, ir.Muon, ir.ImplicitGD, ir.NonparametricAlg),
    "feature": (ir.Identity, ir.Poly, ir.ExpTaylor, ir.Sketch),
    "window": (ir.NoWindow, ir.Sliding),
    "parallel": (ir.Recurrent, ir.Chunk, ir.Exact),
    "hybrid": (ir.NoHybrid, ir.MAC, ir.MAG, ir.MAL, ir.Samba),
}
#: The IR class of a user definition for each axis that accepts one.
USER_CLASSES: dict[str, type[ir.Choice]] = {
    "bias": ir.UserBias, "retention": ir.UserRetention, "feature": ir.UserFeature,
}
#: Value constructors usable for scalar hyper-parameters.
VALUE_CLASSES: dict[str, type[ir.IRNode]] = {"learned": ir.Learned, "gate": ir.Gate}
BUILTIN_ACTS: tuple[str, ...] = get_args(ir.BuiltinAct)
GATE_ACTS: tuple[str, ...] = get_args(ir.GateAct)


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of a choice, derived from the IR field declaration."""

    name: str
    kind: str  # int | float | bool | enum | scalar | act | optional_int | optional_float
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    role: str | None = None
    learnable: bool = True
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    even: bool = False
    required: bool = False
    channel_ok: bool = True

    @property
    def gateable(self) -> bool:
        return self.kind == "scalar" and self.role is not None

    def range_text(self) -> str:
        parts = []
        if self.ge is not None:
            parts.append(f"≥ {_num(self.ge)}")
        if self.gt is not None:
            parts.append(f"> {_num(self.gt)}")
        if self.le is not None:
            parts.append(f"≤ {_num(self.le)}")
        if self.lt is not None:
            parts.append(f"< {_num(self.lt)}")
        return ", ".join(parts)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _kind(annotation: Any) -> tuple[str, tuple[str, ...]]:
    if annotation is ir.Act:
        return "act", BUILTIN_ACTS
    if annotation is bool:
        return "bool", ()
    if annotation is int:
        return "int", ()
    if annotation is float:
        return "float", ()
    origin = get_origin(annotation)
    if origin is typing.Literal:
        return "enum", tuple(str(a) for a in get_args(annotation))
    args = get_args(annotation)
    if annotation == get_args(ir.Scalar)[0]:
        return "scalar", ()
    if args and all(isinstance(a, type) and issubclass(a, ir.Choice) for a in args):
        return "choice", ()
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if inner == [int]:
            return "optional_int", ()
        if inner == [float]:
            return "optional_float", ()
    raise TypeError(f"unsupported parameter annotation {annotation!r}")  # pragma: no cover


@cache
def params_of(cls: type[BaseModel]) -> dict[str, ParamInfo]:
    """The user-visible parameters of an IR class, in declaration order."""
    out: dict[str, ParamInfo] = {}
    for name, f in cls.model_fields.items():
        extra = f.json_schema_extra
        if not isinstance(extra, dict) or "miras" not in extra:
            continue
        meta: dict[str, Any] = dict(extra["miras"])  # type: ignore[arg-type]
        if meta.pop("internal", False):
            continue
        kind, choices = _kind(f.annotation)
        out[name] = ParamInfo(
            name=name, kind=kind, default=None if f.is_required() else f.default,
            doc=f.description or "", choices=choices, required=f.is_required(), **meta,
        )
    return out


@dataclass(frozen=True)
class Entry:
    """One built-in choice of one axis."""

    axis: str
    name: str
    cls: type[ir.Choice]

    @property
    def params(self) -> dict[str, ParamInfo]:
        return params_of(self.cls)

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.cls.__doc__ or "")

    @property
    def summary(self) -> str:
        return self.doc.split("\n\n")[0].replace("\n", " ")

    @property
    def ref(self) -> str:
        return self.cls.ref


def _kind_literal(cls: type[ir.Choice]) -> str:
    return str(cls.model_fields["kind"].default)


@cache
def entries(axis: str) -> dict[str, Entry]:
    """Every built-in choice of ``axis`` by name."""
    return {_kind_literal(c): Entry(axis, _kind_literal(c), c) for c in AXES[axis]}


def lookup(axis: str, name: str) -> Entry | None:
    return entries(axis).get(name)


def model_params() -> dict[str, ParamInfo]:
    """The fields of a ``model`` block that are not choices (heads, head_dim, read)."""
    return {k: v for k, v in params_of(ir.Model).items() if k not in AXES}


def model_fields() -> dict[str, str]:
    """Every field of a ``model`` block with its documentation."""
    return {name: (f.description or "") for name, f in ir.Model.model_fields.items()
            if name != "name"}


def format_default(p: ParamInfo) -> str:
    value = p.default
    if p.required:
        return "required"
    if isinstance(value, ir.Const):
        return _num(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, ir.Choice):
        return str(value.kind)  # type: ignore[attr-defined]
    return str(value)


def render_text() -> str:
    """The catalog as plain text, grouped by axis (what ``miras list`` prints)."""
    lines: list[str] = []
    for axis in AXES:
        lines.append(f"{axis}:")
        for e in entries(axis).values():
            lines.append(f"  {e.name:<15} {e.summary}")
            if e.ref:
                lines.append(f"  {'':<15} ref: {e.ref}")
            for p in e.params.values():
                lines.append("  " + _param_line(p))
        if axis in USER_CLASSES:
            lines.append(f"  {'<user>':<15} any '{axis} NAME(params) = ...' definition")
        lines.append("")
    lines.append("values of scalar hyper-parameters:")
    lines.append("  a number, learned(...), per_head(expr in h), or gate(...) where a role exists")
    for name, cls in VALUE_CLASSES.items():
        lines.append(f"  {name}:")
        for p in params_of(cls).values():
            lines.append("  " + _param_line(p))
    lines.append("")
    lines.append("model fields:")
    for name, doc in model_fields().items():
        lines.append(f"  {name:<15} {doc}")
    return "\n".join(lines)


def _param_line(p: ParamInfo) -> str:
    extra = []
    if p.choices and p.kind == "enum":
        extra.append("one of " + "|".join(p.choices))
    if p.kind == "act":
        extra.append("a built-in act (" + "|".join(BUILTIN_ACTS) + ") or a user act")
    if p.range_text():
        extra.append(p.range_text())
    if p.role:
        extra.append(f"gate role '{p.role}'")
    elif p.kind == "scalar" and p.learnable:
        extra.append("constant or learned")
    tail = f" ({'; '.join(extra)})" if extra else ""
    return f"  {p.name} = {format_default(p)}: {p.doc}{tail}"
