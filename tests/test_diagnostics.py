"""Every diagnostic code, triggered from real input, and the rendered shape of diagnostics.

``CASES`` maps every code of :data:`miras.diagnostics.CODES` to a ``.miras`` input that
triggers it, with the line and column where it must be reported; a meta-test fails when a
code is added to ``CODES`` without a case here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import miras
from miras.diagnostics import (
    CODES,
    Diagnostic,
    MirasError,
    Span,
    render_json,
    sort_diagnostics,
    suggest,
)
from miras.parse import MAX_BYTES

#: The four required choices, on one line (each starts at a known column: see ``COL``).
M4 = "memory = matrix  bias = l2  retention = none  algorithm = gd"


def model(extra: str = "", fields: str = M4) -> str:
    return f"model m {{ {fields}  {extra} }}"


# Column of a value placed in ``extra`` by ``model(extra)``: "model m { " + M4 + "  ".
EXTRA = len("model m { ") + len(M4) + len("  ") + 1


@dataclass(frozen=True)
class Case:
    """An input, the position of the diagnostic, and the files it needs (in a tmp folder)."""

    src: str | None  # spec text; None: run the entry file
    line: int
    col: int
    files: dict[str, bytes] = field(default_factory=dict)
    entry: str | None = None  # a file (in the tmp folder) to run instead of ``src``
    message: str | None = None  # a fragment the message must contain
    compile: bool = False  # the diagnostic comes from compiling, after the front end


CASES: dict[str, Case] = {
    # ---- input and syntax ---------------------------------------------------------------
    "E001": Case("model m {\n  memory = = matrix\n}", 2, 12, message="unexpected '='"),
    "E002": Case("model m {\n  memory = matrix;\n}", 2, 18, message="unexpected character ';'"),
    "E003": Case("model m {\n  memory = lp(p=3\n", 2, 18, message="unexpected end of file"),
    "E004": Case(None, 2, 10, files={"bad.miras": b"model m {\n  bias = \xff\n}\n"},
                 entry="bad.miras", message="invalid UTF-8 byte 0xff"),
    "E005": Case("#" + "x" * MAX_BYTES, 0, 0, message="the limit for a spec is"),
    "E006": Case("model m {\n  heads = " + "(" * 70 + "1" + ")" * 70 + "\n}", 2, 74,
                 message="nested deeper than 64"),
    "E007": Case(None, 0, 0, entry="missing.miras", message="cannot read"),
    # ---- names and arguments ------------------------------------------------------------
    "E101": Case("model m {\n  memory = matrix\n  bias = hubber\n  retention = none\n"
                 "  algorithm = gd\n}", 3, 10, message="did you mean 'huber'?"),
    "E102": Case(model(fields="memory = matrix(foo=1)  bias = l2  retention = none  "
                       "algorithm = gd"), 1, 27, message="has no parameter 'foo'"),
    "E103": Case(model("heads = 2.5"), 1, EXTRA + 8, message="must be an integer, not 2.5"),
    "E104": Case(model("parallel = chunk(size=0)"), 1, EXTRA + 22,
                 message="'size' = 0 is out of range (≥ 1"),
    "E105": Case("model m {\n  memory = matrix\n}", 1, 7,
                 message="does not set bias, retention, algorithm"),
    "E106": Case("model m {\n  " + M4 + "\n  bias = dot\n}", 3, 3,
                 message="field 'bias' is set twice"),
    "E107": Case(model(fields="memory = matrix  bias = lp(p=3, p=4)  retention = none  "
                       "algorithm = gd"), 1, 43, message="argument 'p' of bias 'lp' is given"),
    "E108": Case(model(fields="memory = matrix(zeros, 1)  bias = l2  retention = none  "
                       "algorithm = gd"), 1, 34, message="takes at most 1 positional argument"),
    "E109": Case(model(fields="memory = matrix  bias = lp(p=gate())  retention = none  "
                       "algorithm = gd"), 1, 40, message="'p' cannot be a gate"),
    "E110": Case(model(fields="memory = matrix  bias = lp(p=learned())  retention = none  "
                       "algorithm = gd"), 1, 40, message="must be a literal number"),
    "E111": Case(model("heads = 1e400"), 1, EXTRA + 8, message="not finite"),
    "E112": Case("model __class__ {\n  " + M4 + "\n}", 1, 7,
                 message="names starting with '_' are reserved"),
    # ---- definitions, extends, include --------------------------------------------------
    "E120": Case(model() + "\n" + model(), 2, 7, message="model 'm' is defined twice"),
    "E121": Case("model m extends base {\n  " + M4 + "\n}", 1, 17,
                 message="extends unknown model 'base'"),
    "E122": Case("model a extends b { }\nmodel b extends a { }", 1, 17,
                 message="extends itself through a -> b -> a"),
    "E123": Case(None, 1, 9, files={"main.miras": b'include "nowhere.miras"\n'},
                 entry="main.miras", message="included file 'nowhere.miras' not found"),
    "E124": Case(None, 2, 9, files={"a.miras": b'# a\ninclude "b.miras"\n',
                                    "b.miras": b'# b\ninclude "a.miras"\n'},
                 entry="a.miras", message="cyclic include of 'a.miras'"),
    # ---- formulas -----------------------------------------------------------------------
    "E140": Case("bias b = sum((y - u)^2)", 1, 19, message="unknown variable 'u'"),
    "E141": Case("bias b = sum(max(y))", 1, 14, message="'max' takes 2 arguments, got 1"),
    "E142": Case("bias b = (y - v)^2", 1, 10, message="a bias must be a scalar"),
    "E143": Case("act a = x > 0", 1, 9, message="a comparison can only be the condition"),
    "E144": Case("bias b = sum(v^2)", 1, 10, message="does not depend on y"),
    "E145": Case("feature f = 1", 1, 13, message="does not depend on x"),
    # ---- incompatible combinations ------------------------------------------------------
    "E130": Case("model m {\n  memory = matrix\n  bias = l2\n  retention = kl\n"
                 "  algorithm = gd\n}", 4, 15, message="needs a positive memory"),
    "E131": Case(model("parallel = exact", "memory = mlp  bias = l2  retention = none  "
                       "algorithm = gd"), 1, 81, message="'exact' needs an update affine"),
    "E132": Case(model(fields="memory = nonparametric  bias = l2  retention = decay  "
                       "algorithm = nonparametric"), 1, 58, message="takes no retention"),
    "E133": Case(model(fields="memory = vector  bias = l2  retention = none  "
                       "algorithm = muon"), 1, 69, message="Muon orthogonalises"),
    "E134": Case(model(fields="memory = matrix  bias = l2  retention = none  "
                       "algorithm = nonparametric"), 1, 69, message="go together"),
    "E135": Case(model("hybrid = mac", "memory = nonparametric  bias = l2  retention = none  "
                       "algorithm = nonparametric"), 1, 100, message="is attention already"),
    "E136": Case("model m {\n  memory = matrix\n  bias = huber(delta=gate(channel=true))\n"
                 "  retention = none\n  algorithm = gd\n}", 3, 22,
                 message="a channel-wise gate has no meaning"),
    # ---- code generation ------------------------------------------------------------------
    "E150": Case("retention odd() {\n  potential = exp(w) + w^3\n}\nmodel m {\n  memory = matrix\n"
                 "  bias = l2\n  retention = odd\n  algorithm = gd\n}", 7, 15,
                 message="no closed form", compile=True),
    # ---- sweeps ---------------------------------------------------------------------------
    "E160": Case(model("heads = [1, 2]"), 1, EXTRA + 8, message="only allowed as the value"),
    "E161": Case(model() + "\nsweep s { base = m  bias = [] }", 2, 28,
                 message="list of values of 'bias' is empty"),
    # ---- warnings (checked alone: a program with only warnings is valid) ----------------
    "W201": Case("bias b(c=1) = sum((y - v)^2)", 1, 8,
                 message="parameter 'c' of bias 'b' is not used"),
    "W202": Case(model("window = sliding(size=1)"), 1, EXTRA + 9,
                 message="a window of size 1 is the online rule"),
}


def diagnostics_of(case: Case, tmp_path: Path) -> tuple[list[Diagnostic], str]:
    """Run the front end on a case: its diagnostics (errors or warnings) and the report."""
    for name, data in case.files.items():
        (tmp_path / name).write_bytes(data)
    source: str | Path = case.src if case.src is not None else tmp_path / (case.entry or "")
    try:
        checked = miras.run_frontend(source)
        if case.compile:
            miras.compile(source)
    except MirasError as err:
        sources = err.sources if not case.compile else miras.run_frontend(source).sources
        return err.diagnostics, "\n".join(d.render(sources=sources) for d in err.diagnostics)
    report = "\n".join(w.render(sources=checked.sources) for w in checked.warnings)
    return checked.warnings, report


#: Codes of ``miras explore`` itself (its output directory and options), not of a spec: each
#: is triggered, through the command line, by the test named here.
EXPLORE_CASES = {
    "E162": "tests/test_explore.py::test_corrupted_resume_file_is_a_diagnostic",
    "E163": "tests/test_explore.py::test_cli_vary_and_its_diagnostics",
}


def test_every_code_has_a_case() -> None:
    assert set(CASES) | set(EXPLORE_CASES) == set(CODES)
    assert not set(CASES) & set(EXPLORE_CASES)
    for code, where in EXPLORE_CASES.items():
        path, test = where.split("::")
        text = (Path(__file__).parent.parent / path).read_text()
        assert f"def {test}(" in text and f"[{code}]" in text, (code, where)


def test_codes_are_well_formed() -> None:
    for code, meaning in CODES.items():
        assert code[0] in "EW" and code[1:].isdigit() and len(code) == 4, code
        assert meaning and meaning == meaning.strip()
    assert all(c.startswith("W") for c in CODES if CODES[c].startswith(("unused", "dead")))


@pytest.mark.parametrize("code", sorted(CASES))
def test_code_triggered_at_position(code: str, tmp_path: Path) -> None:
    case = CASES[code]
    diags, report = diagnostics_of(case, tmp_path)
    hits = [d for d in diags if d.code == code]
    assert hits, f"{code} not reported; got:\n{report}"
    d = hits[0]
    assert d.span is not None
    assert (d.span.line, d.span.col) == (case.line, case.col), report
    assert d.severity == ("warning" if code.startswith("W") else "error")
    if case.message:
        assert case.message in d.message, d.message
    assert f"[{code}]" in report


@pytest.mark.parametrize("code", sorted(c for c in CASES if c.startswith("W")))
def test_warning_case_is_otherwise_valid(code: str, tmp_path: Path) -> None:
    """A warning never stops the front end: the program is returned with the warning."""
    case = CASES[code]
    assert case.src is not None
    checked = miras.run_frontend(case.src)
    assert [w.code for w in checked.warnings] == [code]


# --------------------------------------------------------------------------------------------
# The rendered form
# --------------------------------------------------------------------------------------------


def test_render_unknown_choice_exact(tmp_path: Path) -> None:
    p = tmp_path / "bad.miras"
    p.write_text("model m {\n    memory = matrix\n    bias = hubber(delta=1.0)\n"
                 "    retention = none\n    algorithm = gd\n}\n")
    with pytest.raises(MirasError) as exc:
        miras.check(p)
    assert str(exc.value) == (
        f"{p}:3:12: error: unknown bias 'hubber'; did you mean 'huber'? [E101]\n"
        "        bias = hubber(delta=1.0)\n"
        "               ^~~~~~"
    )


def test_render_underlines_the_whole_span() -> None:
    with pytest.raises(MirasError) as exc:
        miras.check(model("parallel = chunk(size=-64)"))
    lines = str(exc.value).splitlines()
    assert lines[0] == (f"<string>:1:{EXTRA + 22}: error: 'size' = -64 is out of range "
                        "(≥ 1, ≤ 65536) [E104]")
    assert lines[1] == "    " + model("parallel = chunk(size=-64)")
    assert lines[2] == "    " + " " * (EXTRA + 21) + "^~~"


def test_render_syntax_error_exact() -> None:
    with pytest.raises(MirasError) as exc:
        miras.parse("model m {\n  memory = lp(p=3\n")
    assert str(exc.value) == (
        "<string>:2:18: error: unexpected end of file; expected ')', ',' [E003]\n"
        "      memory = lp(p=3\n"
        "                     ^"
    )


def test_render_with_note_exact() -> None:
    src = "model m {\n  " + M4 + "\n  bias = dot\n}"
    with pytest.raises(MirasError) as exc:
        miras.check(src)
    assert str(exc.value) == (
        "<string>:3:3: error: field 'bias' is set twice in model 'm' [E106]\n"
        "      bias = dot\n"
        "      ^~~~\n"
        "<string>:2:20: note: first set here\n"
        "      " + M4 + "\n"
        "                       ^~~~"
    )


def test_render_warning_same_shape() -> None:
    checked = miras.run_frontend("bias b(c=1, d=2) = c * sum((y - v)^2)\n" + model())
    (w,) = checked.warnings
    assert w.render(sources=checked.sources) == (
        "<string>:1:13: warning: parameter 'd' of bias 'b' is not used in its formula [W201]\n"
        "    bias b(c=1, d=2) = c * sum((y - v)^2)\n"
        "                ^"
    )


def test_render_dead_field_warning() -> None:
    src = ("model m {\n  memory = nonparametric  bias = l2  retention = none\n"
           "  algorithm = nonparametric\n  parallel = recurrent\n}")
    checked = miras.run_frontend(src)
    (w,) = checked.warnings
    assert w.code == "W202"
    assert w.render(sources=checked.sources) == (
        "<string>:4:3: warning: 'parallel' has no effect on non-parametric memory [W202]\n"
        "      parallel = recurrent\n"
        "      ^~~~~~~~"
    )


def test_file_level_diagnostic_has_no_position(tmp_path: Path) -> None:
    missing = tmp_path / "missing.miras"
    with pytest.raises(MirasError) as exc:
        miras.check(missing)
    assert str(exc.value) == (f"{missing}: error: cannot read '{missing}': "
                              "No such file or directory [E007]")


def test_invalid_utf8_is_shown_with_a_caret(tmp_path: Path) -> None:
    p = tmp_path / "u.miras"
    p.write_bytes('model m {\n  bias = "éé" \xff }'.encode("latin-1").replace(
        "éé".encode("latin-1"), "éé".encode()))
    with pytest.raises(MirasError) as exc:
        miras.check(p)
    (d,) = exc.value.diagnostics
    # columns count characters (as the parser does), not bytes
    assert (d.code, d.span.line, d.span.col) == ("E004", 2, 15)  # type: ignore[union-attr]
    assert str(exc.value).splitlines()[1:] == ['      bias = "éé" \ufffd }',
                                               "                  ^"]


@pytest.mark.parametrize("sep", ["\t", "\r", "\f"])
def test_caret_aligned_with_control_characters(sep: str) -> None:
    """Columns count one per character; the excerpt shows control characters as a space."""
    src = f"model m {{{sep}memory = matrix{sep}bias = l2x  retention = none  algorithm = gd }}"
    with pytest.raises(MirasError) as exc:
        miras.check(src)
    header, excerpt, caret = str(exc.value).splitlines()
    assert header == "<string>:1:34: error: unknown bias 'l2x'; did you mean 'l2'? [E101]"
    assert excerpt == "    " + src.replace(sep, " ")
    assert caret == "    " + " " * 33 + "^~~"


@pytest.mark.parametrize("weird", ["\f", "\u2028", "\x85", "\x1c"])
def test_excerpt_line_is_the_reported_line(weird: str) -> None:
    """Lines end at '\\n' only, as the parser counts them (str.splitlines splits at more)."""
    src = f"# a{weird}b\nmodel m {{ memory = matrix  bias = l2x  retention = none  algorithm = gd}}"
    with pytest.raises(MirasError) as exc:
        miras.check(src)
    lines = str(exc.value).splitlines()
    assert lines[0].startswith("<string>:2:35: error: unknown bias 'l2x'")
    assert lines[1] == "    " + src.split("\n")[1]
    assert lines[2] == "    " + " " * 34 + "^~~"


def test_unexpected_end_after_form_feed_is_on_the_right_line() -> None:
    with pytest.raises(MirasError) as exc:
        miras.parse("# a\fb\nmodel m { memory = matrix ")
    (d,) = exc.value.diagnostics
    assert (d.code, d.span.line, d.span.col) == ("E003", 2, 26)  # type: ignore[union-attr]


def test_crlf_line_endings() -> None:
    src = "model m {\r\n  memory = matrix\r\n  bias = l2x\r\n  retention = none\r\n" \
          "  algorithm = gd\r\n}\r\n"
    with pytest.raises(MirasError) as exc:
        miras.check(src)
    assert str(exc.value).splitlines() == [
        "<string>:3:10: error: unknown bias 'l2x'; did you mean 'l2'? [E101]",
        "      bias = l2x",
        "             ^~~",
    ]


def test_long_line_excerpt_is_cut_around_the_span() -> None:
    """Lines over 200 characters are cut to 200 around the span, caret still under it."""
    pad = " " * 300
    src = f"model m {{ {M4}{pad}heads = 0{pad}}}"
    col = src.index("heads = 0") + 9
    with pytest.raises(MirasError) as exc:
        miras.check(src)
    header, excerpt, caret = str(exc.value).splitlines()
    assert header == f"<string>:1:{col}: error: 'heads' = 0 is out of range (≥ 1, ≤ 4096) [E104]"
    assert len(excerpt) == 4 + 200
    assert caret == " " * (4 + 99) + "^"
    assert excerpt[caret.index("^") - 8: caret.index("^") + 1] == "heads = 0"


# --------------------------------------------------------------------------------------------
# All errors at once, ordering, suggestions
# --------------------------------------------------------------------------------------------


def test_three_independent_errors_reported_together() -> None:
    src = ("model m {\n"
           "  memory = matrx\n"               # E101 unknown memory
           "  bias = lp(p=0)\n"               # E104 p ≥ 1
           "  retention = decay(alpha=1)\n"
           "  algorithm = gd(rate=1)\n"       # E102 unknown parameter
           "}\n")
    with pytest.raises(MirasError) as exc:
        miras.check(src)
    got = [(d.code, d.span.line, d.span.col) for d in exc.value.diagnostics]  # type: ignore[union-attr]
    assert got == [("E101", 2, 12), ("E104", 3, 15), ("E102", 5, 18)]
    assert str(exc.value).count("error:") == 3


def test_errors_across_models_and_definitions_together() -> None:
    src = ("bias b = sum(v)\n"                            # E144
           "model a { " + M4 + "  heads = 0 }\n"          # E104
           "model c extends nope { }\n"                   # E121
           "model d { memory = vector  bias = l2  retention = none  algorithm = muon }\n")  # E133
    with pytest.raises(MirasError) as exc:
        miras.check(src)
    assert exc.value.codes == ["E144", "E104", "E121", "E133"]
    assert [d.span.line for d in exc.value.diagnostics] == [1, 2, 3, 4]  # type: ignore[union-attr]


def test_warnings_travel_with_errors() -> None:
    with pytest.raises(MirasError) as exc:
        miras.check("bias b(c=1) = sum((y - v)^2)\n" + model("heads = 0"))
    assert exc.value.codes == ["W201", "E104"]
    assert [d.code for d in exc.value.errors] == ["E104"]


def test_inherited_error_reported_once() -> None:
    src = ("model base { memory = matrix  bias = hubber  retention = none  algorithm = gd }\n"
           "model child extends base { heads = 4 }\n"
           "model grandchild extends child { heads = 8 }\n")
    with pytest.raises(MirasError) as exc:
        miras.check(src)
    assert exc.value.codes == ["E101"]


@pytest.mark.parametrize(("src", "hint"), [
    (model(fields="memory = matrix  bias = hubber  retention = none  algorithm = gd"), "huber"),
    (model(fields="memory = matrix  bias = l2  retention = decy  algorithm = gd"), "decay"),
    (model(fields="memory = matrix  bias = l2  retention = none  algorithm = momentm"),
     "momentum"),
    (model(fields="memory = matrix  bias = L2  retention = none  algorithm = gd"), "l2"),
    (model("retntion = none", fields="memory = matrix  bias = l2  algorithm = gd"),
     "retention"),
    (model(fields="memory = matrix  bias = huber(dleta=2)  retention = none  algorithm = gd"),
     "delta"),
    (model(fields="memory = matrix(init=unifrom)  bias = l2  retention = none  algorithm = gd"),
     "uniform"),
    (model(fields="memory = mlp(act=gleu)  bias = l2  retention = none  algorithm = gd"),
     "gelu"),
    ("act swish = x * sigmoid(x)\n"
     + model(fields="memory = mlp(act=swsh)  bias = l2  retention = none  algorithm = gd"),
     "swish"),
    ("bias mine = sum((y - v)^2)\n"
     + model(fields="memory = matrix  bias = mien  retention = none  algorithm = gd"), "mine"),
    ("model base { " + M4 + " }\nmodel c extends bsae { }", "base"),
    ("bias b = sum(tanhh(y - v))", "tanh"),
    ("feature f = x * pii", "pi"),
    (model(fields="memory = matrix  bias = l2  retention = none  "
                  "algorithm = gd(lr=gate(act=softpls))"), "softplus"),
])
def test_near_miss_suggestion(src: str, hint: str) -> None:
    with pytest.raises(MirasError) as exc:
        miras.check(src)
    messages = [d.message for d in exc.value.diagnostics]
    assert any(f"did you mean '{hint}'?" in m for m in messages), messages


def test_no_suggestion_for_distant_names() -> None:
    with pytest.raises(MirasError) as exc:
        miras.check(model(fields="memory = matrix  bias = zzzzzz  retention = none  "
                          "algorithm = gd"))
    assert exc.value.diagnostics[0].message == "unknown bias 'zzzzzz'"


def test_suggest() -> None:
    assert suggest("hubber", ["huber", "l2", "dot"]) == "; did you mean 'huber'?"
    assert suggest("GELU", ["gelu", "silu"]) == "; did you mean 'gelu'?"
    assert suggest("q", ["huber", "l2"]) == ""
    assert suggest("x", []) == ""


# --------------------------------------------------------------------------------------------
# The Diagnostic / MirasError API
# --------------------------------------------------------------------------------------------


def test_unregistered_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unregistered diagnostic code E999"):
        Diagnostic("error", "E999", "nope", None)


def test_diagnostic_without_span_or_source() -> None:
    d = Diagnostic("error", "E101", "unknown thing", None)
    assert d.render() == "miras: error: unknown thing [E101]"
    d2 = Diagnostic("error", "E101", "unknown thing", Span("f.miras", 3, 4, 3, 9))
    assert d2.render() == "f.miras:3:4: error: unknown thing [E101]"  # no source: no excerpt
    assert d2.render(source="one line") == "f.miras:3:4: error: unknown thing [E101]"


def test_span_point() -> None:
    assert Span.point("f", 2, 5) == Span("f", 2, 5, 2, 6)
    assert Span.point("f", 2, 5, width=3) == Span("f", 2, 5, 2, 8)
    assert Span.point("f", 2, 5, width=0) == Span("f", 2, 5, 2, 6)


def test_multiline_span_underlines_to_end_of_line() -> None:
    d = Diagnostic("error", "E103", "bad", Span("f", 1, 5, 3, 2))
    assert d.render(source="abc defgh\nx\ny") == ("f:1:5: error: bad [E103]\n"
                                                  "    abc defgh\n"
                                                  "        ^~~~~")


def test_sort_and_deduplicate() -> None:
    a = Diagnostic("error", "E104", "late", Span("f", 3, 1, 3, 2))
    b = Diagnostic("error", "E101", "early", Span("f", 1, 9, 1, 10))
    c = Diagnostic("warning", "W201", "file", Span("e", 9, 9, 9, 10))
    nospan = Diagnostic("error", "E007", "x", None)
    assert sort_diagnostics([a, b, a, c, nospan, b]) == [nospan, c, b, a]


def test_error_properties_and_json() -> None:
    with pytest.raises(MirasError) as exc:
        miras.check("bias b(c=1) = sum((y - v)^2)\n" + model("heads = 0"))
    err = exc.value
    assert err.codes == ["W201", "E104"]
    assert [d.severity for d in err.errors] == ["error"]
    assert str(err) == err.render()
    data = json.loads(render_json(err.diagnostics))
    assert data[1] == {
        "severity": "error", "code": "E104",
        "message": "'heads' = 0 is out of range (≥ 1, ≤ 4096)",
        "file": "<string>", "line": 2, "column": EXTRA + 8,
        "end_line": 2, "end_column": EXTRA + 9, "notes": [],
    }


def test_json_notes() -> None:
    with pytest.raises(MirasError) as exc:
        miras.check(model() + "\n" + model())
    (d,) = exc.value.diagnostics
    assert d.to_json()["notes"] == [
        {"message": "first defined here", "file": "<string>", "line": 1, "column": 7}]


def test_diagnostics_in_included_file_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "defs.miras").write_text("bias b = sum(v)\n")
    main = tmp_path / "main.miras"
    main.write_text('include "lib/defs.miras"\n' + model())
    with pytest.raises(MirasError) as exc:
        miras.check(main)
    (d,) = exc.value.diagnostics
    assert d.code == "E144"
    assert d.span is not None and Path(d.span.file) == tmp_path / "lib" / "defs.miras"
    lines = str(exc.value).splitlines()
    assert lines[0] == f"{d.span.file}:1:10: error: bias 'b' does not depend on y (the memory " \
                       "output); its gradient would be zero [E144]"
    assert lines[1:] == ["    bias b = sum(v)", "             ^~~~~~"]
