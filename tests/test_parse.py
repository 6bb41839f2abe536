"""Stage 1, text → AST: structure, positions, precedence, syntax errors and depth limits."""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import miras
from miras import ast
from miras.diagnostics import MirasError, Span

parse_mod = importlib.import_module("miras.parse")  # the module (miras.parse is the function)
MAX_DEPTH: int = parse_mod.MAX_DEPTH


def field_value(expr: str) -> ast.Expr:
    """The AST of ``expr`` written as the value of a field."""
    item = miras.parse(f"model m {{ a = {expr} }}").items[0]
    assert isinstance(item, ast.ModelDef)
    return item.fields[0].value


def show(e: ast.Expr) -> str:
    """A fully parenthesised rendering of an expression, to check precedence."""
    if isinstance(e, ast.Number):
        return e.text
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.String):
        return f'"{e.value}"'
    if isinstance(e, ast.Unary):
        return f"({e.op}{show(e.operand)})"
    if isinstance(e, ast.Binary | ast.Compare):
        return f"({show(e.left)} {e.op} {show(e.right)})"
    assert isinstance(e, ast.Call)
    args = ", ".join((f"{a.name.id}=" if a.name else "") + show(a.value) for a in e.args)
    return f"{e.func.id}({args})"


def syntax_error(src: str) -> tuple[str, int, int, str]:
    with pytest.raises(MirasError) as exc:
        miras.parse(src)
    (d,) = exc.value.diagnostics
    assert d.span is not None
    return d.code, d.span.line, d.span.col, d.message


# --------------------------------------------------------------------------------------------
# Structure and positions
# --------------------------------------------------------------------------------------------


def test_model_with_extends_fields_and_positions() -> None:
    f = miras.parse("model child extends base {\n  bias = lp(3, smooth=tanh)\n}\n")
    (m,) = f.items
    assert isinstance(m, ast.ModelDef)
    assert m.name == ast.Name("child", Span("<string>", 1, 7, 1, 12))
    assert m.extends == ast.Name("base", Span("<string>", 1, 21, 1, 25))
    assert m.span == Span("<string>", 1, 1, 3, 2)
    (fld,) = m.fields
    assert fld.name.id == "bias"
    assert fld.span == Span("<string>", 2, 3, 2, 28)
    call = fld.value
    assert isinstance(call, ast.Call)
    assert call.func.id == "lp"
    positional, keyword = call.args
    assert positional.name is None
    assert positional.value == ast.Number(3, "3", Span("<string>", 2, 13, 2, 14))
    assert keyword.name is not None and keyword.name.id == "smooth"
    assert keyword.value == ast.Name("tanh", Span("<string>", 2, 23, 2, 27))


def test_model_without_extends_and_empty_body() -> None:
    (m,) = miras.parse("model m {}").items
    assert isinstance(m, ast.ModelDef)
    assert (m.extends, m.fields) == (None, ())


def test_include_and_definitions() -> None:
    f = miras.parse_text('include "lib/x.miras"\n'
                    "bias b(c, d=1) = c * sum((y - v)^2)\n"
                    "retention r { regularizer = w^2  potential = w * log(w) }\n"
                    "feature f = x\n"
                    "act a = x\n", "defs.miras")
    inc, bias, ret, feat, act = f.items
    assert inc == ast.Include(ast.String("lib/x.miras", Span("defs.miras", 1, 9, 1, 22)),
                              Span("defs.miras", 1, 1, 1, 22))
    assert isinstance(bias, ast.FormulaDef) and bias.kind == "bias"
    assert bias.params is not None
    assert [(p.name.id, p.default) for p in bias.params] == [
        ("c", None), ("d", ast.Number(1, "1", Span("defs.miras", 2, 13, 2, 14)))]
    assert show(bias.body) == "(c * sum(((y - v) ^ 2)))"  # type: ignore[arg-type]
    assert isinstance(ret, ast.FormulaDef) and ret.kind == "retention" and ret.params is None
    assert isinstance(ret.body, tuple)
    assert [(fl.name.id, show(fl.value)) for fl in ret.body] == [
        ("regularizer", "(w ^ 2)"), ("potential", "(w * log(w))")]
    assert isinstance(feat, ast.FormulaDef) and (feat.kind, feat.params) == ("feature", None)
    assert isinstance(act, ast.FormulaDef) and act.kind == "act"


