"""The layer around the memory, as the papers describe it.

[T] §4.4, [M] §5.4, [A] §5.1: linear q/k/v projections, each followed by a causal depthwise
convolution (kernel 4) and SiLU; ℓ2-normalised q and k; the memory (with its feature map);
per-head output normalisation (RMSNorm) and an output gate from a linear layer, then the
output projection. Every ``gate(...)`` of the spec gets its own projection of the layer
input: one value per head (``x → R^H``) or channel-wise through a low-rank projection
(``x → R^rank → R^{H·D}``, [M] §5.4).

Shapes: ``x [B, T, d_model]``; heads ``H``, head dim ``D``.

**Decoding protocol.** Every sequence mixer (this layer, the hybrid blocks) is an
``nn.Module`` with

- ``forward(x [B, T, d], state=None, return_state=False, cu_seqlens=None)``: the parallel
  form; with ``return_state=True`` it returns ``(y, cache)``, continuing ``state`` (a cache
  from ``init_cache``, an earlier ``forward`` or ``step``) when given;
- ``init_cache(batch, device=None, dtype=None)``: the cache before the first token;
- ``step(x_t [B, d], cache) -> (y_t [B, d], cache)``: one token.

The cache is opaque to callers. The contract: ``forward`` over a prefix with
``return_state=True``, then ``step`` over the following tokens, gives the outputs of
``forward`` over the whole sequence. With ``cu_seqlens`` (``B == 1``, documents packed along
``T``, FlashAttention style) nothing crosses a document boundary and the cache has one row
per document.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from miras.runtime.compiled import Compiled, GateInfo, check_cu_seqlens, inverse_act
from miras.runtime.engine import State

#: Initial gate values when the spec does not give ``init`` (per role).
DEFAULT_GATE_INIT = {"lr": 0.1, "decay": 0.95, "momentum": 0.9, "delta": 1.0, "gamma": 0.9}


class ShortConv(nn.Module):
    """Causal depthwise 1-D convolution over time, ``[B, T, C] → [B, T, C]``."""

    def __init__(self, channels: int, kernel: int = 4) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels, bias=False)

    def forward(self, x: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # cache: the last kernel − 1 inputs [B, kernel − 1, C] (for step-by-step decoding)
        if cache is None:
            cache = x.new_zeros(x.shape[0], self.kernel - 1, x.shape[2])
        if x.shape[1] == 0:
            return x, cache
        full = torch.cat([cache, x], 1)
        y = self.conv(full.transpose(1, 2)).transpose(1, 2)
        return y, full[:, -(self.kernel - 1):]


class Gate(nn.Module):
    """``act(W x + b)·scale`` per head, or channel-wise through a rank-``rank`` projection."""

    def __init__(self, info: GateInfo, d_model: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.info, self.heads, self.head_dim = info, heads, head_dim
        out = heads * head_dim if info.channel else heads
        self.down = nn.Linear(d_model, info.rank, bias=False) if info.channel else None
        self.proj = nn.Linear(info.rank if info.channel else d_model, out)
        nn.init.normal_(self.proj.weight, std=0.02)
        init = info.init if info.init is not None else DEFAULT_GATE_INIT[info.role]
        if info.act == "mamba":
            # Mamba2 / Gated DeltaNet: α = exp(−A·softplus(W x + b)), A = exp(A_log) > 0
            self.a_log = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, heads)))
            target = -math.log(max(min(init, 1 - 1e-6), 1e-6)) / 1.0
            nn.init.constant_(self.proj.bias, inverse_act("softplus", target))
        else:
            nn.init.constant_(self.proj.bias, inverse_act(info.act, init / info.scale))

    def forward(self, x: Tensor, chunk: int, pooled: Tensor | None = None) -> Tensor:
        """The gate's values ``[B, T, H(, D)]``; ``pooled``: the chunk mean of ``x`` when the
        caller continues a chunk (see :func:`chunk_mean`)."""
        if self.info.per == "chunk":
            x = pooled if pooled is not None else chunk_mean(x, chunk)[0]
        z = self.proj(self.down(x) if self.down is not None else x)
        act = self.info.act
        if act == "mamba":
            a = torch.exp(self.a_log).view(1, 1, -1, *([1] if self.info.channel else []))
            zz = z.view(*z.shape[:2], self.heads, -1) if self.info.channel else z
            val = torch.exp(-a * nn.functional.softplus(zz))
            val = val.flatten(2) if self.info.channel else val
        elif act == "sigmoid":
            val = torch.sigmoid(z)
        elif act == "softplus":
            val = nn.functional.softplus(z)
        elif act == "exp":
            val = torch.exp(z)
        elif act == "tanh":
            val = torch.tanh(z)
        else:
            val = z
        val = val * self.info.scale
        if self.info.channel:
            return val.view(*val.shape[:2], self.heads, self.head_dim)
        return val


def chunk_mean(x: Tensor, chunk: int, total: Tensor | None = None, pos: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
    """The running mean of ``x`` ``[B, T, C]`` inside each chunk (causal, so that decoding
    and the parallel form agree), continuing a chunk that an earlier call left unfinished:
    ``total`` ``[B, C]`` sums its inputs so far, ``pos`` ``[B]`` counts them.

    Returns ``(mean [B, T, C], total, pos)`` after these tokens.

    >>> x = torch.arange(5.0).view(1, 5, 1)
    >>> chunk_mean(x, 2)[0].flatten().tolist()
    [0.0, 0.5, 2.0, 2.5, 4.0]
    >>> m, total, pos = chunk_mean(x[:, :3], 2)
    >>> chunk_mean(x[:, 3:], 2, total, pos)[0].flatten().tolist()
    [2.5, 4.0]
    """
    B, T, C = x.shape
    p0 = pos if pos is not None else torch.zeros(B, dtype=torch.long, device=x.device)
    within = (p0.view(B, 1) + torch.arange(T, device=x.device)) % chunk  # [B, T]
    first = torch.arange(T, device=x.device) - within  # < 0: the chunk began earlier
    csum = torch.cumsum(x, 1)
    before = torch.gather(csum, 1, (first - 1).clamp(0, max(T - 1, 0)).unsqueeze(-1)
                          .expand(B, T, C))
    s = csum - torch.where(first.unsqueeze(-1) > 0, before, torch.zeros_like(before))
    if total is not None:
        s = s + torch.where(first.unsqueeze(-1) < 0, total.unsqueeze(1), torch.zeros_like(s))
    mean = s / (within + 1).unsqueeze(-1).to(x.dtype)
    p1 = (p0 + T) % chunk
    if T == 0:
        end = total if total is not None else x.new_zeros(B, C)
    else:
        end = torch.where((p1 == 0).unsqueeze(-1), torch.zeros_like(s[:, -1]), s[:, -1])
    return mean, end, p1


class Mixer(Protocol):
    """The decoding protocol of a sequence mixer (see the module docstring)."""

    def forward(self, x: Tensor, state: Any = None, return_state: bool = False,
                cu_seqlens: Tensor | None = None) -> Any: ...

    def init_cache(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Any: ...

    def step(self, x_t: Tensor, cache: Any) -> tuple[Tensor, Any]: ...


class MirasLayer(nn.Module):
    """A sequence-mixing layer with the compiled memory inside: ``[B, T, d] → [B, T, d]``."""

    def __init__(self, compiled: Compiled, d_model: int, heads: int | None = None,
                 head_dim: int | None = None, *, conv_size: int = 4,
                 backend: str | None = None, chunk_size: int | None = None) -> None:
        super().__init__()
        # chunk_size overrides the spec's chunk length (memory and per=chunk gates)
        self.chunk = chunk_size
        heads = heads or compiled.module.HEADS or max(1, d_model // 64)
        head_dim = head_dim or compiled.module.HEAD_DIM or d_model // heads
        self.compiled, self.d_model, self.heads, self.head_dim = compiled, d_model, heads, head_dim
        self.backend = backend
        inner = heads * head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.q_conv, self.k_conv, self.v_conv = (ShortConv(inner, conv_size) for _ in range(3))
        self.gates = nn.ModuleDict({role: Gate(info, d_model, heads, head_dim)
                                    for role, info in compiled.gates.items()})
        self.learned = nn.ParameterDict()
        fixed: dict[str, Tensor] = {}
        for name, info in compiled.params(heads, head_dim).items():
            key = name.replace(".", "__")
            if info.trainable:
                self.learned[key] = nn.Parameter(info.init.clone())
            else:
                fixed[key] = info.init.clone()
        for key, t in fixed.items():
            self.register_buffer(key, t)
        self.fixed = list(fixed)
        self.o_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.o_gate = nn.Linear(d_model, inner)
        self.o_proj = nn.Linear(inner, d_model, bias=False)

    def param_dict(self) -> dict[str, Tensor]:
        out = {k.replace("__", "."): v for k, v in self.learned.items()}
        out.update({k.replace("__", "."): getattr(self, k) for k in self.fixed})
        return out

    def chunk_size(self) -> int:
        """The chunk length of the memory and of ``per=chunk`` gates."""
        return int(self.chunk or self.compiled.module.CHUNK)

    def forward(self, x: Tensor, state: dict[str, Any] | None = None,
                return_state: bool = False, cu_seqlens: Tensor | None = None
                ) -> Tensor | tuple[Tensor, dict[str, Any]]:
        """``x [B, T, d_model] → [B, T, d_model]``, continuing the cache ``state`` when given.

        ``cu_seqlens`` ``[N + 1]`` (with ``B == 1``) packs ``N`` documents along ``T``: the
        short convolutions, ``per=chunk`` gate means and memory restart at each document;
        ``state`` and the returned cache then have one row per document.
        """
        bounds = None
        if cu_seqlens is not None:
            bounds = check_cu_seqlens(cu_seqlens, x.shape[0], x.shape[1])
        out, cache = self._mix(x, state or {}, self.backend, bounds)
        return (out, cache) if return_state else out

    def init_cache(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, Any]:
        """The cache before the first token (the decoding protocol, module docstring)."""
        w = self.o_proj.weight
        device, dtype = device or w.device, dtype or w.dtype
        inner = self.heads * self.head_dim
        conv = torch.zeros(batch, self.q_conv.kernel - 1, inner, device=device, dtype=dtype)
        cache: dict[str, Any] = {
            "memory": self.compiled.initial_state(batch, self.heads, self.head_dim,
                                                  params=self.param_dict(), dtype=dtype,
                                                  device=device),
            "conv_q": conv, "conv_k": conv.clone(), "conv_v": conv.clone()}
        if self._pooled:
            cache["chunk_sum"] = torch.zeros(batch, self.d_model, device=device, dtype=dtype)
            cache["chunk_pos"] = torch.zeros(batch, dtype=torch.long, device=device)
        return cache

    def step(self, x_t: Tensor, cache: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """One token ``x_t [B, d_model]`` → ``(y_t [B, d_model], cache)``: the memory's
        token-by-token reference, continuing the cache's chunk."""
        y, cache = self._mix(x_t.unsqueeze(1), cache, "reference", None)
        return y[:, 0], cache

    @property
    def _pooled(self) -> bool:
        return any(g.info.per == "chunk" for g in self.gates.values())

    def _mix(self, x: Tensor, cache: dict[str, Any], backend: str | None,
             bounds: list[int] | None) -> tuple[Tensor, dict[str, Any]]:
        B, T, _ = x.shape
        H, D = self.heads, self.head_dim
        segs = [(0, T)] if bounds is None else list(itertools.pairwise(bounds))

        def row(name: str, i: int) -> Any:
            t = cache.get(name)
            return t if t is None or bounds is None or t.shape[0] == 1 else t[i:i + 1]

        new: dict[str, Any] = {}
        qkv = []
        for name, proj, conv in (("q", self.q_proj, self.q_conv), ("k", self.k_proj,
                                                                  self.k_conv),
                                 ("v", self.v_proj, self.v_conv)):
            h = proj(x)
            parts = [conv(h[:, a:b], row(f"conv_{name}", i)) for i, (a, b) in enumerate(segs)]
            qkv.append(torch.cat([p[0] for p in parts], 1))
            new[f"conv_{name}"] = torch.cat([p[1] for p in parts], 0)
        q, k, v = (nn.functional.silu(t).view(B, T, H, D) for t in qkv)
        q = nn.functional.normalize(q, dim=-1)
        k = nn.functional.normalize(k, dim=-1)
        pooled = None
        if self._pooled:
            parts = [chunk_mean(x[:, a:b], self.chunk_size(), row("chunk_sum", i),
                                row("chunk_pos", i)) for i, (a, b) in enumerate(segs)]
            pooled = torch.cat([p[0] for p in parts], 1)
            new["chunk_sum"] = torch.cat([p[1] for p in parts], 0)
            new["chunk_pos"] = torch.cat([p[2] for p in parts], 0)
        gates = {role: g(x, self.chunk_size(), pooled) for role, g in self.gates.items()}
        cu = None if bounds is None else torch.tensor(bounds)
        o, new["memory"] = self.compiled.functional(
            q, k, v, initial_state=cache.get("memory"), backend=backend,
            params=self.param_dict(), chunk_size=self.chunk, cu_seqlens=cu, **gates)
        o = self.o_norm(o).reshape(B, T, H * D) * torch.sigmoid(self.o_gate(x))
        return self.o_proj(o), new


__all__ = ["Gate", "MirasLayer", "Mixer", "ShortConv", "State", "chunk_mean"]
