"""Hybrids (MAC, MAG, MAL, samba) against references written here from the formulas.

Attention: softmax over explicit masks built by Python loops (fp64); MAC: a per-segment loop
of [T] Eq 21-25; MAG/MAL: Eq 26-31; decoding: token-by-token ``step`` equals ``forward``.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor
from typer.testing import CliRunner

import miras
from miras.cli import app
from miras.models import LM
from miras.runtime.hybrid import (
    DocumentMask,
    MACLayer,
    MACMask,
    MAGLayer,
    MALLayer,
    SlidingMask,
    SlidingWindowAttention,
    dense_mask,
    flex_available,
    masked_attention,
    rope,
)
from miras.runtime.layer import MirasLayer
from miras.train import train

F = torch.nn.functional
EXAMPLES = Path(__file__).parent.parent.parent / "examples"
HYBRID_EXAMPLES = ["titans_mac", "titans_mag", "titans_mal", "atlas_mag", "atlas_mal",
                   "moneta_h", "yaad_h", "memora_h"]
BACKENDS = ["sdpa", *(["flex"] if flex_available() else [])]


def spec(hybrid: str, chunk: int = 4) -> miras.Compiled:
    """A small Titans-like memory (2-layer MLP, momentum, decay) with ``hybrid``."""
    return miras.compile(
        "model t { memory = mlp(depth=2, expansion=2, act=gelu, residual=true)  bias = l2 "
        "retention = decay(alpha=gate(act=sigmoid))  "
        "algorithm = momentum(lr=gate(act=sigmoid), beta=gate(act=sigmoid))  "
        f"parallel = chunk(size={chunk})  hybrid = {hybrid} }}")


# ---- references -----------------------------------------------------------------------------


def loop_sliding(t: int, window: int | None, sink: int) -> Tensor:
    return torch.tensor([[j <= i and (j < sink or window is None or i - j < window)
                          for j in range(t)] for i in range(t)])


def loop_mac(p: int, c: int, full: bool) -> Tensor:
    """Rows: the c segment queries; columns: [P (p) ‖ h (c) ‖ S (c)]."""
    return torch.tensor([[True] * p + [full or j <= i for j in range(c)]
                         + [j <= i for j in range(c)] for i in range(c)])


def ref_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v


def ref_rope(x: Tensor, pos: Tensor, base: float = 10000.0) -> Tensor:
    """Pairs (x_i, x_{i+D/2}) as complex numbers times e^{i·pos·base^(−2i/D)}."""
    D = x.shape[-1]
    half = D // 2
    z = torch.complex(x[..., :half], x[..., half: 2 * half])
    theta = pos.double().unsqueeze(-1) * base ** (-2 * torch.arange(half).double() / D)
    z = z * torch.polar(torch.ones_like(theta), theta)
    return torch.cat([z.real, z.imag, x[..., 2 * half:]], -1)


def heads(t: Tensor, h: int) -> Tensor:
    B, T, _ = t.shape
    return t.view(B, T, h, -1).transpose(1, 2)


def rms(x: Tensor, w: Tensor) -> Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def ref_merge(merge: torch.nn.Module, y: Tensor, m: Tensor) -> Tensor:
    """⊗: W_o(RMSNorm(y) ⊙ σ(RMSNorm(m)))."""
    return (rms(y, merge.norm_y.weight) * torch.sigmoid(rms(m, merge.norm_m.weight))
            ) @ merge.out.weight.T


def ref_swa(attn: SlidingWindowAttention, x: Tensor, window: int | None, sink: int) -> Tensor:
    a = attn.attn
    H = a.heads
    pos = torch.arange(x.shape[1])
    q = ref_rope(heads(x @ a.q_proj.weight.T, H), pos)
    k = ref_rope(heads(x @ a.k_proj.weight.T, H), pos)
    v = heads(x @ a.v_proj.weight.T, H)
    o = ref_attention(q, k, v, loop_sliding(x.shape[1], window, sink))
    return o.transpose(1, 2).flatten(2) @ a.o_proj.weight.T


def ref_mac(layer: MACLayer, x: Tensor, full: bool) -> Tensor:
    """[T] Eq 21-25, segment by segment, for the 2-layer residual MLP memory of :func:`spec`."""
    B, T, _ = x.shape
    ml, at, C, p = layer.memory, layer.attn, layer.segment, layer.n_persistent
    H, D = ml.heads, ml.head_dim
    weights = layer.compiled.initial_state(B, H, D, params=ml.param_dict(),
                                           dtype=x.dtype).weights
    state, conv, outs = None, None, []
    P = layer.persistent.unsqueeze(0).expand(B, -1, -1)
    for s in range(0, T, C):
        xs = x[:, s: s + C]
        c = xs.shape[1]
        # Eq 21: h = M*_{t−1}(q), read before the segment's writes; M(q) = q + W1 gelu(W0 q)
        q, conv = ml.q_conv(ml.q_proj(xs), conv)
        q = F.normalize(F.silu(q).view(B, c, H, D), dim=-1)
        hid = F.gelu(torch.einsum("bchd,bhkd->bchk", q, weights["W0"]))
        r = q + torch.einsum("bchk,bhdk->bchd", hid, weights["W1"])
        h = ml.o_proj(ml.o_norm(r).reshape(B, c, H * D) * torch.sigmoid(ml.o_gate(xs)))
        # Eq 22-23: attention over [P ‖ h ‖ S] at the segment's positions
        ctx = torch.cat([P, h, xs], 1)
        kpos = torch.cat([torch.arange(p), p + torch.arange(c), p + C + torch.arange(c)])
        qq = ref_rope(heads(xs @ at.q_proj.weight.T, H), p + C + torch.arange(c))
        kk = ref_rope(heads(ctx @ at.k_proj.weight.T, H), kpos)
        vv = heads(ctx @ at.v_proj.weight.T, H)
        y = ref_attention(qq, kk, vv, loop_mac(p, c, full)).transpose(1, 2).flatten(2)
        y = y @ at.o_proj.weight.T
        # Eq 24: the memory writes y (each token reads after its own write)
        m, state = ml(y, state, return_state=True)
        weights = state["memory"].weights
        outs.append(ref_merge(layer.merge, y, m))  # Eq 25
    return torch.cat(outs, 1)


# ---- attention ------------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "sink"), [(None, 0), (3, 0), (4, 2), (1, 3)])
def test_sliding_mask(window: int | None, sink: int) -> None:
    assert torch.equal(dense_mask(SlidingMask(window, sink), 11, 11, "cpu"),
                       loop_sliding(11, window, sink))


@pytest.mark.parametrize(("p", "c", "full"), [(0, 5, False), (3, 5, False), (2, 4, True)])
def test_mac_mask(p: int, c: int, full: bool) -> None:
    assert torch.equal(dense_mask(MACMask(p, c, full), c, p + 2 * c, "cpu"),
                       loop_mac(p, c, full))


def loop_documents(bounds: list[int], window: int | None, sink: int) -> Tensor:
    """Block-diagonal: each document's own sliding mask (positions from its start)."""
    out = torch.zeros(bounds[-1], bounds[-1], dtype=torch.bool)
    for a, b in itertools.pairwise(bounds):
        out[a:b, a:b] = loop_sliding(b - a, window, sink)
    return out


