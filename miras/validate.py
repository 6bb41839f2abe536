"""Stage 2: AST → typed IR, collecting every diagnostic of the program at once.

Loading (files and ``include``), name resolution (definitions, ``extends``), argument binding
against the catalog, formula checking (variables, functions, shapes) and the compatibility
rules between choices all happen here. Nothing in a spec is ever executed: formulas become
:mod:`miras.ir` expression trees built from whitelisted nodes only.

>>> checked = check_text("model m { memory = matrix  bias = l2  retention = none  algorithm = gd }")
>>> checked.program.model().bias
L2(kind='l2')
"""

from __future__ import annotations

import keyword
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from miras import ast, catalog, ir
from miras.diagnostics import Diagnostic, MirasError, Span, suggest
from miras.parse import decode, parse_text

Origin = tuple[str, ...]

#: The four Miras choices every model must declare.
REQUIRED_FIELDS = ("memory", "bias", "retention", "algorithm")
#: Variables of each kind of formula, with their shapes.
FORMULA_VARS: dict[str, dict[str, str]] = {
    "bias": {"y": "vector", "v": "vector", "k": "vector"},
    "retention": {"w": "scalar"},
    "feature": {"x": "vector"},
    "act": {"x": "scalar"},
    "per_head": {"h": "scalar"},
}
RETENTION_FIELDS = ("regularizer", "potential")
#: per_head schedules are range-checked on this many heads (more when the model says).
PER_HEAD_CHECKED = 64
#: The value range of each gate activation, for scale 1 (open or closed ends alike).
GATE_RANGES: dict[str, tuple[float, float]] = {
    "sigmoid": (0.0, 1.0), "mamba": (0.0, 1.0), "softplus": (0.0, math.inf),
    "exp": (0.0, math.inf), "tanh": (-1.0, 1.0), "identity": (-math.inf, math.inf),
}
MAX_NAME = 64


@dataclass
class Checked:
    """The result of the front end: the IR, where each part came from, and the warnings."""

    program: ir.Program
    origins: dict[Origin, Span]
    warnings: list[Diagnostic]
    sources: dict[str, str]
    files: list[ast.SourceFile] = field(default_factory=list)
    #: The sweep blocks by name (miras.sweep), in the order they are declared.
    sweeps: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Loading files and includes
# --------------------------------------------------------------------------------------------


class _Loader:
    def __init__(self) -> None:
        self.sources: dict[str, str] = {}
        self.files: list[ast.SourceFile] = []
        self.diags: list[Diagnostic] = []
        self.loaded: set[str] = set()

    def _parse(self, text: str, name: str) -> ast.SourceFile | None:
        self.sources[name] = text
        try:
            f = parse_text(text, name)
        except MirasError as err:
            self.diags += err.diagnostics
            return None
        self.files.append(f)
        return f

    def load_text(self, text: str, name: str, base: Path,
                  key: str | None = None) -> list[tuple[ast.Item, str]]:
        f = self._parse(text, name)
        return [] if f is None else self._expand(f, base, [key or name])

    def _expand(self, f: ast.SourceFile, base: Path,
                stack: list[str]) -> list[tuple[ast.Item, str]]:
        # Includes are read before the file's own items, wherever they are written, so that
        # a file's own models always come last and the last one is the file's main model.
        out: list[tuple[ast.Item, str]] = []
        for item in f.items:
            if not isinstance(item, ast.Include):
                continue
            target = (base / item.path.value).resolve()
            key = str(target)
            if key in stack:
                self.diags.append(Diagnostic(
                    "error", "E124", f"cyclic include of '{item.path.value}'", item.path.span))
                continue
            if key in self.loaded:
                continue  # every file is included once, like a header guard
            if not target.is_file():
                self.diags.append(Diagnostic(
                    "error", "E123", f"included file '{item.path.value}' not found "
                    f"(looked in {base})", item.path.span))
                continue
            self.loaded.add(key)
            shown = os.path.normpath(os.path.join(os.path.dirname(f.path), item.path.value))
            try:
                text = decode(target.read_bytes(), shown)
            except MirasError as err:
                self.diags += err.diagnostics
                self.sources.update(err.sources)
                continue
            except OSError as exc:
                self.diags.append(Diagnostic("error", "E007", f"cannot read '{shown}': "
                                             f"{exc.strerror}", item.path.span))
                continue
            sub = self._parse(text, shown)
            if sub is not None:
                out += self._expand(sub, target.parent, [*stack, key])
        out += [(item, f.path) for item in f.items if not isinstance(item, ast.Include)]
        return out


# --------------------------------------------------------------------------------------------
# The validator
# --------------------------------------------------------------------------------------------


