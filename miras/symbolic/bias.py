"""Attentional biases: the inner loss ℓ(y, v), its gradient ∂ℓ/∂y and second derivatives.

Built-in biases are written as IR formulas (:func:`builtin_formula`) and go through exactly the
same conversion and differentiation as user biases. With ``e = y − v``:

============== ====================================================================
kind           ℓ
============== ====================================================================
dot            ``−sum(y·v)``
l2             ``sum(½ e²)``
l1             ``sum(|e|)``                  (``|·|`` smoothed per ``smooth``)
lp             ``sum(|e|^p)``                (``|·|`` smoothed per ``smooth``)
huber_coord    ``sum(H_δ(e))``, ``H_δ(a) = where(|a| ≤ δ, ½a², δ(|a| − ½δ))``
huber_norm     ``H_δ(‖e‖₂)``
robust_shift   ``½ sum(e²) + Δ‖e‖₂ + ½Δ²``
huber (Yaad)   ``where(‖e‖₂ ≤ δ, ½ sum(e²), δ sum(|e|))``
============== ====================================================================

``huber`` is Yaad's switch ([M] Eq 16, 26): its loss jumps at ‖e‖₂ = δ, but the condition has
zero derivative, so ``∂ℓ/∂y = e`` if ‖e‖₂ ≤ δ else ``δ·sign(e)`` — exactly the paper's rule
"∇ℓ₂ if ‖M(k) − v‖ ≤ δ, else δ∇ℓ₁".

:func:`derive_bias` returns a :class:`BiasDerivation` of printed code: the loss, the gradient,
its Jacobians (diagonal + rank-one parts, one per sum symbol), a ready vector-Jacobian product
for the backward pass, and whether the gradient is affine in ``y``.

>>> from miras import ir
>>> d = derive_bias(ir.L2())
>>> d.grad.torch.source()
'grad = -v + y\\n'
>>> d.affine, d.separable
(True, True)
>>> d = derive_bias(ir.HuberNorm())
>>> print(d.grad.torch.source(), end="")
t0 = -v + y
s0 = torch.sum(t0**2, dim=-1, keepdim=True)
t1 = torch.sqrt(s0)
grad = torch.where((t1 <= 1), t0, t0/t1)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from miras import ir
from miras.symbolic.convert import Converter, number
from miras.symbolic.errors import ConversionError, UnsupportedForm
from miras.symbolic.functions import Smoothing
from miras.symbolic.params import Input, Params, user_name
from miras.symbolic.printing import Code, Shape, print_both
from miras.symbolic.reductions import (
    DIM,
    DY,
    K,
    SumTable,
    V,
    Y,
    gradient,
    is_affine,
    jacobian,
    vjp,
)

__all__ = ["BiasDerivation", "JacobianCode", "SymbolicBias", "builtin_formula", "derive_bias",
           "symbolic_bias"]


#: The largest gradient expression (sympy operation count) the engine accepts.
MAX_OPS = 4000

# --------------------------------------------------------------------------------------------
# Built-in biases as IR formulas
# --------------------------------------------------------------------------------------------

def _v(name: str) -> ir.Var:
    return ir.Var(name=name)


def _n(x: float) -> ir.Num:
    return ir.Num(value=x)


def _b(op: str, a: ir.Expr, b: ir.Expr) -> ir.BinOp:
    return ir.BinOp(op=op, left=a, right=b)  # type: ignore[arg-type]


def _f(name: str, *args: ir.Expr) -> ir.Fn:
    return ir.Fn(name=name, args=args)  # type: ignore[arg-type]


def _huber(a: ir.Expr, abs_a: ir.Expr, delta: ir.Expr) -> ir.Expr:
    quad = _b("*", _n(0.5), _b("^", a, _n(2)))
    lin = _b("*", delta, _b("-", abs_a, _b("*", _n(0.5), delta)))
    return _f("where", ir.Cmp(op="<=", left=abs_a, right=delta), quad, lin)


def builtin_formula(bias: ir.Dot | ir.L2 | ir.L1 | ir.Lp | ir.Huber | ir.HuberCoord
                    | ir.HuberNorm | ir.RobustShift) -> ir.Expr:
    """The IR formula of a built-in bias, in ``y``, ``v`` and the parameter names
    (``delta``, ``radius``; ``lp``'s ``p`` is inlined).

    >>> from miras.printer import ir_expr
    >>> ir_expr(builtin_formula(ir.RobustShift()))
    '0.5 * sum((y - v)^2) + radius * norm(y - v, 2) + 0.5 * radius^2'
    """
    y, v = _v("y"), _v("v")
    e = _b("-", y, v)
    sq = _b("^", e, _n(2))
    norm = _f("norm", e, _n(2))
    if isinstance(bias, ir.Dot):
        return ir.Neg(arg=_f("sum", _b("*", y, v)))
    if isinstance(bias, ir.L2):
        return _f("sum", _b("*", _n(0.5), sq))
    if isinstance(bias, ir.L1):
        return _f("sum", _f("abs", e))
    if isinstance(bias, ir.Lp):
        return _f("sum", _b("^", _f("abs", e), _n(bias.p)))
    if isinstance(bias, ir.HuberCoord):
        return _f("sum", _huber(e, _f("abs", e), _v("delta")))
    if isinstance(bias, ir.HuberNorm):
        return _huber(norm, norm, _v("delta"))
    if isinstance(bias, ir.RobustShift):
        r = _v("radius")
        return _b("+", _b("+", _b("*", _n(0.5), _f("sum", sq)), _b("*", r, norm)),
                  _b("*", _n(0.5), _b("^", r, _n(2))))
    if isinstance(bias, ir.Huber):
        return _f("where", ir.Cmp(op="<=", left=norm, right=_v("delta")),
                  _b("*", _n(0.5), _f("sum", sq)),
                  _b("*", _v("delta"), _f("sum", _f("abs", e))))
    raise ConversionError(f"no built-in formula for bias '{bias.kind}'")


# --------------------------------------------------------------------------------------------
# Symbolic form (internal) and printed derivation (public)
# --------------------------------------------------------------------------------------------


def tidy(expr: sp.Expr) -> sp.Expr:
    """A cheap cosmetic simplification: fold Piecewise factors, factor each branch; kept only
    when it does not grow the expression.

    >>> x, y = sp.symbols("x y", real=True)
    >>> tidy((2*x - 2*y) * sp.Piecewise((sp.Rational(1, 2), x > 0), (1, True)))
    Piecewise((x - y, x > 0), (2*(x - y), True))
    """
    out = sp.piecewise_fold(expr)
    if isinstance(out, sp.Piecewise):
        out = sp.Piecewise(*[(sp.factor_terms(sp.expand_mul(e)), c) for e, c in out.args])
    else:
        out = sp.factor_terms(sp.expand_mul(out))
    return out if sp.count_ops(out) <= sp.count_ops(expr) else expr


@dataclass
class SymbolicBias:
    """Internal: the sympy form of a bias (loss ``F``, gradient ``G``) and its sum table."""

    kind: str
    name: str
    table: SumTable
    params: Params
    loss: sp.Expr
    grad: sp.Expr
    smoothing: str
    variables: tuple[sp.Symbol, ...]

    @property
    def names(self) -> dict[sp.Symbol, str]:
        return {Y: "y", V: "v", K: "k", DY: "dgrad", DIM: "D", **self.params.symbols}


def symbolic_bias(bias: ir.Bias, *, fold: bool = True) -> SymbolicBias:
    """Convert a bias choice to its internal symbolic form (loss and gradient)."""
    table = SumTable([Y, V, K, DY])
    params = Params()
    env: dict[str, sp.Expr] = {"y": Y, "v": V, "k": K}
    smoothing = Smoothing()
    if isinstance(bias, ir.UserBias):
        formula = bias.definition.formula
        kind, name = "user", bias.definition.name
        given = {a.name: a.value for a in bias.args}
        for p in bias.definition.params:
            value = given.get(p.name, p.default)
            if value is None:
                raise ConversionError(f"parameter '{p.name}' of bias '{name}' has no value")
            env[p.name] = params.scalar(user_name(p.name), value,
                                        f"parameter '{p.name}' of bias '{name}'", fold=fold)
    else:
        formula = builtin_formula(bias)
        kind = name = bias.kind
        if isinstance(bias, ir.Huber | ir.HuberCoord | ir.HuberNorm):
            env["delta"] = params.scalar("delta", bias.delta, "Huber threshold δ",
                                         positive=True, fold=fold)
        if isinstance(bias, ir.RobustShift):
            env["radius"] = params.scalar("radius", bias.radius, "radius Δ of the value shift",
                                          positive=True, fold=fold)
        if isinstance(bias, ir.L1 | ir.Lp):
            smoothing = Smoothing(bias.smooth, number(bias.eps), number(bias.sharpness))
    for sym in params.vectors:
        table.add_vector(sym)
    if params.vectors and isinstance(bias, ir.Huber | ir.HuberNorm | ir.RobustShift):
        raise UnsupportedForm(f"bias '{kind}' compares or scales the norm ‖y − v‖₂ with "
                              f"{'Δ' if kind == 'robust_shift' else 'δ'}: it must be one value "
                              "per head (a channel-wise gate or learned value is not allowed)")
    loss = Converter(table, env, smoothing)(formula)
    if table.is_vector(loss):
        raise ConversionError(f"bias '{name}' must be a scalar: reduce the vectors with sum, "
                              "norm or dot")
    if not table.depends(loss, Y):
        raise ConversionError(f"bias '{name}' does not depend on y")
    grad = tidy(gradient(loss, Y, table))
    if sp.count_ops(grad) > MAX_OPS:
        raise UnsupportedForm(f"the gradient of bias '{name}' has {sp.count_ops(grad)} "
                              f"operations (more than {MAX_OPS}): simplify the formula")
    used = tuple(s for s in (Y, V, K) if table.depends(loss, s))
    return SymbolicBias(kind, name, table, params, loss, grad, smoothing.mode, used)


@dataclass(frozen=True)
class JacobianCode:
    """The Jacobian of the gradient ``g = ∂ℓ/∂y`` with respect to one input ``wrt``.

    ``∂g_j/∂x_l = δ_jl·diag_j + Σ_{i<rank} u{i}_j · w{i}_l`` for a vector input (``diag`` and
    ``u{i}`` are ``[..., D]``, ``w{i}`` ``[..., D]``); for a scalar input
    ``∂g_j/∂x = diag_j + Σ_i u{i}_j · w{i}`` (``w{i}`` is ``[..., 1]``). ``code`` outputs
    ``diag, u0, w0, u1, w1, ...``. For ``wrt = y`` this is the Hessian of ℓ: the diagonal part
    ``∂²ℓ/∂y_j²`` plus the rank-one parts from the sums.
    """

    wrt: str
    shape: Shape
    rank: int
    code: Code


@dataclass(frozen=True)
class BiasDerivation:
    """Printed derivation of an attentional bias (plain data, no sympy).

    * ``inputs``: what the blocks read: ``y``, ``v``, ``k`` (``[..., D]``; only those the
      bias uses, ``y`` always), hyper-parameters, ``D`` when a reduction needs the length,
      and ``dgrad`` (``[..., D]``, the upstream gradient) for ``vjp`` only.
    * ``loss``: outputs ``loss`` (``[..., 1]``). ``grad``: outputs ``grad`` = ∂ℓ/∂y
      (``[..., D]``).
    * ``vjp``: given ``dgrad`` = ∂L/∂grad, outputs ``d_<input>`` = ∂L/∂input for every input
      the gradient depends on (``d_y``, ``d_v``, ``d_k``, ``d_delta``, ``d_p_c``, ...): the
      backward pass of ``grad``.
    * ``jacobians``: the same, structured (diagonal + rank-one parts), per input.
    * ``affine``: the gradient is affine in ``y`` (constant Hessian; the symbolic truth of
      the ``exact`` form's requirement). ``affine_form`` then outputs ``diag, u{i}, w{i}``
      (the constant Jacobian) and ``offset`` = the gradient at ``y = 0``, so that
      ``grad = diag⊙y + Σ u{i}·⟨w{i}, y⟩ + offset``.
    * ``separable``: the gradient is element-wise (no reduction): the loss is a sum of
      per-coordinate terms.
    * Triton reductions are masked by ``dmask`` (a boolean tensor broadcastable to
      ``[BT, BD]``, true on the valid lanes); torch code needs no mask.
    """

    kind: str
    name: str
    inputs: tuple[Input, ...]
    loss: Code
    grad: Code
    vjp: Code
    jacobians: tuple[JacobianCode, ...]
    affine: bool
    affine_form: JacobianCode | None
    separable: bool
    smoothing: str
    variables: tuple[str, ...]
    notes: tuple[str, ...]


_NOTES = {
    "huber": "Yaad's switch: grad = e if ‖e‖₂ ≤ δ else δ·sign(e) ([M] Eq 16, 26); the loss "
             "itself jumps at ‖e‖₂ = δ",
    "huber_norm": "grad = e if ‖e‖₂ ≤ δ else δ·e/‖e‖₂ ([M] Eq 15)",
    "huber_coord": "grad_j = e_j if |e_j| ≤ δ else δ·sign(e_j) ([M] Eq 14)",
    "robust_shift": "grad = e + Δ·e/‖e‖₂ ([M] Eq 17); not differentiable at e = 0",
}


def _jac_code(name: str, sym: sp.Symbol, shape: Shape, G: sp.Expr, sb: SymbolicBias,
              extra: list[tuple[str, sp.Expr, Shape]] | None = None,
              at: dict[sp.Symbol, sp.Expr] | None = None) -> JacobianCode:
    J = jacobian(G, sym, sb.table)
    sub = (lambda e: sb.table.substitute(e, at)) if at else (lambda e: e)
    outs: list[tuple[str, sp.Expr, Shape]] = [("diag", sub(J.diag), "vector")]
    for i, (u, w) in enumerate(J.terms):
        outs.append((f"u{i}", sub(u), "vector"))
        outs.append((f"w{i}", sub(w), shape))
    outs += extra or []
    return JacobianCode(name, shape, len(J.terms), print_both(outs, sb.table, sb.names))


@functools.lru_cache(maxsize=256)
def derive_bias(bias: ir.Bias, *, fold: bool = True) -> BiasDerivation:
    """Derive and print everything about a bias (see :class:`BiasDerivation`).

    Raises :class:`~miras.symbolic.errors.ConversionError` for a formula without meaning and
    :class:`~miras.symbolic.errors.UnsupportedForm` when sympy cannot differentiate it.
    Cached per bias (the IR is frozen): the plan, the fusion decision and the kernel
    template all read the same derivation.

    >>> from miras import ir
    >>> d = derive_bias(ir.Dot())
    >>> d.grad.torch.source(), d.affine, [j.wrt for j in d.jacobians]
    ('grad = -v\\n', True, ['y', 'v'])
    """
    sb = symbolic_bias(bias, fold=fold)
    table, G = sb.table, sb.grad
    wrt: list[tuple[str, sp.Symbol, Shape]] = [("y", Y, "vector")]
    wrt += [(n, s, "vector") for n, s in (("v", V), ("k", K)) if s in sb.variables]
    for sym, code in sb.params.symbols.items():
        wrt.append((code, sym, "vector" if sym in sb.params.vectors else "scalar"))
    jacobians = tuple(_jac_code(n, s, shape, G, sb) for n, s, shape in wrt)
    vjps = [(f"d_{n}", vjp(G, s, DY, table), shape) for n, s, shape in wrt]
    affine = is_affine(G, Y, table)
    affine_form = None
    if affine:
        at = {Y: sp.Integer(0)}
        affine_form = _jac_code("y", Y, "vector", G, sb,
                                extra=[("offset", table.substitute(G, at), "vector")], at=at)
    inputs = [Input("y", "vector", "the memory output M(φ(k))")]
    inputs += [Input(n, "vector", doc) for n, s, doc in
               (("v", V, "the target value"), ("k", K, "the key"))
               if s in sb.variables]
    inputs += sb.params.inputs
    loss_code = print_both([("loss", sb.loss, "scalar")], table, sb.names)
    grad_code = print_both([("grad", G, "vector")], table, sb.names)
    vjp_code = print_both(vjps, table, sb.names)
    blocks = [loss_code, grad_code, vjp_code, *(j.code for j in jacobians)]
    if affine_form is not None:
        blocks.append(affine_form.code)
    if any("D" in b.torch.inputs for b in blocks):
        inputs.append(Input("D", "int", "the head dimension (the true one, not the block)"))
    inputs.append(Input("dgrad", "vector", "upstream gradient ∂L/∂grad (vjp only)"))
    return BiasDerivation(
        kind=sb.kind,
        name=sb.name,
        inputs=tuple(inputs),
        loss=loss_code,
        grad=grad_code,
        vjp=vjp_code,
        jacobians=jacobians,
        affine=affine,
        affine_form=affine_form,
        separable=not table.closure([G]),
        smoothing=sb.smoothing,
        variables=tuple(str(s) for s in sb.variables),
        notes=(_NOTES[sb.kind],) if sb.kind in _NOTES else (),
    )