DOC_BOUNDS = [0, 4, 4, 5, 13]  # an empty and a one-token document


@pytest.mark.parametrize(("window", "sink"), [(None, 0), (3, 0), (2, 2)])
def test_document_mask(window: int | None, sink: int) -> None:
    mask = DocumentMask.from_bounds(SlidingMask(window, sink), DOC_BOUNDS, "cpu")
    assert torch.equal(dense_mask(mask, 13, 13, "cpu"), loop_documents(DOC_BOUNDS, window, sink))
    # equality and hash ignore the index tensors (block masks are cached by them)
    again = DocumentMask.from_bounds(SlidingMask(window, sink), DOC_BOUNDS, "cpu")
    assert mask == again and hash(mask) == hash(again)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["causal", "sliding", "sink", "mac", "mac_full", "docs"])
def test_attention_against_dense_softmax(backend: str, case: str) -> None:
    g = torch.Generator().manual_seed(0)
    B, H, T, D = 2, 3, 13, 8
    mask, allowed, t_k = {
        "causal": (SlidingMask(None), loop_sliding(T, None, 0), T),
        "sliding": (SlidingMask(4), loop_sliding(T, 4, 0), T),
        "sink": (SlidingMask(3, 2), loop_sliding(T, 3, 2), T),
        "mac": (MACMask(3, T), loop_mac(3, T, False), 3 + 2 * T),
        "mac_full": (MACMask(3, T, True), loop_mac(3, T, True), 3 + 2 * T),
        "docs": (DocumentMask.from_bounds(SlidingMask(3, 1), DOC_BOUNDS, "cpu"),
                 loop_documents(DOC_BOUNDS, 3, 1), T),
    }[case]
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, H, t_k, D, generator=g, dtype=torch.float64) for _ in range(2))
    out = masked_attention(q, k, v, mask, backend=backend)  # type: ignore[arg-type]
    torch.testing.assert_close(out, ref_attention(q, k, v, allowed), atol=1e-12, rtol=1e-10)


