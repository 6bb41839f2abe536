"""Independent torch references for the symbolic tests.

``ir_eval`` evaluates an IR formula with torch directly (no sympy): the language semantics
(element-wise over the last dimension, ``sum``/``norm``/``dot`` reduce it) written a second
time, so that the engine's conversion is checked too. ``run`` executes a printed torch block.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from miras import ir
from miras.symbolic.printing import TORCH_CALLS, Block

F64 = torch.float64


def run(block: Block, env: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Execute a printed torch block; return its outputs."""
    assert block.target == "torch"
    missing = set(block.inputs) - set(env)
    assert not missing, f"unbound inputs {missing}"
    ns: dict[str, Any] = {"torch": torch, **env}
    exec(compile(block.source(), "<block>", "exec"), ns)
    return {name: ns[name] for name in block.outputs}


def smooth_abs(x: torch.Tensor, mode: str, eps: float, sharp: float) -> torch.Tensor:
    if mode == "sqrt":
        return torch.sqrt(x * x + eps)
    if mode == "tanh":
        return torch.log(torch.cosh(sharp * x)) / sharp
    return torch.abs(x)


def ir_eval(e: ir.Expr, env: dict[str, torch.Tensor], dim: int) -> torch.Tensor:
    """Evaluate an IR formula with torch: vectors [..., dim], scalars [..., 1]."""

    def red(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or (x.shape[-1] == 1 and dim != 1):
            return x * dim
        return x.sum(-1, keepdim=True)

    def go(e: ir.Expr) -> torch.Tensor:
        if isinstance(e, ir.Num):
            return torch.tensor(e.value, dtype=F64)
        if isinstance(e, ir.Var):
            if e.name == "pi":
                return torch.tensor(math.pi, dtype=F64)
            return env[e.name]
        if isinstance(e, ir.Neg):
            return -go(e.arg)
        if isinstance(e, ir.BinOp):
            a, b = go(e.left), go(e.right)
            return {"+": a + b, "-": a - b, "*": a * b, "/": a / b, "^": a**b}[e.op] \
                if e.op != "/" else a / b
        if isinstance(e, ir.Cmp):
            a, b = go(e.left), go(e.right)
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b,
                    "!=": a != b}[e.op]
        assert isinstance(e, ir.Fn)
        args = [go(a) for a in e.args]
        n = e.name
        if n == "sum":
            return red(args[0])
        if n == "dot":
            return red(args[0] * args[1])
        if n == "norm":
            p = args[1] if len(args) > 1 else torch.tensor(2.0, dtype=F64)
            return red(torch.abs(args[0]) ** p) ** (1 / p)
        if n == "where":
            return torch.where(args[0], args[1], args[2])
        fns = {
            "abs": torch.abs, "sign": torch.sign, "exp": torch.exp, "log": torch.log,
            "log1p": torch.log1p, "sqrt": torch.sqrt, "tanh": torch.tanh,
            "sigmoid": torch.sigmoid, "softplus": lambda x: torch.log1p(torch.exp(x)),
            "cosh": torch.cosh, "sinh": torch.sinh, "atan": torch.atan, "erf": torch.erf,
            "relu": torch.relu, "min": torch.minimum, "max": torch.maximum,
        }
        return fns[n](*args)

    return go(e)


