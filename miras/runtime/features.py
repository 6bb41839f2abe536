"""Feature maps φ applied to keys and queries, as functions of ``(x, params)``.

``x`` is ``[..., D]``; the result is ``[..., F]``. Parameters (learnable coefficients,
sketch matrices) are created by :func:`init_params` so that a layer can own them as
``nn.Parameter`` s / buffers and the functional API can take them explicitly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def out_dim(kind: str, d: int, *, degree: int = 2, order: int = 2, dim: int = 32) -> int:
    """Feature dimension F for input dimension ``d``.

    >>> out_dim("poly", 4, degree=2), out_dim("sketch", 64, degree=4, dim=8)
    (21, 64)
    """
    if kind == "identity":
        return d
    if kind in ("poly", "exp_taylor"):
        top = degree if kind == "poly" else order
        return sum(d**i for i in range(top + 1))
    if kind == "sketch":
        return d * d if degree == 2 else dim * dim
    raise ValueError(f"unknown feature map {kind!r}")


def init_params(kind: str, d: int, *, degree: int = 2, order: int = 2, dim: int = 32,
                learned: bool = False, seed: int = 0) -> dict[str, Tensor]:
    """Initial parameters of a feature map (``coeffs`` of ``poly``; sketch matrices)."""
    if kind == "poly":
        return {"coeffs": torch.tensor([1.0 / math.factorial(i) for i in range(degree + 1)])}
    if kind == "sketch" and degree != 2:
        if degree not in (4, 8):
            raise ValueError("sketch degree must be 2, 4 or 8 (a power of two)")
        gen = torch.Generator().manual_seed(seed)
        levels = int(math.log2(degree // 2))
        out: dict[str, Tensor] = {}
        for lvl in range(levels):
            rows = d if lvl == 0 else dim
            for j in (1, 2):
                out[f"G{lvl}_{j}"] = torch.randn(rows, dim, generator=gen)
        if learned:  # PolySketchFormer's learned sketch: LN → 8r → GELU → r, two branches
            for j in (1, 2):
                out[f"L{j}_w1"] = torch.randn(d, 8 * dim, generator=gen) / math.sqrt(d)
                out[f"L{j}_w2"] = torch.randn(8 * dim, dim, generator=gen) / math.sqrt(8 * dim)
        return out
    return {}


def _tensor_power(x: Tensor, i: int) -> Tensor:
    """``x^{⊗i}`` flattened: ``[..., d**i]``."""
    out = torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)
    for _ in range(i):
        out = (out.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
    return out


def apply(kind: str, x: Tensor, params: dict[str, Tensor], *, degree: int = 2,
          order: int = 2, dim: int = 32, learned: bool = False) -> Tensor:
    """``φ(x)``; ``⟨φ(q), φ(k)⟩`` is the kernel of the feature map.

    - ``poly``: ``[√a_i x^{⊗i}]_{i ≤ degree}`` so that ``⟨φ(q), φ(k)⟩ = Σ a_i (qᵀk)^i``
      ([A] Eq 5); ``a_i`` learnable, initialised ``1/i!``, used through ``|a_i|``;
    - ``exp_taylor``: the same with fixed ``a_i = 1/i!`` (truncated ``exp(qᵀk)``);
    - ``sketch``: PolySketch, ``⟨φ(q), φ(k)⟩ ≈ (qᵀk)^degree``: a degree-``degree/2`` sketch
      ``φ′`` to ``dim`` dims, then ``φ = φ′ ⊗ φ′`` (non-negative kernel, [P] §4.2).
    """
    if kind == "identity":
        return x
    if kind in ("poly", "exp_taylor"):
        top = degree if kind == "poly" else order
        if kind == "poly":
            coeffs = params["coeffs"].to(x.dtype).abs()
        else:
            coeffs = torch.tensor([1.0 / math.factorial(i) for i in range(top + 1)],
                                  dtype=x.dtype, device=x.device)
        return torch.cat([coeffs[i].sqrt() * _tensor_power(x, i) for i in range(top + 1)], -1)
    if kind == "sketch":
        if degree == 2:
            return _tensor_power(x, 2)
        if learned:
            branches = []
            for j in (1, 2):
                h = torch.nn.functional.layer_norm(x, x.shape[-1:])
                h = torch.nn.functional.gelu(h @ params[f"L{j}_w1"].to(x.dtype))
                branches.append(h @ params[f"L{j}_w2"].to(x.dtype))
            s = torch.tanh(branches[0] * branches[1] / math.sqrt(dim)) * math.sqrt(dim)
        else:
            s = x
            lvl = 0
            while f"G{lvl}_1" in params:
                g1 = params[f"G{lvl}_1"].to(x.dtype)
                g2 = params[f"G{lvl}_2"].to(x.dtype)
                s = (s @ g1) * (s @ g2) / math.sqrt(dim)
                lvl += 1
        return _tensor_power(s, 2)
    raise ValueError(f"unknown feature map {kind!r}")
