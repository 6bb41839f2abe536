"""A small language model with any compiled spec as its sequence mixer, for experiments.

Llama-style blocks ([M] §5.4): pre-norm RMSNorm, the Miras layer, residual; RMSNorm, SwiGLU
MLP, residual; a final RMSNorm and a head tied to the embeddings.

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
from miras.runtime.layer import MirasLayer


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
    def __init__(self, compiled: Compiled, d_model: int, heads: int | None,
                 backend: str | None) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model, eps=1e-6)
        self.mixer = MirasLayer(compiled, d_model, heads, backend=backend)
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
        self.blocks = nn.ModuleList(Block(compiled, d_model, heads, backend)
                                    for _ in range(layers))
        self.norm = nn.RMSNorm(d_model, eps=1e-6)

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
