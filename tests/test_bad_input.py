"""Hostile and broken input: only ever :class:`MirasError`, quickly, and nothing executed.

Every test goes through :func:`rejected`, which fails on any exception other than
``MirasError`` (``RecursionError``, ``ValueError``, pydantic errors, ...) and on a run that
takes longer than its time limit.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import miras
from miras import ast, ir
from miras.diagnostics import MirasError
from miras.parse import MAX_BYTES, MAX_DEPTH

M4 = "memory = matrix  bias = l2  retention = none  algorithm = gd"


def spec(extra: str = "", fields: str = M4) -> str:
    return f"model m {{ {fields}  {extra} }}"


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail (with TimeoutError) if the block runs longer than ``seconds`` (main thread only)."""
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the front end took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def rejected(source: str | os.PathLike[str] | Callable[[], object],
             seconds: float = 5.0) -> MirasError:
    """Run the front end on ``source``; it must raise MirasError (and nothing else) in time."""
    run = source if callable(source) else (lambda: miras.run_frontend(source))  # type: ignore[arg-type]
    with time_limit(seconds):
        try:
            result = run()
        except MirasError as err:
            assert err.diagnostics, "a MirasError always carries diagnostics"
            str(err)  # rendering must not fail either
            return err
    pytest.fail(f"expected diagnostics, got {result!r}")


def where(err: MirasError) -> list[tuple[str, int, int]]:
    return [(d.code, d.span.line, d.span.col) if d.span else (d.code, 0, 0)
            for d in err.diagnostics]


# --------------------------------------------------------------------------------------------
# Empty input: a valid program with no models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "\n\n\n", "\t \r\n", "# only a comment",
                                  "# one\n# two\n", "\f"])
def test_empty_spec_is_a_program_without_models(text: str) -> None:
    checked = miras.run_frontend(text)
    assert checked.program == ir.Program()
    assert checked.program.main is None
    assert checked.warnings == []


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.miras"
    p.write_bytes(b"")
    assert miras.check(p) == ir.Program()
    assert miras.parse(p) == ast.SourceFile(str(p), ())
    assert miras.parse_bytes(b"", "x.miras") == ast.SourceFile("x.miras", ())


def test_loading_a_model_from_an_empty_spec_is_an_error() -> None:
    err = rejected(lambda: miras.load(""))
    assert err.codes == ["E105"]
    assert "declares no model" in str(err)


# --------------------------------------------------------------------------------------------
# Binary garbage and invalid UTF-8
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "line", "col"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1, 1),
    (b"model m {\n  bias = l2 \x80\n}", 2, 13),
    (b"model m { memory = matrix\xc0\xaf }", 1, 26),  # overlong encoding of '/'
    (b"model \xed\xa0\x80 { }", 1, 7),  # an encoded surrogate
    (b"model m\xe2\x82", 1, 8),  # truncated at the end of the file
    (b"# \xc3\xa9\xc3\xa9 ok\n\xff", 2, 1),
    (b"\xef\xbb\xbf# caf\xc3\xa9\n  \xfe", 2, 3),
])
def test_invalid_utf8(data: bytes, line: int, col: int, tmp_path: Path) -> None:
    err = rejected(lambda: miras.parse_bytes(data, "bin.miras"))
    assert where(err) == [("E004", line, col)]
    assert err.diagnostics[0].message.startswith("invalid UTF-8 byte 0x")
    p = tmp_path / "bin.miras"
    p.write_bytes(data)
    assert where(rejected(p)) == [("E004", line, col)]


def test_invalid_utf8_message_names_the_byte() -> None:
    err = rejected(lambda: miras.parse_bytes(b"ab\xfecd", "f.miras"))
    assert err.diagnostics[0].message == "invalid UTF-8 byte 0xfe"


@pytest.mark.parametrize("seed", range(8))
def test_random_binary_file(seed: int, tmp_path: Path) -> None:
    data = random.Random(seed).randbytes(4096)
    p = tmp_path / "garbage.miras"
    p.write_bytes(data)
    err = rejected(p)
    assert len(err.codes) == 1 and err.codes[0] in {"E001", "E002", "E003", "E004"}


