"""The fused 'exact' kernels (DeltaNet, Gated DeltaNet, Longhorn, ...) under the interpreter.

Forward output, final state and every gradient (q, k, v, lr, decay, the initial state) of
``backend="triton"`` against the PyTorch chunk path (same dtype) and against the fp64
per-token recurrence (``backend="reference"``), as relative errors ‖ref − out‖ / ‖ref‖.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import miras
from miras import fusion
from miras.runtime.engine import State
from miras.runtime.fused import FallbackWarning
from miras.runtime.triton_support import interpreted

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: specs by test id: the three examples plus the other biases and anchors
SPECS = {
    "deltanet": EXAMPLES / "deltanet.miras",
    "gated_deltanet": EXAMPLES / "gated_deltanet.miras",
    "longhorn_scalar": """model longhorn_scalar { memory = matrix  bias = l2  retention = none
        algorithm = implicit_gd(lr=gate(act=sigmoid))  parallel = exact(size=16) }""",
    "delta_prev": """model delta_prev { memory = matrix  bias = l2
        retention = decay(alpha=gate(act=sigmoid), at=prev)
        algorithm = gd(lr=gate(act=sigmoid))  parallel = exact(size=16) }""",
    "dot_decayed": """model dot_decayed { memory = matrix  bias = dot
        retention = decay(alpha=gate(act=sigmoid), at=decayed)
        algorithm = gd(lr=gate(act=sigmoid))  parallel = exact(size=16) }""",
    "lp2_prev": """model lp2_prev { memory = matrix  bias = lp(p=2)
        retention = decay(alpha=gate(act=sigmoid), at=prev)
        algorithm = gd(lr=gate(act=sigmoid))  parallel = exact(size=16) }""",
}

#: relative-error bounds (forward, gradients) for fp32 inputs: the interpreter multiplies in
#: fp32; a GPU's fp32 ``tl.dot`` runs in TF32 (10-bit mantissa)
TOL = (1e-5, 1e-4) if interpreted() else (5e-3, 1e-2)

_COMPILED: dict[str, miras.Compiled] = {}


def _compiled(name: str) -> miras.Compiled:
    if name not in _COMPILED:
        _COMPILED[name] = miras.compile(SPECS[name])
    return _COMPILED[name]


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return float((ref - out.double()).norm() / ref.norm().clamp_min(1e-30))


def _inputs(c: miras.Compiled, B: int, T: int, H: int, D: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g,
                                                  dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    gates = {}
    for role, info in c.gates.items():
        assert not info.channel
        lo, hi = (0.2, 0.9) if role == "lr" else (0.75, 1.0)
        gates[role] = (lo + (hi - lo) * torch.rand(B, T, H, generator=g, dtype=torch.float64))
    w0 = 0.3 * torch.randn(B, H, D, D, generator=g, dtype=torch.float64)
    go = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    gw = torch.randn(B, H, D, D, generator=g, dtype=torch.float64)
    return dict(q=q, k=k, v=v, w0=w0, **gates), go, gw


def _run(c: miras.Compiled, x: dict[str, torch.Tensor], go: torch.Tensor, gw: torch.Tensor,
         backend: str, dtype: torch.dtype, chunk: int | None):
    """Output, final state and the gradients of ⟨o, go⟩ + ⟨W_T, gw⟩ by input name."""
    leaves = {n: t.to(dtype).requires_grad_(True) for n, t in x.items()}
    gates = {n: t for n, t in leaves.items() if n not in ("q", "k", "v", "w0")}
    state = State({"W": leaves["w0"]})
    o, final = c.functional(leaves["q"], leaves["k"], leaves["v"], initial_state=state,
                            backend=backend, chunk_size=chunk, **gates)
    wt = final.weights["W"]
    loss = (o.double() * go).sum() + (wt.double() * gw).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return o.detach(), wt.detach(), dict(zip(leaves, grads, strict=True))


def _check(name: str, B: int, T: int, H: int, D: int, chunk: int | None, seed: int = 0
           ) -> dict[str, float]:
    c = _compiled(name)
    assert c.fused == "exact", c.fused_reason
    x, go, gw = _inputs(c, B, T, H, D, seed)
    o, wt, grads = _run(c, x, go, gw, "triton", torch.float32, chunk)
    errs = {}
    for backend, dtype in (("chunk", torch.float32), ("reference", torch.float64)):
        o_r, wt_r, grads_r = _run(c, x, go, gw, backend, dtype, chunk)
        errs[f"{backend}:o"] = _rel(o, o_r)
        errs[f"{backend}:W_T"] = _rel(wt, wt_r)
        for n in grads:
            errs[f"{backend}:d{n}"] = _rel(grads[n], grads_r[n])
    bad = {n: e for n, e in errs.items()
           if not e < (TOL[0] if n.endswith((":o", ":W_T")) else TOL[1])}
    assert not bad, (bad, errs)
    return errs


@pytest.mark.parametrize("name", sorted(SPECS))
def test_exact_matches_chunk_and_fp64_recurrence(name: str) -> None:
    _check(name, B=1, T=24, H=2, D=16, chunk=16)


@pytest.mark.parametrize("name", ["gated_deltanet", "delta_prev"])
def test_odd_shapes(name: str) -> None:
    """T not a multiple of the chunk, head_dim 48 (masked blocks), three heads, chunk 8."""
    _check(name, B=1, T=37, H=3, D=48, chunk=8, seed=1)


@pytest.mark.parametrize("chunk", [32, 64])
def test_chunk_length_does_not_change_the_result(chunk: int) -> None:
    """Chunks of 32 and 64 tokens invert A in two levels ([16, 16] blocks, then F)."""
    c = _compiled("gated_deltanet")
    x, go, gw = _inputs(c, 1, 70, 1, 16, seed=2)
    o16, w16, g16 = _run(c, x, go, gw, "triton", torch.float32, 16)
    o, w, g = _run(c, x, go, gw, "triton", torch.float32, chunk)
    assert _rel(o, o16) < TOL[0] and _rel(w, w16) < TOL[0]
    assert all(_rel(g[n], g16[n]) < TOL[1] for n in g16)


def test_every_output_element_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffers the kernels allocate are poisoned with NaN: any element left unwritten shows."""
    c = _compiled("gated_deltanet")
    x, go, gw = _inputs(c, 1, 21, 3, 48, seed=3)
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(math.nan) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))
    o, wt, grads = _run(c, x, go, gw, "triton", torch.float32, 16)
    monkeypatch.undo()
    for n, t in {"o": o, "W_T": wt, **grads}.items():
        assert bool(torch.isfinite(t).all()), n
    o_r, wt_r, grads_r = _run(c, x, go, gw, "chunk", torch.float32, 16)
    assert _rel(o, o_r) < TOL[0] and _rel(wt, wt_r) < TOL[0]
    assert all(_rel(grads[n], grads_r[n]) < TOL[1] for n in grads)


