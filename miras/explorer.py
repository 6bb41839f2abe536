"""Design-space exploration: train every variant of a sweep, tabulate and plot the results.

A sweep (:class:`miras.sweep.Sweep`, from a ``sweep`` block or built by :func:`explore`'s
arguments) expands to the cartesian product of its varied fields (:func:`miras.space`).
Every valid variant is trained on every task of the sweep, once per seed, for a fixed
number of steps at ``train_length``, then evaluated at each of ``lengths``; a combination
the front end rejects comes back as a :class:`Result` with ``status="invalid"`` and its
diagnostics, and the sweep goes on.

With an output directory, each finished run is written atomically to
``OUT/runs/<variant>__<task>__s<seed>__<key>.json`` (``key`` hashes the variant's text and
every setting that affects its result), so an interrupted sweep resumes where it stopped
and a changed setting re-runs only what it changes. A run file that does not read back
exactly as written (bad JSON, a checksum or key that does not match) is a diagnostic
(E162), never silently reused. The tables ``results.csv`` and ``results.json`` and, when
matplotlib is installed (``pip install 'miras[explore]'``), ``accuracy_vs_length.png`` and
``loss_curves.png`` are rewritten at the end of every sweep.

>>> import miras
>>> rs = miras.explore("model m { memory = matrix  bias = l2  retention = none  algorithm = gd }",
...                    vary={"retention": ["none", "kl"]}, budget=2, lengths=(16,),
...                    batch=2, vocab=16, d_model=8, layers=1)
>>> [(r.variant, r.status) for r in rs]
[('m_retention_none', 'ok'), ('m_retention_kl', 'invalid')]
>>> rs[1].codes
['E130']
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from miras import ir
from miras.diagnostics import Diagnostic, MirasError, Span
from miras.printer import value_text
from miras.spec import Rejected, Spec, space
from miras.sweep import Settings, Sweep
from miras.validate import check_file, check_text

__all__ = ["RUN_FORMAT", "Result", "explore", "format_table", "load_sweep", "run_sweep"]

#: The ``format`` tag of a run file; another tag is a foreign file (E162).
RUN_FORMAT = "miras-explore-run/1"


@dataclass(frozen=True)
class Result:
    """One run of a sweep: a variant on a task with a seed (or a rejected variant)."""

    variant: str
    #: The varied fields of this variant, as ``.miras`` text.
    fields: dict[str, str]
    task: str
    seed: int
    #: ``ok`` (trained), ``invalid`` (rejected by the front end or the compiler), ``failed``
    #: (an error while training; not recorded, so a rerun tries again).
    status: str
    #: Accuracy at each evaluated context length.
    accuracy: dict[int, float] = field(default_factory=dict)
    chance: float = math.nan
    final_loss: float = math.nan
    losses: list[float] = field(default_factory=list)
    train_length: int = 0
    steps: int = 0
    parameters: int = 0
    seconds: float = 0.0
    #: Rendered diagnostics (invalid) or the error (failed).
    messages: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    #: True when this result was read back from an earlier, interrupted run.
    resumed: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["accuracy"] = {str(k): v for k, v in self.accuracy.items()}
        del data["resumed"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], resumed: bool = False) -> Result:
        values = dict(data)
        values["accuracy"] = {int(k): float(v) for k, v in data["accuracy"].items()}
        return cls(**values, resumed=resumed)


# --------------------------------------------------------------------------------------------
# Building a sweep
# --------------------------------------------------------------------------------------------


def _where(name: str) -> Span:
    return Span(name, 0, 0, 0, 0)


def load_sweep(path: str | os.PathLike[str], name: str | None = None,
               model: str | None = None) -> Sweep:
    """The sweep ``name`` of a ``.miras`` file (default: its last sweep block); a file
    without one gives a sweep of its main model (or ``model``) with nothing varied."""
    checked = check_file(path)
    if name is None and not checked.sweeps:
        try:
            return Sweep("explore", checked.program.model(model))
        except KeyError:
            names = ", ".join(m.name for m in checked.program.models) or "none"
            raise MirasError([Diagnostic("error", "E101", f"no model named {model!r} "
                                         f"(models: {names})", _where(str(path)))]) from None
    if name is None:
        return list(checked.sweeps.values())[-1]
    if name not in checked.sweeps:
        names = ", ".join(checked.sweeps) or "none"
        raise MirasError([Diagnostic("error", "E101", f"no sweep named {name!r} (sweeps: "
                                     f"{names})", _where(str(path)))])
    return checked.sweeps[name]


def parse_values(base: ir.Model, fname: str, texts: Sequence[str],
                 where: str = "<vary>") -> tuple[Any, ...]:
    """``.miras`` texts of values of the field ``fname`` → IR values, checked like a sweep's."""
    spec = Spec(base)
    head = spec.to_miras()
    line = f"sweep vary {{ base = {base.name}  {fname} = [{', '.join(texts)}] }}\n"
    # Only the sweep line is shown in diagnostics: the generated model text comes first and
    # is already valid, so every error points into the user's values.
    checked = check_text(head + line, where)
    return checked.sweeps["vary"].vary.get(fname, ())