def test_control_characters_and_nul() -> None:
    assert where(rejected("model m \x00 { }")) == [("E002", 1, 9)]
    assert where(rejected("\x01\x02\x03")) == [("E002", 1, 1)]
    err = rejected("model m { a = \ud800 }")  # a lone surrogate in a Python str
    assert where(err) == [("E002", 1, 15)]
    assert "'\\ud800'" in err.diagnostics[0].message


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_miras_error(data: bytes) -> None:
    try:
        f = miras.parse_bytes(data, "fuzz.miras")
    except MirasError as err:
        assert err.diagnostics and err.codes[0] in {"E001", "E002", "E003", "E004", "E006"}
    else:
        assert isinstance(f, ast.SourceFile)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text_only_raises_miras_error(text: str) -> None:
    try:
        checked = miras.run_frontend(text)
    except MirasError as err:
        assert err.diagnostics
        str(err)
    else:
        assert isinstance(checked.program, ir.Program)


_WORDS = [
    "model", "m", "n", "extends", "{", "}", "(", ")", "=", ",", "include", '"x.miras"', "bias",
    "retention", "feature", "act", "memory", "algorithm", "parallel", "window", "hybrid",
    "heads", "head_dim", "read", "matrix", "vector", "mlp", "gated_mlp", "nonparametric", "l2",
    "dot", "lp", "huber", "none", "decay", "kl", "lq", "bregman", "gd", "momentum", "muon",
    "implicit_gd", "chunk", "exact", "sliding", "mac", "poly", "sketch", "gate", "learned",
    "per_head", "init", "uniform", "p", "q", "alpha", "lr", "beta", "delta", "size", "depth",
    "act", "gelu", "channel", "rank", "true", "false", "1", "0", "-1", "0.5", "1e400",
    "9" * 400, "+", "-", "*", "/", "^", "<", ">=", "y", "v", "k", "w", "x", "h", "sum", "norm",
    "where", "abs", "pi", "b", "f", "a", "regularizer", "potential", "__import__", "class",
    "nan", "inf", "#", "\n", '"', ".",
]


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_WORDS), max_size=60))
def test_random_token_soup_only_raises_miras_error(words: list[str]) -> None:
    """Sequences of the language's own words reach the validator far more often."""
    try:
        miras.run_frontend(" ".join(words))
    except MirasError as err:
        assert err.diagnostics
        str(err)


_VALUES = st.sampled_from([
    "1", "0", "-1", "2.5", "1e-3", "1e400", "9" * 310, "true", "none", "nan", "gelu",
    "uniform", "gate()", "gate(channel=true, rank=4)", "gate(init=5)", "learned()",
    "learned(init=-4)", "per_head(1 - 2^(-5 - h))", "per_head(x)", '"s"', "4/0", "2^0.5",
    "(-8)^(1/3)", "b", "sum(y)", "lp(p=3)", "f(1)", "h", "x",
])


@st.composite
def _models(draw: st.DrawFn) -> str:
    from miras import catalog

    defs = draw(st.lists(st.sampled_from([
        "bias b(c=1) = c*sum((y - v)^2)", "bias b = sum(v)", "bias b(c=gate()) = sum(y)",
        "retention r(c=0.5) = c*w^2", "retention r { potential = 1 }", "feature f = x^2",
        "feature f = sum(x)", "act a = x*sigmoid(x)", "act a = 1",
    ]), max_size=3))
    fields = []
    for axis in catalog.AXES:
        if axis in ("memory", "bias", "retention", "algorithm") or draw(st.booleans()):
            names = [*catalog.entries(axis), "b", "r", "f", "zz"]
            entry = draw(st.sampled_from(names))
            e = catalog.lookup(axis, entry)
            params = [*e.params, "zz"] if e else ["c", "zz"]
            args = draw(st.lists(st.tuples(st.sampled_from(params), _VALUES), max_size=3))
            call = f"{entry}({', '.join(f'{k}={v}' for k, v in args)})" if args else entry
            fields.append(f"{axis} = {call}")
    if draw(st.booleans()):
        fields.append(f"heads = {draw(_VALUES)}")
    child = "\nmodel c extends m { heads = 2 }" if draw(st.booleans()) else ""
    return "\n".join(defs) + "\nmodel m { " + "  ".join(fields) + " }" + child


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(_models())
def test_random_models_only_raise_miras_error(src: str) -> None:
    """Well-formed models with random choices, arguments and values: diagnostics or IR."""
    try:
        checked = miras.run_frontend(src)
    except MirasError as err:
        assert err.errors
        str(err)
    else:
        assert checked.program.model().name in ("m", "c")