def test_rope_is_a_rotation_by_position() -> None:
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    pos = torch.tensor([0, 1, 2, 5, 8, 13, 100])
    torch.testing.assert_close(rope(x, pos), ref_rope(x, pos), atol=1e-12, rtol=1e-12)
    # relative: ⟨R(a)q, R(b)k⟩ depends on a − b only
    q, k = x[:, :, :1], x[:, :, 1:2]
    d1 = (rope(q, torch.tensor([3])) * rope(k, torch.tensor([1]))).sum(-1)
    d2 = (rope(q, torch.tensor([12])) * rope(k, torch.tensor([10]))).sum(-1)
    torch.testing.assert_close(d1, d2)


@pytest.mark.parametrize(("window", "sink"), [(None, 0), (4, 0), (3, 2)])
def test_sliding_window_layer(window: int | None, sink: int) -> None:
    torch.manual_seed(0)
    attn = SlidingWindowAttention(12, 3, window=window, sink=sink).double()
    x = torch.randn(2, 11, 12, dtype=torch.float64)
    torch.testing.assert_close(attn(x), ref_swa(attn, x, window, sink), atol=1e-12, rtol=1e-10)
    cache, ys = attn.init_cache(2), []
    for t in range(11):  # the rolling cache: sink + window keys at most
        y, cache = attn.step(x[:, t], cache)
        ys.append(y)
        assert cache["k"].shape[2] <= (11 if window is None else sink + window)
    torch.testing.assert_close(torch.stack(ys, 1), attn(x), atol=1e-12, rtol=1e-10)


# ---- the hybrid layers ----------------------------------------------------------------------


@pytest.mark.parametrize("mask", ["causal", "full"])
def test_mac_matches_segment_loop(mask: str) -> None:
    torch.manual_seed(0)
    # segment 6 with chunk 4: segments end mid-chunk; the last segment has 3 tokens
    layer = spec("mac(segment=6, persistent=3)").layer(16, heads=2, memory_mask=mask).double()
    x = torch.randn(2, 15, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), ref_mac(layer, x, mask == "full"),
                               atol=1e-10, rtol=1e-8)