def test_empty_parameter_list_differs_from_none() -> None:
    with_parens, without = miras.parse("feature f() = x\nfeature g = x").items
    assert isinstance(with_parens, ast.FormulaDef) and with_parens.params == ()
    assert isinstance(without, ast.FormulaDef) and without.params is None


def test_comments_are_kept_with_positions() -> None:
    f = miras.parse("# head\nmodel m { # inside\n  a = 1  # tail\n}\n# end")
    assert [(c.text, c.line, c.col) for c in f.comments] == [
        ("# head", 1, 1), ("# inside", 2, 11), ("# tail", 3, 10), ("# end", 5, 1)]
    assert len(f.items) == 1


def test_trailing_commas_allowed() -> None:
    call = field_value("lp(3, smooth=tanh,)")
    assert isinstance(call, ast.Call) and len(call.args) == 2
    (d,) = miras.parse("bias b(c, d,) = sum(y)").items
    assert isinstance(d, ast.FormulaDef) and d.params is not None and len(d.params) == 2


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("42", 42), ("007", 7), ("1.5", 1.5), (".5", 0.5), ("5.", 5.0), ("1e3", 1000.0),
    ("2.5E-2", 0.025), ("1e+2", 100.0), ("1" * 300, int("1" * 300)),
])
def test_numbers_keep_their_text(text: str, value: float) -> None:
    n = field_value(text)
    assert isinstance(n, ast.Number)
    assert (n.value, n.text) == (value, text)
    assert type(n.value) is type(value)


def test_huge_numbers_become_inf_in_the_ast() -> None:
    for text in ["9" * 301, "1e400", "9" * 400 + ".0"]:
        n = field_value(text)
        assert isinstance(n, ast.Number) and n.value == float("inf") and n.text == text


def test_string_value() -> None:
    assert field_value('"hello world"') == ast.String("hello world",
                                                      Span("<string>", 1, 15, 1, 28))


@pytest.mark.parametrize(("expr", "tree"), [
    ("1 + 2 * 3", "(1 + (2 * 3))"),
    ("(1 + 2) * 3", "((1 + 2) * 3)"),
    ("a - b - c", "((a - b) - c)"),
    ("a / b / c", "((a / b) / c)"),
    ("2 ^ 3 ^ 2", "(2 ^ (3 ^ 2))"),
    ("-x ^ 2", "(-(x ^ 2))"),
    ("2 ^ -x", "(2 ^ (-x))"),
    ("- -x", "(-(-x))"),
    ("+x", "(+x)"),
    ("a * -b", "(a * (-b))"),
    ("x > 0", "(x > 0)"),
    ("a + 1 <= b * 2", "((a + 1) <= (b * 2))"),
    ("x == 0", "(x == 0)"),
    ("x != 0", "(x != 0)"),
    ("where(x >= 0, x, -x)", "where((x >= 0), x, (-x))"),
    ("f(g(h(1)), k=2)", "f(g(h(1)), k=2)"),
    ("1 - 2^(-5 - h)", "(1 - (2 ^ ((-5) - h)))"),
])
def test_precedence(expr: str, tree: str) -> None:
    assert show(field_value(expr)) == tree


def test_parse_path_and_bytes(tmp_path: Path) -> None:
    p = tmp_path / "m.miras"
    p.write_text("model m { a = 1 }\n")
    f = miras.parse(p)
    assert f.path == str(p)
    (m,) = f.items
    assert isinstance(m, ast.ModelDef) and m.name.span.file == str(p)
    assert miras.parse(str(p)) == f
    assert miras.parse_bytes(p.read_bytes(), str(p)) == f


