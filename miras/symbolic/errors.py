"""Errors of the symbolic engine.

Every failure the engine can report on a valid IR is one of these classes, each carrying a
message meant for the user (the compiler turns them into diagnostics):

>>> err = NoClosedForm("no closed form for the inverse of φ′(w) = exp(w) + w")
>>> isinstance(err, SymbolicError), str(err)
(True, 'no closed form for the inverse of φ′(w) = exp(w) + w')
"""

from __future__ import annotations


class SymbolicError(Exception):
    """Base class: a formula the engine cannot derive or print. ``message`` is user-facing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConversionError(SymbolicError):
    """An IR expression has no meaning for the engine (unknown variable, shape misuse, ...)."""


class UnsupportedForm(SymbolicError):
    """The derivation is not supported for this form (say why in the message)."""


class NoClosedForm(SymbolicError):
    """sympy found no usable closed form (e.g. the inverse of a mirror map φ′)."""


class UnprintableError(SymbolicError):
    """An expression contains something outside a printer's whitelist (never printed raw)."""