# --------------------------------------------------------------------------------------------
# Unterminated input, unknown names, wrong types, duplicates
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "expected"), [
    ("model m {\n  memory = matrix\n", ("E003", 2, 18)),
    ("model m { bias = huber(delta=1\n}", ("E001", 2, 1)),
    ("model m { bias = huber(delta=1", ("E003", 1, 31)),
    ('include "a.miras\n', ("E003", 1, 9)),  # (without the newline: a file name)
    ('model m { read = "after_write }', ("E003", 1, 18)),
    ("bias b = sum((y - v)^2", ("E003", 1, 23)),
    ("retention r {\n  regularizer = w\n", ("E003", 2, 18)),
])
def test_unterminated(src: str, expected: tuple[str, int, int]) -> None:
    assert where(rejected(src)) == [expected]


@pytest.mark.parametrize(("src", "code"), [
    (spec(fields="memory = matrx  bias = l2  retention = none  algorithm = gd"), "E101"),
    (spec("colour = blue"), "E101"),
    (spec(fields="memory = matrix(size=3)  bias = l2  retention = none  algorithm = gd"),
     "E102"),
    (spec("heads = \"eight\""), "E103"),
    (spec("heads = true"), "E103"),
    (spec(fields="memory = mlp(residual=1)  bias = l2  retention = none  algorithm = gd"),
     "E103"),
    (spec("bias = dot"), "E106"),
    (spec("heads = 1  heads = 2"), "E106"),
])
def test_unknown_names_wrong_types_duplicates(src: str, code: str) -> None:
    assert rejected(src).codes == [code]


# --------------------------------------------------------------------------------------------
# extends and include cycles, missing files
# --------------------------------------------------------------------------------------------


def test_long_extends_cycle() -> None:
    n = 50
    src = "\n".join(f"model m{i} extends m{(i + 1) % n} {{ }}" for i in range(n))
    err = rejected(src)
    assert err.codes == ["E122"] * n
    assert err.diagnostics[0].message.startswith("model 'm0' extends itself through m0 -> m1")


def test_long_extends_chain_is_fine() -> None:
    n = 500
    src = spec().replace("model m", "model m0") + "\n" + "\n".join(
        f"model m{i} extends m{i - 1} {{ heads = {i % 7 + 1} }}" for i in range(1, n))
    with time_limit(5):
        program = miras.check(src)
    assert len(program.models) == n
    assert program.model().heads == (n - 1) % 7 + 1


def test_self_include(tmp_path: Path) -> None:
    p = tmp_path / "self.miras"
    p.write_text('include "self.miras"\n' + spec())
    assert where(rejected(p)) == [("E124", 1, 9)]