def test_parse_is_thread_safe() -> None:
    """One compiled parser is shared; concurrent parses keep their own file names."""
    def one(i: int) -> tuple[str, str]:
        f = miras.parse_text(f"model m{i} {{ a = {i} }}", f"f{i}.miras")
        (m,) = f.items
        assert isinstance(m, ast.ModelDef)
        return m.name.id, m.fields[0].value.span.file  # type: ignore[union-attr]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(64)))
    assert got == [(f"m{i}", f"f{i}.miras") for i in range(64)]


# --------------------------------------------------------------------------------------------
# Syntax errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "expected"), [
    ("model m { a = = 1 }", ("E001", 1, 15, "unexpected '='")),
    ("model { }", ("E001", 1, 7, "unexpected '{'; expected a name")),
    ("model m { a 1 }", ("E001", 1, 13, "unexpected a number '1'; expected '='")),
    ("model m { a = 1, b = 2 }", ("E001", 1, 16, "unexpected ','")),
    ("model m { a = f(1 2) }", ("E001", 1, 19, "unexpected a number '2'")),
    ("model m { a = 1 < 2 < 3 }", ("E001", 1, 21, "unexpected '<'")),
    ("model m { a = x ** 2 }", ("E001", 1, 18, "unexpected '*'")),
    ("model m }", ("E001", 1, 9, "unexpected '}'")),
    ("} model m {}", ("E001", 1, 1, "unexpected '}'")),
    ("model m extends { }", ("E001", 1, 17, "unexpected '{'; expected a name")),
    ('include model', ("E001", 1, 9, "unexpected 'model'; expected a string")),
    ('include m', ("E001", 1, 9, "unexpected a name 'm'; expected a string")),
    ("model m { a = lp(p=) }", ("E001", 1, 20, "unexpected ')'")),
    ("model m { 1 = 2 }", ("E001", 1, 11, "unexpected a number '1'")),
    ('model m { "a" = 2 }', ("E001", 1, 11, "unexpected a string '\"a\"'")),
])
def test_unexpected_token(src: str, expected: tuple[str, int, int, str]) -> None:
    code, line, col, message = syntax_error(src)
    assert (code, line, col) == expected[:3]
    assert message.startswith(expected[3]), message


@pytest.mark.parametrize(("src", "col", "shown"), [
    ("model m { a = 1; }", 16, ";"),
    ("model m { a = $1 }", 15, "$"),
    ("model m { a = os.system }", 17, "."),
    ("model m { a = 1 @ 2 }", 17, "@"),
    ("model m { a = 'x' }", 15, "'"),
    ("model m { a = 1 % 2 }", 17, "%"),
    ("model m { a = 1 && 2 }", 17, "&"),
    ("model é { }", 7, "é"),
    ("model m { a = \x00 }", 15, "\\x00"),
    ("\ufeffmodel m { }", 1, "\\ufeff"),
    ("model m { a = \x7f }", 15, "\\x7f"),
    ("model m {\va = 1 }", 10, "\\x0b"),
    ("model m { a = ١ }", 15, "١"),
])
def test_unexpected_character(src: str, col: int, shown: str) -> None:
    code, line, c, message = syntax_error(src)
    assert (code, line, c) == ("E002", 1, col)
    assert message.startswith(f"unexpected character '{shown}'"), message


def test_attribute_access_hint() -> None:
    *_, message = syntax_error('model m { a = __import__("os").system("ls") }')
    assert message == ("unexpected character '.'; '.' only appears inside numbers "
                       "(there is no attribute access)")


@pytest.mark.parametrize("number", ["٣", "1٤", "1.5e٣", "３"])
def test_non_ascii_digits_are_not_numbers(number: str) -> None:
    """Python's \\d matches digits of every script; a spec only uses 0-9."""
    src = f"model m {{ heads = {number} }}"
    code, line, col, message = syntax_error(src)
    bad = next(ch for ch in number if not ch.isascii())
    assert (code, line, col) == ("E002", 1, src.index(bad) + 1)
    assert message == f"unexpected character '{bad}'; numbers are written with the digits 0-9"


