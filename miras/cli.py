"""The ``miras`` command line: a thin shell over the Python API.

Exit codes: 0 clean, 1 diagnostics (errors in the input), 2 usage error. Diagnostics go to
stderr (``--format json`` prints them to stdout as a JSON list); user input never produces a
Python traceback.
"""

from __future__ import annotations

import json
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

import miras
from miras import ast, catalog, ir
from miras.codegen import render
from miras.diagnostics import Diagnostic, MirasError, render_json, render_text
from miras.printer import format_source, print_program, value_text

# torch's CPU wheel warns at import that numpy is missing; miras does not use numpy
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

app = typer.Typer(
    name="miras",
    help="A compiler for the Miras design space of sequence models.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Format(str, Enum):
    text = "text"
    json = "json"


class Stage(str, Enum):
    ast = "ast"
    ir = "ir"
    symbolic = "symbolic"
    plan = "plan"
    torch = "torch"
    triton = "triton"


Files = Annotated[list[Path], typer.Argument(help=".miras files", show_default=False)]
File = Annotated[Path, typer.Argument(help="a .miras file", show_default=False)]
FormatOpt = Annotated[Format, typer.Option("--format", help="output format of diagnostics")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m",
                                              help="model to use (default: the last one)")]


def _report(diags: list[Diagnostic], sources: dict[str, str], fmt: Format) -> None:
    if fmt is Format.json:
        typer.echo(render_json(diags))
    elif diags:
        typer.echo(render_text(diags, sources), err=True)


def _load(path: Path, fmt: Format = Format.text) -> miras.Checked:
    try:
        checked = miras.run_frontend(path)
    except MirasError as err:
        _report(err.diagnostics, err.sources, fmt)
        raise typer.Exit(1) from None
    if fmt is Format.text and checked.warnings:
        _report(checked.warnings, checked.sources, fmt)
    return checked


