"""A small language model with any compiled spec as its sequence mixer, for experiments.

Llama-style blocks ([M] §5.4): pre-norm RMSNorm, the Miras layer, residual; RMSNorm, SwiGLU
MLP, residual; a final RMSNorm and a head tied to the embeddings. A spec's hybrid is built by
``Compiled.layer`` (MAC, MAG, MAL); ``samba(window)`` ("-H" models) alternates memory blocks
and sliding-window attention blocks, memory first.

>>> import miras, torch
>>> c = miras.compile("model m { memory = matrix  bias = l2  retention = none  algorithm = gd }")
>>> lm = LM(c, vocab=32, d_model=16, layers=1, heads=2)
>>> lm(torch.zeros(1, 8, dtype=torch.long)).shape
torch.Size([1, 8, 32])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from miras.runtime.compiled import Compiled
from miras.runtime.hybrid import SlidingWindowAttention


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or int(8 * d_model / 3 + 7) // 8 * 8
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm mixer and SwiGLU, each with a residual; ``mixer`` defaults to the spec's layer."""

    def __init__(self, compiled: Compiled, d_model: int, heads: int | None,
                 backend: str | None, mixer: nn.Module | None = None) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model, eps=1e-6)
        self.mixer = mixer if mixer is not None else compiled.layer(d_model, heads,
                                                                    backend=backend)
        self.norm2 = nn.RMSNorm(d_model, eps=1e-6)
        self.mlp = SwiGLU(d_model)

    def forward(self, x: Tensor, state: dict[str, Any] | None = None,
                return_state: bool = False) -> Any:
        if return_state:
            h, new = self.mixer(self.norm1(x), state, return_state=True)
            x = x + h
            return x + self.mlp(self.norm2(x)), new
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LM(nn.Module):
    """Embeddings → ``layers`` blocks → RMSNorm → tied head. ``[B, T] → [B, T, vocab]``."""

    def __init__(self, compiled: Compiled, vocab: int, d_model: int = 64, layers: int = 2,
                 heads: int | None = None, backend: str | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(compiled, d_model, heads, backend,
                                          self._samba_attention(compiled, d_model, heads, i))
                                    for i in range(layers))
        self.norm = nn.RMSNorm(d_model, eps=1e-6)

    @staticmethod
    def _samba_attention(compiled: Compiled, d_model: int, heads: int | None, index: int
                         ) -> nn.Module | None:
        # samba: odd blocks are sliding-window attention with the memory layer's head layout
        hybrid = compiled.hybrid
        if hybrid.kind != "samba" or index % 2 == 0:
            return None
        h = heads or compiled.module.HEADS or max(1, d_model // 64)
        return SlidingWindowAttention(d_model, h, compiled.module.HEAD_DIM or d_model // h,
                                      window=hybrid.window)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Accuracy over scored positions (labels != -100)."""
    mask = labels != -100
    if not bool(mask.any()):
        return 0.0
    return float((logits.argmax(-1)[mask] == labels[mask]).float().mean())


def loss_fn(logits: Tensor, labels: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
