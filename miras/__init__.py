"""miras: a compiler for the Miras design space of sequence models.

The pipeline, one module per stage, typed data between stages:

=========  ==========================  =========================================
stage      module                      input → output
=========  ==========================  =========================================
parse      :mod:`miras.parse`          text → :class:`miras.ast.SourceFile`
validate   :mod:`miras.validate`       AST → :class:`miras.ir.Program` (+ origins)
format     :mod:`miras.printer`        AST or IR → canonical ``.miras`` text
symbolic   :mod:`miras.symbolic`       IR → derived math, printed as torch/Triton code
plan       :mod:`miras.plan`           IR + derivation → :class:`miras.plan.Plan` (data)
codegen    :mod:`miras.compiler`       plan → generated module (jinja2), cached on disk
runtime    :mod:`miras.runtime`        generated module → ``Compiled`` / ``MirasLayer``
=========  ==========================  =========================================

>>> import miras
>>> m = miras.load("model m { memory = matrix  bias = l2  retention = none  algorithm = gd }")
>>> m.memory.kind, m.bias.kind
('matrix', 'l2')
"""

from __future__ import annotations

import os
import sys
import types
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from miras.diagnostics import Diagnostic, MirasError

if TYPE_CHECKING:
    from miras import ast, ir
    from miras.explorer import Result, explore, format_table
    from miras.parse import parse_bytes, parse_text
    from miras.runtime.compiled import Compiled
    from miras.spec import Spec, space
    from miras.validate import Checked

__version__ = "0.1.0"

__all__ = [
    "Checked",
    "Compiled",
    "Diagnostic",
    "MirasError",
    "Result",
    "Spec",
    "__version__",
    "ast",
    "check",
    "compile",
    "explore",
    "format_table",
    "ir",
    "load",
    "parse",
    "parse_bytes",
    "parse_text",
    "run_frontend",
    "space",
]

Source = str | os.PathLike[str]


#: Public names and the module each lives in. They are imported on first use: the compiler
#: pulls in torch and sympy, the front end lark and pydantic, and a stand-alone generated
#: layer (``miras compile -o``) imports only ``miras.runtime``, which needs none of them.
_LAZY = {
    "ast": ("miras.ast", None), "ir": ("miras.ir", None),
    "parse_bytes": ("miras.parse", "parse_bytes"), "parse_text": ("miras.parse", "parse_text"),
    "Spec": ("miras.spec", "Spec"), "space": ("miras.spec", "space"),
    "Checked": ("miras.validate", "Checked"), "check_file": ("miras.validate", "check_file"),
    "check_text": ("miras.validate", "check_text"),
    "compile": ("miras.compiler", "compile"), "Compiled": ("miras.runtime.compiled", "Compiled"),
    "explore": ("miras.explorer", "explore"), "Result": ("miras.explorer", "Result"),
    "format_table": ("miras.explorer", "format_table"),
}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        # importing the submodule miras.parse (lazily, from anywhere) must not replace the
        # function miras.parse defined below
        if name == "parse" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'miras' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = import_module(module) if attr is None else getattr(import_module(module), attr)
    globals()[name] = value
    return value


def _is_path(source: Source) -> bool:
    if isinstance(source, os.PathLike):
        return True
    return "\n" not in source and source.strip().endswith(".miras") and "{" not in source


def parse(source: Source) -> ast.SourceFile:
    """Parse a file path or spec text into the syntax tree (no validation).

    >>> parse("model m { bias = l2 }").items[0].name.id
    'm'
    """
    if _is_path(source):
        p = Path(source)
        try:
            data = p.read_bytes()
        except OSError as exc:
            from miras.diagnostics import Span

            raise MirasError([Diagnostic("error", "E007", f"cannot read '{source}': "
                                         f"{exc.strerror or exc}", Span(str(source), 0, 0, 0, 0))
                              ]) from None
        return import_module("miras.parse").parse_bytes(data, str(source))
    return import_module("miras.parse").parse_text(str(source))


def run_frontend(source: Source) -> Checked:
    """The whole front end: the IR, source positions and warnings (raises on errors)."""
    validate = import_module("miras.validate")
    return validate.check_file(source) if _is_path(source) else validate.check_text(str(source))


def check(source: Source) -> ir.Program:
    """Validate a file path or spec text; return the program IR or raise :class:`MirasError`."""
    return run_frontend(source).program


def load(source: Source, model: str | None = None) -> ir.Model:
    """The IR of one model (by default the last model of the root file)."""
    program = check(source)
    try:
        return program.model(model)
    except KeyError:
        from miras.diagnostics import Span

        names = ", ".join(m.name for m in program.models) or "none"
        where = str(source) if _is_path(source) else "<string>"
        if model is None:
            raise MirasError([Diagnostic("error", "E105", "the spec declares no model",
                                         Span(where, 0, 0, 0, 0))]) from None
        raise MirasError([Diagnostic(
            "error", "E101", f"no model named {model!r} (models: {names})",
            Span(where, 0, 0, 0, 0))]) from None
