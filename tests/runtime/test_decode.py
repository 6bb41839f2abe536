"""Recurrent decoding and packed sequences: continuing a state (one token at a time, or in
pieces that cut chunks) equals one call over the whole sequence; packed documents equal
separate runs. Every comparison is against ``backend="reference"`` on whole sequences."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import miras
from miras.runtime.attention import KVState
from miras.runtime.engine import Fns, Recipe, cat_states, initial_state, run_chunked, run_reference
from tests.runtime.test_engine import CASES, SHAPES, _case, _inputs, _l2, _rel, _vals, _weights

T = 11


def _cut(x: dict | torch.Tensor, a: int, b: int):
    if isinstance(x, dict):
        return {n: t[:, :, a:b] for n, t in x.items()}
    return x[:, :, a:b]


def _assert_states(s1, s2) -> None:
    for n in s2.weights:
        assert _rel(s1.weights[n], s2.weights[n]) < 1e-9, n
    if s2.momentum is not None:
        for n in s2.momentum:
            assert _rel(s1.momentum[n], s2.momentum[n]) < 1e-9, n


@pytest.mark.parametrize(("m", "ret", "alg", "at", "win", "ch"), CASES[1::4],
                         ids=["-".join(map(str, c)) for c in CASES[1::4]])
def test_pieces_and_steps_continue_the_chunk(m, ret, alg, at, win, ch) -> None:
    """A prefill that ends inside a chunk, then pieces and single tokens (both forms)."""
    q, k, v, g = _inputs(len(m) + len(ret))
    vals = _vals(g, ch)
    rec, fns = _case(m, ret, alg, at, win)
    w0 = _weights(rec.memory)
    chunk = 4
    full, s_full = run_reference(rec, fns, q, k, v, vals, initial_state(rec, w0), chunk)
    outs, state = [], initial_state(rec, w0)
    # prefill 5 (chunk form), 1 token (reference), 2 (chunk form), then single tokens
    cuts = [(0, 5, run_chunked), (5, 6, run_reference), (6, 8, run_chunked)]
    cuts += [(t, t + 1, run_reference) for t in range(8, T)]
    for a, b, run in cuts:
        o, state = run(rec, fns, _cut(q, a, b), _cut(k, a, b), _cut(v, a, b), _cut(vals, a, b),
                       state, chunk)
        outs.append(o)
    assert _rel(torch.cat(outs, 2), full) < 1e-9
    _assert_states(state, s_full)
    assert int(state.pos[0]) == T % chunk


def test_rows_at_different_chunk_positions_step_together() -> None:
    """States of sequences at different chunk positions joined by cat_states step as one."""
    q, k, v, g = _inputs(3)
    vals = _vals(g, False)
    rec = Recipe(SHAPES["mlp"], retention="kl", algorithm="momentum", window=3, lag_token=True)
    fns = Fns(_l2)
    w0 = _weights(rec.memory)
    rows = []
    for b, n in ((0, 6), (1, 1)):  # chunk positions 2 and 1, windows of 2 and 1 tokens
        sl = slice(b, b + 1)
        st = initial_state(rec, {x: t[sl] for x, t in w0.items()})
        _, st = run_chunked(rec, fns, q[sl, :, :n], k[sl, :, :n], v[sl, :, :n],
                            {x: t[sl, :, :n] for x, t in vals.items()}, st, 4)
        rows.append((b, n, st))
    joined = cat_states([r[2] for r in rows])
    assert joined.pos.tolist() == [2, 1] and joined.window[0].shape[2] == 2
    qs, ks, vs = (torch.stack([x[b, :, n] for b, n, _ in rows]).unsqueeze(2) for x in (q, k, v))
    vs_ = {x: torch.stack([t[b, :, n] for b, n, _ in rows]).unsqueeze(2) for x, t in vals.items()}
    o, _ = run_reference(rec, fns, qs, ks, vs, vs_, joined, 4)
    for i, (b, n, _) in enumerate(rows):
        sl = slice(b, b + 1)
        ref, _ = run_reference(rec, fns, q[sl, :, :n + 1], k[sl, :, :n + 1], v[sl, :, :n + 1],
                               {x: t[sl, :, :n + 1] for x, t in vals.items()},
                               initial_state(rec, {x: t[sl] for x, t in w0.items()}), 4)
        assert _rel(o[i, :, 0], ref[0, :, -1]) < 1e-9


# ---- compiled specs: every example ------------------------------------------------------

EXAMPLES = sorted((Path(__file__).parent.parent.parent / "examples").glob("*.miras"))
SWA = ("model swa { memory = nonparametric(kernel=softmax)  bias = l2  retention = none  "
       "algorithm = nonparametric  window = sliding(size=4) }")
SPECS = {p.stem: str(p) for p in EXAMPLES} | {"swa": SWA}
H, D, CHUNK = 2, 4, 4


def _data(c: miras.Compiled, b: int, t: int, seed: int = 0) -> tuple[list[torch.Tensor], dict]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.nn.functional.normalize(torch.randn(b, t, H, D, generator=g,
                                                         dtype=torch.float64), dim=-1)
               for _ in range(3))
    gates = {r: 0.3 + 0.6 * torch.rand(b, t, H, *([D] if i.channel else []), generator=g,
                                       dtype=torch.float64) for r, i in c.gates.items()}
    return [q, k, v], gates


def _flat(state) -> list[torch.Tensor]:
    if isinstance(state, KVState):  # the real entries of a one-row cache (no padding)
        keep = state.mask()[0]
        return [state.k[:, :, keep], state.v[:, :, keep]]
    return [t for _, t in sorted(state.tensors().items())]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_prefill_then_step_equals_the_whole_sequence(name: str) -> None:
    """Chunk-form prefill of 6 tokens (inside the second chunk of 4), then 5 single steps."""
    c = miras.compile(SPECS[name])
    (q, k, v), gates = _data(c, 2, T)
    ref, s_ref = c.functional(q, k, v, backend="reference", chunk_size=CHUNK, **gates)
    n = 6
    pre, state = c.functional(q[:, :n], k[:, :n], v[:, :n], chunk_size=CHUNK,
                              **{r: x[:, :n] for r, x in gates.items()})
    outs = [pre]
    for t in range(n, T):
        o, state = c.step(q[:, t], k[:, t], v[:, t], state, chunk_size=CHUNK,
                          **{r: x[:, t] for r, x in gates.items()})
        outs.append(o.unsqueeze(1))
    assert _rel(torch.cat(outs, 1), ref) < 1e-9
    for a, b in zip(_flat(state), _flat(s_ref), strict=True):
        assert _rel(a, b) < 1e-9


# ---- packed documents (cu_seqlens) -------------------------------------------------------

LENGTHS = [5, 0, 7, 3]  # not multiples of the chunk; an empty document too
PACKED = ["ttt_mlp", "omeganet", "atlas", "memora", "gated_deltanet", "moneta",
          "softmax_attention", "swa"]


@pytest.mark.parametrize("backend", ["reference", "chunk"])
@pytest.mark.parametrize("name", PACKED)
def test_packed_documents_equal_separate_runs(name: str, backend: str) -> None:
    c = miras.compile(SPECS[name])
    total = sum(LENGTHS)
    (q, k, v), gates = _data(c, 1, total, seed=1)
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    leaves = [q, k, v, *gates.values()]
    for x in leaves:
        x.requires_grad_(True)
    o, state = c.functional(q, k, v, cu_seqlens=cu, backend=backend, chunk_size=CHUNK,
                            **gates)
    assert state.batch == len(LENGTHS)
    weight = torch.randn(o.shape, generator=torch.Generator().manual_seed(2),
                         dtype=torch.float64)
    grads = torch.autograd.grad((o * weight).sum(), leaves)
    fresh = c.initial_state(1, H, D, dtype=torch.float64)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        sl = slice(a, b)
        if a == b:  # an empty document keeps its initial state
            for x, y in zip(_flat(state.select(slice(i, i + 1))), _flat(fresh), strict=True):
                assert torch.equal(x, y)
            continue
        part = [x[:, sl] for x in leaves]
        alone, s_alone = c.functional(*part[:3], backend="reference", chunk_size=CHUNK,
                                      **dict(zip(gates, part[3:], strict=True)))
        assert _rel(o[:, sl], alone) < 1e-9
        for x, y in zip(_flat(state.select(slice(i, i + 1))), _flat(s_alone), strict=True):
            assert _rel(x, y) < 1e-9
        g_alone = torch.autograd.grad((alone * weight[:, sl]).sum(), leaves)
        for g_packed, g_one in zip(grads, g_alone, strict=True):
            assert _rel(g_packed[:, sl], g_one[:, sl]) < 1e-9


@pytest.mark.parametrize("name", ["omeganet", "memora", "swa"])
def test_packed_final_states_continue_each_document(name: str) -> None:
    """A packed prefill's per-document states: a second packed call, then steps of all
    documents together (rows at different chunk positions), equal each document alone."""
    c = miras.compile(SPECS[name])
    lens1, lens2 = [5, 2, 7], [3, 4, 1]
    (q, k, v), gates = _data(c, 1, sum(lens1) + sum(lens2) + 2, seed=3)
    cu1 = torch.tensor([0, 5, 7, 14])
    cu2 = torch.tensor([0, 3, 7, 8])
    first = slice(0, 14)
    second = slice(14, 22)
    _, state = c.functional(q[:, first], k[:, first], v[:, first], cu_seqlens=cu1,
                            chunk_size=CHUNK, **{r: x[:, first] for r, x in gates.items()})
    o2, state = c.functional(q[:, second], k[:, second], v[:, second], cu_seqlens=cu2,
                             initial_state=state, chunk_size=CHUNK,
                             **{r: x[:, second] for r, x in gates.items()})
    # one more token per document, all three as a batch of 3
    last = [22, 22, 23]  # (the 2nd reuses token 22: only the state differs)
    o3, _ = c.step(*(x[0, last] for x in (q, k, v)), state, chunk_size=CHUNK,
                   **{r: x[0, last] for r, x in gates.items()})
    for i in range(3):
        idx = [*range(cu1[i], cu1[i + 1]), *range(14 + cu2[i], 14 + cu2[i + 1]), last[i]]
        alone, _ = c.functional(*(x[:, idx] for x in (q, k, v)), backend="reference",
                                chunk_size=CHUNK, **{r: x[:, idx] for r, x in gates.items()})
        n2 = int(cu2[i + 1] - cu2[i])
        assert _rel(o2[:, cu2[i]:cu2[i + 1]], alone[:, -1 - n2:-1]) < 1e-9
        assert _rel(o3[i], alone[0, -1]) < 1e-9


# ---- the layer -----------------------------------------------------------------------------

POOLED = ("model pooled { memory = mlp(depth=2)  bias = l2  "
          "retention = decay(alpha=gate(per=chunk))  algorithm = gd(lr=gate(scale=0.5)) }")
LAYER_SPECS = {"titans": SPECS["titans"], "memora": SPECS["memora"],
               "omeganet": SPECS["omeganet"], "gated_deltanet": SPECS["gated_deltanet"],
               "swa": SWA, "pooled": POOLED}


def _layer(spec: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return miras.compile(spec).layer(d_model=8, heads=H, head_dim=D, chunk_size=CHUNK).double()


@pytest.mark.parametrize("name", sorted(LAYER_SPECS))
def test_layer_prefill_then_step(name: str) -> None:
    layer = _layer(LAYER_SPECS[name])
    x = torch.randn(2, T, 8, dtype=torch.float64)
    layer.backend = "reference"
    ref = layer(x)
    layer.backend = None  # the prefill runs the chunk form
    y, cache = layer(x[:, :6], return_state=True)
    outs = [y]
    for t in range(6, T):
        y_t, cache = layer.step(x[:, t], cache)
        outs.append(y_t.unsqueeze(1))
    assert _rel(torch.cat(outs, 1), ref) < 1e-9
    # from an empty cache, steps alone also give the whole sequence
    cache = layer.init_cache(2)
    steps = []
    for t in range(T):
        y_t, cache = layer.step(x[:, t], cache)
        steps.append(y_t)
    assert _rel(torch.stack(steps, 1), ref) < 1e-9


@pytest.mark.parametrize("name", sorted(LAYER_SPECS))
def test_layer_packed_documents(name: str) -> None:
    """Convolutions, chunk-mean gates and memory restart at each document; gradients too."""
    layer = _layer(LAYER_SPECS[name])
    x = torch.randn(1, sum(LENGTHS), 8, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    y, cache = layer(x, return_state=True, cu_seqlens=cu)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    gq = torch.autograd.grad(layer(x, cu_seqlens=cu).square().sum(), layer.q_proj.weight)[0]
    assert cache["conv_q"].shape[0] == len(LENGTHS)
    gq_sum = torch.zeros_like(gq)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        if a == b:
            continue
        alone = layer(x[:, a:b])
        assert _rel(y[:, a:b], alone) < 1e-9
        g_alone, g_q = torch.autograd.grad(alone.square().sum(), (x, layer.q_proj.weight))
        assert _rel(gx[:, a:b], g_alone[:, a:b]) < 1e-9
        gq_sum += g_q
    assert _rel(gq, gq_sum) < 1e-9


def test_user_errors_are_clear() -> None:
    c = miras.compile(SPECS["titans"])
    (q, k, v), gates = _data(c, 1, 6)
    with pytest.raises(ValueError, match="cumulative"):
        c.functional(q, k, v, cu_seqlens=torch.tensor([[0, 6]]), **gates)
    with pytest.raises(ValueError, match="end at T = 6"):
        c.functional(q, k, v, cu_seqlens=torch.tensor([0, 4]), **gates)
    with pytest.raises(ValueError, match="batch must be 1"):
        c.functional(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1),
                     v.expand(2, -1, -1, -1), cu_seqlens=torch.tensor([0, 6]),
                     **{r: x.expand(2, *x.shape[1:]) for r, x in gates.items()})
    with pytest.raises(ValueError, match="one token"):
        c.step(q, k, v, **gates)
    _, state = c.functional(q, k, v, chunk_size=4, **gates)  # 2 tokens into a chunk of 4
    with pytest.raises(ValueError, match="chunk size is 2"):
        c.step(q[:, 0], k[:, 0], v[:, 0], state, chunk_size=2,
               **{r: x[:, 0] for r, x in gates.items()})
    with pytest.raises(TypeError, match="KVState"):
        miras.compile(SWA).step(q[:, 0], k[:, 0], v[:, 0], state)
