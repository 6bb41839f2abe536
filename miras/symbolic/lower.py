"""What the PyTorch code generator needs from the symbolic engine, as printed text.

Per-head schedules, activations and their derivatives, user feature maps, mirror maps
``F′`` with their inverses ``(F′)⁻¹`` solved by sympy, and regulariser gradients ``G′``.
The readable statement of the update rule is :func:`miras.symbolic.explain`.

>>> from miras import ir
>>> act_code(ir.ActDef(name="sq", formula=ir.BinOp(op="^", left=ir.Var(name="x"),
...                                                right=ir.Num(value=2))))
('return x**2', 'return 2*x')
>>> retention_code(ir.Bregman(potential="entropy"))["inverse"]
'return torch.exp(u - 1)'
"""

from __future__ import annotations

from typing import Any

import sympy as sp

from miras import ir
from miras.symbolic.bias import derive_bias, symbolic_bias
from miras.symbolic.convert import Converter, number
from miras.symbolic.errors import NoClosedForm
from miras.symbolic.functions import clean
from miras.symbolic.params import user_name
from miras.symbolic.pretty import unicode
from miras.symbolic.printing import print_block, torch_code
from miras.symbolic.reductions import SumTable, X

__all__ = ["act_code", "act_triton", "bias_code", "bias_triton", "feature_code", "formula_text",
           "per_head_code", "retention_code", "retention_triton", "user_name"]

_H = sp.Symbol("h", real=True)
_W = sp.Symbol("w", positive=True)
_U = sp.Symbol("u", real=True)


def per_head_code(expr: ir.Expr) -> str:
    """PyTorch text of a ``per_head`` schedule, a function of the head index tensor ``h``.

    >>> per_head_code(ir.BinOp(op="-", left=ir.Num(value=1), right=ir.BinOp(
    ...     op="^", left=ir.Num(value=2), right=ir.Neg(arg=ir.Var(name="h")))))
    '1 - 2**(-h)'
    """
    e = Converter(SumTable([]), {"h": _H})(expr)
    code = torch_code(e, {_H: "h"})
    return code if _H in e.free_symbols else f"torch.full_like(h, {code})"


def formula_text(expr: ir.Expr) -> str:
    """Readable unicode of a formula over ``x``."""
    table = SumTable([X])
    return unicode(Converter(table, {"x": X})(expr), table, {X: "x"})


def act_code(act: ir.ActDef) -> tuple[str, str]:
    """``(return act(x), return act′(x))`` of a user activation (scalar in ``x``)."""
    e = Converter(SumTable([]), {"x": X})(act.formula)
    d = sp.diff(e, X)
    return f"return {torch_code(e, {X: 'x'})}", f"return {torch_code(d, {X: 'x'})}"


def bias_code(bias: ir.Bias) -> dict[str, Any]:
    """The printed gradient ``∂ℓ/∂y`` of a bias, the parameters it reads, and its formula."""
    d = derive_bias(bias)
    sb = symbolic_bias(bias)
    params = [i.name for i in d.inputs if i.value is not None]
    return {"formula": unicode(sb.loss, sb.table, sb.names), "params": params,
            "source": d.grad.torch.source()}


def feature_code(feature: ir.UserFeature) -> dict[str, Any]:
    """Statements computing ``phi`` from ``x`` ``[..., D]`` for a user feature map."""
    table = SumTable([X])
    env: dict[str, sp.Expr] = {"x": X}
    bind: list[tuple[str, str]] = []
    defaults: dict[str, float] = {}
    given = {a.name: a.value for a in feature.args}
    names: dict[sp.Symbol, str] = {X: "x"}
    for p in feature.definition.params:
        value = given.get(p.name, p.default)
        code = user_name(p.name)
        if isinstance(value, ir.Const):
            env[p.name] = number(value.value)
            continue
        sym = sp.Symbol(code, real=True)
        env[p.name] = sym
        names[sym] = code
        bind.append((code, f"feature.{code}"))
        defaults[f"feature.{code}"] = float(value.init) if isinstance(value, ir.Learned) else 1.0
    e = Converter(table, env)(feature.definition.formula)
    block = print_block([("phi", e, "vector")], table, names, "torch", like="x")
    return {"doc": unicode(e, table, names), "bind": bind, "defaults": defaults,
            "source": block.source() + "return phi"}


_POTENTIALS: dict[str, sp.Expr] = {
    "quadratic": _W**2 / 2,
    "entropy": _W * sp.log(_W),
    "logit": _W * sp.log(_W) + (1 - _W) * sp.log(1 - _W),
}


def _inverse(fprime: sp.Expr, what: str) -> sp.Expr:
    """Solve ``F′(w) = u`` for ``w`` (the real, increasing branch)."""
    try:
        sols = sp.solve(sp.Eq(fprime, _U), _W)
    except NotImplementedError:
        sols = []
    real = [s for s in sols if not s.has(sp.I)]
    if not real:
        raise NoClosedForm(f"sympy finds no closed form for the inverse of the mirror map "
                           f"F′(w) = {fprime} of {what}")
    return sp.simplify(real[0])


