"""Non-parametric memory: softmax (or polynomial) attention, optionally in a sliding window.

``q, k, v`` are ``[B, H, T, D]``. The softmax path goes through
``torch.nn.functional.scaled_dot_product_attention`` with a causal (banded) mask.
Decoding carries a :class:`KVState`: the keys and values a later token can still see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KVState:
    """The key/value cache of non-parametric memory: ``k, v`` ``[B, H, L, D]``.

    With a sliding window of ``w`` tokens it holds the last ``w − 1`` (all a next token can
    see besides itself); without one it grows by a token per token. ``valid`` ``[B, L]``
    marks real entries where rows of different lengths were joined (padding in front);
    ``None`` means all are real.
    """

    k: Tensor
    v: Tensor
    valid: Tensor | None = None

    @property
    def batch(self) -> int:
        return self.k.shape[0]

    def mask(self) -> Tensor:
        if self.valid is not None:
            return self.valid
        return torch.ones(self.k.shape[0], self.k.shape[2], dtype=torch.bool,
                          device=self.k.device)

    def tensors(self) -> dict[str, Tensor]:
        """The state's tensors by name (as ``State.tensors``)."""
        return {"k": self.k, "v": self.v}

    def select(self, idx: Tensor | slice) -> KVState:
        """The rows ``idx`` of the batch."""
        return KVState(self.k[idx], self.v[idx],
                       None if self.valid is None else self.valid[idx])


def cat_kv(states: list[KVState]) -> KVState:
    """Caches of separate sequences as one batch, shorter ones padded in front (masked)."""
    n = max(s.k.shape[2] for s in states)

    def pad(t: Tensor, value: float | bool) -> Tensor:
        extra = n - t.shape[2]
        return torch.cat([t.new_full((*t.shape[:2], extra, *t.shape[3:]), value), t], 2)

    valid = torch.cat([pad(s.mask().unsqueeze(1), False)[:, 0] for s in states])
    return KVState(torch.cat([pad(s.k, 0.0) for s in states]),
                   torch.cat([pad(s.v, 0.0) for s in states]),
                   None if bool(valid.all()) else valid)


def attend_cached(q: Tensor, k: Tensor, v: Tensor, state: KVState | None, *,
                  kernel: str = "softmax", scale: float = 0.0, degree: int = 4,
                  normalize: bool = True, window: int | None = None
                  ) -> tuple[Tensor, KVState]:
    """:func:`attend` after the cached tokens of ``state``; returns the cache for the next
    call (the last ``window − 1`` tokens, or all of them without a window)."""
    if state is not None:
        mask = torch.cat([state.mask(), torch.ones(q.shape[0], q.shape[2], dtype=torch.bool,
                                                   device=q.device)], 1)
        k, v = torch.cat([state.k, k], 2), torch.cat([state.v, v], 2)
    else:
        mask = None
    o = attend(q, k, v, kernel=kernel, scale=scale, degree=degree, normalize=normalize,
               window=window, key_mask=mask)
    keep = k.shape[2] if window is None else min(window - 1, k.shape[2])
    tail = slice(k.shape[2] - keep, k.shape[2])
    valid = None if mask is None or bool(mask[:, tail].all()) else mask[:, tail]
    return o, KVState(k[:, :, tail], v[:, :, tail], valid)


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
           degree: int = 4, normalize: bool = True, window: int | None = None,
           key_mask: Tensor | None = None) -> Tensor:
    """Causal attention; ``scale = 0`` means ``1/sqrt(D)``. With more keys than queries the
    queries are the last ones; ``key_mask`` ``[B, T_k]`` hides keys (padding)."""
    d = q.shape[-1]
    s = scale if scale > 0 else 1.0 / math.sqrt(d)
    mask = band_mask(q.shape[2], k.shape[2], window, q.device, k.shape[2] - q.shape[2])
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :]
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