class _Validator:
    def __init__(self) -> None:
        self.diags: list[Diagnostic] = []
        self.origins: dict[Origin, Span] = {}
        self.user_defs: dict[str, dict[str, ast.FormulaDef]] = {
            "bias": {}, "retention": {}, "feature": {}, "act": {}}
        self.def_ir: dict[tuple[str, str], Any] = {}
        self.sweeps: dict[str, Any] = {}

    # ---- reporting ----------------------------------------------------------------------

    def error(self, code: str, msg: str, span: Span | None,
              notes: tuple[tuple[str, Span | None], ...] = ()) -> None:
        self.diags.append(Diagnostic("error", code, msg, span, notes))

    def warn(self, code: str, msg: str, span: Span | None) -> None:
        self.diags.append(Diagnostic("warning", code, msg, span))

    def reserved(self, name: ast.Name, what: str) -> bool:
        ident = name.id
        why = None
        if ident.startswith("_"):
            why = "names starting with '_' are reserved"
        elif keyword.iskeyword(ident) or keyword.issoftkeyword(ident):
            why = "it is a reserved word"
        elif len(ident) > MAX_NAME:
            why = f"names are at most {MAX_NAME} characters"
        if why:
            shown = ident if len(ident) <= MAX_NAME else ident[:MAX_NAME] + "..."
            article = "an" if what[0] in "aeiou" else "a"
            self.error("E112", f"'{shown}' cannot name {article} {what}: {why}", name.span)
            return True
        return False

    # ---- entry point --------------------------------------------------------------------

    def run(self, items: list[tuple[ast.Item, str]]) -> ir.Program:
        models: dict[str, ast.ModelDef] = {}
        model_order: list[ast.ModelDef] = []
        defs_order: list[ast.FormulaDef] = []
        sweeps: dict[str, ast.SweepDef] = {}
        for item, _file in items:
            if isinstance(item, ast.SweepDef):
                if self.reserved(item.name, "sweep"):
                    continue
                prev_sweep = sweeps.get(item.name.id)
                if prev_sweep is not None:
                    self.error("E120", f"sweep '{item.name.id}' is defined twice", item.name.span,
                               (("first defined here", prev_sweep.name.span),))
                    continue
                sweeps[item.name.id] = item
            elif isinstance(item, ast.ModelDef):
                if self.reserved(item.name, "model"):
                    continue
                prev = models.get(item.name.id)
                if prev is not None:
                    self.error("E120", f"model '{item.name.id}' is defined twice", item.name.span,
                               (("first defined here", prev.name.span),))
                    continue
                models[item.name.id] = item
                model_order.append(item)
            elif isinstance(item, ast.FormulaDef):
                if self.reserved(item.name, f"{item.kind} definition"):
                    continue
                table = self.user_defs[item.kind]
                prev_def = table.get(item.name.id)
                builtin = (item.name.id in catalog.BUILTIN_ACTS if item.kind == "act"
                           else catalog.lookup(item.kind, item.name.id) is not None)
                if prev_def is not None:
                    self.error("E120", f"{item.kind} '{item.name.id}' is defined twice",
                               item.name.span, (("first defined here", prev_def.name.span),))
                    continue
                if builtin:
                    self.error("E120", f"{item.kind} '{item.name.id}' redefines a built-in "
                               f"{item.kind}; choose another name", item.name.span)
                    continue
                table[item.name.id] = item
                defs_order.append(item)

        definitions = []
        for d in defs_order:
            converted = self.definition(d)
            if converted is not None:
                self.def_ir[(d.kind, d.name.id)] = converted
                definitions.append(converted)

        out_models = []
        for m in model_order:
            fields = self.resolve_fields(m, models)
            if fields is None:
                continue
            built = self.model(m, fields)
            if built is not None:
                out_models.append(built)

        if sweeps:
            from miras.sweep import check_sweep

            by_name = {m.name: m for m in out_models}
            broken = set(models) - set(by_name)
            for d in sweeps.values():
                sweep = check_sweep(self, d, by_name, broken)
                if sweep is not None:
                    self.sweeps[sweep.name] = sweep

        return ir.Program(definitions=tuple(definitions), models=tuple(out_models))

    # ---- extends ------------------------------------------------------------------------

    def resolve_fields(self, m: ast.ModelDef,
                       models: dict[str, ast.ModelDef]) -> dict[str, ast.Field] | None:
        chain = [m]
        seen = {m.name.id}
        cur = m
        while cur.extends is not None:
            parent = models.get(cur.extends.id)
            if parent is None:
                if cur is m:  # report once, at the model that names the missing parent
                    self.error("E121", f"model '{m.name.id}' extends unknown model "
                               f"'{cur.extends.id}'{suggest(cur.extends.id, models)}",
                               cur.extends.span)
                return None
            if parent.name.id in seen:
                if cur is m or parent is m:
                    self.error("E122", f"model '{m.name.id}' extends itself through "
                               + " -> ".join(c.name.id for c in [*chain, parent]),
                               m.extends.span if m.extends else m.name.span)
                return None
            seen.add(parent.name.id)
            chain.append(parent)
            cur = parent
        merged: dict[str, ast.Field] = {}
        for block in reversed(chain):
            own: dict[str, ast.Field] = {}
            for f in block.fields:
                if f.name.id in own:
                    if block is m:
                        self.error("E106", f"field '{f.name.id}' is set twice in model "
                                   f"'{block.name.id}'", f.name.span,
                                   (("first set here", own[f.name.id].name.span),))
                    continue
                own[f.name.id] = f
            merged.update(own)
        return merged

    # ---- models -------------------------------------------------------------------------

    def model(self, m: ast.ModelDef, fields: dict[str, ast.Field]) -> ir.Model | None:
        name = m.name.id
        n_errors = self._count()
        known = catalog.model_fields()
        values: dict[str, Any] = {"name": name}
        # A value can fail without a new diagnostic (it uses a definition whose own errors
        # were reported before this model), so failures are tracked, not only counted.
        failed = False
        self.origins[(name,)] = m.name.span
        for fname, f in fields.items():
            if fname not in known:
                if f.span.file == m.span.file and _inside(f.span, m.span):
                    self.error("E101", f"unknown field '{fname}' in model '{name}'"
                               f"{suggest(fname, known)}", f.name.span)
                continue
            self.origins[(name, fname)] = f.value.span if hasattr(f.value, "span") else f.span
            if fname in catalog.AXES:
                choice = self.choice(fname, f.value, (name, fname))
                if choice is None:
                    failed = True
                else:
                    values[fname] = choice
            else:
                p = catalog.model_params()[fname]
                value = self.value(p, f.value, (name, fname))
                if value is _ERROR:
                    failed = True
                else:
                    values[fname] = value
        misspelled = [f for f in fields if f not in known]
        missing = [req for req in REQUIRED_FIELDS if req not in fields
                   and not any(suggest(f, [req]) for f in misspelled)]
        if missing:
            self.error("E105", f"model '{name}' does not set {', '.join(missing)} (every model "
                       "declares the four Miras choices memory, bias, retention and algorithm)",
                       m.name.span)
        if failed or self._count() > n_errors:
            return None
        model = ir.Model(**values)
        self.compatibility(model, fields)
        return model

    def _count(self) -> int:
        return sum(1 for d in self.diags if d.severity == "error")

    # ---- choices and arguments ----------------------------------------------------------

    def choice(self, axis: str, expr: ast.Expr, where: Origin) -> ir.Choice | None:
        if isinstance(expr, ast.Name):
            name, args, span = expr.id, (), expr.span
        elif isinstance(expr, ast.Call):
            name, args, span = expr.func.id, expr.args, expr.func.span
        else:
            example = next(iter(catalog.entries(axis)))
            self.error("E103", f"expected a {axis} choice such as '{example}'",
                       _span(expr))
            return None
        entry = catalog.lookup(axis, name)
        if entry is not None:
            values = self.bind(catalog.params_of(entry.cls), args, where, f"{axis} '{name}'", span)
            if values is None:
                return None
            return self.build(entry.cls, values, span)
        udef = self.user_defs.get(axis, {}).get(name)
        if udef is not None and axis in catalog.USER_CLASSES:
            return self.user_choice(axis, udef, args, where, span)
        candidates = list(catalog.entries(axis)) + list(self.user_defs.get(axis, {}))
        self.error("E101", f"unknown {axis} '{name}'{suggest(name, candidates)}", span)
        return None

    def user_choice(self, axis: str, udef: ast.FormulaDef, args: tuple[ast.Arg, ...],
                    where: Origin, span: Span) -> ir.Choice | None:
        definition = self.def_ir.get((axis, udef.name.id))
        if definition is None:
            return None  # the definition itself has errors, already reported
        params = {p.name: catalog.ParamInfo(
            name=p.name, kind="scalar", default=p.default, doc="", required=p.default is None)
            for p in definition.params}
        values = self.bind(params, args, where, f"{axis} '{udef.name.id}'", span)
        if values is None:
            return None
        user_args = tuple(ir.UserArg(name=p, value=values.get(p, params[p].default))
                          for p in params)
        cls = catalog.USER_CLASSES[axis]
        return cls(definition=definition, args=user_args)  # type: ignore[call-arg]

    def bind(self, params: dict[str, catalog.ParamInfo], args: Iterable[ast.Arg], where: Origin,
             what: str, span: Span) -> dict[str, Any] | None:
        """Match call arguments to parameters and convert each; None if anything failed."""
        ok = True
        bound: dict[str, ast.Arg] = {}
        order = list(params)
        positional = 0
        for arg in args:
            if arg.name is None:
                if positional >= len(order):
                    self.error("E108", f"{what} takes at most {len(order)} positional "
                               f"argument{'s' if len(order) != 1 else ''}", arg.span)
                    ok = False
                    continue
                pname = order[positional]
                positional += 1
            else:
                pname = arg.name.id
                if pname not in params:
                    known = ", ".join(order) if order else "no parameters"
                    self.error("E102", f"{what} has no parameter '{pname}'"
                               f"{suggest(pname, order)} (parameters: {known})", arg.name.span)
                    ok = False
                    continue
            if pname in bound:
                self.error("E107", f"argument '{pname}' of {what} is given twice", arg.span,
                           (("first given here", bound[pname].span),))
                ok = False
                continue
            bound[pname] = arg
        values: dict[str, Any] = {}
        for pname, arg in bound.items():
            value = self.value(params[pname], arg.value, (*where, pname))
            self.origins[(*where, pname)] = arg.span
            if value is _ERROR:
                ok = False
            else:
                values[pname] = value
        for pname, p in params.items():
            if p.required and pname not in bound:
                self.error("E105", f"{what} needs a value for '{pname}'", span)
                ok = False
        return values if ok else None

    def build(self, cls: type[BaseModel], values: dict[str, Any], span: Span) -> Any:
        return cls(**values)

    # ---- single values ------------------------------------------------------------------

    def value(self, p: catalog.ParamInfo, expr: ast.Expr, where: Origin) -> Any:
        kind = p.kind
        label = where[-1]
        if kind in ("int", "optional_int", "float", "optional_float"):
            if kind.startswith("optional") and isinstance(expr, ast.Name) and expr.id == "none":
                return None
            if isinstance(expr, ast.Call) and expr.func.id in ("gate", "learned", "per_head"):
                return self._not_constant(p, expr, label)
            number = self.fold(expr, label)
            if number is None:
                return _ERROR
            if kind.endswith("int"):
                if not isinstance(number, int):
                    self.error("E103", f"'{label}' must be an integer, not {number!r}",
                               _span(expr))
                    return _ERROR
                if p.even and number % 2:
                    self.error("E104", f"'{label}' must be even, not {number}", _span(expr))
                    return _ERROR
            return number if self.in_range(p, number, expr, label) else _ERROR
        if kind == "bool":
            if isinstance(expr, ast.Name) and expr.id in ("true", "false"):
                return expr.id == "true"
            self.error("E103", f"'{label}' must be true or false", _span(expr))
            return _ERROR
        if kind == "enum":
            if isinstance(expr, ast.Name) and expr.id in p.choices:
                return expr.id
            if isinstance(expr, ast.Name):
                self.error("E101", f"unknown value '{expr.id}' for '{label}'"
                           f"{suggest(expr.id, p.choices)} (one of: {', '.join(p.choices)})",
                           expr.span)
            else:
                self.error("E103", f"'{label}' must be one of: {', '.join(p.choices)}",
                           _span(expr))
            return _ERROR
        if kind == "act":
            if isinstance(expr, ast.Name):
                if expr.id in catalog.BUILTIN_ACTS:
                    return expr.id
                act = self.def_ir.get(("act", expr.id))
                if act is not None:
                    return act
                if expr.id in self.user_defs["act"]:
                    return _ERROR  # the act definition has errors, already reported
                pool = [*catalog.BUILTIN_ACTS, *self.user_defs["act"]]
                self.error("E101", f"unknown act '{expr.id}'{suggest(expr.id, pool)}", expr.span)
                return _ERROR
            self.error("E103", f"'{label}' must name an activation", _span(expr))
            return _ERROR
        if kind == "scalar":
            return self.scalar(p, expr, where)
        raise AssertionError(kind)  # pragma: no cover

    def _not_constant(self, p: catalog.ParamInfo, expr: ast.Call, label: str) -> Any:
        if expr.func.id == "gate":
            self.error("E109", f"'{label}' cannot be a gate: it must be constant over tokens",
                       expr.func.span)
        else:
            self.error("E110", f"'{label}' must be a literal number, not {expr.func.id}(...)",
                       expr.func.span)
        return _ERROR

    def scalar(self, p: catalog.ParamInfo, expr: ast.Expr, where: Origin) -> Any:
        label = where[-1]
        if isinstance(expr, ast.Call) and expr.func.id in ("gate", "learned", "per_head"):
            fn = expr.func.id
            if fn == "gate" and not p.gateable:
                roles = ", ".join(catalog.ir.ROLES)
                self.error("E109", f"'{label}' cannot be a gate: only parameters with a gate role "
                           f"({roles}) are data-dependent", expr.func.span)
                return _ERROR
            if fn in ("learned", "per_head") and not p.learnable:
                return self._not_constant(p, expr, label)
            if fn == "per_head":
                if len(expr.args) != 1 or expr.args[0].name is not None:
                    self.error("E141", "per_head takes one formula of the head index h",
                               expr.span)
                    return _ERROR
                formula = self.formula(expr.args[0].value, "per_head", {}, cond_ok=False)
                if formula is None:
                    return _ERROR
                for h in range(PER_HEAD_CHECKED):
                    value = evaluate(formula[0], {"h": float(h)})
                    if value is None or not math.isfinite(value):
                        self.error("E111", f"per_head formula of '{label}' is not a finite "
                                   f"number at head h = {h}", _span(expr.args[0].value))
                        return _ERROR
                    if not self.in_range(p, value, expr.args[0].value, label,
                                         f" at head h = {h}"):
                        return _ERROR
                return ir.PerHead(expr=formula[0])
            cls = catalog.VALUE_CLASSES[fn]
            values = self.bind(catalog.params_of(cls), expr.args, where, f"{fn}(...)",
                               expr.func.span)
            if values is None:
                return _ERROR
            init = values.get("init")
            if init is not None and not self.in_range(p, init, expr, label):
                return _ERROR
            if fn == "gate":
                values["role"] = p.role
                if not self.gate_range(p, values, expr, label):
                    return _ERROR
                if values.get("channel") and p.role == "delta" and not p.channel_ok:
                    self.error("E136", f"'{label}' is compared with the norm of the error, one "
                               "number per head: a channel-wise gate has no meaning here",
                               expr.func.span)
                    return _ERROR
                if not values.get("channel", False) and any(
                        a.name is not None and a.name.id == "rank" for a in expr.args):
                    self.warn("W202", "'rank' has no effect on a gate with channel=false "
                              "(a per-head gate is one linear map)", expr.func.span)
            return cls(**values)
        number = self.fold(expr, label)
        if number is None:
            return _ERROR
        if not self.in_range(p, number, expr, label):
            return _ERROR
        return ir.Const(value=float(number))

    def gate_range(self, p: catalog.ParamInfo, values: dict[str, Any], expr: ast.Call,
                   label: str) -> bool:
        """The gate's activation must stay inside the parameter's range."""
        act = values.get("act", "sigmoid")
        scale = float(values.get("scale", 1.0))
        lo, hi = GATE_RANGES[act]
        lo, hi = lo * scale, hi * scale
        low_bad = (p.ge is not None and lo < p.ge) or (p.gt is not None and lo < p.gt)
        high_bad = (p.le is not None and hi > p.le) or (p.lt is not None and hi >= p.lt)
        if low_bad or high_bad:
            side = "below" if low_bad else "above"
            bound = (p.ge if p.ge is not None else p.gt) if low_bad else (
                p.le if p.le is not None else p.lt)
            fits = [a for a, (a_lo, a_hi) in GATE_RANGES.items()
                    if not ((p.ge is not None and a_lo * scale < p.ge)
                            or (p.gt is not None and a_lo * scale < p.gt)
                            or (p.le is not None and a_hi * scale > p.le)
                            or (p.lt is not None and a_hi * scale >= p.lt))]
            hint = f"; use act={' or act='.join(fits)}" if fits else ""
            self.error("E104", f"a gate with act={act} and scale={_fmt(scale)} can take values "
                       f"{side} {_fmt(float(bound))} (the range of '{label}' is "
                       f"{p.range_text()}){hint}", expr.func.span)
            return False
        return True

    def in_range(self, p: catalog.ParamInfo, x: float, expr: ast.Expr, label: str,
                 where: str = "") -> bool:
        bad = ((p.ge is not None and x < p.ge) or (p.gt is not None and x <= p.gt)
               or (p.le is not None and x > p.le) or (p.lt is not None and x >= p.lt))
        if bad:
            self.error("E104", f"'{label}' = {_fmt(x)}{where} is out of range "
                       f"({p.range_text()})", _span(expr))
        return not bad

    def fold(self, expr: ast.Expr, label: str) -> int | float | None:
        """Evaluate a constant arithmetic expression (numbers and + - * / ^ only)."""
        try:
            value = _fold(expr)
        except _FoldError as exc:
            self.error(exc.code, exc.message.format(label=label), exc.span)
            return None
        return value

    # ---- user definitions and formulas --------------------------------------------------

    def definition(self, d: ast.FormulaDef) -> Any:
        ok = True
        params: list[ir.ParamDef] = []
        names: set[str] = set()
        for prm in d.params or ():
            if self.reserved(prm.name, "parameter"):
                ok = False
                continue
            if prm.name.id in names:
                self.error("E107", f"parameter '{prm.name.id}' is declared twice", prm.name.span)
                ok = False
                continue
            if prm.name.id in FORMULA_VARS[d.kind] or prm.name.id in ir.CONSTANTS:
                self.error("E120", f"parameter '{prm.name.id}' shadows a variable of "
                           f"{d.kind} formulas", prm.name.span)
                ok = False
                continue
            names.add(prm.name.id)
            default = None
            if prm.default is not None:
                info = catalog.ParamInfo(name=prm.name.id, kind="scalar", default=None, doc="")
                default = self.scalar(info, prm.default, ("def", d.name.id, prm.name.id))
                if default is _ERROR:
                    ok = False
                    continue
            params.append(ir.ParamDef(name=prm.name.id, default=default))
        self.origins[("def", d.kind, d.name.id)] = d.name.span
        pshape = {n: "scalar" for n in names}
        used: set[str] = set()
        if d.kind == "retention":
            body = d.body if isinstance(d.body, tuple) else (
                ast.Field(ast.Name("regularizer", d.name.span), d.body, _span(d.body)),)
            parts: dict[str, ir.Expr] = {}
            for f in body:
                if f.name.id not in RETENTION_FIELDS:
                    self.error("E101", f"unknown retention field '{f.name.id}'"
                               f"{suggest(f.name.id, RETENTION_FIELDS)} (fields: "
                               f"{', '.join(RETENTION_FIELDS)})", f.name.span)
                    ok = False
                    continue
                if f.name.id in parts:
                    self.error("E106", f"field '{f.name.id}' is set twice", f.name.span)
                    ok = False
                    continue
                result = self.formula(f.value, "retention", pshape, used=used)
                if result is None:
                    ok = False
                    continue
                parts[f.name.id] = self.shaped(result, "scalar", f.value, "a retention term")
                if f.name.id == "potential" and "w" not in _vars(result[0]):
                    self.error("E145", "the potential must depend on w", _span(f.value))
                    ok = False
            if not parts and ok:
                self.error("E105", f"retention '{d.name.id}' defines neither a regularizer "
                           "nor a potential", d.name.span)
                ok = False
            self._unused(d, names, used)
            if not ok or any(v is None for v in parts.values()):
                return None
            return ir.RetentionDef(name=d.name.id, params=tuple(params), **parts)
        assert not isinstance(d.body, tuple)
        result = self.formula(d.body, d.kind, pshape, used=used)
        self._unused(d, names, used)
        if result is None or not ok:
            return None
        expr = result[0]
        variables = _vars(expr)
        if d.kind == "bias":
            if self.shaped(result, "scalar", d.body, "a bias") is None:
                return None
            if "y" not in variables:
                self.error("E144", f"bias '{d.name.id}' does not depend on y (the memory "
                           "output); its gradient would be zero", _span(d.body))
                return None
            return ir.BiasDef(name=d.name.id, params=tuple(params), formula=expr)
        if "x" not in variables:
            self.error("E145", f"{d.kind} '{d.name.id}' does not depend on x", _span(d.body))
            return None
        if d.kind == "feature":
            if self.shaped(result, "vector", d.body, "a feature map") is None:
                return None
            return ir.FeatureDef(name=d.name.id, params=tuple(params), formula=expr)
        if self.shaped(result, "scalar", d.body, "an act") is None:
            return None
        return ir.ActDef(name=d.name.id, formula=expr)

    def _unused(self, d: ast.FormulaDef, names: set[str], used: set[str]) -> None:
        for prm in d.params or ():
            if prm.name.id in names and prm.name.id not in used:
                self.warn("W201", f"parameter '{prm.name.id}' of {d.kind} '{d.name.id}' is "
                          "not used in its formula", prm.name.span)

    def shaped(self, result: tuple[ir.Expr, str], want: str, node: ast.Expr,
               what: str) -> ir.Expr | None:
        expr, shape = result
        if shape == want:
            return expr
        if want == "scalar":
            hint = "; reduce it with sum(...), norm(...) or dot(...)" if shape == "vector" else ""
            self.error("E142", f"{what} must be a scalar, but this formula is a {shape}{hint}",
                       _span(node))
        else:
            self.error("E142", f"{what} must be a vector (element-wise in x), but this formula "
                       f"is a {shape}", _span(node))
        return None

    def formula(self, node: ast.Expr, kind: str, params: dict[str, str], *,
                cond_ok: bool = False, used: set[str] | None = None) -> tuple[ir.Expr, str] | None:
        scope = {**FORMULA_VARS[kind], **params, **{c: "scalar" for c in ir.CONSTANTS}}
        return _FormulaChecker(self, scope, used if used is not None else set()).check(
            node, cond_ok)

    # ---- compatibility rules ------------------------------------------------------------

    def compatibility(self, m: ir.Model, fields: dict[str, ast.Field]) -> None:
        def at(name: str) -> Span | None:
            f = fields.get(name)
            return _span(f.value) if f is not None else None

        mem, bias, ret, alg = m.memory, m.bias, m.retention, m.algorithm
        nonparam = isinstance(mem, ir.Nonparametric)
        if nonparam != isinstance(alg, ir.NonparametricAlg):
            self.error("E134", "non-parametric memory and 'algorithm = nonparametric' go "
                       "together" + (" (this memory has weights to learn)" if not nonparam
                                     else " (there are no weights to learn)"),
                       at("algorithm"))
        if nonparam:
            if not isinstance(ret, ir.NoRetention):
                self.error("E132", "non-parametric memory takes no retention; forget old "
                           "tokens with a window instead (window = sliding(size=...))",
                           at("retention"))
            if not isinstance(bias, ir.L2):
                self.error("E134", "non-parametric memory is the Nadaraya–Watson solution of the "
                           "ℓ2 regression; use bias = l2", at("bias"))
            if not isinstance(m.hybrid, ir.NoHybrid):
                self.error("E135", "a hybrid adds attention to a parametric memory; this model "
                           "is attention already", at("hybrid"))
            if "parallel" in fields:
                self.warn("W202", "'parallel' has no effect on non-parametric memory",
                          fields["parallel"].name.span)
        needs_positive = (isinstance(ret, ir.KL | ir.FDiv)
                          or (isinstance(ret, ir.Bregman) and ret.potential != "quadratic"))
        if needs_positive and not nonparam:
            init = getattr(mem, "init", None)
            if init not in ir.POSITIVE_INITS:
                self.error("E130", f"retention '{ret.kind}' takes the log of the memory weights, "
                           f"which needs a positive memory; this memory starts at '{init}' "
                           "(use init=uniform)", at("retention"),
                           (("memory declared here", at("memory")),))
        if isinstance(alg, ir.Muon) and isinstance(mem, ir.Vector):
            self.error("E133", "Muon orthogonalises weight matrices; a vector memory has none "
                       "(use matrix, mlp or gated_mlp)", at("algorithm"))
        if isinstance(alg, ir.ImplicitGD) and not (
                isinstance(bias, ir.L2) and isinstance(mem, ir.Matrix | ir.Vector)):
            self.error("E131", "implicit GD has a closed form (Longhorn) only for bias = l2 on a "
                       "matrix or vector memory", at("algorithm"))
        if isinstance(m.parallel, ir.Exact):
            why = _not_affine(m)
            if why:
                self.error("E131", f"'exact' needs an update affine in the memory weights, but "
                           f"{why}; use chunk(size=...) instead", at("parallel"))
        if not isinstance(m.feature, ir.Identity | ir.UserFeature) and not nonparam:
            # channel-wise retention / momentum factors scale the memory's input columns
            # (ops.channel_scale), which φ turns into F ≠ head_dim channels
            for gate, field in ((getattr(ret, "alpha", None), "retention"),
                                (getattr(alg, "beta", None), "algorithm"),
                                (alg.lr if isinstance(alg, ir.Muon) else None, "algorithm")):
                if getattr(gate, "channel", False):
                    self.error("E136", f"a channel-wise gate in the {field} scales the memory's "
                               f"input channels, which the '{m.feature.kind}' feature map "
                               "makes more than head_dim; use a per-head gate (channel=false) "
                               "or an element-wise feature map", at(field),
                               (("feature map declared here", at("feature")),))
                    break
        if isinstance(m.window, ir.Sliding) and m.window.size == 1 and not nonparam:
            self.warn("W202", "a window of size 1 is the online rule; the field has no effect",
                      at("window"))


