"""The programmatic builder: make and vary specs in Python, without writing text.

Every built-in choice of every axis has a builder, generated from :mod:`miras.catalog` (so
from the IR classes): calling it returns the IR choice object. Positional arguments map to
the parameters in catalog order, numbers become :class:`~miras.ir.Const`, and a ``gate()``
takes its role from the parameter it is passed to.

>>> from miras.spec import decay, gate, gd, huber, kl, learned, lp, matrix, mlp, per_head
>>> from miras.spec import definitions, model, space
>>> lp(3)
Lp(kind='lp', p=3.0, smooth='sqrt', eps=1e-06, sharpness=10.0)
>>> decay(alpha=gate(channel=True)).alpha.role
'decay'
>>> gd(lr=0.1).lr
Const(kind='const', value=0.1)

:func:`model` builds a :class:`Spec`, validated by the real front end: the IR is printed to
``.miras`` text and checked, so every rule of the language applies.

>>> from miras.spec import l2
>>> spec = model("titans", memory=mlp(depth=2), bias=l2,
...              retention=decay(alpha=gate()), algorithm=gd(lr=gate(scale=0.1)))
>>> print(spec, end="")
model titans {
    memory = mlp
    bias = l2
    retention = decay(alpha=gate())
    algorithm = gd(lr=gate(scale=0.1))
}
>>> spec.replace(bias=huber(delta=gate())).ir.bias.delta.role
'delta'

**Naming.** Each axis is a namespace of builders: ``miras.spec.memory.mlp``,
``miras.spec.retention.none``, ``miras.spec.hybrid.mac``, ... A builder is also available
at module level (``miras.spec.mlp``) when its name belongs to one axis only and shadows
neither a Python builtin nor another name of this module; ``none`` (retention, window,
hybrid) and ``nonparametric`` (memory, algorithm) are namespaced only.

>>> from miras.spec import algorithm, memory, retention
>>> retention.none(), memory.nonparametric().kind, algorithm.nonparametric().kind
(NoRetention(kind='none'), 'nonparametric', 'nonparametric')

**Values.** Where a choice is expected, a builder may be passed without calling it (``l2``
for ``l2()``, as a bare name in text); where the language has ``none`` (``retention``,
``window``, ``hybrid``, ``heads``, ``head_dim``), Python's ``None`` stands for it. Scalar
hyper-parameters take a number, ``learned(...)``, ``per_head("formula in h")`` or, where the
parameter has a gate role, ``gate(...)``.

>>> per_head("1 - 2^(-5 - h)") == model("r", memory=matrix, bias=l2, retention=decay(
...     alpha=per_head("1 - 2^(-5 - h)")), algorithm=gd).ir.retention.alpha
True
>>> learned(init=0.5)
Learned(kind='learned', init=0.5, channel=False)

**Errors.** Every problem with the content of a spec raises :class:`miras.MirasError` with
the front end's codes: a bad argument name or value at the builder call (``E102`` unknown
parameter, ``E103`` wrong type, ``E104`` out of range, ``E109`` gate not allowed, ...), a
rejected combination at :func:`model`, :meth:`Spec.replace` or :func:`space` (``E130``-``E135``,
reported against the generated text). Only misuse of this module's own options (such as
``space(errors=...)``) raises ``ValueError``.

>>> try:
...     lp(p=0)
... except Exception as err:
...     print(type(err).__name__, err.codes)
MirasError ['E104']
>>> try:
...     model("m", memory=matrix, bias=l2, retention=kl(), algorithm=gd)
... except Exception as err:
...     print(err.codes)
['E130']

:func:`space` enumerates variants of a spec; invalid combinations are skipped (or collected
with their diagnostics).

>>> base = model("m", memory=matrix, bias=l2, retention=decay(alpha=0.9), algorithm=gd)
>>> [s.name for s in space(base, bias=[l2, lp(3), huber()], retention=[decay(), kl()])]
['m_bias_l2_retention_decay', 'm_bias_lp_retention_decay', 'm_bias_huber_retention_decay']

User definitions come from text (:func:`definitions`) and are printed with the specs that
use them.

>>> defs = definitions("bias cauchy(c = 1.0) = sum(log(1 + ((y - v) / c)^2))")
>>> print(base.replace(bias=defs.cauchy(c=0.5)).to_miras(), end="")
bias cauchy(c=1) = sum(log(1 + ((y - v) / c)^2))
<BLANKLINE>
model m {
    memory = matrix
    bias = cauchy(c=0.5)
    retention = decay(alpha=0.9)
    algorithm = gd
}
"""

from __future__ import annotations

import builtins
import hashlib
import inspect
import itertools
import keyword
import math
import numbers
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, overload

from miras import ast, catalog, ir
from miras.diagnostics import Diagnostic, MirasError, Span, suggest
from miras.parse import parse_text
from miras.printer import definition_text, model_text, value_text
from miras.validate import Checked, check_file, check_text

__all__ = [
    "Builder",
    "Namespace",
    "Rejected",
    "Spec",
    "definitions",
    "gate",
    "learned",
    "model",
    "per_head",
    "space",
]

