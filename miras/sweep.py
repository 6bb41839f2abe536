"""Sweep blocks: a design-space exploration declared in ``.miras`` text (front end only).

A ``sweep`` block names a base model, the model fields to vary (a list of values each; the
variants are their cartesian product) and the settings of the runs (:data:`SETTINGS`)::

    model base {
        memory = matrix
        bias = l2
        retention = decay(alpha=gate())
        algorithm = gd(lr=gate())
        heads = 2
    }

    sweep robust {
        base = base
        bias = [l2, huber(delta=gate())]   # one variant per value
        memory = [matrix, mlp(depth=2)]    # x 2: four variants
        task = [noisy_mqar, mqar]          # every variant runs every task
        lengths = [32, 64, 128]            # trained at the first, evaluated at each
        steps = 100
    }

A field written once (``memory = mlp``) sets that field for every variant. Values are
checked like a model's fields, with the same diagnostics; combinations that the front end
rejects (``kl`` retention on a matrix memory, E130) are not errors of the sweep: ``miras
explore`` reports them and runs the others. :mod:`miras.explore` runs a :class:`Sweep`.

>>> from miras.validate import check_text
>>> s = check_text('''model m { memory = matrix  bias = l2  retention = none  algorithm = gd }
... sweep s { base = m  bias = [l2, lp(3)]  lengths = [32, 64]  steps = 5 }''').sweeps["s"]
>>> s.base.name, [v.kind for v in s.vary["bias"]], s.settings.lengths, s.settings.train_length
('m', ['l2', 'lp'], (32, 64), 32)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from miras import ast, catalog, ir
from miras.diagnostics import suggest

if TYPE_CHECKING:  # pragma: no cover
    from miras.validate import _Validator

#: Synthetic tasks a sweep can name (miras.tasks).
TASKS = ("mqar", "copy", "niah", "noisy_mqar")


@dataclass(frozen=True)
class Setting:
    """One run setting of a sweep: its type, default, range and whether it takes a list."""

    kind: str  # "int", "float" or "task"
    default: Any
    doc: str
    many: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False


#: The run settings of a sweep block (every other field is a model field).
SETTINGS: dict[str, Setting] = {
    "task": Setting("task", ("mqar",), f"synthetic tasks ({', '.join(TASKS)})", many=True),
    "lengths": Setting("int", (64,), "context lengths to evaluate at", many=True,
                       lo=8, hi=65536),
    "train_length": Setting("int", None, "length trained at (default: the first of lengths)",
                            lo=8, hi=65536),
    "seed": Setting("int", (0,), "seeds; every variant runs once per seed", many=True,
                    lo=0, hi=2**31 - 1),
    "steps": Setting("int", 200, "training steps (the budget)", lo=1, hi=10**7),
    "batch": Setting("int", 32, "sequences per step", lo=1, hi=65536),
    "vocab": Setting("int", 64, "vocabulary size", lo=16, hi=65536),
    "d_model": Setting("int", 64, "model width", lo=4, hi=65536),
    "layers": Setting("int", 2, "LM blocks", lo=1, hi=1024),
    "lr": Setting("float", 3e-3, "AdamW learning rate", lo=0.0, hi=10.0, lo_open=True),
    "noise": Setting("float", 0.25, "noisy_mqar: fraction of corrupted value writes",
                     lo=0.0, hi=0.9),
}


@dataclass(frozen=True)
class Settings:
    """How each variant is trained and evaluated (the defaults of :data:`SETTINGS`)."""

    tasks: tuple[str, ...] = ("mqar",)
    lengths: tuple[int, ...] = (64,)
    train_length: int = 64
    seeds: tuple[int, ...] = (0,)
    steps: int = 200
    batch: int = 32
    vocab: int = 64
    d_model: int = 64
    layers: int = 2
    lr: float = 3e-3
    noise: float = 0.25

    def with_(self, **changes: Any) -> Settings:
        """A copy with some settings changed (``train_length`` follows ``lengths``)."""
        if "lengths" in changes and "train_length" not in changes:
            changes["train_length"] = changes["lengths"][0]
        return replace(self, **changes)


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the base model, the values of each varied field, the settings."""

    name: str
    base: ir.Model
    vary: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)


_SETTING_FIELD = {"task": "tasks", "seed": "seeds"}