_ERROR: Any = object()


class _FormulaChecker:
    """AST expression → IR expression with scope, function and shape checks."""

    def __init__(self, v: _Validator, scope: dict[str, str], used: set[str]) -> None:
        self.v, self.scope, self.used = v, scope, used

    def check(self, node: ast.Expr, cond_ok: bool) -> tuple[ir.Expr, str] | None:
        v = self.v
        if isinstance(node, ast.Number):
            if not math.isfinite(node.value):
                v.error("E111", f"number {node.text[:40]} is not finite", node.span)
                return None
            return ir.Num(value=float(node.value)), "scalar"
        if isinstance(node, ast.Name):
            if node.id in self.scope:
                self.used.add(node.id)
                return ir.Var(name=node.id), self.scope[node.id]
            v.error("E140", f"unknown variable '{node.id}'{suggest(node.id, self.scope)} "
                    f"(available: {', '.join(sorted(self.scope))})", node.span)
            return None
        if isinstance(node, ast.String):
            v.error("E103", "strings are not allowed in formulas", node.span)
            return None
        if isinstance(node, ast.Unary):
            inner = self.check(node.operand, False)
            if inner is None:
                return None
            return (ir.Neg(arg=inner[0]) if node.op == "-" else inner[0]), inner[1]
        if isinstance(node, ast.Binary):
            left, right = self.check(node.left, False), self.check(node.right, False)
            if left is None or right is None:
                return None
            shape = "vector" if "vector" in (left[1], right[1]) else "scalar"
            return ir.BinOp(op=node.op, left=left[0], right=right[0]), shape
        if isinstance(node, ast.Compare):
            if not cond_ok:
                v.error("E143", "a comparison can only be the condition of where(cond, a, b)",
                        node.span)
                return None
            left, right = self.check(node.left, False), self.check(node.right, False)
            if left is None or right is None:
                return None
            shape = "vector" if "vector" in (left[1], right[1]) else "scalar"
            return ir.Cmp(op=node.op, left=left[0], right=right[0]), shape
        assert isinstance(node, ast.Call)
        return self.call(node)

    def call(self, node: ast.Call) -> tuple[ir.Expr, str] | None:
        v = self.v
        fn = node.func.id
        if fn not in ir.FUNCTIONS:
            v.error("E101", f"unknown function '{fn}'{suggest(fn, ir.FUNCTIONS)} (functions: "
                    f"{', '.join(sorted(ir.FUNCTIONS))})", node.func.span)
            return None
        lo, hi = ir.FUNCTIONS[fn]
        if any(a.name is not None for a in node.args):
            v.error("E103", f"'{fn}' takes positional arguments only", node.span)
            return None
        if not lo <= len(node.args) <= hi:
            want = str(lo) if lo == hi else f"{lo} or {hi}"
            v.error("E141", f"'{fn}' takes {want} argument{'s' if hi > 1 else ''}, "
                    f"got {len(node.args)}", node.span)
            return None
        parts = []
        for i, a in enumerate(node.args):
            r = self.check(a.value, cond_ok=(fn == "where" and i == 0))
            if r is None:
                return None
            parts.append(r)
        if fn == "where" and not isinstance(parts[0][0], ir.Cmp):
            v.error("E103", "the condition of where(...) must be a comparison such as x > 0",
                    _span(node.args[0].value))
            return None
        exprs = tuple(p[0] for p in parts)
        if fn in ir.REDUCTIONS:
            if fn == "norm" and len(parts) == 2 and parts[1][1] != "scalar":
                v.error("E142", "the order p of norm(x, p) must be a scalar",
                        _span(node.args[1].value))
                return None
            return ir.Fn(name=fn, args=exprs), "scalar"
        shape = "vector" if any(p[1] == "vector" for p in parts) else "scalar"
        return ir.Fn(name=fn, args=exprs), shape


