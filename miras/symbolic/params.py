"""Hyper-parameters → sympy symbols, and the inputs generated code must bind.

A literal (:class:`miras.ir.Const`) is folded into the formulas as an exact number; every
other value (``learned``, ``per_head``, ``gate``) becomes a symbol whose code name the
generated code binds to a tensor: ``[..., 1]`` for a per-head/per-token value, ``[..., D]``
for a channel-wise one (``gate(channel=true)``, ``learned(channel=true)``).

Code names: built-in hyper-parameters keep their field name (``alpha``, ``lr``, ``beta``,
``delta``, ``radius``, ``threshold``, ``gamma``); parameters of user definitions are
prefixed, ``p_<name>``, so that no spec name can collide with a Python name or with the
engine's own names (``y v k D dgrad s0 t0 ...``).

>>> from miras import ir
>>> ps = Params()
>>> ps.scalar("alpha", ir.Const(value=0.5), "decay")
1/2
>>> ps.scalar("lr", ir.Gate(channel=True), "learning rate")
lr
>>> [(i.name, i.shape) for i in ps.inputs]
[('lr', 'vector')]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sympy as sp

from miras import ir
from miras.symbolic.convert import number

__all__ = ["Input", "Params", "user_name"]

InputShape = Literal["vector", "scalar", "int"]


@dataclass(frozen=True)
class Input:
    """A name the generated code must bind before running a block.

    ``shape``: ``vector`` (``[..., D]``), ``scalar`` (``[..., 1]``) or ``int`` (the head
    dimension ``D``, a Python int or ``tl.constexpr``). ``value`` is where a hyper-parameter
    comes from (``None`` for the data ``y, v, k``).
    """

    name: str
    shape: InputShape
    doc: str
    value: ir.Const | ir.Learned | ir.PerHead | ir.Gate | None = None


def user_name(name: str) -> str:
    """The code name of a user-definition parameter: ``p_<name>``.

    >>> user_name("c")
    'p_c'
    """
    return f"p_{name}"


def is_channel(value: ir.Const | ir.Learned | ir.PerHead | ir.Gate) -> bool:
    """Whether a hyper-parameter value has one value per channel (a vector)."""
    return isinstance(value, ir.Gate | ir.Learned) and value.channel


class Params:
    """Collects the symbols of hyper-parameters and the :class:`Input` entries they need."""

    def __init__(self) -> None:
        self.inputs: list[Input] = []
        self.symbols: dict[sp.Symbol, str] = {}
        self.vectors: set[sp.Symbol] = set()

    def scalar(self, name: str, value: ir.Const | ir.Learned | ir.PerHead | ir.Gate, doc: str,
               *, positive: bool = False, fold: bool = True) -> sp.Expr:
        """The sympy value of a hyper-parameter: a number for a literal (when ``fold``), else
        a symbol named ``name`` (recorded as an input)."""
        if isinstance(value, ir.Const) and fold:
            return number(value.value)
        for sym, code in self.symbols.items():
            if code == name:
                return sym
        sym = sp.Symbol(name, positive=True) if positive else sp.Symbol(name, real=True)
        shape: InputShape = "vector" if is_channel(value) else "scalar"
        self.inputs.append(Input(name, shape, doc, value))
        self.symbols[sym] = name
        if shape == "vector":
            self.vectors.add(sym)
        return sym
