"""The recurrence engine against closed forms, and the chunk form against the reference."""

from __future__ import annotations

import itertools

import pytest
import torch

from miras.runtime.engine import Fns, Recipe, initial_state, run_chunked, run_reference
from miras.runtime.memory import MemoryShape, init_weights

B, H, T, D = 2, 2, 11, 4


def _l2(y, v, k, vals):
    return y - v


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3))
    return q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True), v, g


def _vals(g, channel: bool):
    c = D if channel else 1
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return {"lr": r(B, H, T, c) * 0.5, "decay": r(B, H, T, c) * 0.3 + 0.7,
            "momentum": r(B, H, T, c) * 0.9, "gamma": r(B, H, T, 1),
            "threshold": torch.full((B, H, T, 1), 1e-3, dtype=torch.float64)}


def _weights(shape: MemoryShape):
    return {n: x.expand(B, *x.shape).clone()
            for n, x in init_weights(shape, D, D, H, dtype=torch.float64).items()}


def test_delta_rule_closed_form() -> None:
    q, k, v, g = _inputs()
    vals = _vals(g, False)
    del vals["gamma"]  # no window
    rec = Recipe(MemoryShape("matrix"), retention="decay", decay_at="decayed")
    o, state = run_reference(rec, Fns(_l2), q, k, v, vals, initial_state(rec, _weights(
        rec.memory)))
    m = torch.zeros(B, H, D, D, dtype=torch.float64)
    ref = []
    for t in range(T):
        a = vals["decay"][:, :, t, :, None]
        beta = vals["lr"][:, :, t, :, None]
        kt, vt = k[:, :, t], v[:, :, t]
        # Gated DeltaNet: M = α(I − β k kᵀ)M + β v kᵀ  (row convention y = M k)
        m = a * m - beta * torch.einsum("bhi,bhj->bhij", torch.einsum("bhij,bhj->bhi", a * m, kt)
                                        - vt, kt)
        ref.append(torch.einsum("bhij,bhj->bhi", m, q[:, :, t]))
    torch.testing.assert_close(o, torch.stack(ref, 2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.weights["W"], m, rtol=1e-12, atol=1e-12)


SHAPES = {
    "vector": MemoryShape("vector", init="uniform"),
    "matrix": MemoryShape("matrix", init="uniform"),
    "mlp": MemoryShape("mlp", depth=2, hidden=6, residual=True, norm="layernorm", init="uniform"),
    "gated": MemoryShape("gated_mlp", hidden=6, residual=True, init="uniform"),
}
CASES = [
    (m, ret, alg, at, win, ch)
    for m, ret, alg, at, win, ch in itertools.product(
        SHAPES, ["none", "decay", "lq", "kl", "elastic_net", "bregman"],
        ["gd", "momentum", "muon", "implicit_gd"], ["prev", "decayed"], [1, 3], [False, True])
    if not (alg == "muon" and m == "vector") and not (at == "decayed" and ret != "decay")
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-30))


def _case(m: str, ret: str, alg: str, at: str, win: int) -> tuple[Recipe, Fns]:
    """The recipe of one of CASES (Memora's lag token with KL, read-before with a window)."""
    rec = Recipe(SHAPES[m], retention=ret, decay_at=at, algorithm=alg, window=win,
                 lq_r=4 / 3, lag_token=ret == "kl", read_before=win == 3)
    fns = Fns(_l2, mirror=lambda w: torch.log(w) + 1, mirror_inv=lambda u: torch.exp(u - 1))
    return rec, fns


@pytest.mark.parametrize(("m", "ret", "alg", "at", "win", "ch"), CASES[::3],
                         ids=["-".join(map(str, c)) for c in CASES[::3]])
def test_chunk_form_equals_chunk_anchored_reference(m, ret, alg, at, win, ch) -> None:
    q, k, v, g = _inputs(len(m) + len(ret))
    vals = _vals(g, ch)
    rec, fns = _case(m, ret, alg, at, win)
    w0 = _weights(rec.memory)
    for chunk in (1, 4):
        o1, s1 = run_reference(rec, fns, q, k, v, vals, initial_state(rec, w0), chunk)
        o2, s2 = run_chunked(rec, fns, q, k, v, vals, initial_state(rec, w0), chunk)
        assert _rel(o2, o1) < 1e-9
        for n in w0:
            assert _rel(s2.weights[n], s1.weights[n]) < 1e-9


def test_chunk_size_changes_the_result_for_nonlinear_memory() -> None:
    """Chunk anchoring is an approximation for deep memory: chunk 4 ≠ chunk 1."""
    q, k, v, g = _inputs()
    vals = _vals(g, False)
    rec = Recipe(SHAPES["mlp"], retention="decay", algorithm="momentum")
    fns = Fns(_l2)
    w0 = _weights(rec.memory)
    o1, _ = run_reference(rec, fns, q, k, v, vals, initial_state(rec, w0), 1)
    o4, _ = run_reference(rec, fns, q, k, v, vals, initial_state(rec, w0), 4)
    assert _rel(o4, o1) > 1e-6


def test_state_carries_across_calls() -> None:
    q, k, v, g = _inputs()
    vals = _vals(g, False)
    rec = Recipe(SHAPES["matrix"], retention="decay", algorithm="momentum", window=3)
    fns = Fns(_l2)
    w0 = _weights(rec.memory)
    full, s_full = run_reference(rec, fns, q, k, v, vals, initial_state(rec, w0))
    cut = 5
    first, s = run_reference(rec, fns, q[:, :, :cut], k[:, :, :cut], v[:, :, :cut],
                             {n: x[:, :, :cut] for n, x in vals.items()}, initial_state(rec, w0))
    second, s2 = run_chunked(rec, fns, q[:, :, cut:], k[:, :, cut:], v[:, :, cut:],
                             {n: x[:, :, cut:] for n, x in vals.items()}, s, 1)
    torch.testing.assert_close(torch.cat([first, second], 2), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2.weights["W"], s_full.weights["W"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("at", ["prev", "decayed"])
@pytest.mark.parametrize("read_before", [False, True])
@pytest.mark.parametrize(("affine", "alg", "channel"), [
    ((1.0, 1.0), "gd", False), ((2.0, 2.0), "gd", True), ((0.0, 1.0), "gd", False),
    ((1.0, 1.0), "implicit_gd", True)])
def test_exact_chunk_form_equals_the_recurrence(at, read_before, affine, alg, channel) -> None:
    q, k, v, g = _inputs(7)
    vals = _vals(g, channel)
    del vals["gamma"], vals["momentum"]
    vals["decay"] = vals["decay"][..., :1]
    bias = {(1.0, 1.0): _l2, (2.0, 2.0): lambda y, v, k, vals: 2 * (y - v),
            (0.0, 1.0): lambda y, v, k, vals: -v}[affine]
    rec = Recipe(MemoryShape("matrix"), retention="decay", decay_at=at, algorithm=alg,
                 read_before=read_before, exact=True, affine=affine)
    w0 = {"W": torch.randn(B, H, D, D, generator=g, dtype=torch.float64) * 0.1}
    o1, s1 = run_reference(rec, Fns(bias), q, k, v, vals, initial_state(rec, w0), 4)
    for chunk in (1, 3, 4, 11):
        o2, s2 = run_chunked(rec, Fns(bias), q, k, v, vals, initial_state(rec, w0), chunk)
        assert _rel(o2, o1) < 1e-10
        assert _rel(s2.weights["W"], s1.weights["W"]) < 1e-10