T = TypeVar("T")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: The longest model name the front end accepts (longer ones are reserved, E112).
_MAX_NAME = 64


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _diag(code: str, message: str, where: str) -> Diagnostic:
    # A span on line 0 renders as just its "file" part: the Python call that went wrong.
    return Diagnostic("error", code, message, Span(where, 0, 0, 0, 0))


def _raise(diags: Sequence[Diagnostic]) -> None:
    if diags:
        raise MirasError(diags)


class _Problems:
    """Diagnostics collected while converting the arguments of one call."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.diags: list[Diagnostic] = []

    def add(self, code: str, message: str) -> None:
        self.diags.append(_diag(code, message, self.where))

    def raise_if_any(self) -> None:
        _raise(self.diags)


# --------------------------------------------------------------------------------------------
# Converting Python values to IR values, parameter by parameter (the rules of the validator)
# --------------------------------------------------------------------------------------------

_FAIL: Any = object()


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else repr(float(x))


def _in_range(p: catalog.ParamInfo, x: float, label: str, problems: _Problems) -> bool:
    bad = ((p.ge is not None and x < p.ge) or (p.gt is not None and x <= p.gt)
           or (p.le is not None and x > p.le) or (p.lt is not None and x >= p.lt))
    if bad:
        problems.add("E104", f"'{label}' = {_fmt(x)} is out of range ({p.range_text()})")
    return not bad


def _number(value: Any, label: str, problems: _Problems) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        problems.add("E103", f"'{label}' must be a number, not {_show(value)}")
        return None
    if isinstance(value, numbers.Integral):
        number: int | float = int(value)
        if abs(number) > 1e308:
            problems.add("E111", f"'{label}' is too large to be represented")
            return None
        return number
    number = float(value)
    if not math.isfinite(number):
        problems.add("E111", f"'{label}' = {number} is not finite")
        return None
    return number


def _show(value: Any) -> str:
    if isinstance(value, ir.Choice):
        return f"the {value.axis} '{_choice_name(value)}'"
    if isinstance(value, Builder):
        return f"the builder {value.qualname}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bare(value: Any) -> Any:
    """A builder passed without calling it stands for its call without arguments."""
    if isinstance(value, Builder) and not value.required:
        return value()
    return value


def _convert(p: catalog.ParamInfo, value: Any, label: str, problems: _Problems) -> Any:
    """The IR value of ``value`` for parameter ``p``, or ``_FAIL`` (with a diagnostic)."""
    value = _bare(value)
    kind = p.kind
    if kind in ("int", "optional_int", "float", "optional_float"):
        if value is None and kind.startswith("optional"):
            return None
        if isinstance(value, ir.Gate):
            problems.add("E109", f"'{label}' cannot be a gate: it must be constant over tokens")
            return _FAIL
        if isinstance(value, ir.Learned | ir.PerHead):
            problems.add("E110", f"'{label}' must be a literal number, not {value.name}(...)")
            return _FAIL
        if isinstance(value, ir.Const):
            value = value.value
        number = _number(value, label, problems)
        if number is None:
            return _FAIL
        if kind.endswith("int"):
            if not isinstance(number, int):
                problems.add("E103", f"'{label}' must be an integer, not {number!r}")
                return _FAIL
            if p.even and number % 2:
                problems.add("E104", f"'{label}' must be even, not {number}")
                return _FAIL
        else:
            number = float(number)
        return number if _in_range(p, number, label, problems) else _FAIL
    if kind == "bool":
        if isinstance(value, bool):
            return value
        problems.add("E103", f"'{label}' must be True or False, not {_show(value)}")
        return _FAIL
    if kind == "enum":
        if isinstance(value, str) and value in p.choices:
            return value
        if isinstance(value, str):
            problems.add("E101", f"unknown value '{value}' for '{label}'"
                         f"{suggest(value, p.choices)} (one of: {', '.join(p.choices)})")
        else:
            problems.add("E103", f"'{label}' must be one of: {', '.join(p.choices)}")
        return _FAIL
    if kind == "act":
        if isinstance(value, ir.ActDef):
            return value
        if isinstance(value, str) and value in catalog.BUILTIN_ACTS:
            return value
        if isinstance(value, str):
            problems.add("E101", f"unknown act '{value}'{suggest(value, catalog.BUILTIN_ACTS)} "
                         f"(built-in: {', '.join(catalog.BUILTIN_ACTS)}; a user act comes "
                         "from definitions(...))")
        else:
            problems.add("E103", f"'{label}' must name an activation, not {_show(value)}")
        return _FAIL
    if kind == "scalar":
        return _scalar(p, value, label, problems)
    raise AssertionError(kind)  # pragma: no cover


def _scalar(p: catalog.ParamInfo, value: Any, label: str, problems: _Problems) -> Any:
    if isinstance(value, ir.Gate):
        if not p.gateable:
            problems.add("E109", f"'{label}' cannot be a gate: only parameters with a gate role "
                         f"({', '.join(ir.ROLES)}) are data-dependent")
            return _FAIL
        if value.init is not None and not _in_range(p, value.init, f"{label}: init", problems):
            return _FAIL
        return value.model_copy(update={"role": p.role})
    if isinstance(value, ir.Learned | ir.PerHead):
        if not p.learnable:
            problems.add("E110", f"'{label}' must be a literal number, not {value.name}(...)")
            return _FAIL
        default = ir.Learned.model_fields["init"].default
        if isinstance(value, ir.Learned) and value.init != default and not _in_range(
                p, value.init, f"{label}: init", problems):
            return _FAIL
        return value
    if isinstance(value, ir.Const):
        value = value.value
    number = _number(value, label, problems)
    if number is None or not _in_range(p, number, label, problems):
        return _FAIL
    return ir.Const(value=float(number))


def _bind(params: Mapping[str, catalog.ParamInfo], args: Sequence[Any], kwargs: Mapping[str, Any],
          what: str, where: str) -> dict[str, Any]:
    """Match a call's arguments to parameters (positional in catalog order) and convert them.

    Every problem of the call is reported at once, in one :class:`MirasError`.
    """
    problems = _Problems(where)
    order = list(params)
    given: dict[str, Any] = {}
    if len(args) > len(order):
        n = len(order)
        problems.add("E108", f"{what} takes at most {n} positional argument"
                     f"{'s' if n != 1 else ''}, got {len(args)}")
    for pname, value in zip(order, args, strict=False):
        given[pname] = value
    for pname, value in kwargs.items():
        if pname not in params:
            known = ", ".join(order) if order else "no parameters"
            problems.add("E102", f"{what} has no parameter '{pname}'{suggest(pname, order)} "
                         f"(parameters: {known})")
            continue
        if pname in given:
            problems.add("E107", f"argument '{pname}' of {what} is given twice")
            continue
        given[pname] = value
    values: dict[str, Any] = {}
    for pname, value in given.items():
        converted = _convert(params[pname], value, pname, problems)
        if converted is not _FAIL:
            values[pname] = converted
    for pname, p in params.items():
        if p.required and pname not in given:
            problems.add("E105", f"{what} needs a value for '{pname}'")
    problems.raise_if_any()
    return values


# --------------------------------------------------------------------------------------------
# Builders and namespaces
# --------------------------------------------------------------------------------------------


class Builder(Generic[T]):
    """A callable that builds one IR object (a choice, a gate, a learned value).

    Its parameters, defaults, signature and documentation come from the catalog; positional
    arguments map to the parameters in catalog order.

    >>> from miras.spec import mlp
    >>> mlp
    <builder memory.mlp(depth=2, expansion=4, act=gelu, residual=true, norm=none, init=normal)>
    >>> mlp.axis, mlp.name, mlp(3).depth
    ('memory', 'mlp', 3)
    """

    def __init__(self, axis: str, name: str, params: Mapping[str, catalog.ParamInfo],
                 make: Callable[[dict[str, Any]], T], doc: str = "") -> None:
        self.axis = axis
        self.name = name
        self.params = dict(params)
        self._make = make
        self.__name__ = name
        self.__qualname__ = self.qualname = f"{axis}.{name}" if axis else name
        self.__doc__ = doc
        self.__signature__ = _signature(self.params)

    @property
    def required(self) -> bool:
        """Whether some parameter has no default (the builder cannot be used bare)."""
        return any(p.required for p in self.params.values())

    def __call__(self, /, *args: Any, **kwargs: Any) -> T:
        what = f"{self.axis} '{self.name}'" if self.axis else f"{self.name}(...)"
        values = _bind(self.params, args, kwargs, what, f"miras.spec.{self.qualname}")
        return self._make(values)

    def __repr__(self) -> str:
        parts = [p.name if p.required else f"{p.name}={catalog.format_default(p)}"
                 for p in self.params.values()]
        return f"<builder {self.qualname}({', '.join(parts)})>"


def _signature(params: Mapping[str, catalog.ParamInfo]) -> inspect.Signature:
    def default(p: catalog.ParamInfo) -> Any:
        if p.required:
            return inspect.Parameter.empty
        return p.default.value if isinstance(p.default, ir.Const) else p.default

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    out = []
    for p in params.values():
        if p.required and out and out[-1].default is not inspect.Parameter.empty:
            kind = inspect.Parameter.KEYWORD_ONLY  # a required one after an optional one
        out.append(inspect.Parameter(p.name, kind, default=default(p)))
    return inspect.Signature(out)


class Namespace(Mapping[str, T]):
    """Named builders of one kind: ``miras.spec.bias.huber``, ``defs.bias.cauchy``, ...

    A read-only mapping from names to builders whose names are also attributes.

    >>> from miras.spec import window
    >>> window
    <miras.spec.window: none, sliding>
    >>> window.none(), list(window), window["sliding"](size=8).size
    (NoWindow(kind='none'), ['none', 'sliding'], 8)
    """

    def __init__(self, label: str, items: Mapping[str, T]) -> None:
        object.__setattr__(self, "_label", label)
        object.__setattr__(self, "_items", dict(items))
        for name, item in self._items.items():
            object.__setattr__(self, name, item)

    def __getattr__(self, name: str) -> T:
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(f"{self._label} has no {name!r}{suggest(name, self._items)} "
                             f"(names: {', '.join(self._items) or 'none'})")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self._label} is read-only")

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"{self._label} has no {name!r}{suggest(name, self._items)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._items))

    def __repr__(self) -> str:
        return f"<{self._label}: {', '.join(self._items)}>"


def _params_doc(params: Mapping[str, catalog.ParamInfo]) -> str:
    lines = []
    for p in params.values():
        extra = [f"one of {'|'.join(p.choices)}"] if p.kind == "enum" else []
        extra += [p.range_text()] if p.range_text() else []
        extra += [f"gate role '{p.role}'"] if p.role else []
        tail = f" ({'; '.join(extra)})" if extra else ""
        lines.append(f"    {p.name} = {catalog.format_default(p)}: {p.doc}{tail}")
    return "\n\nParameters, in positional order:\n" + "\n".join(lines) if lines else ""


def _choice_builder(axis: str, entry: catalog.Entry) -> Builder[ir.Choice]:
    cls = entry.cls
    doc = entry.doc + (f"\n\nReference: {entry.ref}" if entry.ref else "")
    return Builder(axis, entry.name, entry.params, lambda values: cls(**values),
                   doc + _params_doc(entry.params))


def _value_builder(name: str, cls: type[ir.IRNode]) -> Builder[Any]:
    params = catalog.params_of(cls)
    return Builder("", name, params, lambda values: cls(**values),
                   inspect.cleandoc(cls.__doc__ or "") + _params_doc(params))


#: The builders of every axis, generated from the catalog.
AXES: dict[str, Namespace[Builder[ir.Choice]]] = {
    axis: Namespace(f"miras.spec.{axis}",
                    {name: _choice_builder(axis, e) for name, e in catalog.entries(axis).items()})
    for axis in catalog.AXES
}

memory = AXES["memory"]
bias = AXES["bias"]
retention = AXES["retention"]
algorithm = AXES["algorithm"]
feature = AXES["feature"]
window = AXES["window"]
parallel = AXES["parallel"]
hybrid = AXES["hybrid"]

#: ``gate(...)``: a data-dependent value; its role is set by the parameter it is passed to.
gate: Builder[ir.Gate] = _value_builder("gate", catalog.VALUE_CLASSES["gate"])
#: ``learned(init=..., channel=...)``: a trained constant per head (or per channel).
learned: Builder[ir.Learned] = _value_builder("learned", catalog.VALUE_CLASSES["learned"])


# --------------------------------------------------------------------------------------------
# Formulas through the front end: per_head(...) and user definitions
# --------------------------------------------------------------------------------------------

_PER_HEAD_HEAD = ("model m { memory = matrix  bias = l2  algorithm = gd  "
                  "retention = decay(alpha=per_head(\n")
_PER_HEAD_TAIL = "\n)) }\n"


def per_head(formula: str) -> ir.PerHead:
    """``per_head(formula)``: a fixed schedule over heads; ``h`` is the head index from 0.

    The formula is ``.miras`` text, parsed and checked by the front end.

    >>> per_head("1 - 2^(-5 - h)").expr.op
    '-'
    >>> try:
    ...     per_head("1 - 2^(-5 - g)")
    ... except Exception as err:
    ...     print(err)
    <per_head>:1:13: error: unknown variable 'g' (available: h, pi) [E140]
        1 - 2^(-5 - g)
                    ^
    """
    where = "miras.spec.per_head"
    if not isinstance(formula, str):
        _raise([_diag("E103", f"per_head takes the formula as text, such as \"1 - 2^(-5 - h)\", "
                      f"not {_show(formula)}", where)])
    text = _PER_HEAD_HEAD + formula + _PER_HEAD_TAIL
    n_lines = formula.count("\n") + 1
    try:
        # Parse first: the wrapper must keep its shape, so that the text is one formula.
        tree = parse_text(text, "<per_head>")
        if _per_head_arg(tree.items) is None:
            _raise([_diag("E103", f"per_head takes one formula of the head index h, not "
                          f"{_show(formula)}", where)])
        checked = check_text(text, "<per_head>")
    except MirasError as err:
        raise _shift(err, formula, n_lines) from None
    alpha = checked.program.models[0].retention.alpha  # type: ignore[union-attr]
    assert isinstance(alpha, ir.PerHead)
    return alpha


def _per_head_arg(items: Sequence[ast.Item]) -> ast.Expr | None:
    """The formula of the wrapper, if the wrapper kept its shape (nothing injected)."""
    if len(items) != 1 or not isinstance(items[0], ast.ModelDef) or len(items[0].fields) != 4:
        return None
    ret = items[0].fields[3].value
    if not (isinstance(ret, ast.Call) and ret.func.id == "decay" and len(ret.args) == 1):
        return None
    alpha = ret.args[0].value
    if not (isinstance(alpha, ast.Call) and alpha.func.id == "per_head" and len(alpha.args) == 1
            and alpha.args[0].name is None):
        return None
    return alpha.args[0].value


def _shift(err: MirasError, formula: str, n_lines: int) -> MirasError:
    """Diagnostics of the per_head wrapper, re-pointed at the formula text itself."""
    out = []
    for d in err.diagnostics:
        s = d.span
        if s is not None and s.file == "<per_head>" and 2 <= s.line <= n_lines + 1:
            end_line = min(s.end_line, n_lines + 1) - 1
            end_col = s.end_col if s.end_line <= n_lines + 1 else len(formula) + 1
            out.append(Diagnostic(d.severity, d.code, d.message,
                                  Span("<per_head>", s.line - 1, s.col, end_line, end_col)))
        elif d.code.startswith("E00"):  # outside the formula: it did not end where it should
            out.append(_diag("E001", f"per_head formula {_show(formula)} is incomplete or its "
                             "parentheses do not balance", "<per_head>"))
        elif s is not None and s.line > 0 and s.file == "<per_head>":
            out.append(_diag(d.code, d.message, "<per_head>"))
        else:
            out.append(d)
    return MirasError(out, {"<per_head>": formula})


def _user_builder(axis: str, definition: Any) -> Builder[ir.Choice]:
    params = {p.name: catalog.ParamInfo(name=p.name, kind="scalar", default=p.default, doc="",
                                        required=p.default is None)
              for p in definition.params}
    cls = catalog.USER_CLASSES[axis]

    def make(values: dict[str, Any]) -> ir.Choice:
        args = tuple(ir.UserArg(name=p, value=values.get(p, params[p].default)) for p in params)
        return cls(definition=definition, args=args)  # type: ignore[call-arg]

    doc = f"The user {axis} ``{definition_text(definition)}``."
    return Builder(axis, definition.name, params, make, doc)


class Definitions:
    """User definitions read from ``.miras`` text, as builders (and acts as values).

    ``defs.bias.NAME``, ``defs.retention.NAME``, ``defs.feature.NAME`` are builders like the
    built-in ones; ``defs.act.NAME`` is the activation itself (pass it as ``act=``). A name
    used by one kind only is also an attribute of ``defs`` itself.

    >>> defs = definitions('''
    ... act swish = x * sigmoid(x)
    ... retention smooth_l1(mu) = mu * sqrt(w^2 + 1e-6)
    ... ''')
    >>> from miras.spec import mlp
    >>> mlp(act=defs.swish).act.name, defs.smooth_l1(0.01).args[0].value.value
    ('swish', 0.01)
    """

    KINDS = ("bias", "retention", "feature", "act")

    def __init__(self, program: ir.Program) -> None:
        self.definitions = program.definitions
        table: dict[str, dict[str, Any]] = {k: {} for k in self.KINDS}
        for d in program.definitions:
            table[d.def_kind][d.name] = d if isinstance(d, ir.ActDef) else _user_builder(
                d.def_kind, d)
        self.bias = Namespace("definitions.bias", table["bias"])
        self.retention = Namespace("definitions.retention", table["retention"])
        self.feature = Namespace("definitions.feature", table["feature"])
        self.act = Namespace("definitions.act", table["act"])
        counts: dict[str, list[Any]] = {}
        for kind in self.KINDS:
            for name, item in table[kind].items():
                counts.setdefault(name, []).append(item)
        self._flat = {n: items[0] for n, items in counts.items() if len(items) == 1}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._flat:
            return self._flat[name]
        kinds = [k for k in self.KINDS if name in getattr(self, k)]
        if kinds:
            raise AttributeError(f"'{name}' names a definition of several kinds; use "
                                 + " or ".join(f"definitions.{k}.{name}" for k in kinds))
        raise AttributeError(f"no definition named {name!r}{suggest(name, self._flat)}")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._flat))

    def __repr__(self) -> str:
        return f"<definitions: {', '.join(f'{d.def_kind} {d.name}' for d in self.definitions)}>"


def definitions(source: str | os.PathLike[str]) -> Definitions:
    """The user definitions of ``.miras`` text (a ``str``) or of a file (a path object).

    The text is checked by the front end; it may also declare models, which are ignored.

    >>> defs = definitions("bias cauchy(c = 1.0) = sum(log(1 + ((y - v) / c)^2))")
    >>> defs.cauchy
    <builder bias.cauchy(c=1)>
    >>> defs.cauchy(c=learned(init=2)).args
    (UserArg(name='c', value=Learned(kind='learned', init=2.0, channel=False)),)
    """
    checked = check_file(source) if isinstance(source, os.PathLike) else check_text(source)
    return Definitions(checked.program)


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------

#: The fields of a model block, with their catalog description (non-choice fields).
_MODEL_PARAMS = catalog.model_params()
_REQUIRED = tuple(n for n, f in ir.Model.model_fields.items() if n != "name" and f.is_required())


def _choice_name(c: ir.Choice) -> str:
    definition = getattr(c, "definition", None)
    return definition.name if definition is not None else str(c.kind)  # type: ignore[attr-defined]


def _axis_value(axis: str, value: Any, problems: _Problems) -> Any:
    if value is None and "none" in catalog.entries(axis):
        return catalog.entries(axis)["none"].cls()
    value = _bare(value)
    allowed = (*catalog.AXES[axis], *([catalog.USER_CLASSES[axis]]
                                      if axis in catalog.USER_CLASSES else []))
    if isinstance(value, allowed):
        return value
    names = ", ".join(catalog.entries(axis))
    hint = (f"; use miras.spec.{axis}.{value}" if isinstance(value, str)
            and value in catalog.entries(axis) else "")
    problems.add("E103", f"'{axis}' must be a {axis} choice ({names}; built with "
                 f"miras.spec.{axis}.NAME(...)), not {_show(value)}{hint}")
    return _FAIL


def _field_value(fname: str, value: Any, problems: _Problems) -> Any:
    if fname in catalog.AXES:
        return _axis_value(fname, value, problems)
    return _convert(_MODEL_PARAMS[fname], value, fname, problems)


def _model_values(name: str, current: Mapping[str, Any], fields: Mapping[str, Any],
                  where: str) -> dict[str, Any]:
    """``current`` updated with the converted ``fields``; raises on any problem."""
    problems = _Problems(where)
    values = dict(current)
    known = [n for n in ir.Model.model_fields if n != "name"]
    for fname, value in fields.items():
        if fname not in known:
            problems.add("E101", f"unknown field '{fname}' in model '{name}'"
                         f"{suggest(fname, known)} (fields: {', '.join(known)})")
            continue
        converted = _field_value(fname, value, problems)
        if converted is not _FAIL:
            values[fname] = converted
    missing = [req for req in _REQUIRED if req not in values and req not in fields]
    if missing:
        problems.add("E105", f"model '{name}' does not set {', '.join(missing)} (every model "
                     "declares the four Miras choices memory, bias, retention and algorithm)")
    problems.raise_if_any()
    return values


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        _raise([_diag("E103", f"a model name is an identifier (letters, digits and '_', not "
                      f"starting with a digit), not {_show(name)}", where)])
    return name


def _definitions_of(m: ir.Model) -> tuple[Any, ...]:
    """The user definitions a model uses, in the order of its fields."""
    out: list[Any] = []
    act = getattr(m.memory, "act", None)
    if isinstance(act, ir.ActDef):
        out.append(act)
    for fname in ("bias", "retention", "feature"):
        definition = getattr(getattr(m, fname), "definition", None)
        if definition is not None:
            out.append(definition)
    return tuple(out)


def _text_of(m: ir.Model) -> str:
    blocks = [definition_text(d) for d in _definitions_of(m)] + [model_text(m)]
    return "\n\n".join(blocks) + "\n"


class Spec:
    """An immutable, validated model spec: its IR and its canonical ``.miras`` text.

    ``Spec(ir_model)`` validates the IR through the front end (print, then check); so do
    :func:`model`, :meth:`replace`, :meth:`from_text` and :meth:`from_file`. ``spec.ir`` is
    the IR the front end reads back from ``spec.to_miras()``. Two specs are equal when their
    IR is.

    >>> s = Spec.from_text("model m { memory=matrix bias=l2 retention=none algorithm=gd }")
    >>> s
    Spec(m: memory=matrix, bias=l2, retention=none, algorithm=gd)
    >>> s.replace(heads=4).ir.heads, s.name, Spec.from_text(str(s)) == s
    (4, 'm', True)
    """

    __slots__ = ("_ir", "_text", "_warnings")
    _ir: ir.Model
    _text: str
    _warnings: tuple[Diagnostic, ...]

    def __init__(self, model: ir.Model) -> None:
        if not isinstance(model, ir.Model):
            _raise([_diag("E103", f"Spec takes an ir.Model, not {_show(model)}",
                          "miras.spec.Spec")])
        _check_name(model.name, "miras.spec.Spec")
        text = _text_of(model)
        checked = check_text(text, f"<spec {model.name}>")
        # The IR as the front end reads it back: equal to ``model`` whenever the printer's
        # check(print(p)) == p holds, canonical where a hand-made IR is not (Num(-1) in a
        # formula reads back as Neg(Num(1))), so that ``load(spec.to_miras()) == spec.ir``.
        object.__setattr__(self, "_ir", checked.program.model(model.name))
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "_warnings", tuple(checked.warnings))

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def from_text(cls, text: str, model: str | None = None) -> Spec:
        """The spec of model ``model`` (default: the main, last, model) of ``.miras`` text.

        Includes are resolved relative to the current directory.
        """
        return cls._from_checked(check_text(text), model, "<string>")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], model: str | None = None) -> Spec:
        """The spec of model ``model`` (default: the main model) of a ``.miras`` file."""
        return cls._from_checked(check_file(path), model, str(path))

    @classmethod
    def _from_checked(cls, checked: Checked, model: str | None, where: str) -> Spec:
        try:
            return cls(checked.program.model(model))
        except KeyError:
            names = ", ".join(m.name for m in checked.program.models) or "none"
            raise MirasError([Diagnostic("error", "E101", f"no model named {model!r} (models: "
                                         f"{names})", Span(where, 0, 0, 0, 0))]) from None

    def replace(self, **fields: Any) -> Spec:
        """A new spec with some fields changed (``name`` too), validated again.

        >>> from miras.spec import huber
        >>> s = Spec.from_text("model m { memory=mlp bias=l2 retention=none algorithm=gd }")
        >>> s.replace(name="yaad_like", bias=huber(delta=gate())).ir.bias
        Huber(kind='huber', delta=Gate(kind='gate', role='delta', channel=False, rank=32, \
act='sigmoid', init=None, scale=1.0, per='token'))
        """
        where = "miras.spec.Spec.replace"
        name = _check_name(fields.pop("name", self._ir.name), where)
        current = {n: getattr(self._ir, n) for n in ir.Model.model_fields if n != "name"}
        return Spec(ir.Model(name=name, **_model_values(name, current, fields, where)))

    # ---- views ----------------------------------------------------------------------------

    @property
    def ir(self) -> ir.Model:
        """The validated IR of the model."""
        return self._ir

    @property
    def name(self) -> str:
        return self._ir.name

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        """The front end's warnings about the spec (W201, W202)."""
        return self._warnings

    def to_miras(self) -> str:
        """Canonical ``.miras`` text: the user definitions it uses, then the model."""
        return self._text

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        parts = []
        for fname, f in ir.Model.model_fields.items():
            value = getattr(self._ir, fname)
            if fname != "name" and (f.is_required() or value != f.default):
                parts.append(f"{fname}={value_text(value)}")
        return f"Spec({self._ir.name}: {', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spec) and self._ir == other._ir

    def __hash__(self) -> int:
        return hash(self._ir)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Spec is immutable; use spec.replace(...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a Spec is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Spec, (self._ir,))


