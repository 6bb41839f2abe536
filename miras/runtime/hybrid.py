"""Hybrids of a Miras memory with softmax attention: Titans' MAC, MAG, MAL and Samba-style "-H".

Built when a spec declares ``hybrid = ...`` ([T] §4, [M] §5.4, [A] §5.1):

- :class:`MACLayer` (memory as context, [T] Eq 21-25): per segment ``S`` of ``C`` tokens,
  ``h = M*_{t−1}(q)`` read from the memory *before* the segment's writes, causal attention over
  ``[persistent ‖ h ‖ S]``, the memory layer run over the attention output ``y`` (it writes
  ``y`` and reads after each write), and the output ``W_o(norm(y) ⊙ σ(norm(M(y))))``.
- :class:`MAGLayer` (memory as gate, [T] Eq 26-28): ``x̃ = P ‖ x``; sliding-window attention in
  which the persistent prefix stays visible, gated with the memory layer run over ``x̃``.
- :class:`MALLayer` (memory as layer, [T] Eq 29-31): ``x̃ = P ‖ x``; the memory layer, then
  plain sliding-window attention over its output.
- ``samba(window)``: :class:`miras.models.LM` alternates memory layers and
  :class:`SlidingWindowAttention` layers.

Attention is ``torch.nn.functional.scaled_dot_product_attention`` with an explicit boolean
mask, or FlexAttention with a block mask built from the same mask function on CUDA. Every
mask is a small frozen dataclass called as ``mask(q_idx, kv_idx)`` on index tensors, so the
dense mask and the block mask come from one definition.

Packed documents: every layer's ``forward`` (and :class:`SlidingWindowAttention`'s) takes
``cu_seqlens`` (``B == 1``, documents packed along ``T``) and lets nothing cross a document
boundary. Attention masks are :class:`DocumentMask` (block-diagonal ∧ the layer's mask, with
positions, windows and RoPE counted from each document's start); MAG and MAL prepend the
persistent tokens to every document and run the memory layer with the shifted bounds; MAC
loops over the documents (its segments restart at each). Decoding caches are not built
for packed documents (``return_state`` / ``state`` with ``cu_seqlens`` is a ValueError).

Decoding: each layer has ``init_cache(batch, device, dtype)`` and ``step(x_t [B, d], cache)
-> (y_t, cache)``; feeding a sequence token by token gives the parallel forward's outputs.
The memory branch steps through :class:`MemoryStepper`, which is exact for chunked specs
too (see there).

Choices where the papers are silent or ambiguous (documented here, and in the README):

- persistent tokens are ``N_p`` learned vectors of the model width prepended to the layer's
  input, as [T] Eq 19/22/26/29 print it; in MAG and MAL the memory therefore also reads and
  writes them (``M(x̃)``), and their outputs are dropped. MAG's ``SW-Attn*`` keeps them
  visible to every query; MAL's plain ``SW-Attn`` lets them slide out of the window.
- MAC's memory tokens: [T] Fig 3a shows ``h`` visible to every token of the segment, but
  ``h_j = M*_{t−1}(q_j)`` is computed from token ``j`` itself, so in a causal LM that mask
  lets token ``i`` read tokens ``j > i``. ``memory_mask="causal"`` (default) lets token ``i``
  see ``h_j`` for ``j ≤ i`` only; ``memory_mask="full"`` is the figure's mask (not causal, so
  it cannot decode). MAC's ``h`` has one token per segment token (Eq 21: ``N_l = C``).
- MAC's final read ``M*_t(y_t)`` (Eq 25) is the memory layer's own output over ``y``: token
  ``i`` reads the memory after writing ``y_i`` (reading after the whole segment's writes
  would leak the segment's future). ``⊗`` (Eq 25, 28) is ``norm(y) ⊙ σ(norm(m))`` with
  learned RMSNorm weights, then a linear output projection ([T] §4.2's "normalise, then σ").
- MAC reads ``h`` with the memory layer's own query path (projection, short conv, SiLU,
  ℓ2 norm; Eq 21's ``W_Q``) over the layer input, through the memory layer's output path
  (RMSNorm, output gate, projection), so ``h`` lives in the model width like ``P`` and ``S``.
- RoPE on attention queries and keys (``rope=False`` turns it off): positions in ``x̃`` for
  sliding-window attention; inside MAC's window, ``P`` at ``0..N_p−1``, ``h_j`` at
  ``N_p + j`` and ``S_j`` at ``N_p + C + j``.
- The memory runs its chunks from the start of each call: inside MAC, from each segment's
  start (a segment that is not a multiple of the chunk ends with a shorter chunk).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from miras.runtime import memory as mem
from miras.runtime.compiled import Compiled, check_cu_seqlens
from miras.runtime.layer import MirasLayer

try:  # FlexAttention (torch ≥ 2.5); optional
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover - depends on the torch build
    create_block_mask = flex_attention = None

AttnBackend = Literal["auto", "sdpa", "flex"]
Cache = dict[str, Any]
#: runs a layer's attention on a sequence: ``x ↦ (y, new attention cache or None)``
Attend = Callable[[Tensor], tuple[Tensor, Any]]


# ---- masks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlidingMask:
    """Causal sliding window: query ``i`` sees key ``j ≤ i`` with ``i − j < window``, and
    always the first ``sink`` positions (the persistent prefix of MAG's ``SW-Attn*``).

    ``window=None`` is plain causal attention. Called on positions, so it also masks a
    decoding cache whose keys are not contiguous.
    """

    window: int | None
    sink: int = 0

    def __call__(self, q: Tensor, kv: Tensor) -> Tensor:
        causal = kv <= q
        if self.window is None:
            return causal
        return causal & ((kv < self.sink) | (q - kv < self.window))


@dataclass(frozen=True)
class MACMask:
    """MAC's window ``[P (persistent) ‖ h (memory) ‖ S]`` for the ``memory`` queries of ``S``.

    ``P`` is visible to all; ``S`` is causal; ``h_j`` is visible to query ``i`` when
    ``j ≤ i`` (``full=False``) or always (``full=True``, [T] Fig 3a).
    """

    persistent: int
    memory: int
    full: bool = False

    def __call__(self, q: Tensor, kv: Tensor) -> Tensor:
        p, c = self.persistent, self.memory
        in_mem = (kv >= p) & (kv < p + c)
        mem_ok = in_mem if self.full else in_mem & (kv - p <= q)
        seg_ok = (kv >= p + c) & (kv - p - c <= q)
        return (kv < p) | mem_ok | seg_ok


@dataclass(frozen=True)
class DocumentMask:
    """Packed documents (``cu_seqlens``): ``inner`` inside each document, nothing across.

    ``doc[t]`` is the document of packed position ``t`` and ``local[t]`` its position inside
    the document; query ``i`` sees key ``j`` when ``doc[i] == doc[j]`` and
    ``inner(local[i], local[j])``, so a sliding window (and MAG's persistent prefix) restarts
    at each document. Build it with :meth:`from_bounds`. Equality and the hash go by
    ``inner`` and ``bounds`` (block masks are cached by them); ``__call__`` reads only the
    index tensors, so FlexAttention's compiled kernel does not specialise on the bounds.
    """

    inner: SlidingMask
    bounds: tuple[int, ...]
    doc: Tensor = field(compare=False, repr=False)
    local: Tensor = field(compare=False, repr=False)

    @classmethod
    def from_bounds(cls, inner: SlidingMask, bounds: list[int] | tuple[int, ...],
                    device: torch.device | str) -> DocumentMask:
        """The mask of documents ``[bounds[i], bounds[i+1])`` (cumulative, from 0)."""
        cu = torch.tensor(bounds, device=device)
        lengths = cu[1:] - cu[:-1]
        doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
        local = torch.arange(int(bounds[-1]), device=device) - cu[:-1][doc]
        return cls(inner, tuple(int(b) for b in bounds), doc, local)

    def __call__(self, q: Tensor, kv: Tensor) -> Tensor:
        return (self.doc[q] == self.doc[kv]) & self.inner(self.local[q], self.local[kv])


Mask = SlidingMask | MACMask | DocumentMask


def dense_mask(mask: Mask, t_q: int, t_k: int, device: torch.device | str) -> Tensor:
    """The ``[t_q, t_k]`` boolean mask (True: attend) of a mask function."""
    i = torch.arange(t_q, device=device).unsqueeze(-1)
    j = torch.arange(t_k, device=device).unsqueeze(0)
    return mask(i, j)


_BLOCK_MASKS: dict[tuple[Any, ...], Any] = {}
_FLEX_COMPILED: Any = None
_FLEX_FAILED = False


def _block_mask(mask: Mask, t_q: int, t_k: int, device: torch.device) -> Any:
    key = (mask, t_q, t_k, str(device))
    bm = _BLOCK_MASKS.get(key)
    if bm is None:
        if len(_BLOCK_MASKS) > 256:  # shapes vary (last segments); keep the cache bounded
            _BLOCK_MASKS.clear()
        bm = create_block_mask(lambda b, h, q, kv: mask(q, kv), None, None, t_q, t_k,
                               device=device)
        _BLOCK_MASKS[key] = bm
    return bm


def flex_available() -> bool:
    """Whether this torch build has FlexAttention."""
    return flex_attention is not None


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask, *,
                     backend: AttnBackend = "auto") -> Tensor:
    """Softmax attention ``[B, H, T_q, D]`` over keys ``[B, H, T_k, D]`` under ``mask``.

    ``backend="auto"`` uses FlexAttention (compiled) on CUDA for fp16/bf16/fp32 when the
    build has it, else SDPA with the dense mask. ``"flex"`` forces FlexAttention (eager off
    CUDA: slow, for tests); ``"sdpa"`` forces SDPA. Scale ``1/sqrt(D)``; no row may be fully
    masked (every mask here lets a query see itself).
    """
    global _FLEX_COMPILED, _FLEX_FAILED
    use_flex = backend == "flex" or (
        backend == "auto" and q.is_cuda and flex_available() and not _FLEX_FAILED
        and q.dtype != torch.float64)
    if use_flex:
        if not flex_available():
            raise RuntimeError("this torch build has no FlexAttention")
        bm = _block_mask(mask, q.shape[2], k.shape[2], q.device)
        if not q.is_cuda:
            with warnings.catch_warnings():  # the eager (unfused) path is only for tests
                warnings.simplefilter("ignore", UserWarning)
                return flex_attention(q, k, v, block_mask=bm)
        try:
            if _FLEX_COMPILED is None:
                _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
            return _FLEX_COMPILED(q, k, v, block_mask=bm)
        except Exception as exc:  # pragma: no cover - GPU/toolchain specific
            if backend == "flex":
                raise
            # shapes Triton cannot tile (tiny head dims) fall back to SDPA, once and loudly
            _FLEX_FAILED = True
            warnings.warn(f"FlexAttention failed ({exc}); using SDPA", RuntimeWarning,
                          stacklevel=2)
    m = dense_mask(mask, q.shape[2], k.shape[2], q.device)
    return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)


PACKED_CACHE_UNSUPPORTED = (
    "cu_seqlens with a decoding cache (state / return_state) is not supported by the hybrid "
    "attention layers (their caches hold one position for all rows); run the packed forward "
    "without caches, or prefill each document alone")


# ---- attention module -------------------------------------------------------------------------


def rope(x: Tensor, pos: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of ``x [B, H, T, D]`` at positions ``pos [T]``.

    Channel ``i`` and ``i + D//2`` form a pair rotated by ``pos·base^(−2i/D)`` (the
    rotate-half layout); an odd last channel is left as is.
    """
    half = x.shape[-1] // 2
    if half == 0:
        return x
    inv = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) * 2 / x.shape[-1])
    ang = pos.to(torch.float64).unsqueeze(-1) * inv
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half: 2 * half], x[..., 2 * half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], -1)