def test_mag_and_mal_match_formulas() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    mag = spec("mag(window=4, persistent=3)").layer(16, heads=2).double()
    xt = torch.cat([mag.persistent.expand(2, -1, -1), x], 1)
    # Eq 26-28: o = y ⊗ M(x̃), y = SW-Attn*(x̃) with the persistent prefix always visible
    want = ref_merge(mag.merge, ref_swa(mag.attn, xt, 4, 3), mag.memory(xt))[:, 3:]
    torch.testing.assert_close(mag(x), want, atol=1e-10, rtol=1e-8)
    mal = spec("mal(window=4, persistent=3)").layer(16, heads=2).double()
    xt = torch.cat([mal.persistent.expand(2, -1, -1), x], 1)
    # Eq 29-31: o = SW-Attn(M(x̃)), plain sliding window
    want = ref_swa(mal.attn, mal.memory(xt), 4, 0)[:, 3:]
    torch.testing.assert_close(mal(x), want, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("hybrid", ["mac(segment=6, persistent=3)", "mac(segment=8, persistent=0)",
                                    "mag(window=4, persistent=3)", "mal(window=5, persistent=2)"])
def test_step_matches_forward(hybrid: str) -> None:
    torch.manual_seed(0)
    layer = spec(hybrid).layer(16, heads=2).double()
    x = torch.randn(2, 15, 16, dtype=torch.float64)
    cache, ys = layer.init_cache(2, dtype=torch.float64), []
    for t in range(x.shape[1]):
        y, cache = layer.step(x[:, t], cache)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), layer(x), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(("hybrid", "causal"), [
    ("mac(segment=6, persistent=3)", True), ("mag(window=4, persistent=3)", True),
    ("mal(window=4, persistent=3)", True), ("mac(segment=6, persistent=3)", False)])
def test_causality(hybrid: str, causal: bool) -> None:
    torch.manual_seed(0)
    kw = {} if causal else {"memory_mask": "full"}
    layer = spec(hybrid).layer(16, heads=2, **kw).double()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 8:] += 1.0  # position 8 is inside the second MAC segment [6, 12)
    y, y2 = layer(x), layer(x2)
    # the figure's full memory mask lets tokens 6, 7 see h_8.. (computed from x_8..)
    assert torch.allclose(y[:, :8], y2[:, :8]) == causal
    assert torch.allclose(y[:, :6], y2[:, :6])
    if not causal:
        with pytest.raises(ValueError, match="cannot decode"):
            layer.init_cache(1)


# ---- packed documents (cu_seqlens) ------------------------------------------------------------

#: not multiples of the segment (4), window (3) or chunk (4); an empty and a one-token document
LENGTHS = [6, 0, 1, 9]
CU = torch.tensor([0, 6, 6, 7, 16])


def _rel(a: Tensor, b: Tensor) -> float:
    return float(((a - b).norm() / b.norm().clamp_min(1e-30)).detach())


def _check_packed(run, x: Tensor, params: list[torch.nn.Parameter]) -> None:
    """``run(x, cu)`` over packed documents equals ``run(x_i, None)`` per document: outputs,
    the input's gradient and the parameters' gradients (summed over the documents)."""
    x = x.detach().requires_grad_(True)
    y = run(x, CU)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    grads = torch.autograd.grad((y * w).sum(), [x, *params])
    summed = [torch.zeros_like(p) for p in params]
    for a, b in itertools.pairwise(CU.tolist()):
        if a == b:
            continue
        alone = run(x[:, a:b], None)
        assert _rel(y[:, a:b], alone) < 1e-10, (a, b)
        g_x, *g_p = torch.autograd.grad((alone * w[:, a:b]).sum(), [x, *params])
        assert _rel(grads[0][:, a:b], g_x[:, a:b]) < 1e-10, (a, b)
        summed = [s + g for s, g in zip(summed, g_p, strict=True)]
    for i, (g, s) in enumerate(zip(grads[1:], summed, strict=True)):
        assert _rel(g, s) < 1e-10, i


@pytest.mark.parametrize("hybrid", ["mac(segment=4, persistent=2)", "mac(segment=3, persistent=0)",
                                    "mag(window=3, persistent=2)", "mal(window=3, persistent=2)"])
