"""The layer around the memory, as the papers describe it.

[T] §4.4, [M] §5.4, [A] §5.1: linear q/k/v projections, each followed by a causal depthwise
convolution (kernel 4) and SiLU; ℓ2-normalised q and k; the memory (with its feature map);
per-head output normalisation (RMSNorm) and an output gate from a linear layer, then the
output projection. Every ``gate(...)`` of the spec gets its own projection of the layer
input: one value per head (``x → R^H``) or channel-wise through a low-rank projection
(``x → R^rank → R^{H·D}``, [M] §5.4).

Shapes: ``x [B, T, d_model]``; heads ``H``, head dim ``D``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from miras.runtime.compiled import Compiled, GateInfo, inverse_act
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

    def forward(self, x: Tensor, chunk: int) -> Tensor:
        if self.info.per == "chunk":
            # the running mean of the input inside each chunk (causal, so that decoding and
            # the parallel form agree)
            _B, T, _C = x.shape
            pos = torch.arange(T, device=x.device)
            start = (pos // chunk) * chunk
            csum = torch.cumsum(x, 1)
            before = torch.where(start.view(1, T, 1) > 0,
                                 csum[:, (start - 1).clamp_min(0)], torch.zeros_like(x))
            x = (csum - before) / (pos - start + 1).view(1, T, 1).to(x.dtype)
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


class MirasLayer(nn.Module):
    """A sequence-mixing layer with the compiled memory inside: ``[B, T, d] → [B, T, d]``."""

    def __init__(self, compiled: Compiled, d_model: int, heads: int | None = None,
                 head_dim: int | None = None, *, conv_size: int = 4,
                 backend: str | None = None) -> None:
        super().__init__()
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
        return int(self.compiled.module.CHUNK)

    def forward(self, x: Tensor, state: dict[str, Any] | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, dict[str, Any]]:
        B, T, _ = x.shape
        H, D = self.heads, self.head_dim
        state = state or {}
        q, cq = self.q_conv(self.q_proj(x), state.get("conv_q"))
        k, ck = self.k_conv(self.k_proj(x), state.get("conv_k"))
        v, cv = self.v_conv(self.v_proj(x), state.get("conv_v"))
        q, k, v = (nn.functional.silu(t).view(B, T, H, D) for t in (q, k, v))
        q = nn.functional.normalize(q, dim=-1)
        k = nn.functional.normalize(k, dim=-1)
        gates = {role: g(x, self.chunk_size()) for role, g in self.gates.items()}
        o, mem_state = self.compiled.functional(
            q, k, v, initial_state=state.get("memory"), backend=self.backend,
            params=self.param_dict(), **gates)
        o = self.o_norm(o).reshape(B, T, H * D) * torch.sigmoid(self.o_gate(x))
        out = self.o_proj(o)
        if return_state:
            return out, {"memory": mem_state, "conv_q": cq, "conv_k": ck, "conv_v": cv}
        return out


__all__ = ["Gate", "MirasLayer", "ShortConv", "State"]