def builtin_loss(bias: Any, y: torch.Tensor, v: torch.Tensor,
                 delta: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Hand-written losses of the built-in biases (the README / ir.py semantics)."""
    e = y - v
    s = lambda x: x.sum(-1, keepdim=True)  # noqa: E731
    norm = torch.sqrt(s(e * e))
    kind = bias.kind
    if kind == "dot":
        return -s(y * v)
    if kind == "l2":
        return 0.5 * s(e * e)
    if kind == "l1":
        return s(smooth_abs(e, bias.smooth, bias.eps, bias.sharpness))
    if kind == "lp":
        return s(smooth_abs(e, bias.smooth, bias.eps, bias.sharpness) ** bias.p)
    if kind == "huber_coord":
        a = torch.abs(e)
        return s(torch.where(a <= delta, 0.5 * e * e, delta * (a - 0.5 * delta)))
    if kind == "huber_norm":
        return torch.where(norm <= delta, 0.5 * norm**2, delta * (norm - 0.5 * delta))
    if kind == "robust_shift":
        return 0.5 * s(e * e) + delta * norm + 0.5 * delta**2
    if kind == "huber":
        return torch.where(norm <= delta, 0.5 * s(e * e), delta * s(torch.abs(e)))
    raise AssertionError(kind)


def assert_only_calls(tree_src: str, allowed: frozenset[str], names: set[str]) -> None:
    """Every name in the code is an allowed call (dotted) or a bound name."""
    import ast

    tree = ast.parse(tree_src)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts = []
            cur: ast.AST = node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                parts.append(cur.id)
                dotted = ".".join(reversed(parts))
                if any(dotted == a or a.startswith(dotted + ".") for a in allowed):
                    continue
                raise AssertionError(f"attribute {dotted} is not whitelisted")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in names or node.id in {"tl", "libdevice", "torch", "True", "False"}:
                continue
            raise AssertionError(f"name {node.id} is not bound")


__all__ = ["TORCH_CALLS", "assert_only_calls", "builtin_loss", "ir_eval", "run"]


class _TL:
    """A torch stand-in for ``triton.language`` (the printed subset), to evaluate Triton code
    on the CPU (fp64)."""

    float32 = torch.float64

    @staticmethod
    def _t(x: Any) -> torch.Tensor:
        return x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=F64)

    def exp(self, x: Any) -> torch.Tensor:
        return torch.exp(self._t(x))

    def log(self, x: Any) -> torch.Tensor:
        return torch.log(self._t(x))

    def sqrt(self, x: Any) -> torch.Tensor:
        return torch.sqrt(self._t(x))

    def rsqrt(self, x: Any) -> torch.Tensor:
        return torch.rsqrt(self._t(x))

    def abs(self, x: Any) -> torch.Tensor:
        return torch.abs(self._t(x))

    def sigmoid(self, x: Any) -> torch.Tensor:
        return torch.sigmoid(self._t(x))

    def erf(self, x: Any) -> torch.Tensor:
        return torch.erf(self._t(x))

    def where(self, c: Any, a: Any, b: Any) -> torch.Tensor:
        return torch.where(self._t(c), self._t(a), self._t(b))

    def maximum(self, a: Any, b: Any) -> torch.Tensor:
        return torch.maximum(self._t(a), self._t(b))

    def minimum(self, a: Any, b: Any) -> torch.Tensor:
        return torch.minimum(self._t(a), self._t(b))

    def sum(self, x: Any, axis: int) -> torch.Tensor:
        return self._t(x).sum(axis)

    def zeros_like(self, x: Any) -> torch.Tensor:
        return torch.zeros_like(self._t(x))

    def full(self, shape: list[int], value: Any, dtype: Any) -> torch.Tensor:
        return torch.full(shape, float(value), dtype=F64)


class _Libdevice:
    @staticmethod
    def pow(a: Any, b: Any) -> torch.Tensor:
        return torch.pow(_TL._t(a), _TL._t(b))

    @staticmethod
    def atan(a: Any) -> torch.Tensor:
        return torch.atan(_TL._t(a))

    @staticmethod
    def log1p(a: Any) -> torch.Tensor:
        return torch.log1p(_TL._t(a))


def run_triton(block: Block, env: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Execute a printed Triton block with torch stand-ins for ``tl`` and ``libdevice``
    (2-D tensors [rows, D] like a [BT, BD] block; ``dmask`` all true)."""
    assert block.target == "triton"
    ns: dict[str, Any] = {"tl": _TL(), "libdevice": _Libdevice, **env}
    ns.setdefault("dmask", torch.ones(1, 1, dtype=torch.bool))
    exec(compile(block.source(), "<triton block>", "exec"), ns)
    return {name: ns[name] for name in block.outputs}