def _as_model(base: Any) -> ir.Model:
    if isinstance(base, Spec):
        return base.ir
    if isinstance(base, ir.Model):
        return base
    if isinstance(base, str | os.PathLike):
        import miras

        return miras.load(base)
    raise TypeError(f"base must be a Spec, an ir.Model, a path or spec text, not {base!r}")


def _values(base: ir.Model, fname: str, values: Any) -> tuple[Any, ...]:
    items = list(values) if isinstance(values, list | tuple) else [values]
    texts = [v for v in items if isinstance(v, str)]
    parsed = iter(parse_values(base, fname, texts, f"<vary {fname}>") if texts else ())
    # strings are .miras text; anything else (builders, IR) is passed to miras.space as is
    return tuple(next(parsed) if isinstance(v, str) else v for v in items)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def explore(base: Any, vary: Mapping[str, Any] | None = None, *, task: str | Sequence[str]
            = "mqar", budget: int = 200, lengths: Sequence[int] = (64,),
            seed: int | Sequence[int] = 0, out: str | os.PathLike[str] | None = None,
            progress: bool = False, echo: Callable[[str], None] | None = None,
            **settings: Any) -> list[Result]:
    """Train every variant of ``base`` × ``vary`` on ``task`` for ``budget`` steps each.

    ``base``: a :class:`~miras.spec.Spec`, an IR model, a path or spec text (its main
    model), or a :class:`~miras.sweep.Sweep` (then ``vary`` adds to its fields and the
    keyword settings are ignored). ``vary`` maps a model field to its values: builder or IR
    values, or ``.miras`` text (``["l2", "lp(3)", "huber(delta=gate())"]``). ``task`` and
    ``seed`` take one value or several; variants are trained at ``train_length`` (default:
    the first of ``lengths``) and evaluated at every length. Other settings (``batch``,
    ``vocab``, ``d_model``, ``layers``, ``lr``, ``noise``, ``train_length``) are those of
    :class:`~miras.sweep.Settings`. With ``out``, results are recorded there and an
    interrupted sweep resumes (see the module docs). Returns one :class:`Result` per run.
    """
    if isinstance(base, Sweep):
        sweep = base
    else:
        tasks = (task,) if isinstance(task, str) else tuple(task)
        seeds = (seed,) if isinstance(seed, int) else tuple(seed)
        lengths = tuple(lengths)
        s = Settings().with_(tasks=tasks, seeds=seeds, lengths=lengths, steps=budget,
                             **settings)
        sweep = Sweep("explore", _as_model(base), {}, s)
    if vary:
        merged = dict(sweep.vary)
        for fname, values in vary.items():
            merged[fname] = _values(sweep.base, fname, values)
        sweep = Sweep(sweep.name, sweep.base, merged, sweep.settings)
    return run_sweep(sweep, out=out, progress=progress, echo=echo)


def variants(sweep: Sweep) -> list[Spec | Rejected]:
    """The specs of a sweep (cartesian product), rejected combinations in place."""
    return space(Spec(sweep.base), errors="collect", **sweep.vary)


