"""Canonical ``.miras`` text: the formatter (AST → text) and the IR printer (IR → text).

:func:`format_source` is what ``miras fmt`` prints: the file's own structure (``extends``,
``include``, positional arguments, number spelling) and its comments are kept; layout is
canonical (one field per line, four-space indent, one blank line between top-level items,
``key=value`` in calls, spaces around binary operators, minimal parentheses).

:func:`print_program` prints an IR program as a self-contained file (definitions, then models,
with only non-default parameters), such that ``check(print_program(p)) == p``.

>>> text = "model m{memory=matrix bias=lp(p=3) retention=none algorithm=gd(lr=1/2)}"
>>> print(format_text(text), end="")
model m {
    memory = matrix
    bias = lp(p=3)
    retention = none
    algorithm = gd(lr=1 / 2)
}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from miras import ast, catalog, ir
from miras.parse import parse_text

INDENT = "    "

# Precedence levels of the grammar, loosest first.
_CMP, _SUM, _PROD, _UNARY, _POW, _ATOM = range(1, 7)
_BIN_PREC = {"+": _SUM, "-": _SUM, "*": _PROD, "/": _PROD}


def _wrap(text: str, prec: int, need: int) -> str:
    return f"({text})" if prec < need else text


# --------------------------------------------------------------------------------------------
# Expressions (the same rules for AST and IR nodes)
# --------------------------------------------------------------------------------------------


def _binary(op: str, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int]:
    if op == "^":
        # atom "^" unary: the base must be an atom; the exponent may be a unary expression.
        return f"{_wrap(left[0], left[1], _ATOM)}^{_wrap(right[0], right[1], _UNARY)}", _POW
    prec = _BIN_PREC[op]
    # left-associative: the right operand needs parentheses at equal precedence
    return f"{_wrap(left[0], left[1], prec)} {op} {_wrap(right[0], right[1], prec + 1)}", prec


def _unary(op: str, operand: tuple[str, int]) -> tuple[str, int]:
    inner = _wrap(operand[0], operand[1], _UNARY)
    if inner.startswith(("-", "+")):
        inner = f"({inner})"
    return f"{op}{inner}", _UNARY


def _compare(op: str, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int]:
    return f"{_wrap(left[0], left[1], _SUM)} {op} {_wrap(right[0], right[1], _SUM)}", _CMP


def ast_expr(node: ast.Expr) -> str:
    """Canonical text of an AST expression."""
    return _ast_expr(node)[0]


def _ast_expr(node: ast.Expr) -> tuple[str, int]:
    if isinstance(node, ast.Number):
        return node.text, _ATOM
    if isinstance(node, ast.String):
        return f'"{node.value}"', _ATOM
    if isinstance(node, ast.Name):
        return node.id, _ATOM
    if isinstance(node, ast.Unary):
        return _unary(node.op, _ast_expr(node.operand))
    if isinstance(node, ast.Binary):
        return _binary(node.op, _ast_expr(node.left), _ast_expr(node.right))
    if isinstance(node, ast.Compare):
        return _compare(node.op, _ast_expr(node.left), _ast_expr(node.right))
    if isinstance(node, ast.ListExpr):
        return "[" + ", ".join(ast_expr(item) for item in node.items) + "]", _ATOM
    args = ", ".join(
        (f"{a.name.id}={ast_expr(a.value)}" if a.name is not None else ast_expr(a.value))
        for a in node.args
    )
    return f"{node.func.id}({args})", _ATOM


def number(x: float) -> str:
    """Shortest text that reads back as ``x``.

    >>> number(4.0), number(0.001), number(1e-06), number(2.5e20)
    ('4', '0.001', '1e-06', '2.5e+20')
    """
    if float(x).is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(float(x))


def ir_expr(node: ir.Expr) -> str:
    """Canonical text of an IR expression."""
    return _ir_expr(node)[0]


def _ir_expr(node: Any) -> tuple[str, int]:
    if isinstance(node, ir.Num):
        text = number(node.value)
        return text, (_UNARY if text.startswith("-") else _ATOM)
    if isinstance(node, ir.Var):
        return node.name, _ATOM
    if isinstance(node, ir.Neg):
        return _unary("-", _ir_expr(node.arg))
    if isinstance(node, ir.BinOp):
        return _binary(node.op, _ir_expr(node.left), _ir_expr(node.right))
    if isinstance(node, ir.Cmp):
        return _compare(node.op, _ir_expr(node.left), _ir_expr(node.right))
    return f"{node.name}({', '.join(ir_expr(a) for a in node.args)})", _ATOM


# --------------------------------------------------------------------------------------------
# IR printer
# --------------------------------------------------------------------------------------------


def _call(name: str, args: Sequence[tuple[str, str]]) -> str:
    if not args:
        return name
    return f"{name}({', '.join(f'{k}={v}' for k, v in args)})"


def value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return number(v)
    if v is None:
        return "none"
    if isinstance(v, ir.ActDef):
        return v.name
    if isinstance(v, ir.Const):
        return number(v.value)
    if isinstance(v, ir.PerHead):
        return f"per_head({ir_expr(v.expr)})"
    if isinstance(v, ir.Learned | ir.Gate):
        return _call_with_params(v.name, v, always_call=True)
    if isinstance(v, ir.Choice):
        return choice_text(v)
    return str(v)


def _call_with_params(name: str, obj: Any, always_call: bool = False) -> str:
    args = [(p, value_text(getattr(obj, p))) for p, info in catalog.params_of(type(obj)).items()
            if getattr(obj, p) != info.default]
    text = _call(name, args)
    return f"{text}()" if always_call and not args else text


def choice_text(c: ir.Choice) -> str:
    """``lp(p=3)``-style text of a choice, with only its non-default parameters.

    >>> choice_text(ir.Lp(p=4.0))
    'lp(p=4)'
    >>> choice_text(ir.L2())
    'l2'
    """
    if isinstance(c, ir.UserBias | ir.UserRetention | ir.UserFeature):
        defaults = {p.name: p.default for p in c.definition.params}
        args = [(a.name, value_text(a.value)) for a in c.args if a.value != defaults.get(a.name)]
        return _call(c.definition.name, args)
    return _call_with_params(str(c.kind), c)  # type: ignore[attr-defined]


def _params(params: Sequence[ir.ParamDef]) -> str:
    if not params:
        return ""
    parts = [p.name if p.default is None else f"{p.name}={value_text(p.default)}" for p in params]
    return f"({', '.join(parts)})"


def definition_text(d: Any) -> str:
    if isinstance(d, ir.ActDef):
        return f"act {d.name} = {ir_expr(d.formula)}"
    if isinstance(d, ir.RetentionDef):
        head = f"retention {d.name}{_params(d.params)}"
        if d.potential is None and d.regularizer is not None:
            return f"{head} = {ir_expr(d.regularizer)}"
        body = [f"{INDENT}{k} = {ir_expr(e)}"
                for k, e in (("regularizer", d.regularizer), ("potential", d.potential))
                if e is not None]
        return "\n".join([f"{head} {{", *body, "}"])
    return f"{d.def_kind} {d.name}{_params(d.params)} = {ir_expr(d.formula)}"


def model_text(m: ir.Model) -> str:
    lines = [f"model {m.name} {{"]
    for name, f in ir.Model.model_fields.items():
        if name == "name":
            continue
        value = getattr(m, name)
        if not f.is_required() and value == f.default:
            continue
        lines.append(f"{INDENT}{name} = {value_text(value)}")
    lines.append("}")
    return "\n".join(lines)


def print_program(program: ir.Program) -> str:
    """The IR as canonical, self-contained ``.miras`` text (definitions first)."""
    blocks = [definition_text(d) for d in program.definitions]
    blocks += [model_text(m) for m in program.models]
    return "\n\n".join(blocks) + ("\n" if blocks else "")


# --------------------------------------------------------------------------------------------
# Formatter (AST + comments → text)
# --------------------------------------------------------------------------------------------


class _Formatter:
    def __init__(self, f: ast.SourceFile, text: str) -> None:
        self.lines = text.splitlines()
        self.out: list[str] = []
        self.standalone: list[ast.Comment] = []
        self.trailing: dict[int, list[str]] = {}
        for c in f.comments:
            before = self.lines[c.line - 1][: c.col - 1] if c.line <= len(self.lines) else ""
            if before.strip():
                self.trailing.setdefault(c.line, []).append(c.text.rstrip())
            else:
                self.standalone.append(c)
        self.used_trailing: set[int] = set()
        self.items = f.items

    def _blank_between(self, a_end: int, b_start: int) -> bool:
        return any(not self.lines[i - 1].strip() for i in range(a_end + 1, b_start)
                   if 0 < i <= len(self.lines))

    def _trail(self, line: int) -> str:
        """The trailing comment(s) of a source line, once."""
        if line in self.used_trailing or line not in self.trailing:
            return ""
        self.used_trailing.add(line)
        return "  " + " ".join(self.trailing[line])

    def _elements(self, nodes: Sequence[Any], lo: int, hi: int) -> list[tuple[int, int, Any]]:
        """Nodes and standalone comments with lines in (lo, hi), sorted by line."""
        els: list[tuple[int, int, Any]] = [(n.span.line, n.span.end_line, n) for n in nodes]
        keys = [(n.span.line, 1, 0) for n in nodes]
        for c in self.standalone:
            if not lo < c.line < hi:
                continue
            owner = next((n for n in nodes if n.span.line <= c.line <= n.span.end_line), None)
            if owner is None:
                keys.append((c.line, 0, c.line))
            elif _is_block(owner):
                continue  # printed inside the block
            else:  # a comment inside a multi-line expression moves above it
                keys.append((owner.span.line, 0, c.line))
            els.append((c.line, c.line, c))
        order = sorted(range(len(els)), key=lambda i: keys[i])
        return [els[i] for i in order]

    def run(self) -> str:
        last_end: int | None = None
        last_was_item = False
        for start, end, node in self._elements(self.items, 0, len(self.lines) + 1):
            if last_end is not None and (last_was_item or self._blank_between(last_end, start)):
                self.out.append("")
            if isinstance(node, ast.Comment):
                self.out.append(node.text.rstrip())
                last_was_item = False
            else:
                self.item(node)
                last_was_item = True
            last_end = end
        return "\n".join(self.out) + ("\n" if self.out else "")

    def _inner_comments_to_leading(self, start: int, end: int, indent: str) -> None:
        """Trailing comments inside a multi-line field move above it."""
        for line in range(start, end):
            tail = self._trail(line)
            if tail:
                self.out.append(indent + tail.strip())

    def item(self, node: ast.Item) -> None:
        if isinstance(node, ast.Include):
            self.out.append(f'include "{node.path.value}"{self._trail(node.span.end_line)}')
            return
        if isinstance(node, ast.ModelDef):
            head = f"model {node.name.id}"
            if node.extends is not None:
                head += f" extends {node.extends.id}"
            self.block(head, node.fields, node.span)
            return
        if isinstance(node, ast.SweepDef):
            self.block(f"sweep {node.name.id}", node.fields, node.span)
            return
        head = f"{node.kind} {node.name.id}"
        if node.params is not None:
            params = ", ".join(p.name.id if p.default is None
                               else f"{p.name.id}={ast_expr(p.default)}" for p in node.params)
            head += f"({params})"
        if isinstance(node.body, tuple):
            self.block(head, node.body, node.span)
            return
        self._inner_comments_to_leading(node.span.line, node.span.end_line, "")
        self.out.append(f"{head} = {ast_expr(node.body)}{self._trail(node.span.end_line)}")

    def block(self, head: str, fields: Sequence[ast.Field], span: Any) -> None:
        first_field_line = fields[0].span.line if fields else span.end_line
        header_tail = self._trail(span.line) if span.line < first_field_line else ""
        inner = self._elements(fields, span.line, span.end_line)
        if not inner:
            self.out.append(f"{head} {{}}{header_tail or self._trail(span.end_line)}")
            return
        self.out.append(f"{head} {{{header_tail}")
        last_on_line = {end: node for _, end, node in inner}
        last_end: int | None = None
        for start, end, node in inner:
            if last_end is not None and self._blank_between(last_end, start):
                self.out.append("")
            if isinstance(node, ast.Comment):
                self.out.append(INDENT + node.text.rstrip())
            else:
                self._inner_comments_to_leading(start, end, INDENT)
                tail = self._trail(end) if last_on_line[end] is node else ""
                self.out.append(f"{INDENT}{node.name.id} = {ast_expr(node.value)}{tail}")
            last_end = end
        self.out.append("}" + self._trail(span.end_line))


def _is_block(node: Any) -> bool:
    return isinstance(node, ast.ModelDef | ast.SweepDef) or (
        isinstance(node, ast.FormulaDef) and isinstance(node.body, tuple))


def format_source(f: ast.SourceFile, text: str) -> str:
    """Canonical text of a parsed file, comments kept."""
    return _Formatter(f, text).run()


def format_text(text: str, path: str = "<string>") -> str:
    """Parse and format; raises :class:`~miras.diagnostics.MirasError` on syntax errors."""
    return format_source(parse_text(text, path), text)