class Attention(nn.Module):
    """Multi-head softmax attention's projections: ``q, k, v`` (with RoPE) and the output."""

    def __init__(self, d_model: int, heads: int, head_dim: int, *, rope: bool = True,
                 backend: AttnBackend = "auto") -> None:
        super().__init__()
        self.heads, self.head_dim, self.use_rope, self.backend = heads, head_dim, rope, backend
        inner = heads * head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.o_proj = nn.Linear(inner, d_model, bias=False)

    def _split(self, t: Tensor) -> Tensor:
        B, T, _ = t.shape
        return t.view(B, T, self.heads, self.head_dim).transpose(1, 2)

    def queries(self, x: Tensor, pos: Tensor) -> Tensor:
        """``[B, H, T, D]`` queries of ``x [B, T, d]`` at positions ``pos [T]``."""
        q = self._split(self.q_proj(x))
        return rope(q, pos) if self.use_rope else q

    def keys_values(self, x: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, H, T, D]`` keys (with RoPE) and values of ``x``."""
        k = self._split(self.k_proj(x))
        return (rope(k, pos) if self.use_rope else k), self._split(self.v_proj(x))

    def output(self, o: Tensor) -> Tensor:
        """``[B, H, T, D] → [B, T, d]``."""
        return self.o_proj(o.transpose(1, 2).flatten(2))


class SlidingWindowAttention(nn.Module):
    """Causal sliding-window attention layer ``[B, T, d] → [B, T, d]``.

    ``sink`` leading positions stay visible to every query (MAG's persistent prefix);
    ``window=None`` is full causal attention. The decoding cache keeps the sink's keys and
    a rolling window of the last ``window`` keys.
    """

    def __init__(self, d_model: int, heads: int, head_dim: int | None = None, *,
                 window: int | None, sink: int = 0, rope: bool = True,
                 backend: AttnBackend = "auto") -> None:
        super().__init__()
        head_dim = head_dim or d_model // heads
        self.window, self.sink = window, sink
        self.attn = Attention(d_model, heads, head_dim, rope=rope, backend=backend)
        self.mask = SlidingMask(window, sink)

    def forward(self, x: Tensor, cache: Cache | None = None, return_cache: bool = False,
                cu_seqlens: Tensor | None = None) -> Tensor | tuple[Tensor, Cache]:
        """Attention over ``x``; with ``cache``, ``x`` continues the cached sequence.

        ``cu_seqlens`` (``B == 1``) packs documents along ``T``: each document attends only
        to itself, with positions (RoPE, window, sink) from its own start; no cache then.
        """
        T = x.shape[1]
        if cu_seqlens is not None:
            if cache is not None or return_cache:
                raise ValueError(PACKED_CACHE_UNSUPPORTED)
            bounds = check_cu_seqlens(cu_seqlens, x.shape[0], T)
            mask = DocumentMask.from_bounds(self.mask, bounds, x.device)
            q = self.attn.queries(x, mask.local)
            k, v = self.attn.keys_values(x, mask.local)
            return self.attn.output(masked_attention(q, k, v, mask, backend=self.attn.backend))
        start = 0 if cache is None else int(cache["pos"])
        pos = torch.arange(start, start + T, device=x.device)
        q = self.attn.queries(x, pos)
        k, v = self.attn.keys_values(x, pos)
        if cache is None:
            o = masked_attention(q, k, v, self.mask, backend=self.attn.backend)
            kpos = pos
        else:
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            kpos = torch.cat([cache["kpos"], pos])
            m = self.mask(pos.unsqueeze(-1), kpos.unsqueeze(0))
            o = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)
        out = self.attn.output(o)
        if not return_cache:
            return out
        last = start + T - 1
        # keys no later query can see are dropped: the cache is sink + window at most
        keep = torch.ones_like(kpos, dtype=torch.bool)
        if self.window is not None:
            keep = (kpos < self.sink) | (kpos > last - self.window)
        return out, {"k": k[:, :, keep], "v": v[:, :, keep], "kpos": kpos[keep],
                     "pos": start + T}

    def init_cache(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Cache:
        """An empty cache (no tokens yet)."""
        p = next(self.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        H, D = self.attn.heads, self.attn.head_dim
        z = torch.zeros(batch, H, 0, D, device=device, dtype=dtype)
        return {"k": z, "v": z, "kpos": torch.zeros(0, dtype=torch.long, device=device),
                "pos": 0}

    def step(self, x: Tensor, cache: Cache) -> tuple[Tensor, Cache]:
        """One token ``x [B, d]`` → ``(y [B, d], cache)``."""
        y, cache = self(x.unsqueeze(1), cache, return_cache=True)
        return y[:, 0], cache


# ---- the memory branch, token by token ------------------------------------------------------


class MemoryStepper:
    """Feeds a :class:`MirasLayer` a few tokens at a time with the parallel forward's outputs.

    A chunked spec takes every gradient inside a chunk at the chunk's first memory, so a
    one-token step from the running state would not reproduce the forward. The stepper keeps
    the state at the last chunk boundary (``anchor``) and the inputs since (``buf``); each
    call reruns ``buf`` from ``anchor`` (at most a chunk of tokens) and commits whole chunks.
    For ``chunk(1)``, ``recurrent`` and ``exact`` specs this is the plain recurrence.
    """

    def __init__(self, layer: MirasLayer) -> None:
        self.layer = layer

    @staticmethod
    def init() -> Cache:
        return {"anchor": None, "buf": None}

    def feed(self, x: Tensor, cache: Cache, commit: bool = False) -> tuple[Tensor, Cache]:
        """Outputs ``[B, T, d]`` of ``x [B, T, d]`` continuing ``cache``; ``commit`` ends a
        chunk after ``x`` (MAC's segment ends restart the memory's chunks)."""
        chunk = self.layer.chunk_size()
        old = 0 if cache["buf"] is None else cache["buf"].shape[1]
        buf = x if cache["buf"] is None else torch.cat([cache["buf"], x], 1)
        n = buf.shape[1] if commit else buf.shape[1] // chunk * chunk
        anchor, outs = cache["anchor"], []
        if n:
            o, anchor = self.layer(buf[:, :n], anchor, return_state=True)
            outs.append(o)
        rest = buf[:, n:]
        if rest.shape[1]:
            o, _ = self.layer(rest, anchor, return_state=True)
            outs.append(o)
        y = torch.cat(outs, 1)[:, old:]
        return y, {"anchor": anchor, "buf": rest if rest.shape[1] else None}


def read_memory(layer: MirasLayer, x: Tensor, state: dict[str, Any] | None,
                conv: Tensor | None) -> tuple[Tensor, Tensor]:
    """MAC's ``h = M*(q)`` ([T] Eq 21): read the memory of ``state`` without writing.

    Queries come from ``x [B, T, d]`` through the memory layer's query path (its own short
    conv cache ``conv``); the read goes through its output path. Returns ``(h, conv)``.
    """
    B, T, _ = x.shape
    H, D = layer.heads, layer.head_dim
    c = layer.compiled
    q, conv = layer.q_conv(layer.q_proj(x), conv)
    q = nn.functional.normalize(nn.functional.silu(q).view(B, T, H, D), dim=-1)
    params = layer.param_dict()
    if state is None or state.get("memory") is None:
        weights = c.initial_state(B, H, D, params=params, dtype=x.dtype,
                                  device=x.device).weights
    else:
        weights = state["memory"].weights
    fns = c.module.make_fns(params, D)
    qh = q.transpose(1, 2)
    r, _ = mem.forward(c.module.RECIPE.memory, weights, fns.feature(qh), qh, fns.act)
    r = r.transpose(1, 2)
    h = layer.o_norm(r).reshape(B, T, H * D) * torch.sigmoid(layer.o_gate(x))
    return layer.o_proj(h), conv


class GatedMerge(nn.Module):
    """``⊗`` of [T] Eq 25, 28: ``W_o(RMSNorm(y) ⊙ σ(RMSNorm(m)))`` (learned norm weights)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm_y = nn.RMSNorm(d_model, eps=1e-6)
        self.norm_m = nn.RMSNorm(d_model, eps=1e-6)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, y: Tensor, m: Tensor) -> Tensor:
        return self.out(self.norm_y(y) * torch.sigmoid(self.norm_m(m)))


