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
from miras.runtime.hybrid import PACKED_CACHE_UNSUPPORTED, SlidingWindowAttention
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
    """Pre-norm mixer and SwiGLU, each with a residual; ``mixer`` defaults to the spec's layer."""

    def __init__(self, compiled: Compiled, d_model: int, heads: int | None,
                 backend: str | None, mixer: nn.Module | None = None,
                 chunk_size: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model, eps=1e-6)
        self.mixer = mixer if mixer is not None else compiled.layer(
            d_model, heads, backend=backend, chunk_size=chunk_size)
        self.norm2 = nn.RMSNorm(d_model, eps=1e-6)
        self.mlp = SwiGLU(d_model)

    def forward(self, x: Tensor, state: Any = None, return_state: bool = False,
                cu_seqlens: Tensor | None = None) -> Any:
        xn = self.norm1(x)
        if isinstance(self.mixer, MirasLayer):
            h, new = self.mixer(xn, state, return_state=True, cu_seqlens=cu_seqlens)
        elif cu_seqlens is not None:
            # hybrids run packed documents without decoding caches (see miras.runtime.hybrid)
            if state is not None or return_state:
                raise ValueError(PACKED_CACHE_UNSUPPORTED)
            h, new = self.mixer(xn, cu_seqlens=cu_seqlens), None
        elif state is None and not return_state:
            h, new = self.mixer(xn), None
        else:
            h, new = self._stepped(xn, state)
        x = x + h
        x = x + self.mlp(self.norm2(x))
        return (x, new) if return_state else x

    def init_cache(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Any:
        return self.mixer.init_cache(batch, device, dtype)

    def _stepped(self, xn: Tensor, cache: Any) -> tuple[Tensor, Any]:
        # hybrid mixers build their decoding cache token by token (the prefill of
        # generate()); their step equals their parallel forward (tests/runtime/test_hybrid)
        if cache is None:
            cache = self.mixer.init_cache(xn.shape[0], xn.device, xn.dtype)
        ys = []
        for t in range(xn.shape[1]):
            y, cache = self.mixer.step(xn[:, t], cache)
            ys.append(y)
        return torch.stack(ys, 1), cache

    def step(self, x_t: Tensor, cache: Any) -> tuple[Tensor, Any]:
        h, cache = self.mixer.step(self.norm1(x_t), cache)
        x_t = x_t + h
        return x_t + self.mlp(self.norm2(x_t)), cache


class LM(nn.Module):
    """Embeddings → ``layers`` blocks → RMSNorm → tied head. ``[B, T] → [B, T, vocab]``.

    ``chunk_size`` overrides the spec's chunk length in every layer. Decoding: ``forward``
    with ``return_caches=True`` (prefill), then :meth:`step` per token; :meth:`generate`
    does both.
    """

    def __init__(self, compiled: Compiled, vocab: int, d_model: int = 64, layers: int = 2,
                 heads: int | None = None, backend: str | None = None,
                 chunk_size: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(compiled, d_model, heads, backend,
                                          self._samba_attention(compiled, d_model, heads, i),
                                          chunk_size)
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

    def forward(self, tokens: Tensor, caches: list[Any] | None = None, *,
                return_caches: bool = False, cu_seqlens: Tensor | None = None) -> Any:
        """Logits ``[B, T, vocab]``; with ``return_caches=True`` also the per-layer caches
        that :meth:`step` continues. ``caches`` continues earlier ones; ``cu_seqlens``
        packs documents along ``T`` (``B == 1``; see ``MirasLayer.forward``). With hybrid
        attention layers (MAC/MAG/MAL, samba's attention blocks) packed documents run
        without caches: ``cu_seqlens`` with ``caches`` or ``return_caches`` is a ValueError."""
        x = self.embed(tokens)
        new = []
        want = return_caches or caches is not None
        for i, block in enumerate(self.blocks):
            if want:
                x, c = block(x, None if caches is None else caches[i], return_state=True,
                             cu_seqlens=cu_seqlens)
            else:
                x, c = block(x, cu_seqlens=cu_seqlens), None
            new.append(c)
        logits = self.head(x)
        return (logits, new) if return_caches else logits

    def head(self, x: Tensor) -> Tensor:
        return self.norm(x) @ self.embed.weight.T

    def init_caches(self, batch: int) -> list[Any]:
        """Per-layer caches before the first token (for :meth:`step` without a prefill)."""
        return [b.init_cache(batch) for b in self.blocks]

    def step(self, token: Tensor, caches: list[Any]) -> Tensor:
        """One token per row ``[B]`` → next-token logits ``[B, vocab]``; ``caches`` (from
        ``forward(..., return_caches=True)`` or :meth:`init_caches`) is updated in place."""
        x = self.embed(token)
        for i, block in enumerate(self.blocks):
            x, caches[i] = block.step(x, caches[i])
        return self.head(x)

    @torch.no_grad()
    def generate(self, tokens: Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None
                 ) -> Tensor:
        """Continue ``tokens`` ``[B, T0]`` by ``max_new_tokens``: ``[B, T0 + N]``.

        The prompt runs through the parallel form once (prefill), then one recurrent step
        per new token. ``temperature = 0`` is greedy; else sampling from
        ``softmax(logits / temperature)``, restricted to the ``top_k`` most likely tokens
        when given.

        >>> import miras
        >>> c = miras.compile("model m { memory = matrix  bias = l2  retention = none  "
        ...                   "algorithm = gd }")
        >>> lm = LM(c, vocab=32, d_model=16, layers=1, heads=2)
        >>> lm.generate(torch.zeros(2, 5, dtype=torch.long), 3).shape
        torch.Size([2, 8])
        """
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            raise ValueError(f"tokens must be [B, T0] with T0 >= 1; got {tuple(tokens.shape)}")
        if temperature < 0 or (top_k is not None and top_k < 1):
            raise ValueError("temperature must be >= 0 and top_k >= 1")
        logits, caches = self(tokens, return_caches=True)
        last = logits[:, -1]
        out = [tokens]
        for i in range(max_new_tokens):
            nxt = _sample(last, temperature, top_k, generator)
            out.append(nxt.unsqueeze(1))
            if i + 1 < max_new_tokens:
                last = self.step(nxt, caches)
        return torch.cat(out, 1)


def _sample(logits: Tensor, temperature: float, top_k: int | None,
            generator: torch.Generator | None) -> Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


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