def test_include_cycle_of_three(tmp_path: Path) -> None:
    (tmp_path / "a.miras").write_text('include "b.miras"\n')
    (tmp_path / "b.miras").write_text('include "sub/c.miras"\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.miras").write_text('include "../a.miras"\n')
    err = rejected(tmp_path / "a.miras")
    assert err.codes == ["E124"]
    d = err.diagnostics[0]
    assert d.span is not None and Path(d.span.file).name == "c.miras"
    assert d.message == "cyclic include of '../a.miras'"


@pytest.mark.parametrize("target", ["missing.miras", "", ".", "sub", "/nonexistent/x.miras",
                                    "../../../../../../../../nonexistent.miras"])
def test_include_of_something_that_is_not_a_file(target: str, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    p = tmp_path / "main.miras"
    p.write_text(f'# header\ninclude "{target}"\n' + spec())
    err = rejected(p)
    assert where(err) == [("E123", 2, 9)]
    assert err.diagnostics[0].message.startswith(f"included file '{target}' not found")


def test_include_of_special_files_does_not_hang() -> None:
    """Devices and FIFOs are not regular files: reported, never read (no endless reads)."""
    for target in ["/dev/zero", "/dev/urandom", "/dev/stdin"]:
        if os.path.exists(target):
            assert rejected(f'include "{target}"', seconds=2).codes == ["E123"]


def test_include_of_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / "binary.miras").write_bytes(b"model x { \xff }")
    (tmp_path / "huge.miras").write_bytes(b"#" * (MAX_BYTES + 1))
    (tmp_path / "syntax.miras").write_text("model x {\n")
    p = tmp_path / "main.miras"
    p.write_text('include "binary.miras"\ninclude "huge.miras"\ninclude "syntax.miras"\n')
    err = rejected(p)
    assert sorted(err.codes) == ["E003", "E004", "E005"]
    files = {Path(d.span.file).name for d in err.diagnostics if d.span}
    assert files == {"binary.miras", "huge.miras", "syntax.miras"}


def test_include_read_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / "lib.miras"
    lib.write_text(spec())
    p = tmp_path / "main.miras"
    p.write_text('include "lib.miras"\n')
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "lib.miras":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    err = rejected(p)
    assert where(err) == [("E007", 1, 9)]
    assert err.diagnostics[0].message.startswith("cannot read '")
    assert err.diagnostics[0].message.endswith("lib.miras': Permission denied")


def test_missing_and_unreadable_root_file(tmp_path: Path) -> None:
    assert rejected(tmp_path / "nope.miras").codes == ["E007"]
    (tmp_path / "dir.miras").mkdir()
    err = rejected(tmp_path / "dir.miras")
    assert err.codes == ["E007"] and "Is a directory" in str(err)
    assert rejected(lambda: miras.parse(tmp_path / "nope.miras")).codes == ["E007"]


# --------------------------------------------------------------------------------------------
# Absurd numbers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "code", "message"), [
    ("1e400", "E111", "number 1e400 is not finite (too large)"),
    ("-1e400", "E111", "number 1e400 is not finite (too large)"),
    ("9" * 400, "E111", f"number {'9' * 40} is not finite (too large)"),
    ("1" + "0" * 309 + ".0", "E111", f"number 1{'0' * 39} is not finite (too large)"),
    ("nan", "E111", "'nan' is not allowed: values must be finite numbers"),
    ("NaN", "E111", "'NaN' is not allowed"),
    ("inf", "E111", "'inf' is not allowed"),
    ("-inf", "E111", "'inf' is not allowed"),
    ("Inf", "E111", "'Inf' is not allowed"),
    ("infinity", "E111", "'infinity' is not allowed"),
    ("1/0", "E111", "division by zero"),
    ("0^-1", "E111", "division by zero"),
    ("10.0^400", "E111", "the value is not a finite real number"),
    ("9^9^9", "E111", "the value is not a finite real number"),
    ("(-1)^0.5", "E111", "the value is not a finite real number"),
    ("1e308 * 10", "E111", "the value is not a finite real number"),
    ("9" * 300 + " * " + "9" * 300, "E111", "the value is too large to be represented"),
    ("(65535^64)^64", "E111", "the value is not a finite real number"),
    ("*".join(["(65535^64)"] * 20), "E111", "the value is too large to be represented"),
    ("-64", "E104", "'heads' = -64 is out of range (≥ 1, ≤ 4096)"),
    ("0", "E104", "'heads' = 0 is out of range"),
    ("1" + "0" * 299, "E104", "'heads' = 1" + "0" * 299 + " is out of range"),
    ("1e-400", "E103", "'heads' must be an integer, not 0.0"),
    ("1e300", "E103", "'heads' must be an integer, not 1e+300"),
])
def test_absurd_numbers(value: str, code: str, message: str) -> None:
    err = rejected(spec(f"heads = {value}"))
    (d,) = err.diagnostics
    assert d.code == code
    assert d.message.startswith(message), d.message


@pytest.mark.parametrize("where_", [
    "bias = huber(delta={})", "retention = decay(alpha=learned(init={}))",
    "algorithm = gd(lr=gate(init={}))", "algorithm = gd(lr=gate(channel=true, rank={}))",
    "memory = mlp(expansion={})",
])
def test_huge_integer_products_everywhere(where_: str) -> None:
    """Integer arithmetic is exact in Python; results beyond a float are refused, not kept."""
    fields = dict(f.split(" = ") for f in M4.split("  "))
    axis, value = where_.split(" = ")
    fields[axis] = value.replace("{}", "9" * 300 + "*" + "9" * 300)
    err = rejected(spec(fields="  ".join(f"{k} = {v}" for k, v in fields.items())))
    assert err.codes == ["E111"]