# ---- the hybrid layers ------------------------------------------------------------------------


class _Hybrid(nn.Module):
    """What the hybrid layers share: the memory layer and the persistent tokens."""

    def __init__(self, compiled: Compiled, d_model: int, heads: int | None,
                 head_dim: int | None, persistent: int, layer_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.compiled, self.d_model = compiled, d_model
        self.memory = MirasLayer(compiled, d_model, heads, head_dim, **layer_kwargs)
        self.heads, self.head_dim = self.memory.heads, self.memory.head_dim
        self.n_persistent = persistent
        # small like the embeddings: persistent tokens enter the layer like normed inputs
        self.persistent = nn.Parameter(torch.randn(persistent, d_model) * 0.02)
        self.stepper = MemoryStepper(self.memory)

    @property
    def gates(self) -> nn.ModuleDict:
        """The memory layer's gate projections (by role)."""
        return self.memory.gates

    def _prefix(self, batch: int) -> Tensor:
        return self.persistent.unsqueeze(0).expand(batch, -1, -1)


class _Windowed(_Hybrid):
    """MAG and MAL: ``x̃ = P ‖ x`` through the memory and sliding-window attention."""

    #: whether the persistent prefix stays visible to every query (MAG's ``SW-Attn*``)
    sink_prefix: ClassVar[bool] = False

    def __init__(self, compiled: Compiled, d_model: int, heads: int | None = None,
                 head_dim: int | None = None, *, window: int, persistent: int,
                 rope: bool = True, attention: AttnBackend = "auto", **layer_kwargs: Any
                 ) -> None:
        super().__init__(compiled, d_model, heads, head_dim, persistent, layer_kwargs)
        self.attn = SlidingWindowAttention(
            d_model, self.heads, self.head_dim, window=window,
            sink=persistent if self.sink_prefix else 0, rope=rope, backend=attention)

    def _combine(self, x: Tensor, m: Tensor, attend: Attend) -> tuple[Tensor, Any]:
        """The output of ``x`` given the memory output ``m``; ``attend`` runs the attention."""
        raise NotImplementedError

    def forward(self, x: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        """``[B, T, d] → [B, T, d]``; ``cu_seqlens`` (``B == 1``) packs documents along ``T``:
        each document gets its own persistent prefix (``x̃ = P ‖ x_1 ‖ P ‖ x_2 …``), the memory
        runs with the prefixed bounds (it restarts per document) and the window is masked to
        the document (:class:`DocumentMask`)."""
        if cu_seqlens is None:
            xt = torch.cat([self._prefix(x.shape[0]).to(x.dtype), x], 1)
            y, _ = self._combine(xt, self.memory(xt), lambda t: (self.attn(t), None))
            return y[:, self.n_persistent:]
        bounds = check_cu_seqlens(cu_seqlens, x.shape[0], x.shape[1])
        p = self.n_persistent
        # x̃: document i's prefix, then its tokens, at [bounds[i] + i·p, bounds[i+1] + (i+1)·p)
        shifted = [b + i * p for i, b in enumerate(bounds)]
        cu = torch.tensor(shifted, device=x.device)
        ix = DocumentMask.from_bounds(SlidingMask(None), shifted, x.device)  # its indices
        start = torch.tensor(bounds[:-1], device=x.device)
        # gather from [P ‖ x]: P at local < p, else token a + (local − p) of x at a + local
        src = torch.where(ix.local < p, ix.local, start[ix.doc] + ix.local)
        xt = torch.cat([self._prefix(1).to(x.dtype), x], 1)[:, src]
        y, _ = self._combine(xt, self.memory(xt, cu_seqlens=cu),
                             lambda t: (self.attn(t, cu_seqlens=cu), None))
        return y[:, ix.local >= p]

    def _feed(self, x: Tensor, cache: Cache) -> tuple[Tensor, Cache]:
        m, mc = self.stepper.feed(x, cache["mem"])
        y, ac = self._combine(x, m, lambda t: self.attn(t, cache["attn"], return_cache=True))
        return y, {"mem": mc, "attn": ac}

    def init_cache(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Cache:
        """The cache after the persistent prefix (memory and attention have read it)."""
        device, dtype = device or self.persistent.device, dtype or self.persistent.dtype
        cache = {"mem": MemoryStepper.init(), "attn": self.attn.init_cache(batch, device, dtype)}
        if self.n_persistent:
            _, cache = self._feed(self._prefix(batch).to(device=device, dtype=dtype), cache)
        return cache

    def step(self, x: Tensor, cache: Cache) -> tuple[Tensor, Cache]:
        """One token ``x [B, d]`` → ``(y [B, d], cache)``."""
        y, cache = self._feed(x.unsqueeze(1), cache)
        return y[:, 0], cache


class MAGLayer(_Windowed):
    """Titans MAG ([T] §4.2): ``W_o(norm(SW-Attn*(x̃)) ⊙ σ(norm(M(x̃))))``, ``x̃ = P ‖ x``."""

    sink_prefix = True

    def __init__(self, compiled: Compiled, d_model: int, heads: int | None = None,
                 head_dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(compiled, d_model, heads, head_dim, **kwargs)
        self.merge = GatedMerge(d_model)

    def _combine(self, x: Tensor, m: Tensor, attend: Attend) -> tuple[Tensor, Any]:
        y, cache = attend(x)
        return self.merge(y, m), cache


class MALLayer(_Windowed):
    """Titans MAL ([T] §4.3): ``SW-Attn(M(x̃))``, ``x̃ = P ‖ x``."""

    def _combine(self, x: Tensor, m: Tensor, attend: Attend) -> tuple[Tensor, Any]:
        return attend(m)


class MACLayer(_Hybrid):
    """Titans MAC ([T] §4.1, Eq 21-25), segment by segment.

    For segment ``S`` (``C`` tokens): ``h = M*_{t−1}(q(S))`` (read before the segment's
    writes), ``y = Attn([P ‖ h ‖ S])`` at the positions of ``S`` under :class:`MACMask`,
    ``m = M(y)`` (the memory layer writes ``y``, each token reads after its write) and
    ``o = W_o(norm(y) ⊙ σ(norm(m)))``. ``memory_mask`` is explained in the module doc.
    """

    def __init__(self, compiled: Compiled, d_model: int, heads: int | None = None,
                 head_dim: int | None = None, *, segment: int, persistent: int,
                 memory_mask: Literal["causal", "full"] = "causal", rope: bool = True,
                 attention: AttnBackend = "auto", **layer_kwargs: Any) -> None:
        super().__init__(compiled, d_model, heads, head_dim, persistent, layer_kwargs)
        if memory_mask not in ("causal", "full"):
            raise ValueError(f"memory_mask must be 'causal' or 'full', not {memory_mask!r}")
        self.segment, self.memory_mask = segment, memory_mask
        self.attn = Attention(d_model, self.heads, self.head_dim, rope=rope, backend=attention)
        self.merge = GatedMerge(d_model)

    def _positions(self, c: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        p, C = self.n_persistent, self.segment
        ar = torch.arange(c, device=device)
        return torch.arange(p, device=device), p + ar, p + C + ar

    def _persistent_kv(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        pp = torch.arange(self.n_persistent, device=like.device)
        return self.attn.keys_values(self._prefix(batch).to(like.dtype), pp)

    def forward(self, x: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        """``[B, T, d] → [B, T, d]``; ``cu_seqlens`` (``B == 1``) packs documents along ``T``,
        each run alone: segments (and the memory) restart at each document's start, and
        each attends to the persistent tokens, its own memory tokens and itself only. This
        loops over the documents (segments already loop; a document-aware MAC mask would
        have to split segments at document starts)."""
        if cu_seqlens is not None:
            bounds = check_cu_seqlens(cu_seqlens, x.shape[0], x.shape[1])
            outs = [self(x[:, a:b]) for a, b in itertools.pairwise(bounds) if b > a]
            return torch.cat(outs, 1) if outs else torch.zeros_like(x)
        B, T, _ = x.shape
        if T == 0:
            return torch.zeros_like(x)
        kp, vp = self._persistent_kv(B, x)
        state: dict[str, Any] | None = None
        conv: Tensor | None = None
        outs = []
        for s in range(0, T, self.segment):
            xs = x[:, s: s + self.segment]
            c = xs.shape[1]
            h, conv = read_memory(self.memory, xs, state, conv)
            _, ph, px = self._positions(c, x.device)
            kh, vh = self.attn.keys_values(h, ph)
            kx, vx = self.attn.keys_values(xs, px)
            k, v = torch.cat([kp, kh, kx], 2), torch.cat([vp, vh, vx], 2)
            mask = MACMask(self.n_persistent, c, self.memory_mask == "full")
            y = self.attn.output(masked_attention(self.attn.queries(xs, px), k, v, mask,
                                                  backend=self.attn.backend))
            m, state = self.memory(y, state, return_state=True)
            outs.append(self.merge(y, m))
        return torch.cat(outs, 1)

    def init_cache(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Cache:
        """The cache before the first token."""
        if self.memory_mask == "full":
            raise ValueError("memory_mask='full' lets a token see later tokens' memory reads; "
                             "it cannot decode token by token")
        device, dtype = device or self.persistent.device, dtype or self.persistent.dtype
        H, D = self.heads, self.head_dim
        z = torch.zeros(batch, H, 0, D, device=device, dtype=dtype)
        return {"pos": 0, "mem": MemoryStepper.init(), "conv": None, "seg": None,
                "kh": z, "vh": z, "kx": z, "vx": z}

    def step(self, x: Tensor, cache: Cache) -> tuple[Tensor, Cache]:
        """One token ``x [B, d]`` → ``(y [B, d], cache)``."""
        i = cache["pos"] % self.segment
        cache = dict(cache)
        if i == 0:
            # a new segment: the memory was committed at the last segment's end, so the
            # anchor is M_{t−1}, which every memory token of this segment reads
            z = cache["kh"][:, :, :0]
            cache.update(kh=z, vh=z, kx=z, vx=z, seg=cache["mem"]["anchor"])
        xt = x.unsqueeze(1)
        h, cache["conv"] = read_memory(self.memory, xt, cache["seg"], cache["conv"])
        p = self.n_persistent
        ph = torch.tensor([p + i], device=x.device)
        px = ph + self.segment
        kh, vh = self.attn.keys_values(h, ph)
        kx, vx = self.attn.keys_values(xt, px)
        for name, t in (("kh", kh), ("vh", vh), ("kx", kx), ("vx", vx)):
            cache[name] = torch.cat([cache[name], t], 2)
        kp, vp = self._persistent_kv(x.shape[0], x)
        k = torch.cat([kp, cache["kh"], cache["kx"]], 2)
        v = torch.cat([vp, cache["vh"], cache["vx"]], 2)
        # every cached key is visible to the segment's newest token
        y = self.attn.output(nn.functional.scaled_dot_product_attention(
            self.attn.queries(xt, px), k, v))
        m, cache["mem"] = self.stepper.feed(y, cache["mem"], commit=i == self.segment - 1)
        cache["pos"] += 1
        return self.merge(y, m)[:, 0], cache


def build_layer(compiled: Compiled, d_model: int, heads: int | None = None,
                head_dim: int | None = None, **kwargs: Any) -> nn.Module:
    """The layer a spec declares: its hybrid (MAC/MAG/MAL), or the memory layer alone.

    ``samba`` is a stacking of layers, not a layer: it gives the memory layer here and
    :class:`miras.models.LM` interleaves the attention layers. Hybrid keywords: ``rope``,
    ``attention`` (``auto``/``sdpa``/``flex``), MAC's ``memory_mask``; the others go to
    :class:`MirasLayer` (``conv_size``, ``backend``).
    """
    h = compiled.hybrid
    if h.kind == "mac":
        return MACLayer(compiled, d_model, heads, head_dim, segment=h.segment,
                        persistent=h.persistent, **kwargs)
    if h.kind == "mag":
        return MAGLayer(compiled, d_model, heads, head_dim, window=h.window,
                        persistent=h.persistent, **kwargs)
    if h.kind == "mal":
        return MALLayer(compiled, d_model, heads, head_dim, window=h.window,
                        persistent=h.persistent, **kwargs)
    for key in ("rope", "attention", "memory_mask"):
        kwargs.pop(key, None)
    return MirasLayer(compiled, d_model, heads, head_dim, **kwargs)


__all__ = ["PACKED_CACHE_UNSUPPORTED", "Attention", "DocumentMask", "GatedMerge", "MACLayer",
           "MACMask", "MAGLayer", "MALLayer", "MemoryStepper", "SlidingMask",
           "SlidingWindowAttention", "build_layer", "dense_mask", "flex_available",
           "masked_attention", "read_memory", "rope"]
