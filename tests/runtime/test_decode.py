"""Recurrent decoding and packed sequences: continuing a state (one token at a time, or in
pieces that cut chunks) equals one call over the whole sequence; packed documents equal
separate runs. Every comparison is against ``backend="reference"`` on whole sequences."""

from __future__ import annotations

import pytest
import torch

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