def _version(value: bool) -> None:
    if value:
        typer.echo(f"miras {miras.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """A compiler for the Miras design space of sequence models."""


@app.command()
def check(files: Files, fmt: FormatOpt = Format.text,
          quiet: Annotated[bool, typer.Option("--quiet", "-q",
                                              help="print nothing when clean")] = False) -> None:
    """Validate .miras files and report every diagnostic."""
    failed = False
    every: list[Diagnostic] = []
    for path in files:
        try:
            checked = miras.run_frontend(path)
        except MirasError as err:
            failed = True
            every += err.diagnostics
            if fmt is Format.text:
                _report(err.diagnostics, err.sources, fmt)
            continue
        every += checked.warnings
        if fmt is Format.text:
            _report(checked.warnings, checked.sources, fmt)
            if not quiet:
                names = ", ".join(m.name for m in checked.program.models) or "no models"
                typer.echo(f"{path}: ok ({names})")
    if fmt is Format.json:
        typer.echo(render_json(every))
    raise typer.Exit(1 if failed else 0)


@app.command()
def fmt(files: Files,
        check_only: Annotated[bool, typer.Option("--check", help="exit 1 if a file is not "
                                                 "canonical; print nothing else")] = False,
        write: Annotated[bool, typer.Option("--write", "-w",
                                            help="rewrite the files in place")] = False) -> None:
    """Print .miras files in canonical form (comments kept)."""
    status = 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            typer.echo(f"{path}: error: cannot read: {exc.strerror} [E007]", err=True)
            status = 1
            continue
        try:
            parsed = miras.parse_bytes(data, str(path))
        except MirasError as err:
            _report(err.diagnostics, err.sources, Format.text)
            status = 1
            continue
        text = data.decode("utf-8")
        canonical = format_source(parsed, text)
        if check_only:
            if canonical != text:
                typer.echo(f"{path}: not canonically formatted (run: miras fmt -w {path})",
                           err=True)
                status = 1
        elif write:
            if canonical != text:
                path.write_text(canonical, encoding="utf-8")
        else:
            typer.echo(canonical, nl=False)
    raise typer.Exit(status)


@app.command("list")
def list_(fmt: Annotated[Format, typer.Option("--format", help="text or json")] = Format.text,
          ) -> None:
    """List every built-in choice, grouped by axis."""
    if fmt is Format.json:
        out = {
            axis: {
                e.name: {"doc": e.doc, "ref": e.ref, "params": {
                    p.name: {"kind": p.kind, "default": catalog.format_default(p), "doc": p.doc,
                             "role": p.role, "range": p.range_text(), "choices": list(p.choices)}
                    for p in e.params.values()}}
                for e in catalog.entries(axis).values()}
            for axis in catalog.AXES
        }
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        typer.echo(catalog.render_text())


@app.command()
def emit(
    file: File,
    stage: Annotated[Stage, typer.Option("--stage", help="which stage's output to print")],
    model: ModelOpt = None,
) -> None:
    """Print the output of one compiler stage."""
    if stage is Stage.ast:
        try:
            parsed = miras.parse(file)
        except MirasError as err:
            _report(err.diagnostics, err.sources, Format.text)
            raise typer.Exit(1) from None
        typer.echo(json.dumps(ast.to_json(parsed), indent=2, ensure_ascii=False))
        return
    checked = _load(file)
    program = checked.program
    if stage is Stage.ir:
        if model is not None:
            program = ir.Program(definitions=program.definitions,
                                 models=(_pick(program, model),))
        typer.echo(program.model_dump_json(indent=2))
        return
    from miras.compiler import render_torch, render_triton

    m = _pick(program, model)
    p = _plan(file, m)
    if stage is Stage.symbolic:
        typer.echo(p.explain)
    elif stage is Stage.plan:
        typer.echo(p.to_json())
    elif stage is Stage.triton:
        text = render_triton(p)
        if text is None:
            typer.echo(f"{file}: note: model '{m.name}' is not fused: {p.kernel['reason']}",
                       err=True)
            raise typer.Exit(1)
        typer.echo(text, nl=False)
    else:
        typer.echo(render_torch(p), nl=False)


def _plan(path: Path, m: ir.Model) -> Any:
    """The plan of a model, or exit 1 with a diagnostic when the derivation fails."""
    from miras.compiler import build_plan

    try:
        return build_plan(path, m.name)
    except MirasError as err:
        _report(err.diagnostics, err.sources or miras.run_frontend(path).sources, Format.text)
        raise typer.Exit(1) from None


@app.command()
def explain(file: File, model: ModelOpt = None,
            latex: Annotated[bool, typer.Option("--latex", help="LaTeX instead of unicode")]
            = False) -> None:
    """Print the derived per-token update rule of a model."""
    checked = _load(file)
    m = _pick(checked.program, model)
    from miras.symbolic import explain as explain_rule

    typer.echo(explain_rule(m, latex=latex))


def _pick(program: ir.Program, name: str | None) -> ir.Model:
    try:
        return program.model(name)
    except KeyError:
        names = ", ".join(m.name for m in program.models) or "none"
        typer.echo(f"error: no model named {name!r} (models: {names})", err=True)
        raise typer.Exit(2) from None


def summary(m: ir.Model) -> str:
    """A human summary of one model: the four choices, the surroundings, the gates it needs."""
    rows = [(name, value_text(getattr(m, name))) for name in (
        "memory", "bias", "retention", "algorithm", "feature", "window", "parallel", "hybrid")]
    rows += [("heads", m.heads if m.heads is not None else "layer default"),
             ("head_dim", m.head_dim if m.head_dim is not None else "layer default"),
             ("read", m.read)]
    return render("summary.txt.jinja", name=m.name, rows=rows, gates=_gates(m))


def _gates(m: ir.Model) -> list[str]:
    out = []
    for axis in catalog.AXES:
        choice = getattr(m, axis)
        for p in catalog.params_of(type(choice)).values():
            value = getattr(choice, p.name)
            if isinstance(value, ir.Gate):
                shape = "[B, T, H, D]" if value.channel else "[B, T, H]"
                out.append(f"{value.role} {shape} ({value.act}, per {value.per})")
    return out


@app.command(name="compile")
def compile_(
    file: File,
    model: ModelOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="write the generated modules (layer, recurrence, Triton kernels) "
        "into this folder")] = None,
) -> None:
    """Compile a spec: show the summary and whether it is fused; with -o, write the code."""
    checked = _load(file)
    m = _pick(checked.program, model)
    typer.echo(summary(m))
    p = _plan(file, m)
    if p.kernel.get("family"):
        typer.echo(f"fused: Triton kernels of the '{p.kernel['family']}' family")
    else:
        typer.echo(f"not fused: {p.kernel['reason']}")
    if out is None:
        typer.echo("validated IR (canonical text):")
        used = ir.Program(definitions=checked.program.definitions, models=(m,))
        typer.echo(print_program(used), nl=False)
        return
    from miras.compiler import write_package

    try:
        paths = write_package(p, out)
    except OSError as exc:
        typer.echo(f"error: cannot write to '{out}': {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    for path in paths:
        typer.echo(f"wrote {path}")


class Task(str, Enum):
    mqar = "mqar"
    copy = "copy"
    niah = "niah"
    noisy_mqar = "noisy_mqar"


@app.command()
def train(
    file: File,
    task: Annotated[Task, typer.Option("--task", help="synthetic task")] = Task.mqar,
    steps: Annotated[int, typer.Option("--steps", min=1, help="training steps")] = 200,
    batch: Annotated[int, typer.Option("--batch", min=1)] = 32,
    seq_len: Annotated[int, typer.Option("--seq-len", min=8)] = 64,
    vocab: Annotated[int, typer.Option("--vocab", min=16)] = 64,
    d_model: Annotated[int, typer.Option("--d-model", min=4)] = 64,
    layers: Annotated[int, typer.Option("--layers", min=1)] = 2,
    heads: Annotated[int, typer.Option("--heads", min=1)] = 2,
    lr: Annotated[float, typer.Option("--lr", min=0.0)] = 3e-3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="processes: >1 launches "
                                       "torchrun, DDP with one data shard per rank")] = 1,
) -> None:
    """Train a small LM with the spec as mixer on a synthetic task; print loss and accuracy."""
    checked = _load(file)
    m = _pick(checked.program, model)
    if batch % nproc:
        typer.echo(f"error: --batch {batch} does not divide among --nproc {nproc} processes",
                   err=True)
        raise typer.Exit(2)
    try:
        compiled = miras.compile(file, m.name)
    except MirasError as err:
        _report(err.diagnostics, err.sources, Format.text)
        raise typer.Exit(1) from None
    if nproc > 1:
        # Every rank re-runs this command under torchrun (which sets WORLD_SIZE); the spec
        # is compiled above first, so that the ranks find it in the module cache.
        args = [str(file), "--task", task.value, "--steps", str(steps), "--batch", str(batch),
                "--seq-len", str(seq_len), "--vocab", str(vocab), "--d-model", str(d_model),
                "--layers", str(layers), "--heads", str(heads), "--lr", repr(lr),
                "--seed", str(seed), "--model", m.name, *(["--json"] if as_json else [])]
        raise typer.Exit(_torchrun(nproc, args))
    from miras.train import train as run

    rank, device = _join_process_group()
    kwargs = dict(task=task.value, steps=steps, batch=batch, seq_len=seq_len, vocab=vocab,
                  d_model=d_model, layers=layers, heads=heads, lr=lr, seed=seed, device=device)
    try:
        if as_json or rank > 0:
            result = run(compiled, **kwargs)
        else:
            result = _train_with_bar(run, compiled, m.name, task.value, steps, kwargs)
    finally:
        _leave_process_group()
    if rank > 0:
        return  # rank 0 prints for all
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{m.name} on {task.value}: {steps} steps, final loss {result['final_loss']:.4f}, "
               f"accuracy {result['accuracy']:.3f} (chance {result['chance']:.3f}), "
               f"{result['tokens_per_s']:.0f} tokens/s, {result['parameters']} parameters"
               + (f", {result['processes']} processes" if result["processes"] > 1 else ""))


def _train_with_bar(run: Any, compiled: Any, name: str, task: str, steps: int,
                    kwargs: dict[str, Any]) -> dict[str, Any]:
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        job = bar.add_task(f"{name} on {task}", total=steps)
        return run(compiled, **kwargs, progress=lambda step, loss: bar.update(  # type: ignore[no-any-return]
            job, advance=1, description=f"{name} on {task}  loss {loss:.3f}"))


def _torchrun(nproc: int, args: list[str]) -> int:
    """Run ``miras train ARGS`` in ``nproc`` processes under torchrun; its exit status."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "miras", "train", *args]
    try:
        code = subprocess.call(cmd)
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    return 0 if code == 0 else 1


def _join_process_group() -> tuple[int, str | None]:
    """Under torchrun: join the process group (NCCL on GPUs, gloo on CPUs); rank, device."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, None
    import torch
    import torch.distributed as dist

    device = None
    if torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device else "gloo")
    return dist.get_rank(), device


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@app.command()
def explore(
    file: Annotated[Path, typer.Argument(help="a .miras file with a sweep block, or a base "
                                         "model to vary with --vary", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory (results, plots, "
                                      "and the record that lets a rerun resume)")],
    vary: Annotated[list[str] | None, typer.Option(
        "--vary", help="FIELD=VALUE,VALUE,... (repeatable; .miras values, e.g. "
        "bias=l2,lp(3),huber)")] = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="sweep block to run "
                                              "(default: the last one)")] = None,
    model: ModelOpt = None,
    task: Annotated[list[Task] | None, typer.Option(
        "--task", help="task (repeatable; overrides the sweep's)")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="training steps per "
                                              "run (overrides the sweep's)")] = None,
    lengths: Annotated[str | None, typer.Option("--lengths", help="context lengths, e.g. "
                                                "32,64,128 (trained at the first)")] = None,
    seed: Annotated[list[int] | None, typer.Option("--seed", help="seed (repeatable)")] = None,
) -> None:
    """Train every variant of a sweep on synthetic tasks; write tables and plots to --out."""
    from miras import explorer
    from miras.sweep import Sweep

    try:
        sw = explorer.load_sweep(file, sweep, model)
    except MirasError as err:
        _report(err.diagnostics, err.sources, Format.text)
        raise typer.Exit(1) from None
    changes: dict[str, Any] = {}
    if task:
        changes["tasks"] = tuple(dict.fromkeys(t.value for t in task))
    if steps is not None:
        changes["steps"] = steps
    if seed:
        changes["seeds"] = tuple(dict.fromkeys(seed))
    if lengths is not None:
        changes["lengths"] = _lengths(lengths)
    settings = sw.settings.with_(**changes)
    varied = dict(sw.vary)
    for option in vary or ():
        fname, values = _vary_option(option, sw)
        varied[fname] = values
    sw = Sweep(sw.name, sw.base, varied, settings)

    def echo(line: str) -> None:
        typer.echo(line, err=True)

    try:
        results = explorer.run_sweep(sw, out=out, progress=True, echo=echo)
    except MirasError as err:
        _report(err.diagnostics, err.sources, Format.text)
        raise typer.Exit(1) from None
    typer.echo(explorer.format_table(results), nl=False)
    ran = sum(r.status == "ok" and not r.resumed for r in results)
    resumed = sum(r.resumed for r in results)
    skipped = sum(r.status != "ok" for r in results)
    typer.echo(f"{ran} run(s) trained, {resumed} resumed, {skipped} invalid or failed; "
               f"results in {out}")


def _lengths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or any(not 8 <= v <= 65536 for v in values):
        typer.echo(f"error: --lengths takes integers from 8 to 65536 separated by commas, "
                   f"not {text!r}", err=True)
        raise typer.Exit(2)
    return tuple(dict.fromkeys(values))


def _vary_option(option: str, sw: Any) -> tuple[str, tuple[Any, ...]]:
    """``FIELD=V1,V2`` → the field and its IR values (diagnostics exit 1)."""
    from miras.explorer import parse_values

    fname, eq, values = option.partition("=")
    fname = fname.strip()
    if not eq or not fname or not values.strip():
        d = Diagnostic("error", "E163", f"malformed --vary {option!r}: expected "
                       "FIELD=VALUE,VALUE,... such as bias=l2,lp(3),huber", None)
        _report([d], {}, Format.text)
        raise typer.Exit(1)
    try:
        return fname, parse_values(sw.base, fname, [values], f"<--vary {fname}>")
    except MirasError as err:
        _report(err.diagnostics, err.sources, Format.text)
        raise typer.Exit(1) from None


def main() -> None:
    """Console entry point (maps click's usage errors to exit code 2)."""
    try:
        app(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
