"""Source spans, diagnostics and their rendering.

Every user-facing error of the front end is a :class:`Diagnostic` with a stable code from
:data:`CODES`. They are rendered in the GNU/mypy shape::

    examples/bad.miras:4:17: error: unknown bias 'hubber'; did you mean 'huber'? [E101]
        bias = hubber(delta=1.0)
               ^~~~~~

and collected into one :class:`MirasError`, so that a file reports all of its problems at once.

>>> d = Diagnostic("error", "E101", "unknown bias 'hubber'", Span("a.miras", 1, 8, 1, 14))
>>> print(d.render(source="bias = hubber"))
a.miras:1:8: error: unknown bias 'hubber' [E101]
    bias = hubber
           ^~~~~~
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

Severity = Literal["error", "warning", "note"]

#: Every diagnostic code the front end emits, with a one-line meaning (documented in the README).
CODES: dict[str, str] = {
    # input and syntax
    "E001": "syntax error: unexpected token",
    "E002": "syntax error: unexpected character",
    "E003": "syntax error: unexpected end of file (unterminated block, call or string)",
    "E004": "the file is not valid UTF-8 text",
    "E005": "the file is too large",
    "E006": "nesting too deep",
    "E007": "cannot read the file",
    # names and arguments
    "E101": "unknown name (choice, field, function, variable or definition)",
    "E102": "unknown parameter",
    "E103": "wrong type of value",
    "E104": "value out of range",
    "E105": "missing field or argument",
    "E106": "duplicate field",
    "E107": "duplicate argument",
    "E108": "too many positional arguments",
    "E109": "a gate is not allowed here (the value must be constant over tokens)",
    "E110": "a learned value is not allowed here (the value must be a literal)",
    "E111": "number is not finite or not representable",
    "E112": "reserved identifier",
    "E136": "a channel-wise value where one value per head is needed",
    # definitions, extends, include
    "E120": "duplicate definition",
    "E121": "unknown parent model in 'extends'",
    "E122": "cyclic 'extends'",
    "E123": "included file not found",
    "E124": "cyclic 'include'",
    # formulas
    "E140": "unknown variable in a formula",
    "E141": "wrong number of arguments to a formula function",
    "E142": "formula has the wrong shape (scalar vs vector)",
    "E143": "comparison outside the condition of where(...)",
    "E144": "user bias does not depend on y",
    "E145": "formula does not depend on its input variable",
    # incompatible combinations
    "E130": "retention needs a positive memory",
    "E131": "'exact' parallel form needs an update that is affine in the memory weights",
    "E132": "non-parametric memory takes no retention other than a window",
    "E133": "Muon needs matrix-shaped memory weights",
    "E134": "non-parametric memory and the non-parametric algorithm go together",
    "E135": "incompatible hybrid declaration",
    # code generation
    "E150": "the symbolic derivation failed (no closed form, or a form it cannot handle)",
    # sweeps and `miras explore`
    "E160": "a list of values outside a sweep block",
    "E161": "invalid sweep setting (an empty list, a repeated value, a value out of place)",
    "E162": "a corrupted or foreign results file in an explore output directory",
    "E163": "malformed --vary option (expected FIELD=VALUE,VALUE,...)",
    # warnings
    "W201": "unused parameter",
    "W202": "dead field (it has no effect)",
}


@dataclass(frozen=True, order=True)
class Span:
    """A region of a source file; lines and columns start at 1, ``end_col`` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    @classmethod
    def point(cls, file: str, line: int, col: int, width: int = 1) -> Span:
        return cls(file, line, col, line, col + max(width, 1))