def _vars(expr: ir.Expr) -> set[str]:
    out: set[str] = set()
    stack: list[Any] = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, ir.Var):
            out.add(e.name)
        elif isinstance(e, ir.Neg):
            stack.append(e.arg)
        elif isinstance(e, ir.BinOp | ir.Cmp):
            stack += [e.left, e.right]
        elif isinstance(e, ir.Fn):
            stack += list(e.args)
    return out


_EVAL_FUNCTIONS: dict[str, Any] = {
    "abs": abs, "sign": lambda x: math.copysign(1.0, x) if x else 0.0, "exp": math.exp,
    "log": math.log, "log1p": math.log1p, "sqrt": math.sqrt, "tanh": math.tanh,
    "sigmoid": lambda x: 1 / (1 + math.exp(-x)), "softplus": lambda x: math.log1p(math.exp(x)),
    "cosh": math.cosh, "sinh": math.sinh, "atan": math.atan, "erf": math.erf,
    "relu": lambda x: max(x, 0.0), "min": min, "max": max,
}


def evaluate(expr: ir.Expr, env: dict[str, float]) -> float | None:
    """Numeric value of a scalar formula (None when undefined: log of a negative, ...).

    >>> evaluate(ir.BinOp(op="^", left=ir.Num(value=2), right=ir.Var(name="h")), {"h": 3.0})
    8.0
    """
    try:
        return _evaluate(expr, env)
    except (ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None


def _evaluate(e: ir.Expr, env: dict[str, float]) -> float:
    if isinstance(e, ir.Num):
        return e.value
    if isinstance(e, ir.Var):
        return env[e.name] if e.name in env else ir.CONSTANTS[e.name]
    if isinstance(e, ir.Neg):
        return -_evaluate(e.arg, env)
    if isinstance(e, ir.BinOp):
        a, b = _evaluate(e.left, env), _evaluate(e.right, env)
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        if e.op == "/":
            return a / b
        r = a**b
        if isinstance(r, complex):
            raise ValueError("complex")
        return float(r)
    if isinstance(e, ir.Fn) and e.name == "where":
        c = e.args[0]
        assert isinstance(c, ir.Cmp)
        a, b = _evaluate(c.left, env), _evaluate(c.right, env)
        ok = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b,
              "!=": a != b}[c.op]
        return _evaluate(e.args[1] if ok else e.args[2], env)
    if isinstance(e, ir.Fn) and e.name in _EVAL_FUNCTIONS:
        return float(_EVAL_FUNCTIONS[e.name](*(_evaluate(a, env) for a in e.args)))
    raise ValueError(f"cannot evaluate {e!r}")


