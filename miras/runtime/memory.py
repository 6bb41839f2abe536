"""Memory architectures: forward pass and factored per-token weight gradients.

Notation (every tensor carries leading batch and head dims):

    B batch, H heads, N tokens in a group, D value dim, F feature dim (φ(k)), E hidden dim
    x   [B, H, N, F]   memory input φ(k) (or φ(q) when reading)
    r   [B, H, N, D]   the raw key/query, carried by the residual path
    W   [B, H, out, in] one weight matrix of the memory (vector memory: w [B, H, D])

The gradient of the inner loss for token i with respect to a weight matrix is an outer
product ``δ_i a_iᵀ`` (``δ``: back-propagated signal at the layer's output, ``a``: the
layer's input). :func:`backward` returns these factors instead of the products, so that the
chunk form can contract them with queries without materialising per-token gradients, and the
reference can sum them over a window with one einsum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Weights = dict[str, Tensor]
Act = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class MemoryShape:
    """Plain-data description of a memory architecture (from the plan)."""

    kind: str  # vector | matrix | mlp | gated_mlp
    depth: int = 1
    hidden: int = 0  # 0: expansion × the value dim
    expansion: float = 4.0
    residual: bool = False
    norm: str = "none"  # none | layernorm | rmsnorm
    init: str = "zeros"

    def names(self) -> list[str]:
        """Weight names, input side first."""
        if self.kind in ("vector", "matrix"):
            return ["W"]
        if self.kind == "gated_mlp":
            return ["W_in", "W_gate", "W_out"]
        return [f"W{i}" for i in range(self.depth)]

    def shapes(self, feat: int, dim: int) -> dict[str, tuple[int, ...]]:
        """Per-head weight shapes for feature dim ``feat`` and value dim ``dim``."""
        hidden = self.hidden or max(1, round(self.expansion * dim))
        if self.kind == "vector":
            return {"W": (dim,)}
        if self.kind == "matrix":
            return {"W": (dim, feat)}
        if self.kind == "gated_mlp":
            return {"W_in": (hidden, feat), "W_gate": (hidden, feat), "W_out": (dim, hidden)}
        if self.depth == 1:
            return {"W0": (dim, feat)}
        dims = [feat] + [hidden] * (self.depth - 1) + [dim]
        return {f"W{i}": (dims[i + 1], dims[i]) for i in range(self.depth)}


def init_weights(shape: MemoryShape, feat: int, dim: int, heads: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 seed: int = 0) -> Weights:
    """Initial memory weights per head ``[H, ...]`` (deterministic for a given seed)."""
    gen = torch.Generator().manual_seed(seed)
    out: Weights = {}
    for name, shp in shape.shapes(feat, dim).items():
        full = (heads, *shp)
        fan_in = shp[-1]
        if shape.init == "zeros":
            w = torch.zeros(full, dtype=torch.float64)
        elif shape.init == "identity":
            w = torch.zeros(full, dtype=torch.float64)
            if len(shp) == 1:
                w.fill_(1.0)
            else:
                n = min(shp)
                w[..., torch.arange(n), torch.arange(n)] = 1.0
        elif shape.init == "uniform":
            # positive: the constant 1/fan_in for linear memory; a positive random draw
            # around it for deep memory, so that hidden units differ
            if shape.kind in ("vector", "matrix"):
                w = torch.full(full, 1.0 / fan_in, dtype=torch.float64)
            else:
                w = torch.rand(full, generator=gen, dtype=torch.float64) * (2.0 / fan_in)
                w = w.clamp_min(1e-3 / fan_in)
        else:  # normal
            w = torch.randn(full, generator=gen, dtype=torch.float64) / fan_in**0.5
        out[name] = w.to(dtype=dtype, device=device)
    return out


@dataclass
class Trace:
    """What the forward pass keeps for the backward pass."""

    inputs: list[Tensor]  # input of each weight's matmul
    pre: list[Tensor]  # pre-activations of hidden layers
    out: Tensor  # output of the last matmul (before norm)
    normed: Tensor | None  # output after norm (None without norm)
    rstd: Tensor | None
    gate: Tensor | None = None  # gated MLP: the linear gate branch
    act_gate: Tensor | None = None  # gated MLP: act(W_in x)


def _lin(x: Tensor, w: Tensor) -> Tensor:
    # x [B, H, N, in], w [B, H, out, in] -> [B, H, N, out]
    return torch.matmul(x, w.transpose(-1, -2))


def _norm(o: Tensor, kind: str, eps: float = 1e-6) -> tuple[Tensor, Tensor | None]:
    if kind == "none":
        return o, None
    if kind == "layernorm":
        mu = o.mean(-1, keepdim=True)
        c = o - mu
        rstd = torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps)
        return c * rstd, rstd
    rstd = torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps)
    return o * rstd, rstd


def _norm_backward(dy: Tensor, normed: Tensor, rstd: Tensor, kind: str) -> Tensor:
    if kind == "layernorm":
        return rstd * (dy - dy.mean(-1, keepdim=True)
                       - normed * (dy * normed).mean(-1, keepdim=True))
    return rstd * (dy - normed * (dy * normed).mean(-1, keepdim=True))


def forward(shape: MemoryShape, w: Weights, x: Tensor, r: Tensor | None, act: Act
            ) -> tuple[Tensor, Trace]:
    """``y = M(W; x)`` for every token of ``x``; ``r`` is the residual input (raw key)."""
    if shape.kind == "vector":
        return forward_with(shape, lambda name, h: h * w[name].unsqueeze(-2), x, r, act)
    return forward_with(shape, lambda name, h: _lin(h, w[name]), x, r, act)


def forward_with(shape: MemoryShape, lin: Callable[[str, Tensor], Tensor], x: Tensor,
                 r: Tensor | None, act: Act) -> tuple[Tensor, Trace]:
    """The memory's forward pass with each weight applied by ``lin(name, h)``.

    ``lin`` is ``h ↦ W h`` for plain weights; the chunk form passes per-token weights given
    as a base plus a sum of outer products, without materialising them.
    """
    if shape.kind in ("vector", "matrix"):
        y = lin("W", x)
        return y, Trace([x], [], y, None, None)
    if shape.kind == "gated_mlp":
        z = lin("W_in", x)
        a = act(z)
        g = lin("W_gate", x)
        h = a * g
        o = lin("W_out", h)
        n, rstd = _norm(o, shape.norm)
        y = n + r if shape.residual and r is not None else n
        return y, Trace([x, x, h], [z], o, n if rstd is not None else None, rstd, g, a)
    inputs, pre = [x], []
    h = x
    names = shape.names()
    for i, name in enumerate(names):
        z = lin(name, h)
        if i < len(names) - 1:
            pre.append(z)
            h = act(z)
            inputs.append(h)
        else:
            h = z
    n, rstd = _norm(h, shape.norm)
    y = n + r if shape.residual and r is not None else n
    return y, Trace(inputs, pre, h, n if rstd is not None else None, rstd)


def backward(shape: MemoryShape, w: Weights, trace: Trace, dy: Tensor, act_grad: Act
             ) -> dict[str, tuple[Tensor, Tensor]]:
    """Factored gradients: ``{name: (δ [B,H,N,out], a [B,H,N,in])}``, ``∂ℓ/∂W = Σ δ aᵀ``.

    For vector memory the gradient is the element-wise product ``δ ⊙ a``.
    """
    if shape.kind in ("vector", "matrix"):
        return {"W": (dy, trace.inputs[0])}
    d = dy
    if trace.rstd is not None:
        assert trace.normed is not None
        d = _norm_backward(d, trace.normed, trace.rstd, shape.norm)
    if shape.kind == "gated_mlp":
        assert trace.gate is not None and trace.act_gate is not None
        dh = torch.matmul(d, w["W_out"])
        da = dh * trace.gate
        dg = dh * trace.act_gate
        dz = da * act_grad(trace.pre[0])
        x = trace.inputs[0]
        return {"W_in": (dz, x), "W_gate": (dg, x), "W_out": (d, trace.inputs[2])}
    names = shape.names()
    grads: dict[str, tuple[Tensor, Tensor]] = {}
    for i in range(len(names) - 1, -1, -1):
        grads[names[i]] = (d, trace.inputs[i])
        if i > 0:
            d = torch.matmul(d, w[names[i]]) * act_grad(trace.pre[i - 1])
    return grads


def contract(shape: MemoryShape, factors: dict[str, tuple[Tensor, Tensor]],
             coef: Tensor) -> Weights:
    """``Σ_i coef_i δ_i a_iᵀ`` per weight; ``coef`` has the shape of ``δ`` without its last dim."""
    out: Weights = {}
    c = coef.unsqueeze(-1)
    for name, (delta, a) in factors.items():
        if shape.kind == "vector":
            out[name] = (c * delta * a).sum(-2)
        else:
            out[name] = torch.matmul((c * delta).transpose(-1, -2), a)
    return out
