"""Surface syntax tree of a ``.miras`` file (the output of :mod:`miras.parse`).

Nodes are frozen dataclasses that carry a :class:`~miras.diagnostics.Span`. They keep the
file's structure (``extends``, ``include``, positional arguments, the number text as written)
so that the formatter can print it back; the validator turns them into the IR
(:mod:`miras.ir`), which has no positions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from miras.diagnostics import Span

__all__ = [
    "Arg",
    "Binary",
    "Call",
    "Compare",
    "Expr",
    "Field",
    "FormulaDef",
    "Include",
    "Item",
    "ListExpr",
    "ModelDef",
    "Name",
    "Number",
    "Param",
    "SourceFile",
    "String",
    "SweepDef",
    "Unary",
    "to_json",
]


@dataclass(frozen=True)
class Number:
    value: int | float
    text: str
    span: Span


@dataclass(frozen=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class Unary:
    op: Literal["-", "+"]
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Binary:
    op: Literal["+", "-", "*", "/", "^"]
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Compare:
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Arg:
    name: Name | None  # None for a positional argument
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    func: Name
    args: tuple[Arg, ...]
    span: Span


@dataclass(frozen=True)
class ListExpr:
    """``[a, b, c]``: the values of one field of a ``sweep`` block (allowed nowhere else)."""

    items: tuple[Expr, ...]
    span: Span


Expr = Number | String | Name | Unary | Binary | Compare | Call | ListExpr


@dataclass(frozen=True)
class Field:
    name: Name
    value: Expr
    span: Span


@dataclass(frozen=True)
class ModelDef:
    name: Name
    extends: Name | None
    fields: tuple[Field, ...]
    span: Span


@dataclass(frozen=True)
class Param:
    name: Name
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class FormulaDef:
    """``bias|retention|feature|act NAME(params) = expr`` or ``retention NAME(params) { ... }``."""

    kind: Literal["bias", "retention", "feature", "act"]
    name: Name
    params: tuple[Param, ...] | None  # None: no parameter list was written
    body: Expr | tuple[Field, ...]
    span: Span


@dataclass(frozen=True)
class Include:
    path: String
    span: Span


@dataclass(frozen=True)
class SweepDef:
    """``sweep NAME { field = value ... }``: a design-space exploration (see miras.sweep)."""

    name: Name
    fields: tuple[Field, ...]
    span: Span


Item = ModelDef | FormulaDef | Include | SweepDef


@dataclass(frozen=True)
class Comment:
    text: str
    line: int
    col: int


@dataclass(frozen=True)
class SourceFile:
    path: str
    items: tuple[Item, ...]
    comments: tuple[Comment, ...] = ()


def to_json(node: object) -> object:
    """A JSON-ready view of a node (used by ``miras emit --stage ast``)."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        out: dict[str, object] = {"node": type(node).__name__}
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if isinstance(value, Span):
                out[f.name] = f"{value.line}:{value.col}-{value.end_line}:{value.end_col}"
            else:
                out[f.name] = to_json(value)
        return out
    if isinstance(node, tuple | list):
        return [to_json(v) for v in node]
    return node
