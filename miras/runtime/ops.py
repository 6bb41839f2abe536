"""Small tensor operations shared by the recurrent and chunk forms.

Per-token values (gates, learned constants) arrive as ``[B, H, 1]`` (one per head) or
``[B, H, D]`` (channel-wise) at a token, or with a token axis ``[B, H, N, 1|D]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from miras.runtime.memory import MemoryShape, Weights

#: Newton–Schulz quintic coefficients (Muon, Jordan et al.).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: Tensor, steps: int) -> Tensor:
    """Orthogonalise the last two dims: ``X₀ = G/(‖G‖_F + 1e-7)``, quintic iteration."""
    a, b, c = NS_COEFFS
    tall = g.shape[-2] > g.shape[-1]
    x = g.transpose(-1, -2) if tall else g
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    for _ in range(steps):
        m = x @ x.transpose(-1, -2)
        x = a * x + (b * m + c * m @ m) @ x
    return x.transpose(-1, -2) if tall else x


def channel_scale(shape: MemoryShape, name: str, w: Tensor, alpha: Tensor) -> Tensor:
    """Multiply one weight by a retention factor ``alpha`` (``[..., 1]`` or ``[..., D]``).

    Channel-wise factors act on the channel (head) dimension of the memory: the key/input
    dimension of the first (or only) weight matrix, the output dimension of the last one,
    and their mean on hidden-to-hidden matrices.
    """
    if shape.kind == "vector":
        return w * alpha
    if alpha.shape[-1] == 1:
        return w * alpha.unsqueeze(-1)
    names = shape.names()
    if name == names[0] or (shape.kind == "gated_mlp" and name != names[-1]):
        return w * alpha.unsqueeze(-2)  # along the input columns
    if name == names[-1]:
        return w * alpha.unsqueeze(-1)  # along the output rows
    return w * alpha.mean(-1, keepdim=True).unsqueeze(-1)


def scale(shape: MemoryShape, w: Weights, alpha: Tensor) -> Weights:
    return {n: channel_scale(shape, n, t, alpha) for n, t in w.items()}


def add(a: Weights, b: Weights) -> Weights:
    return {n: a[n] + b[n] for n in a}


def zeros_like(w: Weights) -> Weights:
    return {n: torch.zeros_like(t) for n, t in w.items()}


def soft_threshold(z: Tensor, gamma: Tensor, smooth: bool) -> Tensor:
    """``S_γ(z) = sign(z)·max(0, |z| − γ)``; smooth: ``|z|·atan(z/γ)/(π/2)`` ([M] Eq 22)."""
    if smooth:
        return z.abs() * torch.atan(z / gamma) / (torch.pi / 2)
    return torch.sign(z) * torch.clamp(z.abs() - gamma, min=0.0)


def pnorm_normalize(a: Tensor, r: float, kind: str) -> Tensor:
    """``A / ‖A‖_r^{r−2}`` with the entry-wise r-norm of each weight matrix (or vector)."""
    dims = (-1,) if kind == "vector" else (-2, -1)
    norm = a.abs().pow(r).sum(dim=dims, keepdim=True).pow(1.0 / r)
    if r >= 2:
        return a / norm.clamp_min(1e-12).pow(r - 2)
    return a * norm.pow(2 - r)


def slice_softmax(z: Tensor, axis: str, kind: str, mass: float) -> Tensor:
    """``c·softmax`` over each row of a weight matrix, or over all of its entries."""
    if kind == "vector" or axis == "row":
        return mass * torch.softmax(z, dim=-1)
    flat = z.flatten(-2)
    return mass * torch.softmax(flat, dim=-1).reshape(z.shape)


def slice_normalize(z: Tensor, axis: str, kind: str, mass: float) -> Tensor:
    """Scale positive ``z`` so that each slice sums to ``mass``."""
    dims = (-1,) if kind == "vector" or axis == "row" else (-2, -1)
    return mass * z / z.sum(dim=dims, keepdim=True).clamp_min(1e-30)