def poly_degree(expr: ir.Expr, var: str) -> float:
    """Polynomial degree of ``expr`` in ``var`` (``inf`` when not a polynomial in it).

    A conservative syntactic analysis, used to decide whether a user bias has a gradient
    affine in ``y`` (degree ≤ 2) without symbolic algebra.

    >>> sq = ir.BinOp(op="^", left=ir.Var(name="y"), right=ir.Num(value=2))
    >>> poly_degree(ir.Fn(name="sum", args=(sq,)), "y")
    2
    """
    if isinstance(expr, ir.Num):
        return 0
    if isinstance(expr, ir.Var):
        return 1 if expr.name == var else 0
    if isinstance(expr, ir.Neg):
        return poly_degree(expr.arg, var)
    if isinstance(expr, ir.BinOp):
        a, b = poly_degree(expr.left, var), poly_degree(expr.right, var)
        if expr.op in "+-":
            return max(a, b)
        if expr.op == "*":
            return a + b
        if expr.op == "/":
            return a if b == 0 else math.inf
        if b == 0 and isinstance(expr.right, ir.Num) and float(expr.right.value).is_integer() \
                and expr.right.value >= 0:
            return a * int(expr.right.value)
        return 0 if a == 0 and b == 0 else math.inf
    if isinstance(expr, ir.Fn):
        degrees = [poly_degree(x, var) for x in expr.args]
        if all(d == 0 for d in degrees):
            return 0
        if expr.name == "sum":
            return degrees[0]
        if expr.name == "dot":
            return degrees[0] + degrees[1]
        return math.inf
    return math.inf