def test_half_precision_inputs() -> None:
    """fp16 in, fp16 out (fp32 state and accumulation) against the fp64 recurrence."""
    c = _compiled("gated_deltanet")
    x, go, gw = _inputs(c, 1, 24, 2, 16, seed=4)
    o, wt, grads = _run(c, x, go, gw, "triton", torch.float16, 16)
    assert o.dtype == torch.float16 and wt.dtype == torch.float32
    o_r, wt_r, grads_r = _run(c, x, go, gw, "reference", torch.float64, 16)
    assert _rel(o, o_r) < 1e-2 and _rel(wt, wt_r) < 1e-2
    assert all(_rel(grads[n], grads_r[n]) < 3e-2 for n in grads), {
        n: _rel(grads[n], grads_r[n]) for n in grads}


def test_no_final_state() -> None:
    c = _compiled("deltanet")
    x, _, _ = _inputs(c, 1, 20, 1, 16, seed=5)
    gates = {n: t.float() for n, t in x.items() if n not in ("q", "k", "v", "w0")}
    o, final = c.functional(x["q"].float(), x["k"].float(), x["v"].float(), backend="triton",
                            output_final_state=False, **gates)
    ref, _ = c.functional(x["q"].float(), x["k"].float(), x["v"].float(), backend="chunk",
                          **gates)
    assert final is None and _rel(o, ref) < TOL[0]


def test_channel_wise_lr_falls_back_with_a_reason() -> None:
    m = miras.load(EXAMPLES / "longhorn.miras")
    assert fusion.decide(m).family is None
    assert "channel-wise lr" in fusion.decide(m).reason
    c = miras.compile(EXAMPLES / "longhorn.miras")
    x, _, _ = _inputs(_compiled("deltanet"), 1, 6, 1, 8)
    lr = torch.rand(1, 6, 1, 8, dtype=torch.float64)
    with pytest.warns(FallbackWarning, match="channel-wise lr"):
        c.functional(x["q"], x["k"], x["v"], backend="triton", lr=lr)


# ---- strided inputs: fused.run hands the kernels views of the caller's [B, T, H, D] tensors --

def _relayout(x: torch.Tensor, how: str) -> torch.Tensor:
    """``x`` ``[B, H, T, ...]``: the same values in another memory layout, as a view."""
    if how == "contiguous":
        return x.contiguous()
    if how == "bthd":  # the [B, H, T, ·] view of a [B, T, H, ·] tensor
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if how == "slice":  # inside a NaN-padded larger tensor: a read outside the view shows
        big = torch.full([n + 2 for n in x.shape], math.nan, dtype=x.dtype)
        inner = (slice(1, -1),) * x.dim()
        big[inner] = x
        return big[inner]
    assert how == "every_other"  # every last dim strided by 2 (q, k, v are copied for it)
    big = torch.full([*x.shape[:-1], 2 * x.shape[-1]], math.nan, dtype=x.dtype)
    big[..., ::2] = x
    return big[..., ::2]