def model(name: str = "m", **fields: Any) -> Spec:
    """A validated :class:`Spec` from its fields (the fields of a ``model`` block).

    ``memory``, ``bias``, ``retention`` and ``algorithm`` are required; ``feature``,
    ``window``, ``parallel``, ``hybrid`` take choices, ``heads`` and ``head_dim`` an integer
    or ``None``, ``read`` ``"after_write"`` or ``"before_write"``.

    >>> from miras.spec import chunk, l2, matrix, momentum, sliding
    >>> s = model("m", memory=matrix, bias=l2, retention=None,
    ...           algorithm=momentum(lr=gate(), beta=0.95), window=sliding(8), heads=4)
    >>> print(s.to_miras(), end="")
    model m {
        memory = matrix
        bias = l2
        retention = none
        algorithm = momentum(lr=gate(), beta=0.95)
        window = sliding(size=8)
        heads = 4
    }
    """
    where = "miras.spec.model"
    name = _check_name(name, where)
    return Spec(ir.Model(name=name, **_model_values(name, {}, fields, where)))


# --------------------------------------------------------------------------------------------
# Design spaces
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    """A combination of :func:`space` that the front end rejects, with its diagnostics."""

    name: str
    #: The values of the varied fields.
    fields: dict[str, Any] = field(hash=False)
    error: MirasError = field(hash=False)
    #: The ``.miras`` text that was checked (the diagnostics point into it).
    text: str = ""

    @property
    def codes(self) -> list[str]:
        return self.error.codes