def _retention_exprs(ret: ir.Bregman | ir.UserRetention
                     ) -> tuple[str, sp.Expr, sp.Expr, sp.Expr | None]:
    """``(doc, F′(w), (F′)⁻¹(u), G(w) or None)`` of a Bregman or user retention."""
    if isinstance(ret, ir.Bregman):
        potential = _POTENTIALS[ret.potential]
        doc = f"potential {ret.potential}"
        reg = None
    else:
        d = ret.definition
        given = {a.name: a.value for a in ret.args}
        env: dict[str, sp.Expr] = {"w": _W}
        for p in d.params:
            value = given.get(p.name, p.default)
            if not isinstance(value, ir.Const):
                raise NoClosedForm(f"parameter '{p.name}' of retention '{d.name}' must be a "
                                   "constant for the PyTorch backend")
            env[p.name] = number(value.value)
        conv = Converter(SumTable([]), env)
        potential = conv(d.potential) if d.potential is not None else _W**2 / 2
        reg = conv(d.regularizer) if d.regularizer is not None else None
        doc = f"retention {d.name}"
    fprime = sp.diff(potential, _W)
    return doc, fprime, _inverse(fprime, doc), reg


def retention_code(ret: ir.Bregman | ir.UserRetention) -> dict[str, str]:
    """Mirror map ``F′``, its inverse and ``G′`` (user regulariser) as printed code."""
    doc, fprime, inverse, reg = _retention_exprs(ret)
    out: dict[str, str] = {"doc": doc}
    if reg is not None:
        out["reg_doc"] = str(reg).replace("**", "^")
        out["reg_grad"] = f"return {torch_code(sp.diff(reg, _W), {_W: 'w'})}"
    out["mirror"] = f"return {torch_code(fprime, {_W: 'w'})}"
    out["inverse"] = f"return {torch_code(inverse, {_U: 'u'})}"
    return out


def retention_triton(ret: ir.Bregman | ir.UserRetention) -> dict[str, str]:
    """Triton bodies of a mirror-descent retention for the fused 'scan' kernels, each
    element-wise: ``mirror`` = F′(w) and ``dmirror`` = F″(w) (reading ``w``), ``inverse`` =
    (F′)⁻¹(u) and ``dinverse`` = its derivative (reading ``u``), and for a user regulariser
    G: ``reg`` = G′(w), ``dreg`` = G″(w) (zero without one).

    >>> retention_triton(ir.Bregman(potential="entropy"))["inverse"]
    'inverse = tl.exp(u - 1.0)\\n'
    """
    _doc, fprime, inverse, reg = _retention_exprs(ret)
    greg = sp.diff(reg, _W) if reg is not None else sp.Integer(0)
    pieces = {"mirror": (fprime, _W, "w"), "dmirror": (sp.diff(fprime, _W), _W, "w"),
              "inverse": (inverse, _U, "u"), "dinverse": (sp.diff(inverse, _U), _U, "u"),
              "reg": (greg, _W, "w"), "dreg": (sp.diff(greg, _W), _W, "w")}
    out = {}
    for name, (e, sym, text) in pieces.items():
        # simplified: the derivatives of sigmoid-like maps as one fraction, not a difference
        e = clean(sp.simplify(e)) if name.startswith("d") else e
        block = print_block([(name, e, "vector")], SumTable([sym]), {sym: text},
                            "triton", like=text)
        out[name] = block.source()
    return out


def bias_triton(bias: ir.Bias) -> dict[str, Any]:
    """Triton bodies of a bias for the fused kernels: ``grad`` (∂ℓ/∂y from ``y, v``) and
    ``vjp`` (``d_y, d_v`` from ``y, v, dgrad``, and ``d_<p>`` for every parameter ``p`` in
    ``params``), reductions masked by ``dmask``.

    ``params`` are the hyper-parameters the code reads (bound by the kernel template; the
    constants are folded in, so these are the runtime ones: gates, learned values);
    ``uses_k``: the loss reads the key (the fused kernels do not pass it).

    >>> bias_triton(ir.L2())["grad"]
    'grad = -v + y\\n'
    """
    d = derive_bias(bias)
    vjp = d.vjp.triton
    params = [i.name for i in d.inputs if i.value is not None]
    # constants are folded into the code: ``params`` are the runtime ones (gates, learned
    # values), whose cotangents d_<name> [BT, 1] the backward pass also needs
    keep = ("d_y", "d_v", *(f"d_{p}" for p in params))
    outputs = [s for s in vjp.statements if s.kind != "output" or s.name in keep]
    body = "".join(f"{s.name} = {s.code}\n" for s in outputs)
    if "d_v" not in vjp.outputs:  # a loss without v (rare): its cotangent is zero
        body += "d_v = tl.zeros_like(y)\n"
    for p in params:
        if f"d_{p}" not in vjp.outputs:  # the gradient does not read it (rare)
            body += f"d_{p} = tl.zeros_like(y[:, :1])\n"
    return {"grad": d.grad.triton.source(), "vjp": body, "params": params,
            "uses_k": "k" in d.variables, "separable": d.separable, "affine": d.affine,
            "uses_dim": any("D" in b.triton.inputs for b in (d.grad, d.vjp))}


def act_triton(act: ir.Act) -> dict[str, str]:
    """Triton bodies of an activation and its first two derivatives (reading ``x``).

    >>> act_triton("relu")["act"]
    'act = tl.maximum(0.0, x)\\n'
    """
    from miras.symbolic.features import derive_activation

    rule = derive_activation(act)
    return {"act": rule.act.triton.source(), "dact": rule.dact.triton.source(),
            "d2act": rule.d2act.triton.source()}