@pytest.mark.parametrize("value", ["1e400", "9" * 400, "nan", "inf"])
def test_absurd_numbers_in_formulas(value: str) -> None:
    err = rejected(f"bias b = sum((y - v)^2) * {value}")
    assert err.codes[0] in ("E111", "E140")
    if value in ("nan", "inf"):
        assert err.diagnostics[0].message.startswith(f"unknown variable '{value}'")


def test_division_by_zero_in_a_formula_is_symbolic() -> None:
    """Formulas are not evaluated by the front end: 1/0 in a formula is just an expression."""
    (d,) = miras.check("act a = x / 0").definitions
    assert isinstance(d, ir.ActDef)


def test_a_megabyte_spec_is_refused_quickly(tmp_path: Path) -> None:
    big = spec() + "\n# " + "x" * (1 << 20) + "\n"
    t0 = time.perf_counter()
    for source in (big, big.encode()):
        err = rejected(lambda s=source: miras.run_frontend(s) if isinstance(s, str)
                       else miras.parse_bytes(s, "big.miras"), seconds=1)
        assert where(err) == [("E005", 0, 0)]
    p = tmp_path / "big.miras"
    p.write_text(big)
    err = rejected(p, seconds=1)
    assert str(err) == (f"{p}: error: file is {len(big.encode())} bytes; the limit for a spec "
                        f"is {MAX_BYTES} bytes [E005]")
    assert time.perf_counter() - t0 < 1.0


def test_size_limit_counts_bytes_not_characters() -> None:
    text = "# " + "é" * (MAX_BYTES // 2)  # fewer characters than MAX_BYTES, more bytes
    assert len(text) < MAX_BYTES < len(text.encode())
    assert rejected(text, seconds=1).codes == ["E005"]


def test_size_limit_boundary() -> None:
    exactly = "#" * MAX_BYTES
    with time_limit(5):
        assert miras.parse(exactly).items == ()
    assert rejected("#" * (MAX_BYTES + 1), seconds=1).codes == ["E005"]


# --------------------------------------------------------------------------------------------
# Deep nesting and long chains: no RecursionError, quick E006
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "col"), [
    ("(" * 10000 + "1" + ")" * 10000, None),
    ("model m { heads = " + "(" * 10000 + "1" + ")" * 10000 + " }", None),
    ("model m { heads = " + "f(" * 10000 + "1" + ")" * 10000 + " }", None),
    ("{" * 100000, 65),
    ("model m { heads = " + "(" * 10000, None),  # unterminated as well
])
def test_deep_brackets(src: str, col: int | None) -> None:
    err = rejected(src, seconds=2)
    assert err.codes == ["E006"]
    assert err.diagnostics[0].message == f"brackets nested deeper than {MAX_DEPTH} levels"
    if col is not None:
        assert where(err) == [("E006", 1, col)]


@pytest.mark.parametrize(("make", "where_"), [
    (lambda n: "model m { heads = " + "+".join(["1"] * n) + " }", "field"),
    (lambda n: "bias b = sum(y) + " + "+".join(["1"] * n), "formula"),
    (lambda n: "model m { heads = " + "*".join(["2"] * n) + " }", "product"),
    (lambda n: "model m { heads = " + "-" * n + "1 }", "unary"),
    (lambda n: "model m { heads = " + "^".join(["1"] * n) + " }", "power"),
    (lambda n: "model m { heads = " + "-1".join(["1"] * n) + " }", "minus"),
    (lambda n: "model m { heads = f(" + ", ".join(["1+1"] * 10) + "+1" * n + ") }", "arg"),
])
def test_long_chains_are_refused_quickly(make: Callable[[int], str], where_: str) -> None:
    src = make(100_000)
    err = rejected(src, seconds=1)
    assert err.codes == ["E006"], where_
    assert err.diagnostics[0].message == f"expression nested deeper than {MAX_DEPTH} operators"