def _not_affine(m: ir.Model) -> str | None:
    """Why the per-token update of ``m`` is not affine in the memory weights (None if it is)."""
    if not isinstance(m.memory, ir.Matrix | ir.Vector):
        return f"memory '{m.memory.kind}' is not linear in its weights"
    bias = m.bias
    if isinstance(bias, ir.UserBias):
        if poly_degree(bias.definition.formula, "y") > 2:
            return f"the gradient of bias '{bias.definition.name}' is not affine in y"
    elif not (isinstance(bias, ir.L2 | ir.Dot) or (isinstance(bias, ir.Lp) and bias.p == 2)):
        return f"the gradient of bias '{bias.kind}' is not affine in y"
    ret = m.retention
    if not (isinstance(ret, ir.NoRetention | ir.Decay)
            or (isinstance(ret, ir.Bregman) and ret.potential == "quadratic")):
        return f"retention '{ret.kind}' is not a linear map"
    if not isinstance(m.algorithm, ir.GD | ir.Momentum | ir.ImplicitGD):
        return f"algorithm '{m.algorithm.kind}' is not linear in the gradient"
    return None


class _FoldError(Exception):
    def __init__(self, code: str, message: str, span: Span | None) -> None:
        super().__init__(message)
        self.code, self.message, self.span = code, message, span


