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
from pathlib import Path

from miras import ast, ir
from miras.diagnostics import Diagnostic, MirasError
from miras.explorer import Result, explore, format_table
from miras.parse import parse_bytes, parse_text
from miras.spec import Spec, space
from miras.validate import Checked, check_file, check_text

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


def __getattr__(name: str) -> object:
    # The compiler pulls in torch; import it on first use so that the front end (and
    # `miras check`) stays fast.
    if name == "compile":
        from miras.compiler import compile as compile_

        return compile_
    if name == "Compiled":
        from miras.runtime.compiled import Compiled

        return Compiled
    raise AttributeError(f"module 'miras' has no attribute {name!r}")


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
        return parse_bytes(data, str(source))
    return parse_text(str(source))


def run_frontend(source: Source) -> Checked:
    """The whole front end: the IR, source positions and warnings (raises on errors)."""
    return check_file(source) if _is_path(source) else check_text(str(source))


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