@pytest.mark.parametrize(("src", "pos", "message"), [
    ("model m {", (1, 10), "unexpected end of file; expected '}', a name"),
    ("model m {\n  a = 1\n\n", (2, 8), "unexpected end of file; expected '}', a name"),
    ("model m { a = lp(p=3", (1, 21), "unexpected end of file; expected ')', ','"),
    ("model m { a = (1 + 2", (1, 21), "unexpected end of file"),
    ("model m { a =", (1, 14), "unexpected end of file"),
    ("model m { a = 1 +", (1, 18), "unexpected end of file"),
    ("model m extends", (1, 16), "unexpected end of file; expected a name"),
    ("model", (1, 6), "unexpected end of file; expected a name"),
    ("bias b(c", (1, 9), "unexpected end of file"),
    ("retention r {", (1, 14), "unexpected end of file"),
    ("model m { # a comment\n", (1, 22), "unexpected end of file"),
])
def test_unexpected_end_of_file(src: str, pos: tuple[int, int], message: str) -> None:
    code, line, col, msg = syntax_error(src)
    assert (code, (line, col)) == ("E003", pos)
    assert msg.startswith(message), msg


@pytest.mark.parametrize(("src", "col"), [
    ('include "abc', 9),
    ('model m { a = "abc }', 15),
    ('model m { a = "abc\n" }', 15),
    ('model m { a = f("x", "y) }', 22),
])
def test_unterminated_string(src: str, col: int) -> None:
    assert syntax_error(src)[:3] == ("E003", 1, col)
    assert syntax_error(src)[3] == "unterminated string"


@pytest.mark.parametrize(("src", "col", "message"), [
    ("foo x = 1", 1, "unexpected name 'foo' at the top level; expected 'model', 'bias', "
                     "'retention', 'feature', 'act', 'sweep' or 'include'"),
    ("import os = 1", 1, "unexpected name 'import' at the top level"),
    ("def f(x) = x", 1, "unexpected name 'def' at the top level"),
    ("bias b { regularizer = y }", 6, "only retention definitions have a block form; "
                                      "write 'bias b = <formula>'"),
    ("feature f { a = x }", 9, "only retention definitions have a block form"),
    ("act a(c) = x", 5, "an act takes no parameters; write 'act NAME = <formula in x>'"),
])
def test_malformed_definitions(src: str, col: int, message: str) -> None:
    code, line, c, msg = syntax_error(src)
    assert (code, line, c) == ("E001", 1, col)
    assert msg.startswith(message), msg


def test_syntax_error_reported_at_the_first_problem_only() -> None:
    with pytest.raises(MirasError) as exc:
        miras.parse("model m { a = = 1 }\nmodel n { b = ; }")
    assert [(d.code, d.span.line) for d in exc.value.diagnostics] == [  # type: ignore[union-attr]
        ("E001", 1)]


# --------------------------------------------------------------------------------------------
# Depth limits: boundaries and the cheap pre-scan
# --------------------------------------------------------------------------------------------


def test_bracket_nesting_boundary() -> None:
    # The model's '{' is one level: 63 parentheses fit, the 64th is refused where it opens.
    deepest = field_value("(" * (MAX_DEPTH - 1) + "1" + ")" * (MAX_DEPTH - 1))
    assert deepest == ast.Number(1, "1", Span("<string>", 1, 15 + MAX_DEPTH - 1,
                                              1, 16 + MAX_DEPTH - 1))
    code, line, col, message = syntax_error(
        "model m { a = " + "(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH + " }")
    assert (code, line, col) == ("E006", 1, 15 + MAX_DEPTH - 1)
    assert message == f"brackets nested deeper than {MAX_DEPTH} levels"


def test_brackets_in_strings_and_comments_do_not_count() -> None:
    deep = "(" * 200
    f = miras.parse(f'model m {{ a = "{deep}" # {deep}\n}}')
    assert len(f.items) == 1 and len(f.comments) == 1


