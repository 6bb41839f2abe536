"""The pipeline driver: spec → IR → symbolic derivation → plan → generated module → runtime.

>>> import miras
>>> c = miras.compile("model m { memory = matrix  bias = l2  retention = none  algorithm = gd }")
>>> sorted(c.gates), c.name
([], 'm')
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from miras import __version__, ir, plan, validate
from miras.codegen import environment
from miras.diagnostics import Diagnostic, MirasError, Span
from miras.runtime import cache
from miras.runtime.compiled import Compiled
from miras.symbolic.errors import SymbolicError

Source = str | os.PathLike[str] | ir.Model | ir.Program


def _program(source: Source, model: str | None
             ) -> tuple[ir.Program, ir.Model, dict[tuple[str, ...], Span]]:
    import miras

    origins: dict[tuple[str, ...], Span] = {}
    if isinstance(source, ir.Model):
        return ir.Program(models=(source,)), source, origins
    if isinstance(source, ir.Program):
        program = source
    else:
        checked = miras.run_frontend(source)
        program, origins = checked.program, checked.origins
    try:
        return program, program.model(model), origins
    except KeyError:
        raise MirasError([Diagnostic("error", "E101", f"no model named {model!r}", None)]
                         ) from None


def build_plan(source: Source, model: str | None = None) -> plan.Plan:
    """The plan of a spec (``miras emit --stage plan``).

    A derivation the symbolic engine cannot do (a user retention whose mirror map has no
    closed-form inverse, ...) is reported as a diagnostic ``E150`` at the field it comes from.
    """
    program, m, origins = _program(source, model)
    from miras.printer import print_program

    text = print_program(ir.Program(definitions=program.definitions, models=(m,)))
    spec_hash = cache.content_hash(f"miras {__version__}\n{text}")
    try:
        return plan.build(m, program, spec_hash)
    except SymbolicError as exc:
        span = None
        for axis in ("retention", "bias", "feature", "memory"):
            if axis in str(exc) or span is None:
                span = origins.get((m.name, axis), span)
        raise MirasError([Diagnostic("error", "E150", str(exc), span)]) from None


def render_torch(p: plan.Plan) -> str:
    """The generated PyTorch module for a plan (deterministic text)."""
    text = environment().get_template("torch/module.py.jinja").render(plan=p, version=__version__)
    return _fit_lines(text)


def render_triton(p: plan.Plan) -> str | None:
    """The generated Triton kernel module of a plan, or ``None`` when the spec is not fused
    (``p.kernel["reason"]`` says why)."""
    if not p.kernel.get("family"):
        return None
    text = environment().get_template("triton/kernels.py.jinja").render(
        plan=p, kernel=p.kernel, version=__version__)
    return _fit_lines(text)


def _fit_lines(text: str, width: int = 100) -> str:
    """Wrap long docstring lines; mark long code lines (printed formulas) for the linter."""
    out: list[str] = []
    in_doc = False
    for line in text.splitlines():
        quotes = line.count('"""')
        if len(line) > width:
            if in_doc or (quotes == 1 and not in_doc):
                lead = line[: len(line) - len(line.lstrip())]
                out += textwrap.wrap(line, width - 4, subsequent_indent=lead + "    ",
                                     break_long_words=False) or [line]
            else:
                out.append(f"{line}  # noqa: E501")
        else:
            out.append(line)
        if quotes % 2:
            in_doc = not in_doc
    return "\n".join(out) + "\n"


def module_name(p: plan.Plan) -> str:
    return f"miras_{p.name}_{p.spec_hash[:10]}"


def write_package(p: plan.Plan, folder: str | Path) -> list[Path]:
    """Write the generated modules of a plan into ``folder`` as stand-alone Python.

    ``<name>.py`` (the memory recurrence), ``<name>_triton.py`` (the fused kernels, when the
    spec is fused) and ``<name>_layer.py`` (``layer()``/``functional`` built from the two,
    importing only :mod:`miras.runtime`). Returns the paths written.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    name = p.name
    files = {f"{name}.py": render_torch(p)}
    kernels = render_triton(p)
    if kernels is not None:
        files[f"{name}_triton.py"] = kernels
    files[f"{name}_layer.py"] = _fit_lines(environment().get_template(
        "torch/layer.py.jinja").render(plan=p, version=__version__, module=name,
                                       kernel_module=f"{name}_triton" if kernels else None))
    paths = []
    for fname, text in files.items():
        path = out / fname
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def compile(source: Source, model: str | None = None, *,
            cache_dir: str | Path | None = None) -> Compiled:
    """Compile a spec (path, text, model IR or program IR) into a :class:`Compiled`.

    The generated module is written to a content-hashed file in the cache and imported.
    """
    p = build_plan(source, model)
    folder = Path(cache_dir) if cache_dir else None
    path = cache.write(module_name(p), render_torch(p), folder)
    kernels = render_triton(p)
    kernel_path = (cache.write(f"{module_name(p)}_triton", kernels, folder)
                   if kernels is not None else None)
    return Compiled(cache.load(path), str(path), kernel_path=kernel_path,
                    fused=p.kernel.get("family"), fused_reason=p.kernel.get("reason", ""))


__all__ = ["build_plan", "compile", "render_torch", "render_triton", "validate", "write_package"]