def check_sweep(v: _Validator, d: ast.SweepDef, models: dict[str, ir.Model],
                broken: set[str]) -> Sweep | None:
    """Validate one sweep block against the program's models; ``None`` after an error."""
    n_errors = v._count()
    name = d.name.id
    fields: dict[str, ast.Field] = {}
    for f in d.fields:
        if f.name.id in fields:
            v.error("E106", f"field '{f.name.id}' is set twice in sweep '{name}'", f.name.span,
                    (("first set here", fields[f.name.id].name.span),))
            continue
        fields[f.name.id] = f
    model_fields = [n for n in catalog.model_fields() if n != "name"]
    known = ["base", *model_fields, *SETTINGS]

    base: ir.Model | None = None
    base_field = fields.pop("base", None)
    if base_field is None:
        v.error("E105", f"sweep '{name}' needs a base model: 'base = MODEL'", d.name.span)
    elif not isinstance(base_field.value, ast.Name):
        v.error("E103", "'base' names a model of this file (or of an included one)",
                base_field.value.span)
    else:
        ref = base_field.value.id
        base = models.get(ref)
        if base is None and ref not in broken:
            v.error("E101", f"unknown model '{ref}'{suggest(ref, models)}", base_field.value.span)

    vary: dict[str, tuple[Any, ...]] = {}
    values: dict[str, Any] = {}
    for fname, f in fields.items():
        if fname in SETTINGS:
            got = _setting(v, fname, SETTINGS[fname], f.value)
            if got is not None:
                values[_SETTING_FIELD.get(fname, fname)] = got
        elif fname in model_fields:
            got_vary = _varied(v, name, fname, f.value)
            if got_vary is not None:
                vary[fname] = got_vary
        else:
            v.error("E101", f"unknown field '{fname}' in sweep '{name}'{suggest(fname, known)}",
                    f.name.span)
    if "lengths" in values and "train_length" not in values:
        values["train_length"] = values["lengths"][0]
    if base is None or v._count() > n_errors:
        return None
    return Sweep(name, base, vary, Settings(**values))


def _each(v: _Validator, fname: str, expr: ast.Expr,
          convert: Callable[[ast.Expr], Any]) -> tuple[Any, ...] | None:
    """Every value of a field (a list, or one value), converted; ``None`` after an error.

    ``convert`` reports its own diagnostics and returns ``None`` for a bad value.
    """
    items = expr.items if isinstance(expr, ast.ListExpr) else (expr,)
    if not items:
        v.error("E161", f"the list of values of '{fname}' is empty", expr.span)
        return None
    out: list[Any] = []
    for item in items:
        value = convert(item)
        if value is None:
            continue
        if value in out:
            v.error("E161", f"'{fname}' lists the same value twice", getattr(item, "span", None))
            continue
        out.append(value)
    return tuple(out) if len(out) == len(items) else None


def _varied(v: _Validator, sweep: str, fname: str, expr: ast.Expr) -> tuple[Any, ...] | None:
    from miras.validate import _ERROR

    def convert(item: ast.Expr) -> Any:
        if fname in catalog.AXES:
            return v.choice(fname, item, (sweep, fname))
        value = v.value(catalog.model_params()[fname], item, (sweep, fname))
        return None if value is _ERROR else value

    return _each(v, fname, expr, convert)


def _setting(v: _Validator, fname: str, s: Setting, expr: ast.Expr) -> Any:
    if isinstance(expr, ast.ListExpr) and not s.many:
        v.error("E161", f"'{fname}' takes one value, not a list", expr.span)
        return None

    def convert(item: ast.Expr) -> Any:
        if s.kind == "task":
            if not isinstance(item, ast.Name) or item.id not in TASKS:
                shown = item.id if isinstance(item, ast.Name) else "this"
                hint = suggest(item.id, TASKS) if isinstance(item, ast.Name) else ""
                v.error("E101", f"unknown task '{shown}'{hint} (tasks: {', '.join(TASKS)})",
                        getattr(item, "span", None))
                return None
            return item.id
        number = v.fold(item, fname)
        if number is None:
            return None
        if s.kind == "int" and not isinstance(number, int):
            v.error("E103", f"'{fname}' must be an integer, not {number!r}", _span(item))
            return None
        bad = ((s.lo is not None and (number <= s.lo if s.lo_open else number < s.lo))
               or (s.hi is not None and number > s.hi))
        if bad:
            low = f"> {s.lo:g}" if s.lo_open else f">= {s.lo:g}"
            v.error("E104", f"'{fname}' = {number:g} is out of range ({low} and <= {s.hi:g})",
                    _span(item))
            return None
        return float(number) if s.kind == "float" else number

    values = _each(v, fname, expr, convert)
    if values is None:
        return None
    return values if s.many else values[0]


def _span(node: ast.Expr) -> Any:
    return getattr(node, "span", None)