#: Integers beyond this do not fit a float (the IR's number type); folding reports them.
_MAX_INT = int(sys.float_info.max)


def _fold(expr: ast.Expr) -> int | float:
    if isinstance(expr, ast.Number):
        v = expr.value
        if not math.isfinite(v):
            raise _FoldError("E111", f"number {expr.text[:40]} is not finite (too large)",
                             expr.span)
        return v
    if isinstance(expr, ast.Unary):
        inner = _fold(expr.operand)
        return -inner if expr.op == "-" else inner
    if isinstance(expr, ast.Binary):
        a, b = _fold(expr.left), _fold(expr.right)
        try:
            if expr.op == "+":
                r = a + b
            elif expr.op == "-":
                r = a - b
            elif expr.op == "*":
                r = a * b
            elif expr.op == "/":
                r = a / b
                if isinstance(a, int) and isinstance(b, int) and r.is_integer():
                    r = int(r)
            else:
                if isinstance(a, int) and isinstance(b, int) and 0 <= b <= 64 and abs(a) < 2**16:
                    r = a**b
                else:
                    r = float(a) ** float(b)
        except ZeroDivisionError:
            raise _FoldError("E111", "division by zero", expr.span) from None
        except (OverflowError, ValueError):
            raise _FoldError("E111", "the value is not a finite real number", expr.span) from None
        if isinstance(r, complex) or (isinstance(r, float) and not math.isfinite(r)):
            raise _FoldError("E111", "the value is not a finite real number", expr.span)
        if isinstance(r, int) and abs(r) > _MAX_INT:
            raise _FoldError("E111", "the value is too large to be represented", expr.span)
        return r
    if isinstance(expr, ast.Name):
        if expr.id in ("nan", "inf", "NaN", "Inf", "infinity"):
            raise _FoldError("E111", f"'{expr.id}' is not allowed: values must be finite numbers",
                             expr.span)
        raise _FoldError("E103", f"'{{label}}' must be a number, not the name '{expr.id}'",
                         expr.span)
    raise _FoldError("E103", "'{label}' must be a number", _span(expr))