def _module_run(c: miras.Compiled, x: dict[str, torch.Tensor], how: str):
    """The kernel module's ``run`` (and its backward) with every input, dO and dW_T laid
    out by ``how``: ``o``, ``W_T`` and the gradients by input name."""
    leaves = {n: _relayout(t, how).requires_grad_(True) for n, t in x.items()}
    gates = {n: t for n, t in leaves.items() if n not in ("q", "k", "v", "w0", "do", "dwt")}
    o, final = c.kernels.run(leaves["q"], leaves["k"], leaves["v"], gates,
                             {"weights.W": leaves["w0"]}, 16, True)
    inputs = [t for n, t in leaves.items() if n not in ("do", "dwt")]
    grads = torch.autograd.grad((o, final["weights.W"]), inputs,
                                (leaves["do"].detach(), leaves["dwt"].detach()))
    return o, final["weights.W"], dict(zip([n for n in leaves if n not in ("do", "dwt")], grads,
                                           strict=True))


@pytest.mark.parametrize("how", ["bthd", "slice", "every_other"])
@pytest.mark.parametrize("name", ["gated_deltanet", "deltanet"])
def test_strided_inputs_give_identical_results(name: str, how: str) -> None:
    """q, k, v, the gates and dO as views (of [B, T, H, ·] memory, inside a larger tensor,
    with a strided last dim): the output, final state and every gradient equal, bit for bit,
    those of contiguous inputs."""
    c = _compiled(name)
    assert c.kernels.STRIDED
    x, go, gw = _inputs(c, 2, 21, 3, 16, seed=7)
    x = {n: (t.transpose(1, 2) if n != "w0" else t).float() for n, t in x.items()}
    x.update(do=go.transpose(1, 2).float(), dwt=gw.float())
    o, wt, grads = _module_run(c, x, "contiguous")
    o_s, wt_s, grads_s = _module_run(c, x, how)
    assert torch.equal(o_s, o) and torch.equal(wt_s, wt)
    for n in grads:
        assert torch.equal(grads_s[n], grads[n]), n


def test_functional_reads_and_writes_the_callers_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """``functional(backend="triton")`` on [B, T, H, D] tensors: the kernels get q, k, v, the
    gates (forward) and dO (backward) in the caller's own storage (no copy to head-first),
    and o and the gradients come back contiguous in [B, T, H, ·] (no copy back)."""
    c = _compiled("gated_deltanet")
    x, go, _ = _inputs(c, 2, 32, 3, 16, seed=8)
    x = {n: t.float().requires_grad_(True) for n, t in x.items() if n != "w0"}
    go = go.float()
    storage: dict[str, int] = {}
    kernels = c.kernels
    fwd, bwd = kernels.exact_fwd, kernels.exact_bwd

    def record(**ts: torch.Tensor) -> None:
        storage.update({n: t.untyped_storage().data_ptr() for n, t in ts.items()})

    def spy_fwd(q, k, v, beta, alpha, *rest):
        record(q=q, k=k, v=v, lr=beta, decay=alpha)
        return fwd(q, k, v, beta, alpha, *rest)

    def spy_bwd(q, k, v, beta, alpha, saved, do, *rest):
        record(do=do)
        return bwd(q, k, v, beta, alpha, saved, do, *rest)

    monkeypatch.setattr(kernels, "exact_fwd", spy_fwd)
    monkeypatch.setattr(kernels, "exact_bwd", spy_bwd)
    gates = {n: t for n, t in x.items() if n not in ("q", "k", "v")}
    o, _ = c.functional(x["q"], x["k"], x["v"], backend="triton", chunk_size=16, **gates)
    grads = torch.autograd.grad(o, list(x.values()), go)
    assert storage == {n: t.untyped_storage().data_ptr() for n, t in [*x.items(), ("do", go)]}
    assert o.is_contiguous()
    for n, g in zip(x, grads, strict=True):
        assert g.is_contiguous(), n
    o_r, _ = c.functional(*(x[n].detach() for n in ("q", "k", "v")), backend="chunk",
                          chunk_size=16, **{n: t.detach() for n, t in gates.items()})
    assert _rel(o.detach(), o_r) < TOL[0]


def test_a_module_without_strided_gets_contiguous_inputs(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The contract for the families that have not opted in: ``fused.run`` makes q, k, v and
    the gates contiguous before a module without ``STRIDED`` sees them."""
    c = _compiled("gated_deltanet")
    kernels = c.kernels
    seen: dict[str, torch.Tensor] = {}

    def run(q, k, v, gates, state, chunk, output_final_state):
        seen.update(q=q, k=k, v=v, **gates)
        return kernels.run(q, k, v, gates, state, chunk, output_final_state)

    x, _, _ = _inputs(c, 1, 16, 2, 16, seed=9)
    x = {n: t.float() for n, t in x.items() if n != "w0"}
    gates = {n: t for n, t in x.items() if n not in ("q", "k", "v")}
    o, _ = c.functional(x["q"], x["k"], x["v"], backend="triton", chunk_size=16, **gates)
    monkeypatch.setattr(c, "_kernels", SimpleNamespace(MODEL_NAME=c.name, run=run))
    o_plain, _ = c.functional(x["q"], x["k"], x["v"], backend="triton", chunk_size=16, **gates)
    assert sorted(seen) == ["decay", "k", "lr", "q", "v"]
    assert all(t.is_contiguous() for t in seen.values())
    assert torch.equal(o_plain, o)