def _label(value: Any) -> str:
    if isinstance(value, ir.Choice):
        return _choice_name(value)
    return _sanitize(value_text(value))


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "x"


def _labels(values: Sequence[Any]) -> list[str]:
    """One distinct identifier fragment per value: the choice name, with its arguments where
    two values share a name, with an index where even that is not enough."""
    labels = [_label(v) for v in values]
    labels = [_sanitize(value_text(v)) if labels.count(lab) > 1 else lab
              for v, lab in zip(values, labels, strict=True)]
    return [f"{lab}_{i}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def _variant_name(prefix: str, parts: Sequence[str]) -> str:
    name = "_".join([prefix, *parts])
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:_MAX_NAME - 9].rstrip('_')}_{digest}"
    return name


def _options(values: Any) -> list[Any]:
    if isinstance(values, Sequence) and not isinstance(values, str):
        return list(values)
    return [values]


@overload
def space(base: Spec | None = None, *, errors: Literal["skip", "raise"] = "skip",
          name: str | None = None, **axes: Any) -> list[Spec]: ...
@overload
def space(base: Spec | None = None, *, errors: Literal["collect"],
          name: str | None = None, **axes: Any) -> list[Spec | Rejected]: ...


def space(base: Spec | None = None, *, errors: str = "skip", name: str | None = None,
          **axes: Any) -> list[Spec] | list[Spec | Rejected]:
    """Every combination of the given values per field, as validated specs.

    ``axes`` maps a model field to a list (or tuple) of values; a single value counts as a
    one-element list. Fields not given keep the value of ``base`` (without a base, all of
    memory, bias, retention and algorithm must be given). The product is taken in the order
    the fields are given, the last field varying fastest. Each variant is named
    ``{prefix}_{field}_{label}...`` (prefix: ``name``, else the base's name, else ``m``;
    label: the choice's name, plus its arguments where two values of a field share a name),
    shortened with a hash suffix past 64 characters.

    ``errors``: combinations rejected by the front end are dropped (``"skip"``), raise their
    :class:`MirasError` (``"raise"``), or come back in place as :class:`Rejected`
    (``"collect"``). A value that is wrong on its own (a bias given for ``retention``)
    raises whatever ``errors`` says.

    >>> from miras.spec import decay, kl, l2, matrix, mlp, muon, vector
    >>> variants = space(memory=[matrix, vector, mlp(init="uniform")], bias=l2,
    ...                  retention=[decay, kl], algorithm=muon, errors="collect")
    >>> [(v.name, type(v).__name__) for v in variants]  # doctest: +NORMALIZE_WHITESPACE
    [('m_memory_matrix_bias_l2_retention_decay_algorithm_muon', 'Spec'),
     ('m_memory_matrix_bias_l2_retention_kl_algorithm_muon', 'Rejected'),
     ('m_memory_vector_bias_l2_retention_decay_algorithm_muon', 'Rejected'),
     ('m_memory_vector_bias_l2_retention_kl_algorithm_muon', 'Rejected'),
     ('m_memory_mlp_bias_l2_retention_decay_algorithm_muon', 'Spec'),
     ('m_memory_mlp_bias_l2_retention_kl_algorithm_muon', 'Spec')]
    >>> variants[3].codes
    ['E130', 'E133']
    """
    if errors not in ("skip", "raise", "collect"):
        raise ValueError(f"errors must be 'skip', 'raise' or 'collect', not {errors!r}")
    where = "miras.spec.space"
    if base is not None and not isinstance(base, Spec):
        _raise([_diag("E103", f"the base of a space is a Spec, not {_show(base)}", where)])
    prefix = _check_name(name if name is not None else (base.name if base else "m"), where)
    current = ({n: getattr(base.ir, n) for n in ir.Model.model_fields if n != "name"}
               if base is not None else {})
    # Convert every value once, up front: a value that is wrong on its own is a usage error.
    problems = _Problems(where)
    known = [n for n in ir.Model.model_fields if n != "name"]
    options: dict[str, list[Any]] = {}
    for fname, values in axes.items():
        if fname not in known:
            problems.add("E101", f"unknown field '{fname}'{suggest(fname, known)} "
                         f"(fields: {', '.join(known)})")
            continue
        options[fname] = [_field_value(fname, v, problems) for v in _options(values)]
    problems.raise_if_any()
    missing = [req for req in _REQUIRED if req not in current and req not in options]
    if missing:
        _raise([_diag("E105", f"a space without a base needs values for {', '.join(missing)}",
                      where)])
    labels = {f: _labels(opts) for f, opts in options.items()}

    out: list[Any] = []
    names = [list(zip(opts, labels[f], strict=True)) for f, opts in options.items()]
    for combo in itertools.product(*names):
        pairs = list(zip(options, combo, strict=True))
        chosen = {f: value for f, (value, _) in pairs}
        vname = _variant_name(prefix, [f"{f}_{lab}" for f, (_, lab) in pairs])
        m = ir.Model(name=vname, **{**current, **chosen})
        try:
            out.append(Spec(m))
        except MirasError as err:
            if errors == "raise":
                raise
            if errors == "collect":
                out.append(Rejected(vname, chosen, err, _text_of(m)))
    return out


# --------------------------------------------------------------------------------------------
# Flat aliases
# --------------------------------------------------------------------------------------------


def _flat_aliases() -> tuple[dict[str, Builder[ir.Choice]], dict[str, list[str]]]:
    owners: dict[str, list[str]] = {}
    for axis, ns in AXES.items():
        for n in ns:
            owners.setdefault(n, []).append(axis)
    taken = set(globals()) | set(dir(builtins)) | set(keyword.kwlist)
    flat = {n: AXES[axes[0]][n] for n, axes in owners.items() if len(axes) == 1 and n not in taken}
    namespaced_only = {n: axes for n, axes in owners.items() if n not in flat}
    return flat, namespaced_only


_FLAT, _NAMESPACED_ONLY = _flat_aliases()
globals().update(_FLAT)
__all__ += [*AXES, *sorted(_FLAT)]


def __getattr__(name: str) -> Any:
    axes = _NAMESPACED_ONLY.get(name)
    if axes:
        raise AttributeError(f"'{name}' is a choice of several axes ({', '.join(axes)}); use "
                             + " or ".join(f"miras.spec.{a}.{name}" for a in axes))
    raise AttributeError(f"module 'miras.spec' has no attribute {name!r}")

