"""Stage 1: text → :class:`miras.ast.SourceFile` (syntax only).

Neither the LALR parser nor the tree-to-AST transformer recurse, so deeply nested or very
long inputs cannot exhaust the Python stack; explicit limits on size and
nesting turn pathological inputs into diagnostics. Raw lark exceptions never escape: every
syntax problem becomes a :class:`~miras.diagnostics.Diagnostic` inside a
:class:`~miras.diagnostics.MirasError`.

>>> f = parse_text("model m { bias = lp(p=3) }", "m.miras")
>>> f.items[0].fields[0].value.func.id
'lp'
"""

from __future__ import annotations

import math
import threading
from functools import cache
from typing import Any

from lark import Lark, Token, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)
from lark.visitors import Transformer_NonRecursive

from miras import ast
from miras.diagnostics import Diagnostic, MirasError, Span
from miras.resources import grammar_text

#: Inputs larger than this are refused (a real spec is a few hundred bytes).
MAX_BYTES = 512 * 1024
#: Deepest allowed nesting of brackets and of expression operators.
MAX_DEPTH = 64

_TOKEN_TEXT = {
    "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "EQUAL": "'='",
    "COMMA": "','", "CIRCUMFLEX": "'^'", "NAME": "a name", "NUMBER": "a number",
    "STRING": "a string", "ADD_OP": "'+' or '-'", "MUL_OP": "'*' or '/'",
    "COMPARE": "a comparison", "$END": "end of file", "MODEL": "'model'",
    "INCLUDE": "'include'", "_EXTENDS": "'extends'", "LSQB": "'['", "RSQB": "']'",
}


def _describe(token_type: str) -> str:
    return _TOKEN_TEXT.get(token_type, token_type.lower())


_DEF_KINDS = ("bias", "retention", "feature", "act")