@pytest.mark.parametrize(("unit", "op"), [
    ("1", "+"), ("1", "-"), ("2", "*"), ("2", "/"), ("2", "^"), ("1e-5", "-"), ("1e+5", "+"),
    ("(1)", "+"), ("(x)", "*"), ("x", " + "),
])
def test_operator_chain_boundary(unit: str, op: str) -> None:
    """A chain of n operators nests n deep: MAX_DEPTH - 1 operators pass, MAX_DEPTH do not."""
    longest = op.join([unit] * MAX_DEPTH)          # MAX_DEPTH - 1 operators
    tree = field_value(longest)
    assert isinstance(tree, ast.Binary)
    code, line, _, message = syntax_error(f"model m {{ a = {longest}{op}{unit} }}")
    assert (code, line) == ("E006", 1)
    assert message == f"expression nested deeper than {MAX_DEPTH} operators"


@pytest.mark.parametrize("op", ["-", "+"])
def test_unary_chain_boundary(op: str) -> None:
    field_value(op * (MAX_DEPTH - 1) + "1")
    code, *_ = syntax_error(f"model m {{ a = {op * MAX_DEPTH}1 }}")
    assert code == "E006"


def test_mixed_chain_depth_is_checked_exactly() -> None:
    """Short chains can still nest deep; the tree check decides exactly."""
    product = "*".join(["2"] * 41)  # 40 operators
    terms = "+1" * 40  # 40 operators
    # The product first: it is the innermost left operand of the sum chain, 40 + 40 deep.
    code, *_ = syntax_error(f"model m {{ a = {product}{terms} }}")
    assert code == "E006"
    # The product last: it is the right operand of the root, only 1 + 40 deep.
    tree = field_value(f"1{terms}+{product}")
    assert isinstance(tree, ast.Binary) and tree.op == "+"
    assert _tree_depth(tree) == 1 + 1 + 40


def test_chain_across_comments_and_lines() -> None:
    src = "model m { a = 1\n" + "".join(f"  - 1 # term {i}\n" for i in range(MAX_DEPTH)) + "}"
    code, line, *_ = syntax_error(src)
    assert (code, line) == ("E006", MAX_DEPTH + 1)


def test_separate_expressions_do_not_add_up() -> None:
    """Chains restart at '=', ',', comparisons and brackets: long specs are not refused."""
    half = "+".join(["1"] * 40)
    src = (f"model m {{ a = {half}  b = {half}  c = f({half}, {half}, k={half})"
           f"  d = ({half}) * ({half})  e = where({half} > {half}, 1, 2) }}")
    (m,) = miras.parse(src).items
    assert isinstance(m, ast.ModelDef) and len(m.fields) == 5


def _tree_depth(node: object) -> int:
    """Exact depth of an expression tree (1 for a leaf), without recursion."""
    best, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        best = max(best, d)
        stack += [(c, d + 1) for c in parse_mod._expr_children(n)]
    return best


_atoms = st.sampled_from(["1", "x", "2.5", "1e-3", "f(x)", "(1)", '"s"'])
_ops = st.sampled_from(["+", "-", "*", "/", "^", " - ", "+-", "*-", "^-"])


@st.composite
def _chains(draw: st.DrawFn) -> str:
    """Flat expressions with long runs of one operator and occasional comments."""
    parts = [draw(_atoms)]
    for _ in range(draw(st.integers(1, 150))):
        op = draw(st.one_of(_ops, st.sampled_from(["+", "*"])))
        if draw(st.integers(0, 20)) == 0:
            op = " # c\n" + op
        parts += [op, draw(_atoms)]
    return "".join(parts)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_chains())
def test_prescan_agrees_with_the_tree(expr: str) -> None:
    """The pre-scan refuses a chain only when the tree itself is too deep (no false alarm)."""
    src = f"model m {{ a = {expr}\n}}"
    items, _ = parse_mod._parser().parse(src, "<t>")  # the raw parser: no limits applied
    too_deep = _tree_depth(items[0].fields[0].value) > MAX_DEPTH
    try:
        miras.parse(src)
    except MirasError as err:
        assert err.codes == ["E006"] and too_deep, (expr, err.codes)
    else:
        assert not too_deep