@dataclass(frozen=True)
class Diagnostic:
    """One message about the user's input, with a stable code from :data:`CODES`."""

    severity: Severity
    code: str
    message: str
    span: Span | None
    notes: tuple[tuple[str, Span | None], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.code not in CODES:  # pragma: no cover - programming error, not user input
            raise ValueError(f"unregistered diagnostic code {self.code}")

    def header(self) -> str:
        where = _where(self.span)
        return f"{where}: {self.severity}: {self.message} [{self.code}]"

    def render(self, source: str | None = None, sources: dict[str, str] | None = None) -> str:
        """GNU-style text: a header line, then the source line with a caret underline."""
        lines = [self.header()]
        lines += _excerpt(self.span, source, sources)
        for text, span in self.notes:
            lines.append(f"{_where(span)}: note: {text}")
            lines += _excerpt(span, None, sources)
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        span = self.span
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "file": span.file if span else None,
            "line": span.line if span else None,
            "column": span.col if span else None,
            "end_line": span.end_line if span else None,
            "end_column": span.end_col if span else None,
            "notes": [
                {"message": t, "file": s.file if s else None, "line": s.line if s else None,
                 "column": s.col if s else None}
                for t, s in self.notes
            ],
        }


def _where(span: Span | None) -> str:
    if span is None:
        return "miras"
    if span.line <= 0:
        return span.file
    return f"{span.file}:{span.line}:{span.col}"


@lru_cache(maxsize=16)
def _lines(text: str) -> tuple[str, ...]:
    # Lines end at '\n' only, as the parser counts them (str.splitlines also splits at '\f',
    # a lone '\r', '\u2028', ...). Cached: a report of many diagnostics splits its source once.
    return tuple(line.removesuffix("\r") for line in text.split("\n"))


def _excerpt(span: Span | None, source: str | None, sources: dict[str, str] | None) -> list[str]:
    if span is None or span.line <= 0:
        return []
    text = source if source is not None else (sources or {}).get(span.file)
    if text is None:
        return []
    src_lines = _lines(text)
    if span.line > len(src_lines):
        return []
    line = src_lines[span.line - 1]
    start = 0
    if len(line) > 200:  # keep the excerpt readable for pathological inputs
        start = max(0, span.col - 100)
        line = line[start : start + 200]
    # One column per character, as the parser counts: tabs and control characters show as
    # a space, so that the caret stays under the span (and a lone '\r' cannot garble it).
    line = "".join(c if c.isprintable() else " " for c in line)
    col = span.col - start
    end = span.end_col - start if span.end_line == span.line else len(line) + 1
    width = max(1, min(end, len(line) + 1) - col)
    return ["    " + line, "    " + " " * (col - 1) + "^" + "~" * (width - 1)]


class MirasError(Exception):
    """Raised by the front end with every diagnostic of the input (errors and warnings).

    ``str(err)`` is the rendered report, so scripts that let it propagate still show useful text.
    """

    def __init__(self, diagnostics: Sequence[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = sort_diagnostics(diagnostics)
        self.sources = dict(sources or {})
        super().__init__(self.render())

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def codes(self) -> list[str]:
        return [d.code for d in self.diagnostics]

    def render(self) -> str:
        return render_text(self.diagnostics, self.sources)


def sort_diagnostics(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    def key(d: Diagnostic) -> tuple[str, int, int, str]:
        s = d.span
        return (s.file, s.line, s.col, d.code) if s else ("", 0, 0, d.code)

    out: list[Diagnostic] = []
    seen: set[tuple[object, ...]] = set()
    for d in sorted(diags, key=key):
        ident = (d.code, d.message, d.span)
        if ident not in seen:
            seen.add(ident)
            out.append(d)
    return out


def render_text(diags: Sequence[Diagnostic], sources: dict[str, str] | None = None) -> str:
    return "\n".join(d.render(sources=sources) for d in diags)


def render_json(diags: Sequence[Diagnostic]) -> str:
    return json.dumps([d.to_json() for d in diags], indent=2)


def suggest(name: str, candidates: Iterable[str]) -> str:
    """A ``; did you mean 'x'?`` suffix for near misses, or ``''``.

    >>> suggest("hubber", ["huber", "l2", "dot"])
    "; did you mean 'huber'?"
    """
    pool = sorted(set(candidates))
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.7)
    if not close:
        lowered = {c.lower(): c for c in pool}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    return f"; did you mean '{close[0]}'?" if close else ""