class _SyntaxProblem(Exception):
    """A syntax diagnostic found while building the AST."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


class _Builder(Transformer_NonRecursive):
    """lark callbacks that build :mod:`miras.ast` nodes with spans."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def _span(self, meta: Any) -> Span:
        return Span(self.path, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok_span(self, tok: Token) -> Span:
        return Span(self.path, tok.line or 0, tok.column or 0, tok.end_line or 0,
                    tok.end_column or 0)

    def _name(self, tok: Token) -> ast.Name:
        return ast.Name(str(tok), self._tok_span(tok))

    @v_args(meta=True)
    def start(self, meta: Any, items: list[ast.Item]) -> tuple[ast.Item, ...]:
        return tuple(items)

    @v_args(meta=True)
    def include(self, meta: Any, children: list[Token]) -> ast.Include:
        (tok,) = children
        return ast.Include(ast.String(str(tok)[1:-1], self._tok_span(tok)), self._span(meta))

    @v_args(meta=True)
    def model_def(self, meta: Any, children: list[Any]) -> ast.ModelDef:
        name, parent, *fields = children
        return ast.ModelDef(
            self._name(name), self._name(parent) if parent is not None else None,
            tuple(fields), self._span(meta),
        )

    @v_args(meta=True)
    def field(self, meta: Any, children: list[Any]) -> ast.Field:
        name, value = children
        return ast.Field(self._name(name), value, self._span(meta))

    @v_args(meta=True)
    def formula_def(self, meta: Any, children: list[Any]) -> ast.FormulaDef | ast.SweepDef:
        kind, name, params, *body = children
        if str(kind) == "sweep":
            return self._sweep(meta, name, params, body)
        if str(kind) not in _DEF_KINDS:
            raise _SyntaxProblem(Diagnostic(
                "error", "E001", f"unexpected name '{kind}' at the top level; expected 'model', "
                f"{', '.join(repr(k) for k in _DEF_KINDS)}, 'sweep' or 'include'",
                self._tok_span(kind)))
        value: ast.Expr | tuple[ast.Field, ...]
        if len(body) == 1 and not isinstance(body[0], ast.Field):
            value = body[0]
        else:
            value = tuple(body)
            if str(kind) != "retention":
                raise _SyntaxProblem(Diagnostic(
                    "error", "E001", f"only retention definitions have a block form; write "
                    f"'{kind} {name} = <formula>'", self._tok_span(name)))
        if str(kind) == "act" and params is not None:
            raise _SyntaxProblem(Diagnostic(
                "error", "E001", "an act takes no parameters; write 'act NAME = <formula in x>'",
                self._tok_span(name)))
        return ast.FormulaDef(str(kind), self._name(name), params, value,  # type: ignore[arg-type]
                              self._span(meta))

    def _sweep(self, meta: Any, name: Token, params: Any, body: list[Any]) -> ast.SweepDef:
        # A sweep shares the formula_def rule (its kind is a plain name, so that 'sweep'
        # stays usable as an identifier); only the block form without parameters is one.
        if params is not None:
            raise _SyntaxProblem(Diagnostic(
                "error", "E001", f"a sweep takes no parameters; write 'sweep {name} {{ ... }}'",
                self._tok_span(name)))
        if len(body) == 1 and not isinstance(body[0], ast.Field):
            raise _SyntaxProblem(Diagnostic(
                "error", "E001",
                f"a sweep is a block; write 'sweep {name} {{ field = value ... }}'",
                self._tok_span(name)))
        return ast.SweepDef(self._name(name), tuple(body), self._span(meta))

    @v_args(meta=True)
    def list_expr(self, meta: Any, children: list[Any]) -> ast.ListExpr:
        return ast.ListExpr(tuple(c for c in children if c is not None), self._span(meta))

    def params(self, children: list[Any]) -> tuple[ast.Param, ...]:
        return tuple(c for c in children if c is not None)

    @v_args(meta=True)
    def param(self, meta: Any, children: list[Any]) -> ast.Param:
        name, default = children
        return ast.Param(self._name(name), default, self._span(meta))

    @v_args(meta=True)
    def compare(self, meta: Any, children: list[Any]) -> ast.Compare:
        left, op, right = children
        return ast.Compare(str(op), left, right, self._span(meta))  # type: ignore[arg-type]

    @v_args(meta=True)
    def binary(self, meta: Any, children: list[Any]) -> ast.Binary:
        left, op, right = children
        return ast.Binary(str(op), left, right, self._span(meta))  # type: ignore[arg-type]

    @v_args(meta=True)
    def power(self, meta: Any, children: list[Any]) -> ast.Binary:
        left, right = children
        return ast.Binary("^", left, right, self._span(meta))

    @v_args(meta=True)
    def unary(self, meta: Any, children: list[Any]) -> ast.Unary:
        op, operand = children
        return ast.Unary(str(op), operand, self._span(meta))  # type: ignore[arg-type]

    def number(self, children: list[Token]) -> ast.Number:
        (tok,) = children
        text = str(tok)
        value: int | float
        # Integers beyond float range become inf, which the validator reports as not finite.
        if text.isdigit():
            value = int(text) if len(text) <= 300 else math.inf
        else:
            value = float(text)
        return ast.Number(value, text, self._tok_span(tok))

    def string(self, children: list[Token]) -> ast.String:
        (tok,) = children
        return ast.String(str(tok)[1:-1], self._tok_span(tok))

    def name(self, children: list[Token]) -> ast.Name:
        (tok,) = children
        return self._name(tok)

    @v_args(meta=True)
    def paren(self, meta: Any, children: list[Any]) -> ast.Expr:
        return children[0]

    @v_args(meta=True)
    def call(self, meta: Any, children: list[Any]) -> ast.Call:
        func, *args = children
        return ast.Call(self._name(func), tuple(a for a in args if a is not None),
                        self._span(meta))

    @v_args(meta=True)
    def kwarg(self, meta: Any, children: list[Any]) -> ast.Arg:
        name, value = children
        return ast.Arg(self._name(name), value, self._span(meta))

    @v_args(meta=True)
    def posarg(self, meta: Any, children: list[Any]) -> ast.Arg:
        (value,) = children
        return ast.Arg(None, value, self._span(meta))


class _Parser:
    """One compiled LALR parser, reused; a lock makes the per-parse state thread-safe.

    lark builds the parse tree without recursion and the non-recursive transformer turns it
    into AST nodes, so no input can exhaust the Python stack here.
    """

    def __init__(self) -> None:
        self.builder = _Builder("<string>")
        self.comments: list[Token] = []
        self.lark = Lark(
            grammar_text(),
            parser="lalr",
            strict=True,
            propagate_positions=True,
            maybe_placeholders=True,
            lexer_callbacks={"COMMENT": self.comments.append},
        )
        self.lock = threading.Lock()

    def parse(self, text: str, path: str) -> tuple[tuple[ast.Item, ...], list[Token]]:
        with self.lock:
            self.builder.path = path
            self.comments.clear()
            tree = self.lark.parse(text)
            comments = list(self.comments)
            return self.builder.transform(tree), comments


@cache
def _parser() -> _Parser:
    return _Parser()


def decode(data: bytes, path: str) -> str:
    """Bytes → text, or a diagnostic for oversized, binary or non-UTF-8 input."""
    if len(data) > MAX_BYTES:
        raise MirasError([Diagnostic(
            "error", "E005",
            f"file is {len(data)} bytes; the limit for a spec is {MAX_BYTES} bytes",
            Span(path, 0, 0, 0, 0))])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        # Columns count characters, like the parser's (the bytes before the error are valid).
        col = len(data[line_start:exc.start].decode("utf-8")) + 1
        shown = data.decode("utf-8", "replace")  # for the excerpt under the message
        raise MirasError([Diagnostic(
            "error", "E004", f"invalid UTF-8 byte 0x{data[exc.start]:02x}",
            Span.point(path, line, col))], {path: shown}) from None
    if text.startswith("\ufeff"):  # a byte-order mark, as some editors write
        text = text[1:]
    return text


def _check_nesting(text: str, path: str) -> None:
    """Refuse deep brackets and long operator chains in one cheap pass, before parsing.

    A chain of n operators of one precedence level (``1+1+...``, ``2*2*...``, ``-2^-2^...``)
    nests n deep in the syntax tree, so n ≥ MAX_DEPTH can never pass :func:`_check_depth`;
    refusing it here saves parsing a huge input first. Shorter chains are left to the exact
    check on the tree.
    """
    depth, line, col = 0, 1, 0
    in_comment = in_string = False
    # Per bracket level: lengths of the current '+'/'-', '*'/'/' and unary/'^' chains.
    chains, saved = [0, 0, 0], []
    operand = False  # the last token ends an operand, so a '+' or '-' here is binary
    # The last character of the name or number being read ("" between tokens); in a number,
    # a '+' or '-' right after 'e' is the exponent's sign, not an operator.
    in_number, last = False, ""
    for ch in text:
        col += 1
        if ch == "\n":
            line, col, in_comment, in_string = line + 1, 0, False, False
            in_number, last = False, ""
            continue
        if in_comment:
            continue
        if ch == '"':
            in_string, operand, in_number, last = not in_string, True, False, ""
            continue
        if in_string:
            continue
        if ch.isalnum() or ch in "_.":
            if not last:  # a new name or number starts here
                in_number = ch.isdigit() or ch == "."
            operand, last = True, ch
            continue
        if ch in "+-" and in_number and last in ("e", "E"):
            last = ch  # the sign of an exponent: part of the number
            continue
        in_number, last = False, ""
        if ch.isspace():
            continue
        if ch == "#":
            in_comment = True
            continue
        if ch in "+-":
            chains = [chains[0] + 1, 0, 0] if operand else [chains[0], chains[1], chains[2] + 1]
        elif ch in "*/":
            chains = [chains[0], chains[1] + 1, 0]
        elif ch == "^":
            chains[2] += 1
        elif ch in "({[":
            depth += 1
            if depth > MAX_DEPTH:
                raise MirasError([Diagnostic(
                    "error", "E006", f"brackets nested deeper than {MAX_DEPTH} levels",
                    Span.point(path, line, col))], {path: text})
            saved.append(chains)
            chains = [0, 0, 0]
        elif ch in ")}]":
            depth = max(0, depth - 1)
            chains = saved.pop() if saved else [0, 0, 0]
        else:  # ',', '=', a comparison or a stray character: a new expression starts
            chains = [0, 0, 0]
        operand = ch in ")}"
        if max(chains) >= MAX_DEPTH:
            raise MirasError([Diagnostic(
                "error", "E006", f"expression nested deeper than {MAX_DEPTH} operators",
                Span.point(path, line, col))], {path: text})


def _expr_children(node: object) -> tuple[object, ...]:
    if isinstance(node, ast.Unary):
        return (node.operand,)
    if isinstance(node, ast.Binary | ast.Compare):
        return (node.left, node.right)
    if isinstance(node, ast.Call):
        return tuple(a.value for a in node.args)
    if isinstance(node, ast.ListExpr):
        return node.items
    return ()


def _check_depth(items: tuple[ast.Item, ...], path: str, text: str) -> None:
    """Reject expressions deeper than MAX_DEPTH operators (iteratively, without recursion),
    and lists anywhere but as the whole value of a sweep's field (E160)."""
    roots: list[object] = []
    list_ok: set[int] = set()  # ids of the lists that stand where a list is allowed
    for item in items:
        if isinstance(item, ast.SweepDef):
            roots += [f.value for f in item.fields]
            list_ok |= {id(f.value) for f in item.fields if isinstance(f.value, ast.ListExpr)}
        elif isinstance(item, ast.ModelDef):
            roots += [f.value for f in item.fields]
        elif isinstance(item, ast.FormulaDef):
            roots += [f.value for f in item.body] if isinstance(item.body, tuple) else [item.body]
            roots += [p.default for p in item.params or () if p.default is not None]
    stack = [(r, 1) for r in roots]
    misplaced: list[Diagnostic] = []
    while stack:
        node, depth = stack.pop()
        if isinstance(node, ast.ListExpr) and id(node) not in list_ok:
            misplaced.append(Diagnostic(
                "error", "E160", "a list of values is only allowed as the value of a field of "
                "a sweep block", node.span))
        if depth > MAX_DEPTH:
            span = getattr(node, "span", None)
            raise MirasError([Diagnostic(
                "error", "E006", f"expression nested deeper than {MAX_DEPTH} operators", span)],
                {path: text})
        stack += [(c, depth + 1) for c in _expr_children(node)]
    if misplaced:
        raise MirasError(sorted(misplaced, key=lambda d: d.span or Span("", 0, 0, 0, 0)),
                         {path: text})


def _syntax_diagnostic(exc: UnexpectedInput, path: str, text: str) -> Diagnostic:
    line = getattr(exc, "line", 0) or 0
    col = getattr(exc, "column", 0) or 0
    if isinstance(exc, UnexpectedCharacters):
        ch = text[exc.pos_in_stream] if 0 <= exc.pos_in_stream < len(text) else "?"
        if ch == '"':
            return Diagnostic("error", "E003", "unterminated string", Span.point(path, line, col))
        shown = ch if ch.isprintable() and not ch.isspace() else ascii(ch)[1:-1]
        hint = ""
        if ch == ".":
            hint = "; '.' only appears inside numbers (there is no attribute access)"
        elif ch.isdigit():
            hint = "; numbers are written with the digits 0-9"
        return Diagnostic("error", "E002", f"unexpected character '{shown}'{hint}",
                          Span.point(path, line, col))
    if isinstance(exc, UnexpectedToken):
        expected = sorted({_describe(t) for t in exc.expected if not t.startswith("__")})
        exp = ", ".join(expected[:8]) + (", ..." if len(expected) > 8 else "")
        if exc.token.type == "$END":
            lines = text.rstrip().split("\n")  # '\n' ends a line for the parser
            span = Span.point(path, max(1, len(lines)), len(lines[-1]) + 1)
            return Diagnostic("error", "E003",
                              f"unexpected end of file; expected {exp}", span)
        tok = exc.token
        width = max(1, (tok.end_column or col + 1) - col)
        return Diagnostic("error", "E001", f"unexpected {_describe_token(tok)}; expected {exp}",
                          Span.point(path, line, col, width))
    if isinstance(exc, UnexpectedEOF):  # pragma: no cover - LALR reports $END as a token
        return Diagnostic("error", "E003", "unexpected end of file", Span.point(path, line, col))
    return Diagnostic(  # pragma: no cover
        "error", "E001", "syntax error", Span.point(path, line, col))


def _describe_token(tok: Token) -> str:
    if tok.type in ("NAME", "NUMBER", "STRING"):
        return f"{_describe(tok.type)} '{tok}'"
    return f"'{tok}'"


def parse_text(text: str, path: str = "<string>") -> ast.SourceFile:
    """Parse one file's text. Raises :class:`MirasError` with a syntax diagnostic."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        decode(text.encode("utf-8", "surrogatepass"), path)
    _check_nesting(text, path)
    try:
        items, comments = _parser().parse(text, path)
    except UnexpectedInput as exc:
        raise MirasError([_syntax_diagnostic(exc, path, text)], {path: text}) from None
    except VisitError as exc:
        if isinstance(exc.orig_exc, _SyntaxProblem):
            raise MirasError([exc.orig_exc.diagnostic], {path: text}) from None
        raise
    _check_depth(items, path, text)
    return ast.SourceFile(
        path, items,
        tuple(ast.Comment(str(c), c.line or 0, c.column or 0) for c in comments),
    )


def parse_bytes(data: bytes, path: str) -> ast.SourceFile:
    return parse_text(decode(data, path), path)