def test_deep_but_allowed_expressions_validate() -> None:
    """Right below the limits, the (recursive) validator and the IR still work."""
    deep_sum = "+".join(["1"] * MAX_DEPTH)  # MAX_DEPTH - 1 operators
    assert miras.load(spec(f"heads = {deep_sum}")).heads == MAX_DEPTH
    deep_parens = "(" * (MAX_DEPTH - 2) + "x" + ")" * (MAX_DEPTH - 2)
    (d,) = miras.check(f"act a = {deep_parens}").definitions
    assert d == ir.ActDef(name="a", formula=ir.Var(name="x"))
    chain = "+".join(["x"] * (MAX_DEPTH - 2))
    (d,) = miras.check(f"act a = {chain}").definitions
    assert isinstance(d, ir.ActDef)
    assert ir.ActDef.model_validate_json(d.model_dump_json()) == d


def test_many_diagnostics_are_rendered_quickly() -> None:
    """10000 errors in one file: reported together, without quadratic rendering."""
    src = spec(" ".join(f"f{i} = 1" for i in range(10_000)))
    err = rejected(src, seconds=5)
    assert err.codes == ["E101"] * 10_000
    assert str(err).count("\n") == 3 * 10_000 - 1


# --------------------------------------------------------------------------------------------
# Python look-alikes: diagnostics, and nothing is ever executed
# --------------------------------------------------------------------------------------------

_DANGEROUS_EVENTS = {
    "exec", "compile", "import", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.fork", "os.forkpty", "subprocess.Popen", "ctypes.dlopen", "ctypes.dlsym",
    "builtins.input", "socket.connect", "os.remove", "os.rename", "shutil.rmtree",
}
_audit: dict[str, Any] = {"on": False, "events": []}


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _audit["on"]:
        _audit["events"].append(event)


sys.addaudithook(_hook)  # permanent (audit hooks cannot be removed), idle unless switched on


@contextlib.contextmanager
def audited() -> Iterator[list[str]]:
    miras.run_frontend(spec())  # warm the parser cache first
    _audit["events"] = []
    _audit["on"] = True
    try:
        yield _audit["events"]
    finally:
        _audit["on"] = False


def _payload(marker: Path) -> str:
    return f'__import__("os").system("touch {marker}")'


POSITIONS = {
    "field value": lambda p: spec(f"heads = {p}"),
    "choice": lambda p: f"model m {{ memory = {p}  bias = l2  retention = none  algorithm = gd }}",
    "argument": lambda p: spec(fields=f"memory = matrix  bias = huber(delta={p})  "
                                      "retention = none  algorithm = gd"),
    "gate argument": lambda p: spec(fields=f"memory = matrix  bias = l2  retention = none  "
                                           f"algorithm = gd(lr=gate(init={p}))"),
    "formula": lambda p: f"bias b = sum((y - v)^2) + {p}",
    "per_head": lambda p: spec(fields="memory = matrix  bias = l2  "
                                      f"retention = decay(alpha=per_head({p}))  algorithm = gd"),
    "parameter default": lambda p: f"bias b(c={p}) = c*sum(y)",
    "model name": lambda p: f"model {p} {{ }}",
    "extends": lambda p: f"model m extends {p} {{ }}",
    "top level": lambda p: p,
    "include": lambda p: f"include {p}",
    "include path": lambda p: "include \"" + p.replace('"', "'") + '"',
    "string": lambda p: spec('read = "' + p.replace('"', "'") + '"'),
    "definition name": lambda p: f"bias {p} = sum(y)",
    "argument name": lambda p: spec(fields=f"memory = matrix({p}=1)  bias = l2  "
                                           "retention = none  algorithm = gd"),
    "after a model": lambda p: spec() + "\n" + p,
}