def _key(text: str, task: str, seed: int, s: Settings) -> str:
    payload = {"spec": text, "task": task, "seed": seed, "steps": s.steps, "batch": s.batch,
               "vocab": s.vocab, "d_model": s.d_model, "layers": s.layers, "lr": s.lr,
               "noise": s.noise, "train_length": s.train_length, "lengths": list(s.lengths)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _checksum(result: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()


def _corrupt(path: Path, why: str) -> MirasError:
    return MirasError([Diagnostic(
        "error", "E162", f"results file '{path}' is corrupted or not miras's: {why}; delete it "
        "to run that variant again", Span(str(path), 0, 0, 0, 0))])


def read_runs(out: Path) -> dict[str, Result]:
    """Every recorded run under ``out/runs`` by key; raises E162 on a damaged file."""
    runs: dict[str, Result] = {}
    folder = out / "runs"
    if not folder.is_dir():
        return runs
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _corrupt(path, f"it is not readable JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
            raise _corrupt(path, f"no '{RUN_FORMAT}' format tag")
        body, key = data.get("result"), data.get("key")
        if not isinstance(body, dict) or data.get("sha256") != _checksum(body):
            raise _corrupt(path, "its checksum does not match its content")
        if not isinstance(key, str) or not path.stem.endswith(f"__{key}"):
            raise _corrupt(path, "its key does not match its name")
        try:
            runs[key] = Result.from_json(body, resumed=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(path, f"a field is missing or malformed ({exc})") from None
    return runs


def _record(out: Path, key: str, result: Result) -> None:
    folder = out / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    body = result.to_json()
    data = {"format": RUN_FORMAT, "key": key, "sha256": _checksum(body), "result": body}
    final = folder / f"{result.variant}__{result.task}__s{result.seed}__{key}.json"
    tmp = folder / f".{final.name}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)  # atomic: a run file is either absent or whole


def _fields(sweep: Sweep, values: Mapping[str, Any]) -> dict[str, str]:
    return {f: value_text(values[f]) for f in sweep.vary}


def run_sweep(sweep: Sweep, *, out: str | os.PathLike[str] | None = None,
              progress: bool = False, echo: Callable[[str], None] | None = None
              ) -> list[Result]:
    """Run a sweep (see :func:`explore`); write tables and plots to ``out`` when given."""
    s = sweep.settings
    say = echo or (lambda _line: None)
    out_dir = Path(out) if out is not None else None
    done = read_runs(out_dir) if out_dir is not None else {}
    specs = variants(sweep)
    plan: list[tuple[Spec | Rejected, str, int]] = [
        (v, t, seed) for v in specs for t in s.tasks for seed in s.seeds]
    todo_steps = sum(s.steps for v, t, seed in plan if isinstance(v, Spec)
                     and _key(v.to_miras(), t, seed, s) not in done)
    results: list[Result] = []
    for v in specs:
        if isinstance(v, Rejected):
            say(f"{v.name}: invalid combination, skipped\n{v.error.render()}")
    bar = _Bar(todo_steps) if progress else None
    try:
        for v, task, seed in plan:
            if isinstance(v, Rejected):
                results.append(_rejected(sweep, v, task, seed))
                continue
            key = _key(v.to_miras(), task, seed, s)
            if key in done:
                results.append(done[key])
                continue
            result = _run_one(sweep, v, task, seed, bar, say)
            if out_dir is not None and result.status == "ok":
                _record(out_dir, key, result)
            results.append(result)
    finally:
        if bar is not None:
            bar.close()
    if out_dir is not None:
        write_outputs(results, sweep, out_dir, say)
    return results


def _rejected(sweep: Sweep, v: Rejected, task: str, seed: int) -> Result:
    return Result(v.name, _fields(sweep, v.fields), task, seed, "invalid",
                  train_length=sweep.settings.train_length, steps=sweep.settings.steps,
                  messages=[v.error.render()], codes=v.codes)


def _run_one(sweep: Sweep, spec: Spec, task: str, seed: int, bar: _Bar | None,
             say: Callable[[str], None]) -> Result:
    import miras
    from miras.train import train

    s = sweep.settings
    fields = _fields(sweep, {f: getattr(spec.ir, f) for f in sweep.vary})
    common = dict(train_length=s.train_length, steps=s.steps)
    try:
        compiled = miras.compile(spec.to_miras(), spec.name)
    except MirasError as err:
        say(f"{spec.name}: cannot be compiled, skipped\n{err.render()}")
        return Result(spec.name, fields, task, seed, "invalid", messages=[err.render()],
                      codes=err.codes, **common)  # type: ignore[arg-type]
    label = f"{spec.name} · {task} · seed {seed}"
    start = time.perf_counter()

    def step(i: int, loss: float) -> None:
        if bar is not None:
            bar.advance(f"{label}  loss {loss:.3f}")

    try:
        r = train(compiled, task=task, steps=s.steps, batch=s.batch, seq_len=s.train_length,
                  vocab=s.vocab, d_model=s.d_model, layers=s.layers, lr=s.lr, seed=seed,
                  noise=s.noise, eval_lengths=s.lengths, progress=step)
    except (RuntimeError, ValueError) as exc:  # a numerical failure of one variant
        say(f"{spec.name} on {task}: training failed: {exc}")
        return Result(spec.name, fields, task, seed, "failed", messages=[str(exc)], **common)  # type: ignore[arg-type]
    return Result(spec.name, fields, task, seed, "ok",
                  accuracy={length: r["accuracy_by_length"][length] for length in s.lengths},
                  chance=r["chance"], final_loss=r["final_loss"], losses=r["losses"],
                  parameters=r["parameters"], seconds=time.perf_counter() - start,
                  **common)  # type: ignore[arg-type]


class _Bar:
    """A rich progress bar over every training step of the sweep (stderr)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total} steps"),
                                 TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=True)
        self.progress.start()
        self.job = self.progress.add_task("explore", total=total)

    def advance(self, description: str) -> None:
        self.progress.update(self.job, advance=1, description=description)

    def close(self) -> None:
        self.progress.stop()


# --------------------------------------------------------------------------------------------
# Tables and plots
# --------------------------------------------------------------------------------------------


def _columns(results: Sequence[Result]) -> tuple[list[str], list[int]]:
    fields = list(dict.fromkeys(f for r in results for f in r.fields))
    lengths = sorted({length for r in results for length in r.accuracy})
    return fields, lengths


def table_rows(results: Sequence[Result]) -> list[dict[str, Any]]:
    """One flat row per result (the CSV's rows): accuracy per length as ``acc@L``."""
    fields, lengths = _columns(results)
    rows = []
    for r in results:
        row: dict[str, Any] = {"variant": r.variant, "task": r.task, "seed": r.seed,
                               "status": r.status}
        row.update({f: r.fields.get(f, "") for f in fields})
        row.update({f"acc@{length}": (round(r.accuracy[length], 4)
                                      if length in r.accuracy else "") for length in lengths})
        row.update({"chance": round(r.chance, 4) if r.status == "ok" else "",
                    "final_loss": round(r.final_loss, 4) if r.status == "ok" else "",
                    "train_length": r.train_length, "steps": r.steps,
                    "parameters": r.parameters or "", "seconds": round(r.seconds, 1),
                    "codes": " ".join(r.codes)})
        rows.append(row)
    return rows


def format_table(results: Sequence[Result], markdown: bool = False) -> str:
    """The results as an aligned text table (or a Markdown table)."""
    rows = table_rows(results)
    if not rows:
        return "(no results)\n"
    keep = [c for c in rows[0] if c not in ("train_length", "steps", "seconds")]
    cells = [[str(row[c]) for c in keep] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(keep) + " |", "|" + "---|" * len(keep)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines) + "\n"
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(keep)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(keep, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in cells]
    return "\n".join(lines) + "\n"


def write_outputs(results: Sequence[Result], sweep: Sweep, out: Path,
                  say: Callable[[str], None] = print) -> list[Path]:
    """results.csv, results.json and (with matplotlib) the two plots; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(results)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    written = [_write(out / "results.csv", buf.getvalue())]
    doc = {"sweep": sweep.name, "base": sweep.base.name,
           "vary": {f: [value_text(v) for v in vs] for f, vs in sweep.vary.items()},
           "settings": asdict(sweep.settings), "results": [r.to_json() for r in results]}
    written.append(_write(out / "results.json", json.dumps(doc, indent=1)))
    try:
        import matplotlib
    except ImportError:
        say("plots skipped: matplotlib is not installed (pip install 'miras[explore]')")
        return written
    matplotlib.use("Agg")  # files only: never a window, works without a display
    ok = [r for r in results if r.status == "ok"]
    if ok:
        written += _plots(ok, out)
    return written


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _plots(results: Sequence[Result], out: Path) -> list[Path]:
    def accuracy(ax: Any, task: str, runs: dict[str, list[Result]]) -> None:
        for v, rs in runs.items():
            lengths = sorted(rs[0].accuracy)
            ax.plot(lengths, [_mean([r.accuracy[n] for r in rs]) for n in lengths],
                    marker="o", label=v)
        chance = next(rs[0].chance for rs in runs.values())
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xscale("log", base=2)
        shown = sorted({n for rs in runs.values() for r in rs for n in r.accuracy})
        ax.set_xticks(shown, [str(n) for n in shown])
        ax.minorticks_off()
        ax.set_ylim(0, 1.02)
        ax.set(title=f"{task}: accuracy vs context length", xlabel="context length (tokens)",
               ylabel="accuracy")

    def losses(ax: Any, task: str, runs: dict[str, list[Result]]) -> None:
        for v, rs in runs.items():
            curve = [_mean(step) for step in zip(*(r.losses for r in rs), strict=True)]
            ax.plot(range(1, len(curve) + 1), curve, label=v, linewidth=1.2)
        ax.set(title=f"{task}: training loss", xlabel="step", ylabel="cross-entropy")

    return [_figure(results, out / "accuracy_vs_length.png", accuracy),
            _figure(results, out / "loss_curves.png", losses)]


def _figure(results: Sequence[Result], path: Path,
            panel: Callable[[Any, str, dict[str, list[Result]]], None]) -> Path:
    """One panel per task, the runs of each variant (over seeds) grouped for ``panel``."""
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in results))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        runs: dict[str, list[Result]] = {}
        for r in results:
            if r.task == task:
                runs.setdefault(r.variant, []).append(r)
        panel(ax, task, runs)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
