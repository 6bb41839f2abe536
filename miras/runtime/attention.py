"""Non-parametric memory: softmax (or polynomial) attention, optionally in a sliding window.

``q, k, v`` are ``[B, H, T, D]``. The softmax path goes through
``torch.nn.functional.scaled_dot_product_attention`` with a causal (banded) mask.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def band_mask(t_q: int, t_k: int, window: int | None, device: torch.device | str,
              offset: int = 0) -> Tensor:
    """``[t_q, t_k]`` boolean mask: query ``i`` (at absolute position ``offset + i``) sees
    keys ``j ≤ offset + i`` with ``offset + i − j < window``."""
    i = torch.arange(t_q, device=device).unsqueeze(-1) + offset
    j = torch.arange(t_k, device=device).unsqueeze(0)
    m = j <= i
    if window is not None:
        m = m & (i - j < window)
    return m


def attend(q: Tensor, k: Tensor, v: Tensor, *, kernel: str = "softmax", scale: float = 0.0,
           degree: int = 4, normalize: bool = True, window: int | None = None) -> Tensor:
    """Causal attention; ``scale = 0`` means ``1/sqrt(D)``."""
    d = q.shape[-1]
    s = scale if scale > 0 else 1.0 / math.sqrt(d)
    mask = band_mask(q.shape[2], k.shape[2], window, q.device, k.shape[2] - q.shape[2])
    if kernel == "softmax":
        if normalize:
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=s)
        w = torch.exp(s * q @ k.transpose(-1, -2)) * mask
        return w @ v
    w = (s * q @ k.transpose(-1, -2)).pow(degree) * mask
    out = w @ v
    if normalize:  # PolySketchFormer's normalisation: 1 + Σ weights
        out = out / (1 + w.sum(-1, keepdim=True))
    return out