@pytest.mark.parametrize("position", sorted(POSITIONS))
def test_python_payload_is_never_executed(position: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    src = POSITIONS[position](_payload(marker))
    with audited() as events:
        err = rejected(src)
    assert err.errors
    assert not marker.exists()
    assert not _DANGEROUS_EVENTS & set(events), events


def test_payload_in_a_comment_is_only_a_comment(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with audited() as events:
        checked = miras.run_frontend(spec() + f"  # {_payload(marker)}")
    assert checked.program.model().name == "m"
    assert not marker.exists() and not _DANGEROUS_EVENTS & set(events)


def test_payload_in_an_included_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "evil.miras").write_text(f"act a = {_payload(marker)}\n")
    p = tmp_path / "main.miras"
    p.write_text('include "evil.miras"\n' + spec())
    with audited() as events:
        err = rejected(p)
    assert err.codes == ["E002"]  # the '.' of the attribute access
    assert not marker.exists() and not _DANGEROUS_EVENTS & set(events)


@pytest.mark.parametrize(("src", "code"), [
    (spec("heads = __import__"), "E103"),
    (spec("heads = os.system"), "E002"),
    (spec("heads = eval(\"1\")"), "E103"),
    (spec("__class__ = 1"), "E101"),
    (spec("__dict__ = 1"), "E101"),
    ("bias b = sum(y) + __builtins__", "E140"),
    ("bias b = sum(y.__class__)", "E002"),
    ("bias b = sum(exec(y))", "E101"),
    ("act a = lambda x: x", "E002"),
    ("model m:\n    pass", "E002"),
    ("import os", "E003"),
    ("import os\n" + spec(), "E001"),
    ("from os import system", "E001"),
    ("def f(): return 1", "E002"),
    ("model class { }", "E112"),
    ("model None { }", "E112"),
    ("model True { }", "E112"),
    ("model __builtins__ { }", "E112"),
    ("act __import__ = x", "E112"),
    ("feature f(__init__=1) = x", "E112"),
    ("bias b(async=1) = sum(y)", "E112"),
    ("bias def = sum(y)", "E112"),
    ("retention yield = w", "E112"),
    ("model _ { }", "E112"),
    ('model m { heads = f"{1}" }', "E001"),
    ("model m { heads = 1 if 1 else 2 }", "E001"),
    ("model m { heads = [i for i in x] }", "E001"),  # a list, then a stray name
])
def test_python_look_alikes_are_diagnosed(src: str, code: str) -> None:
    with audited() as events:
        err = rejected(src)
    assert code in err.codes, str(err)
    assert not _DANGEROUS_EVENTS & set(events), events


# --------------------------------------------------------------------------------------------
# channel-wise gates with a feature map that changes the memory's input width
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("memory", "retention", "algorithm", "feature", "ok"), [
    ("matrix", "decay(alpha=gate(channel=true), at=prev)", "gd(lr=gate())", "poly(degree=2)",
     False),
    ("mlp", "lq(q=4, alpha=gate(channel=true))", "gd(lr=gate())", "sketch(dim=8)", False),
    ("matrix(init=uniform)", "kl(alpha=gate(channel=true))", "gd(lr=gate())",
     "exp_taylor(order=2)", False),
    ("matrix", "none", "momentum(lr=gate(), beta=gate(channel=true))", "poly(degree=2)", False),
    ("mlp", "none", "muon(lr=gate(channel=true), beta=gate())", "poly(degree=2)", False),
    # the lr of GD / momentum scales the error (value channels): fine with any feature map
    ("matrix", "none", "gd(lr=gate(channel=true))", "poly(degree=2)", True),
    ("mlp", "none", "momentum(lr=gate(channel=true), beta=gate())", "sketch(dim=8)", True),
    ("matrix", "decay(alpha=gate(channel=true), at=prev)", "gd(lr=gate())", "identity", True),
])
def test_channel_gate_with_a_widening_feature_map(memory: str, retention: str, algorithm: str,
                                                  feature: str, ok: bool) -> None:
    """Such gates scale the memory's input columns, which φ makes wider than head_dim: the
    spec is refused at the gate instead of failing with a shape error when it runs."""
    src = (f"model m {{\n  memory = {memory}\n  bias = l2\n  retention = {retention}\n"
           f"  algorithm = {algorithm}\n  feature = {feature}\n}}\n")
    if ok:
        miras.run_frontend(src)
        return
    err = rejected(src)
    assert err.codes == ["E136"]
    line = 3 if "channel" in retention else 4
    assert where(err) == [("E136", line + 1, 15)]
    assert f"'{feature.split('(')[0]}' feature map" in err.diagnostics[0].message
