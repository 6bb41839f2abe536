"""The fused 'muon' kernels against the PyTorch chunk path and the fp64 recurrence.

Runs under ``TRITON_INTERPRET=1`` on the CPU (tiny shapes); on CUDA the same tests run the
compiled kernels. Every comparison is a relative error ‖ref − out‖ / ‖ref‖ per tensor; the
inputs (``_inputs``: random gates, non-zero initial weights and momentum) and the runs
(``_run``: output, final state and the gradients of a random linear loss) are those of the
'mlp' family's tests.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest
import torch

import miras
from miras import fusion
from miras.compiler import build_plan, render_triton
from miras.runtime.engine import State
from miras.runtime.fused import FallbackWarning
from miras.runtime.triton_support import interpreted

# nan_buffers is a fixture (every torch.empty buffer starts as NaN)
from tests.runtime.test_kernels_mlp import _compare, _inputs, _run, nan_buffers  # noqa: F401

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = [pytest.mark.skipif(not (torch.cuda.is_available() or interpreted()),
                                 reason="needs CUDA or TRITON_INTERPRET=1"),
              # a silent fallback to the PyTorch chunk path would compare it with itself
              pytest.mark.filterwarnings("error::miras.runtime.fused.FallbackWarning")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _spec(name: str, memory: str, retention: str, lr: str = "gate(act=sigmoid)",
          steps: int = 3, bias: str = "l2") -> str:
    return (f"model {name} {{\n    memory = {memory}\n    bias = {bias}\n"
            f"    retention = {retention}\n"
            f"    algorithm = muon(lr={lr}, beta=gate(act=sigmoid), steps={steps})\n"
            "    parallel = chunk(size=16)\n}\n")


DECAY = "decay(alpha=gate(act=sigmoid), at=prev)"
SPECS = {
    # Atlas's memory and optimiser without its window and feature map (5 NS steps)
    "gelu": _spec("gelu", "mlp(depth=2, expansion=2, act=gelu, residual=true)", DECAY, steps=5),
    "one": _spec("one", "mlp(depth=1, residual=true)", DECAY,
                 lr="gate(act=sigmoid, channel=true)"),
    "plain": _spec("plain", "mlp(depth=2, expansion=2, act=gelu, residual=true)", "none"),
    "silu": _spec("silu", "mlp(depth=2, expansion=2, act=silu, residual=false)", DECAY,
                  bias="huber_norm(delta=1.0)"),
    "channel": _spec("channel", "mlp(depth=2, expansion=2, act=gelu, residual=true)", DECAY,
                     lr="gate(act=sigmoid, channel=true)", steps=2),
    "matrix": _spec("matrix", "matrix", DECAY, steps=1),  # one NS step: the loops' edges
    # a feature map on matrix memory (applied before the kernels): K ≠ V, W [8, 64] is wide
    "sketch": _spec("sketch", "matrix", DECAY, steps=2).replace(
        "}", "    feature = sketch(dim=16, degree=2)\n}"),
    # the Omega window (γ-weighted) on matrix memory with a channel-wise lr
    "win_matrix": _spec("win_matrix", "matrix", DECAY, steps=2,
                        lr="gate(act=sigmoid, channel=true)").replace(
        "}", "    window = sliding(size=3, gamma=gate(act=sigmoid))\n}"),
    # a feature map on a residual one-layer MLP (the residual reads the raw k) with a window
    # of 4 and no γ gate
    "poly_one": _spec("poly_one", "mlp(depth=1, residual=true)", "none", steps=2).replace(
        "}", "    feature = poly(degree=2, learnable=true)\n    window = sliding(size=4)\n}"),
    # output norms: layernorm on a two-layer MLP with a window of 3, rmsnorm on one layer
    "ln": _spec("ln", "mlp(depth=2, expansion=2, act=gelu, residual=true, norm=layernorm)",
                DECAY, steps=2).replace(
        "}", "    window = sliding(size=3, gamma=gate(act=sigmoid))\n}"),
    "rms": _spec("rms", "mlp(depth=1, residual=false, norm=rmsnorm)", "none", steps=2),
    # the gated MLP (Atlas++'s memory) with a layernorm and a channel-wise lr, no window
    "gated_ln": _spec("gated_ln", "gated_mlp(expansion=2, act=silu, residual=true, "
                      "norm=layernorm)", DECAY, steps=2, lr="gate(act=sigmoid, channel=true)"),
}
SPECS["atlas"] = (EXAMPLES / "atlas.miras").read_text()
SPECS["atlas_pp"] = EXAMPLES / "atlas_pp.miras"  # (it includes atlas.miras)

@functools.cache
def _compiled(name: str):
    c = miras.compile(SPECS[name])
    assert c.fused == "muon", c.fused_reason
    return c


# spec, B, T, H, D, chunk (the spec's 16): T not a multiple of the chunk; the final state
# then comes from the PyTorch tail after the kernels' whole chunks (Compiled._fused)
CASES = [
    ("gelu", 1, 34, 2, 8, 16),
    ("one", 2, 37, 1, 8, 16),
    ("plain", 1, 24, 2, 8, 16),
    ("silu", 1, 32, 1, 8, 16),
    ("channel", 1, 32, 1, 8, 16),
    ("matrix", 1, 36, 2, 16, 16),
    ("sketch", 1, 20, 1, 8, 16),
    ("win_matrix", 1, 21, 2, 8, 8),
    ("poly_one", 1, 19, 1, 4, 8),
    # Atlas itself: window 16, poly(2) features (21 at head dim 4), hidden 16; the kernels
    # run 4 chunks of 8, the last ones with all 15 previous rows of their window
    ("atlas", 1, 37, 1, 4, 8),
    ("ln", 1, 19, 1, 8, 8),
    ("rms", 1, 19, 2, 8, 8),
    ("gated_ln", 1, 19, 2, 8, 8),
    ("atlas_pp", 1, 27, 1, 4, 8),
]

#: per-tensor thresholds (NS amplifies rounding in the momentum's small singular values)
TOL = {"d.gate.momentum": 5e-5, "d.gate.lr": 5e-5, "d.gate.decay": 5e-5}
DEFAULT_TOL = 2e-5


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_chunk_and_reference(case) -> None:
    """Output, final state (weights and momentum) and the gradients of q, k, v, every gate
    and the initial state (weights and momentum).

    A tensor may also be off by 3× the fp32 chunk path's own error against the fp64
    reference: Atlas's window of 16 and poly features leave its gradients 2e-5 (Atlas) to
    1.3e-4 (Atlas++: the feature coefficients) from fp64 in either fp32 implementation."""
    name, B, T, H, D, chunk = case
    c = _compiled(name)
    inputs = _inputs(c, B, T, H, D, seed=3)
    out = _run(c, "triton", torch.float32, inputs, chunk, grad=True)
    assert {n for n in out if n.startswith("d.gate.")} == {f"d.gate.{n}" for n in c.gates}
    assert {n for n in out if n.startswith("d.momentum.")}
    ref = _run(c, "reference", torch.float64, inputs, chunk, grad=True)
    torch_chunk = _run(c, "chunk", torch.float32, inputs, chunk, grad=True)
    own = _compare(ref, torch_chunk, {}, 1.0)
    tol = {n: max(TOL.get(n, DEFAULT_TOL), 3 * e) for n, e in own.items()}
    _compare(torch_chunk, out, tol, DEFAULT_TOL)
    _compare(ref, out, tol, DEFAULT_TOL)


def _partial(c, backend: str, dtype: torch.dtype, inputs, chunk: int) -> dict[str, torch.Tensor]:
    """Output and gradients without the final state: the kernels run the partial last chunk."""
    q, k, v, gates, w, m = inputs
    leaves = {"q": q, "k": k, "v": v, **{f"gate.{n}": x for n, x in gates.items()}}
    leaves = {n: x.detach().to(dtype).requires_grad_(True) for n, x in leaves.items()}
    st = State({n: x.to(dtype) for n, x in w.items()}, {n: x.to(dtype) for n, x in m.items()},
               None, None)
    o, final = c.functional(leaves["q"], leaves["k"], leaves["v"], backend=backend,
                            initial_state=st, chunk_size=chunk, output_final_state=False,
                            **{n[5:]: x for n, x in leaves.items() if n.startswith("gate.")})
    assert final is None
    g = torch.Generator().manual_seed(2)
    (o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(DEVICE)).sum(
    ).backward()
    return {"o": o.detach(), **{f"d.{n}": x.grad for n, x in leaves.items()}}


@pytest.mark.parametrize(("name", "H", "D", "chunk"), [
    ("plain", 1, 8, 16), ("one", 2, 8, 16), ("win_matrix", 2, 8, 8), ("atlas", 1, 4, 8)])
def test_partial_last_chunk_in_the_kernels(name: str, H: int, D: int, chunk: int) -> None:
    c = _compiled(name)
    inputs = _inputs(c, 1, 21, H, D, seed=6)
    out = _partial(c, "triton", torch.float32, inputs, chunk)
    _compare(_partial(c, "reference", torch.float64, inputs, chunk), out, TOL, DEFAULT_TOL)


@pytest.mark.usefixtures("nan_buffers")
@pytest.mark.parametrize(("name", "D", "chunk"), [("plain", 8, 16), ("atlas_pp", 4, 8)])
def test_every_element_is_written(name: str, D: int, chunk: int) -> None:
    """Every buffer the kernels allocate starts as NaN; none is left in the results (Atlas++:
    the window's accumulated gradients, the raw q/k and the gate layer's buffers too)."""
    c = _compiled(name)
    out = _run(c, "triton", torch.float32, _inputs(c, 1, 20, 2, D), chunk, grad=True)
    for n, x in out.items():
        assert torch.isfinite(x).all(), n


@pytest.mark.filterwarnings("default::miras.runtime.fused.FallbackWarning")
def test_window_tail_continues_like_one_call() -> None:
    """A fused call returns the window's last c − 1 tokens in its final state; the next call,
    which starts from that tail, runs the chunk path and the two calls equal one call."""
    c = _compiled("win_matrix")
    q, k, v, gates, w, m = _inputs(c, 1, 24, 1, 8, seed=6)
    whole, _ = c.functional(q, k, v, backend="reference", initial_state=State(w, m, None, None),
                            chunk_size=8, **gates)
    f32 = lambda d: {n: x.float() for n, x in d.items()}  # noqa: E731
    cut = lambda sl: {n: x[:, sl].float() for n, x in gates.items()}  # noqa: E731
    o1, mid = c.functional(*(x[:, :16].float() for x in (q, k, v)), backend="triton",
                           initial_state=State(f32(w), f32(m), None, None), chunk_size=8,
                           **cut(slice(0, 16)))
    assert mid.window is not None and mid.window[0].shape[2] == 2
    with pytest.warns(FallbackWarning, match="window tail"):
        o2, _ = c.functional(*(x[:, 16:].float() for x in (q, k, v)), backend="triton",
                             initial_state=mid, chunk_size=8, **cut(slice(16, None)))
    _compare({"o": whole}, {"o": torch.cat([o1, o2], 1)}, {}, DEFAULT_TOL)


def test_low_precision_inputs() -> None:
    """fp16 q, k, v and gates (the state and the math stay fp32)."""
    c = _compiled("one")
    inputs = _inputs(c, 1, 32, 2, 8)
    ref = _run(c, "reference", torch.float64, inputs, 16, grad=True)
    out = _run(c, "triton", torch.float16, inputs, 16, grad=True)
    assert out["o"].dtype == torch.float16 and out["final.weights.W0"].dtype == torch.float32
    assert out["d.q"].dtype == torch.float16 and out["d.weights.W0"].dtype == torch.float32
    _compare(ref, out, {}, 1e-2)


@pytest.mark.parametrize("name", ["gelu", "one", "matrix"])
def test_kernel_module_is_deterministic_and_parses(name: str) -> None:
    p = build_plan(SPECS[name])
    a = render_triton(p)
    assert a is not None and a == render_triton(p) and "def muon_bwd_kernel(" in a
    ast.parse(a)


def test_shape_limit() -> None:
    """Each weight matrix stays whole in registers: larger ones fall back with a reason."""
    mod = _compiled("gelu").kernels
    assert mod.unsupported(32, 32) is None  # W0 64 × 32
    assert "whole on chip" in mod.unsupported(64, 64)  # W0 128 × 64
    assert "head_dim ≤ 128" in mod.unsupported(256, 256)
    assert _compiled("matrix").kernels.unsupported(64, 64) is None
    assert "whole on chip" in _compiled("matrix").kernels.unsupported(128, 128)


@pytest.mark.parametrize("name", ["atlas", "atlas_mag", "atlas_mal", "atlas_pp"])
def test_atlas_is_fused(name: str) -> None:
    """Atlas (Omega window of 16, polynomial feature map), its hybrids and Atlas++."""
    f = fusion.decide(miras.load(EXAMPLES / f"{name}.miras"))
    assert f.family == "muon", f.reason


def test_atlas_shape_limit() -> None:
    """Atlas's poly(2) features are 1 + d + d² wide and W0 is 4d × that: fused at head dims
    up to 8 (W0 32 × 73 in a 32 × 128 tile), not at 16 (273 features)."""
    mod = _compiled("atlas").kernels
    assert mod.unsupported(1 + 4 + 16, 4) is None
    assert mod.unsupported(1 + 8 + 64, 8) is None
    assert "feature dim of 273" in mod.unsupported(1 + 16 + 256, 16)


MLP2 = "mlp(depth=2, expansion=2, act=gelu, residual=true"


@pytest.mark.parametrize(("text", "reason"), [
    (SPECS["gelu"].replace("}", "    window = sliding(size=17)\n}"),
     "window of 17 tokens"),
    (_spec("gated", "gated_mlp(expansion=8, act=gelu, residual=true)", DECAY),
     "wider than 4"),
    (_spec("deep", "mlp(depth=3, expansion=2)", DECAY), "depth 3"),
    (_spec("wide", "mlp(depth=2, expansion=8)", DECAY), "wider than 4"),
    (_spec("decayed", MLP2 + ")", "decay(alpha=gate(act=sigmoid), at=decayed)"),
     "decay(at=prev)"),
    (_spec("cdecay", "matrix", "decay(alpha=gate(act=sigmoid, channel=true), at=prev)"),
     "scalar decay gate"),
    # (validation refuses a channel-wise lr with a built-in feature map, E136; a user map
    # may be element-wise)
    ("feature sq(a = 1) = a * x^2\n" + _spec(
        "cfeat", "matrix", DECAY, lr="gate(act=sigmoid, channel=true)").replace(
        "}", "    feature = sq\n}"), "channel-wise lr and a feature map"),
])
def test_unfused_muon_reasons(text: str, reason: str) -> None:
    f = fusion.decide(miras.load(text))
    assert f.family is None and reason in f.reason, f.reason