def test_packed_documents_equal_separate_runs(hybrid: str) -> None:
    """Nothing crosses a document: MAC's segments restart at each document, MAG/MAL give each
    document its own persistent prefix and window, the memory restarts."""
    torch.manual_seed(0)
    layer = spec(hybrid).layer(8, heads=2).double()
    x = torch.randn(1, sum(LENGTHS), 8, dtype=torch.float64)
    params = [layer.attn.q_proj.weight if isinstance(layer, MACLayer) else
              layer.attn.attn.q_proj.weight, layer.memory.k_proj.weight]
    if layer.n_persistent:
        params.append(layer.persistent)
    _check_packed(lambda t, cu: layer(t, cu_seqlens=cu), x, params)


def test_packed_sliding_window_attention() -> None:
    torch.manual_seed(0)
    attn = SlidingWindowAttention(8, 2, window=3, sink=1).double()
    x = torch.randn(1, sum(LENGTHS), 8, dtype=torch.float64)
    _check_packed(lambda t, cu: attn(t, cu_seqlens=cu), x, [attn.attn.k_proj.weight])
    with pytest.raises(ValueError, match="decoding cache"):
        attn(x, return_cache=True, cu_seqlens=CU)


@pytest.mark.parametrize("hybrid", ["samba(window=3)", "mac(segment=4, persistent=2)"])
def test_packed_lm_equals_separate_runs(hybrid: str) -> None:
    torch.manual_seed(0)
    lm = LM(spec(hybrid), vocab=11, d_model=8, layers=2, heads=2).double()
    tokens = torch.randint(0, 11, (1, sum(LENGTHS)))

    def run(e: Tensor, cu: Tensor | None) -> Tensor:  # the LM from its embeddings on
        hook = lm.embed.register_forward_hook(lambda *_: e)
        try:
            return lm(tokens[:, : e.shape[1]], cu_seqlens=cu)
        finally:
            hook.remove()

    params = [lm.blocks[0].mlp.up.weight, next(lm.blocks[1].mixer.parameters())]
    _check_packed(run, lm.embed(tokens), params)
    with pytest.raises(ValueError, match="decoding cache"):
        lm(tokens, return_caches=True, cu_seqlens=CU)


@pytest.mark.parametrize("name", HYBRID_EXAMPLES)
def test_hybrid_examples_build_and_train(name: str) -> None:
    torch.manual_seed(0)
    c = miras.compile(EXAMPLES / f"{name}.miras")
    kind = c.hybrid.kind
    layer = c.layer(16, heads=2)
    want = {"mac": MACLayer, "mag": MAGLayer, "mal": MALLayer, "samba": MirasLayer}[kind]
    assert type(layer) is want
    lm = LM(c, vocab=16, d_model=16, layers=2, heads=2)
    mixers = [type(b.mixer) for b in lm.blocks]
    assert mixers == ([MirasLayer, SlidingWindowAttention] if kind == "samba" else [want] * 2)
    logits = lm(torch.randint(0, 16, (2, 10)))
    logits.logsumexp(-1).mean().backward()
    grads = {n: p.grad for n, p in lm.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [
        n for n, g in grads.items() if g is None or not torch.isfinite(g).all()]


@pytest.mark.parametrize("hybrid", ["mac(segment=8, persistent=2)", "mag(window=8, persistent=2)",
                                    "mal(window=8, persistent=2)", "samba(window=8)"])
def test_tiny_mqar_loss_decreases(hybrid: str) -> None:
    r = train(spec(hybrid), task="mqar", steps=15, batch=8, seq_len=16, vocab=16,
              d_model=16, heads=2, lr=1e-2, seed=0)
    first, last = sum(r["losses"][:3]) / 3, sum(r["losses"][-3:]) / 3
    assert last < first - 0.1, r["losses"]


def test_train_cli_titans_mac() -> None:
    r = CliRunner().invoke(app, ["train", str(EXAMPLES / "titans_mac.miras"), "--task", "mqar",
                                 "--steps", "5", "--json"])
    assert r.exit_code == 0, r.output
    assert '"model": "titans_mac"' in r.stdout