def _span(node: Any) -> Span | None:
    return getattr(node, "span", None)


def _inside(a: Span, b: Span) -> bool:
    return (a.line, a.col) >= (b.line, b.col) and (a.end_line, a.end_col) <= (b.end_line, b.end_col)


def _fmt(x: float) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e16 else repr(x)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _run(load: Callable[[_Loader], list[tuple[ast.Item, str]]], root: str) -> Checked:
    loader = _Loader()
    items = load(loader)
    if loader.diags:
        raise MirasError(loader.diags, loader.sources)
    v = _Validator()
    program = v.run(items)
    errors = [d for d in v.diags if d.severity == "error"]
    if errors:
        raise MirasError(v.diags, loader.sources)
    return Checked(program, v.origins, [d for d in v.diags if d.severity == "warning"],
                   loader.sources, loader.files, v.sweeps)


def check_text(text: str, filename: str = "<string>", base: Path | None = None) -> Checked:
    """Run the front end on source text (includes resolve relative to ``base`` or the cwd)."""
    where = base if base is not None else Path.cwd()
    return _run(lambda ld: ld.load_text(text, filename, where), filename)


def check_file(path: str | os.PathLike[str]) -> Checked:
    """Run the front end on a file."""
    p = Path(path)
    shown = str(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise MirasError([Diagnostic("error", "E007", f"cannot read '{shown}': "
                                     f"{exc.strerror or exc}", Span(shown, 0, 0, 0, 0))]) from None
    text = decode(data, shown)

    def load(ld: _Loader) -> list[tuple[ast.Item, str]]:
        key = str(p.resolve())
        ld.loaded.add(key)
        return ld.load_text(text, shown, p.resolve().parent, key)

    return _run(load, shown)
