"""The fused 'mlp' kernels against the PyTorch chunk path and the fp64 recurrence.

Runs under ``TRITON_INTERPRET=1`` on the CPU (tiny shapes); on CUDA the same tests run the
compiled kernels. Every comparison is a relative error ‖ref − out‖ / ‖ref‖ per tensor.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import miras
from miras.runtime.engine import State
from miras.runtime.fused import FallbackWarning
from miras.runtime.triton_support import interpreted

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = [pytest.mark.skipif(not (torch.cuda.is_available() or interpreted()),
                                 reason="needs CUDA or TRITON_INTERPRET=1"),
              # a silent fallback to the chunk path would compare the chunk path with itself
              pytest.mark.filterwarnings("error::miras.runtime.fused.FallbackWarning")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

TITANS = (EXAMPLES / "titans.miras").read_text()
TTT_LINEAR = (EXAMPLES / "ttt_linear.miras").read_text()
TTT_MLP = (EXAMPLES / "ttt_mlp.miras").read_text()
DEEP_TRANSFORMER = (EXAMPLES / "deep_transformer.miras").read_text()
DLA = (EXAMPLES / "dla.miras").read_text()
# the Omega window (c = 16) on MLP memories with feature maps
DOT = (EXAMPLES / "dot.miras").read_text()
SWDT = (EXAMPLES / "deep_transformer.miras").read_text() + (EXAMPLES / "swdt.miras").read_text(
    ).replace('include "deep_transformer.miras"', "")
OMEGANET = (EXAMPLES / "omeganet.miras").read_text()
# runtime bias parameters: a learned Cauchy scale c, Yaad's gated Huber threshold δ_t
CAUCHY = (EXAMPLES / "cauchy.miras").read_text()
CAUCHY_BIAS = "bias cauchy(c=1.0) = sum(log(1 + ((y - v) / c)^2))\n"
# a channel-wise decay with a gated Huber δ_t and a channel-wise lr
YAAD = (EXAMPLES / "yaad.miras").read_text()
CH_DECAY = "decay(alpha=gate(channel=true, act=sigmoid), at=prev)"


def _spec(name: str, memory: str, bias: str, retention: str, algorithm: str,
          feature: str = "identity", window: str = "") -> str:
    return (f"model {name} {{\n    memory = {memory}\n    bias = {bias}\n"
            f"    retention = {retention}\n    algorithm = {algorithm}\n"
            f"    feature = {feature}\n    parallel = chunk(size=16)\n"
            + (f"    window = {window}\n" if window else "") + "}\n")


SPECS = {
    "titans": TITANS,
    "gd": _spec("gd", "mlp(depth=2, expansion=2, act=gelu, residual=true)", "l2",
                "decay(alpha=gate(act=sigmoid), at=prev)", "gd(lr=gate(act=sigmoid))"),
    "silu": _spec("silu", "mlp(depth=2, expansion=2, act=silu, residual=false)", "l2",
                  "decay(alpha=gate(act=sigmoid), at=prev)",
                  "momentum(lr=gate(act=sigmoid), beta=gate(act=sigmoid))"),
    "huber": _spec("huber", "mlp(depth=2, expansion=2, act=gelu, residual=true)",
                   "huber_norm(delta=4.0)", "decay(alpha=gate(act=sigmoid), at=prev)",
                   "momentum(lr=gate(act=sigmoid), beta=gate(act=sigmoid))"),
    "plain": _spec("plain", "mlp(depth=2, expansion=2, act=sigmoid, residual=true)", "l2",
                   "none", "gd(lr=gate(act=sigmoid, channel=true))"),
    # TTT: output norms, depth 1
    "ttt_linear": TTT_LINEAR,
    "ttt_mlp": TTT_MLP,
    "ln_mom": _spec("ln_mom", "mlp(depth=2, expansion=2, act=gelu, residual=true, "
                    "norm=layernorm)", "l2", "decay(alpha=gate(act=sigmoid), at=prev)",
                    "momentum(lr=gate(act=sigmoid), beta=gate(act=sigmoid))"),
    "rms1": _spec("rms1", "mlp(depth=1, residual=false, norm=rmsnorm)", "huber_norm(delta=4.0)",
                  "decay(alpha=gate(act=sigmoid), at=prev)",
                  "momentum(lr=gate(act=sigmoid, channel=true), beta=gate(act=sigmoid))"),
    "rms2": _spec("rms2", "mlp(depth=2, expansion=2, act=silu, residual=false, norm=rmsnorm)",
                  "l2", "none", "gd(lr=gate(act=sigmoid, channel=true))"),
    "lin1": _spec("lin1", "mlp(depth=1, residual=true)", "l2", "none",
                  "gd(lr=gate(act=sigmoid))"),
    # gated MLP memory (Atlas++'s x + W_out(act(W_in x) ⊙ W_gate x), without its Muon)
    "gated": _spec("gated", "gated_mlp(expansion=2, act=gelu, residual=true)", "l2",
                   "decay(alpha=gate(act=sigmoid), at=prev)", "gd(lr=gate(act=sigmoid))"),
    "gated_mom": _spec("gated_mom", "gated_mlp(expansion=2, act=silu, residual=false, "
                       "norm=layernorm)", "huber_norm(delta=4.0)",
                       "decay(alpha=gate(act=sigmoid), at=prev)",
                       "momentum(lr=gate(act=sigmoid, channel=true), beta=gate(act=sigmoid))"),
    "gated_rms": _spec("gated_rms", "gated_mlp(expansion=3, act=sigmoid, residual=true, "
                       "norm=rmsnorm)", "l2", "none", "gd(lr=gate(act=sigmoid, channel=true))"),
    # feature maps: φ(k) (dim F ≠ head_dim) feeds the memory, the residual adds the raw k
    "deep_transformer": DEEP_TRANSFORMER,
    "dla": DLA,
    "poly_mom": _spec("poly_mom", "mlp(depth=2, expansion=2, act=silu, residual=false)", "l2",
                      "decay(alpha=gate(act=sigmoid), at=prev)",
                      "momentum(lr=gate(act=sigmoid), beta=gate(act=sigmoid))",
                      "poly(degree=2, learnable=true)"),
    "poly1": _spec("poly1", "mlp(depth=1, residual=true, norm=layernorm)", "l2",
                   "decay(alpha=gate(act=sigmoid), at=prev)", "gd(lr=gate(act=sigmoid))",
                   "poly(degree=2, learnable=true)"),
    "poly_gated": _spec("poly_gated", "gated_mlp(expansion=2, act=gelu, residual=true)",
                        "huber_norm(delta=4.0)", "none",
                        "momentum(lr=gate(act=sigmoid), beta=gate(act=sigmoid))",
                        "exp_taylor(order=2)"),
    # the Omega window: token t's update sums the γ-weighted gradients of its last c tokens
    "win_gd": _spec("win_gd", "mlp(depth=2, expansion=2, act=gelu, residual=true)", "l2",
                    "decay(alpha=gate(act=sigmoid), at=prev)", "gd(lr=gate(act=sigmoid))",
                    window="sliding(size=4, gamma=gate(act=sigmoid))"),
    "win_mom": _spec("win_mom", "mlp(depth=2, expansion=2, act=silu, residual=false, "
                     "norm=layernorm)", "huber_norm(delta=4.0)",
                     "decay(alpha=gate(act=sigmoid), at=prev)",
                     "momentum(lr=gate(act=sigmoid), beta=gate(act=sigmoid))",
                     window="sliding(size=3, gamma=gate(act=sigmoid))"),
    "win1": _spec("win1", "mlp(depth=1, residual=true)", "l2", "none",
                  "momentum(lr=gate(act=sigmoid), beta=gate(act=sigmoid))",
                  window="sliding(size=4, gamma=1)"),
    "win_gated": _spec("win_gated", "gated_mlp(expansion=2, act=gelu, residual=true)", "l2",
                       "none", "gd(lr=gate(act=sigmoid))", "poly(degree=2, learnable=true)",
                       window="sliding(size=3, gamma=gate(act=sigmoid))"),
    "dot": DOT,
    "swdt": SWDT,
    "omeganet": OMEGANET,
    # bias parameters that are not constants: one value per token (a gate) or per head (a
    # learned value), read beside each gradient row; their gradients leave the kernels too
    "cauchy": CAUCHY,
    "huber_gate": _spec("huber_gate", "mlp(depth=2, expansion=2, act=gelu, residual=true)",
                        "huber(delta=gate(act=softplus))",
                        "decay(alpha=gate(act=sigmoid), at=prev)",
                        "gd(lr=gate(act=sigmoid, channel=true))"),
    "cauchy1": CAUCHY_BIAS + _spec("cauchy1", "mlp(depth=1, residual=true, norm=layernorm)",
                                   "cauchy(c=learned(init=0.8))", "none",
                                   "momentum(lr=gate(act=sigmoid), beta=gate(act=sigmoid))"),
    "two_params": "bias b(c=1.0, d=1.0) = sum(log(1 + ((y - v) / c)^2) + d * (y - v)^2)\n"
                  + _spec("two_params", "mlp(depth=1, residual=true)",
                          "b(c=learned(init=0.8), d=learned(init=0.3))",
                          "decay(alpha=gate(act=sigmoid), at=prev)", "gd(lr=gate(act=sigmoid))"),
    "win_huber": _spec("win_huber", "gated_mlp(expansion=2, act=gelu, residual=true)",
                       "huber_norm(delta=gate(act=softplus))",
                       "decay(alpha=gate(act=sigmoid), at=prev)", "gd(lr=gate(act=sigmoid))",
                       window="sliding(size=3, gamma=gate(act=sigmoid))"),
    # channel-wise decay: W0's (Wg's) input columns, W1's output rows (ops.channel_scale)
    "yaad": YAAD,
    "ch_gd": _spec("ch_gd", "mlp(depth=2, expansion=2, act=gelu, residual=true)", "l2",
                   CH_DECAY, "gd(lr=gate(act=sigmoid))"),
    "ch1": _spec("ch1", "mlp(depth=1, residual=true, norm=layernorm)", "huber_norm(delta=4.0)",
                 CH_DECAY, "gd(lr=gate(act=sigmoid, channel=true))"),
    "ch_gated": _spec("ch_gated", "gated_mlp(expansion=2, act=silu, residual=false, "
                      "norm=rmsnorm)", "l2", CH_DECAY, "gd(lr=gate(act=sigmoid))"),
}

#: Specs whose gradients are ill-conditioned in fp32 (the default tolerance is 2e-5): gated_mom's
#: layernorm over 16 channels under huber gradients puts the fp32 chunk path itself 2.1e-5 from
#: the fp64 recurrence (the kernels 1.6e-5)
LOOSE = {"gated_mom": 5e-5,
         # SWDT's window sums 16 unit-weight dot-bias gradients with lr 1: the fp32 chunk path
         # is 2.5e-5 from the fp64 recurrence in ∂L/∂W0 (the kernels 2.9e-5, 4.6e-6 from it)
         "swdt": 5e-5}

_COMPILED: dict[str, object] = {}


def _compiled(name: str):
    if name not in _COMPILED:
        c = miras.compile(SPECS[name])
        assert c.fused == "mlp", c.fused_reason
        _COMPILED[name] = c
    return _COMPILED[name]


def _rel(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return float((ref - out).norm() / ref.norm().clamp_min(1e-30))


def _inputs(c, B: int, T: int, H: int, D: int, seed: int = 0):
    """q, k, v, gates (fp64, on DEVICE) and a random initial state (weights and momentum)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = r(B, T, H, D) / D**0.5, r(B, T, H, D) / D**0.5, r(B, T, H, D)
    gates = {}
    window = c.module.RECIPE.window
    for n, i in c.gates.items():
        u = torch.rand(B, T, H, D if i.channel else 1, generator=g, dtype=torch.float64)
        # γ ≤ 1/c keeps a window's summed step ≤ 1 (Dot's lr is 1: larger γ diverge in fp32)
        # δ (Huber) about the error norm ‖M(k) − v‖ (~√D): rows on both sides of the switch
        lo, hi = {"decay": (0.8, 1.0), "momentum": (0.3, 0.9), "lr": (0.05, 0.3),
                  "gamma": (0.2 / window, 1.0 / window),
                  "delta": (0.5 * D**0.5, 1.5 * D**0.5)}[n]
        gates[n] = (lo + (hi - lo) * u).squeeze(-1) if not i.channel else lo + (hi - lo) * u
    st = c.initial_state(B, H, D, dtype=torch.float64)
    w = {n: t + 0.05 * r(*t.shape) for n, t in st.weights.items()}
    m = None if st.momentum is None else {n: 0.05 * r(*t.shape) for n, t in w.items()}
    dev = lambda x: x.to(DEVICE)  # noqa: E731
    return (dev(q), dev(k), dev(v), {n: dev(x) for n, x in gates.items()},
            {n: dev(x) for n, x in w.items()}, None if m is None else
            {n: dev(x) for n, x in m.items()})


def _run(c, backend: str, dtype: torch.dtype, inputs, chunk: int, grad: bool, seed: int = 1):
    """Output, final state and (with ``grad``) the gradients of a random linear loss (also
    those of the feature map's trainable coefficients and of learned values, perturbed from
    their init)."""
    q, k, v, gates, w, m = inputs
    feat = {n: i.init * (1 + 0.25 * torch.arange(i.init.numel()).view(i.init.shape))
            for n, i in c.params(q.shape[2], q.shape[3]).items()
            if n.startswith(("feature.", "slot.")) and i.trainable}
    leaves = {"q": q, "k": k, "v": v, **{f"gate.{n}": x for n, x in gates.items()},
              **{f"weights.{n}": x for n, x in w.items()},
              **({f"momentum.{n}": x for n, x in m.items()} if m else {}),
              **{f"param.{n}": x.to(q) for n, x in feat.items()}}
    leaves = {n: x.detach().to(dtype if not n.startswith(("weights", "momentum"))
                               or backend == "reference" else torch.float32)
              .requires_grad_(grad) for n, x in leaves.items()}
    wk = {n[8:]: x for n, x in leaves.items() if n.startswith("weights.")}
    mk = {n[9:]: x for n, x in leaves.items() if n.startswith("momentum.")} or None
    st = State(wk, mk, None, None)
    gk = {n[5:]: x for n, x in leaves.items() if n.startswith("gate.")}
    params = {n[6:]: x for n, x in leaves.items() if n.startswith("param.")}
    o, final = c.functional(leaves["q"], leaves["k"], leaves["v"], backend=backend,
                            initial_state=st, chunk_size=chunk, params=params, **gk)
    outs = {"o": o, **{f"final.weights.{n}": x for n, x in final.weights.items()}}
    if final.momentum is not None:
        outs.update({f"final.momentum.{n}": x for n, x in final.momentum.items()})
    if not grad:
        return {n: x.detach() for n, x in outs.items()}
    g = torch.Generator().manual_seed(seed)
    loss = sum((outs[n].double() * torch.randn(outs[n].shape, generator=g, dtype=torch.float64)
                .to(DEVICE)).sum() for n in sorted(outs))
    loss.backward()
    res = {n: x.detach() for n, x in outs.items()}
    res.update({f"d.{n}": x.grad for n, x in leaves.items()})
    return res


def _compare(ref: dict, out: dict, tol: dict[str, float], default: float) -> dict[str, float]:
    errs = {}
    for n, r in ref.items():
        assert n in out, n
        x = out[n]
        assert x is not None, n
        assert torch.isfinite(x).all(), n
        errs[n] = _rel(r, x)
    bad = {n: e for n, e in errs.items() if e > tol.get(n, default)}
    assert not bad, f"errors above tolerance: {bad} (all: {errs})"
    return errs


CASES = [
    # spec, B, T, H, D, chunk: T not a multiple of the chunk, H = 3, head_dim 48 (hidden
    # 192 = three blocks for titans, 96 = one and a half for the others)
    ("titans", 1, 20, 2, 16, 8),
    ("gd", 2, 19, 1, 16, 8),
    ("silu", 1, 21, 3, 16, 8),
    ("huber", 1, 18, 1, 16, 8),
    ("plain", 1, 17, 1, 16, 16),
    ("titans", 1, 11, 1, 48, 8),
    ("plain", 1, 9, 1, 48, 8),
    ("ttt_linear", 1, 20, 3, 16, 8),
    ("ttt_linear", 1, 11, 1, 48, 8),
    ("ttt_mlp", 1, 20, 2, 16, 8),
    ("ttt_mlp", 1, 11, 1, 48, 8),
    ("ln_mom", 1, 21, 3, 16, 8),
    ("rms1", 2, 19, 1, 16, 8),
    ("rms2", 1, 17, 1, 16, 16),
    ("lin1", 1, 18, 2, 16, 8),
    ("gated", 2, 19, 1, 16, 8),
    ("gated", 1, 11, 1, 48, 8),
    ("gated_mom", 1, 21, 2, 16, 8),
    ("gated_rms", 1, 17, 1, 16, 16),
    # feature maps at head dim 4 (F = 1 + 4 + 16 = 21) or 5 (F = 31, hidden 20)
    ("deep_transformer", 1, 20, 2, 4, 8),
    ("dla", 2, 19, 1, 4, 8),
    ("dla", 1, 13, 1, 5, 8),
    ("poly_mom", 1, 21, 2, 4, 8),
    ("poly1", 1, 18, 2, 4, 8),
    ("poly_gated", 1, 17, 1, 4, 8),
    # the Omega window: T ≈ 40 over chunks of 16 (8: windows reach back two chunks)
    ("win_gd", 1, 37, 2, 8, 16),
    ("win_mom", 1, 35, 1, 8, 8),
    ("win1", 2, 38, 1, 8, 16),
    ("win_gated", 1, 37, 1, 4, 16),
    ("dot", 1, 40, 1, 4, 8),
    ("swdt", 1, 35, 1, 4, 16),
    ("omeganet", 1, 41, 2, 4, 16),
    # runtime bias parameters (cauchy: hidden 4·8 = 32)
    ("cauchy", 1, 19, 2, 8, 8),
    ("huber_gate", 2, 19, 1, 8, 8),
    ("cauchy1", 1, 18, 2, 8, 8),
    ("two_params", 1, 13, 2, 8, 8),
    ("win_huber", 1, 29, 1, 8, 8),
    # channel-wise decay (yaad: hidden 32, δ_t, channel-wise η and α)
    ("yaad", 1, 19, 2, 8, 8),
    ("ch_gd", 2, 19, 1, 8, 8),
    ("ch_gd", 1, 20, 1, 16, 16),
    ("ch1", 1, 18, 2, 8, 8),
    ("ch_gated", 1, 21, 1, 8, 8),
]


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_chunk_and_reference(case, grad: bool) -> None:
    """Output and final state (forward: two alternating state slots, no checkpoints); with
    ``grad`` also the gradients of q, k, v, every gate and the initial state."""
    name, B, T, H, D, chunk = case
    c = _compiled(name)
    inputs = _inputs(c, B, T, H, D, seed=3)
    out = _run(c, "triton", torch.float32, inputs, chunk, grad=grad)
    if grad:
        assert {n for n in out if n.startswith("d.gate.")} == {f"d.gate.{n}" for n in c.gates}
        # a learnable poly feature map: its coefficients' gradient passes through the kernels
        assert ("d.param.feature.coeffs" in out) == ("learnable=true" in SPECS[name])
        # a learned bias parameter: its gradient passes through the kernels
        assert any(n.startswith("d.param.slot.") for n in out) == ("learned(" in SPECS[name])
    chunk_ref = _run(c, "chunk", torch.float32, inputs, chunk, grad=grad)
    ref = _run(c, "reference", torch.float64, inputs, chunk, grad=grad)
    tol = LOOSE.get(name, 2e-5)
    _compare(chunk_ref, out, {}, tol)
    _compare(ref, out, {}, tol)


@pytest.mark.parametrize("name", ["titans", "ttt_linear", "ttt_mlp", "gated"])
def test_forward_low_precision_inputs(name: str) -> None:
    c = _compiled(name)
    inputs = _inputs(c, 1, 20, 2, 16)
    ref = _run(c, "reference", torch.float64, inputs, 8, grad=False)
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float16, 5e-3)):
        out = _run(c, "triton", dtype, inputs, 8, grad=False)
        assert out["o"].dtype == dtype
        assert all(x.dtype == torch.float32 for n, x in out.items() if n.startswith("final."))
        _compare(ref, out, {}, tol)


@pytest.fixture
def nan_buffers(monkeypatch):
    """Every ``torch.empty``/``empty_like`` buffer starts as NaN (unwritten elements show)."""
    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty",
                        lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    monkeypatch.setattr(torch, "empty_like",
                        lambda *a, **kw: real_empty_like(*a, **kw).fill_(float("nan")))


#: head dims that keep a spec's feature dim small under the interpreter (default 16)
HEAD_DIM = {"dla": 4, "poly1": 4, "omeganet": 4, "win_gated": 4, "huber_gate": 8, "ch_gd": 8}


@pytest.mark.parametrize("name", ["titans", "ttt_linear", "ttt_mlp", "gated_mom", "dla", "poly1",
                                  "win1", "omeganet", "huber_gate", "ch_gd"])
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "backward"])
def test_every_element_is_written(nan_buffers, grad: bool, name: str) -> None:
    c = _compiled(name)
    inputs = _inputs(c, 1, 13, 3, HEAD_DIM.get(name, 16))
    out = _run(c, "triton", torch.float32, inputs, 8, grad=grad)
    for n, x in out.items():
        assert torch.isfinite(x).all(), n


@pytest.mark.parametrize("name", ["gd", "ttt_linear", "gated", "dla", "poly1", "win_gated"])
def test_no_final_state(name: str) -> None:
    """Without a final state the kernels run the last, partial chunk themselves (T = 9,
    chunk 8); the output still equals the fp64 recurrence's."""
    c = _compiled(name)
    q, k, v, gates, w, _ = _inputs(c, 1, 9, 1, HEAD_DIM.get(name, 16))

    def run(backend: str, dtype: torch.dtype):
        f = lambda x: x.to(dtype)  # noqa: E731
        return c.functional(f(q), f(k), f(v), backend=backend, output_final_state=False,
                            chunk_size=8, initial_state=State({n: f(x) for n, x in w.items()},
                                                              None, None, None),
                            **{n: f(x) for n, x in gates.items()})

    o, final = run("triton", torch.float32)
    ref, _ = run("reference", torch.float64)
    assert final is None
    _compare({"o": ref}, {"o": o}, {}, 2e-5)


@pytest.mark.filterwarnings("default::miras.runtime.fused.FallbackWarning")
def test_feature_dim_limit() -> None:
    """A feature dim the kernels cannot hold (F = 1 + 12 + 144 = 157 > 128) runs the chunk
    path, with one warning line that says why."""
    c = _compiled("dla")
    inputs = _inputs(c, 1, 9, 1, 12)
    with pytest.warns(FallbackWarning, match="feature dim of 157"):
        out = _run(c, "triton", torch.float32, inputs, 8, grad=False)
    _compare(_run(c, "chunk", torch.float32, inputs, 8, grad=False), out, {}, 0.0)


@pytest.mark.parametrize("name", ["titans", "ttt_mlp", "win_gd", "ch_gated"])
def test_gradients_low_precision_inputs(name: str) -> None:
    c = _compiled(name)
    inputs = _inputs(c, 1, 20, 2, 16, seed=4)
    ref = _run(c, "reference", torch.float64, inputs, 8, grad=True)
    out = _run(c, "triton", torch.float16, inputs, 8, grad=True)
    w0 = "W_in" if "gated" in name else "W0"
    assert out["d.q"].dtype == torch.float16 and out[f"d.weights.{w0}"].dtype == torch.float32
    # a window's k, v, γ gradients are summed in fp32, then cast
    assert out["d.k"].dtype == out["d.v"].dtype == torch.float16
    _compare(ref, out, {}, 1e-2)


@pytest.mark.parametrize(("memory", "bias", "why"), [
    ("matrix", "huber(delta=gate(act=softplus))", "fused in the mlp family only"),
    ("mlp(depth=2, expansion=2)", "cauchy(c=learned(init=1, channel=true))",
     "channel-wise bias parameter 'c'")])
def test_runtime_bias_parameter_limits(memory: str, bias: str, why: str) -> None:
    """A gate or learned bias parameter is fused in the mlp family only, one per token."""
    c = miras.compile(CAUCHY_BIAS + _spec("p", memory, bias, "none", "gd(lr=0.1)"))
    assert c.fused is None and why in c.fused_reason


@pytest.mark.parametrize(("name", "tiny"), [("ch_gd", False), ("ch1", False),
                                            ("ch_gated", False), ("ch_gd", True)])
def test_strong_channel_decay(name: str, tiny: bool) -> None:
    """Decays down to 1e-3 per token: a chunk's products e^(g_t) reach e^(−100) (fp32
    underflows at e^(−88)); the kernels pair rows through e^(g_t − g_j) ≤ 1 only (no 1/β),
    so they stay finite and equal the fp64 recurrence, ∂L/∂α included (each log α term is
    summed over the tokens it spans: a per-row ∂L/∂g and a reverse cumsum put it 1e-4 off)."""
    c = _compiled(name)
    q, k, v, gates, w, m = _inputs(c, 1, 20, 1, 8, seed=7)
    u = torch.rand(gates["decay"].shape, generator=torch.Generator().manual_seed(8),
                   dtype=torch.float64)
    # α ∈ (e^−7, 1) per channel, or all tiny, α ∈ (0.002, 0.02)
    gates["decay"] = (0.002 + 0.018 * u if tiny else torch.exp(-7 * u)).to(DEVICE)
    inputs = (q, k, v, gates, w, m)
    out = _run(c, "triton", torch.float32, inputs, 16, grad=True)
    _compare(_run(c, "reference", torch.float64, inputs, 16, grad=True), out, {}, 2e-5)


@pytest.mark.parametrize(("algorithm", "extra", "why"), [
    ("momentum(lr=0.1, beta=0.9)", "", "channel-wise decay with momentum"),
    ("gd(lr=0.1)", "    window = sliding(size=2)\n", "channel-wise decay with an Omega window")])
def test_channel_decay_limits(algorithm: str, extra: str, why: str) -> None:
    text = _spec("chx", "mlp(depth=2, expansion=2)", "l2", CH_DECAY, algorithm)
    c = miras.compile(text.replace("    feature = identity\n", "").replace("}", extra + "}"))
    assert c.fused is None and why in c.fused_reason, c.fused_reason


def test_channel_decay_with_a_widening_feature_map_is_refused() -> None:
    """φ(k) has more channels than the decay: validation refuses it (E136), before fusion."""
    text = _spec("chx", "mlp(depth=2, expansion=2)", "l2", CH_DECAY, "gd(lr=0.1)")
    with pytest.raises(miras.MirasError, match="E136"):
        miras.compile(text.replace("    feature = identity\n", "").replace(
            "}", "    feature = poly(degree=2)\n}"))


def test_window_with_channel_lr_falls_back() -> None:
    """A channel-wise lr scales each window token's output gradient by η_t: no band form."""
    c = miras.compile(_spec("win_ch", "mlp(depth=2, expansion=2, act=gelu, residual=true)",
                            "l2", "none", "gd(lr=gate(act=sigmoid, channel=true))",
                            window="sliding(size=3)"))
    assert c.fused is None and "channel-wise lr with an Omega window" in c.fused_reason


@pytest.mark.filterwarnings("default::miras.runtime.fused.FallbackWarning")
def test_window_tail_continues_like_one_call() -> None:
    """A fused call returns the window's last c − 1 tokens (φ(k), raw k, v, gates) in its
    final state; the next call, which starts from that tail, runs the chunk path and the
    two calls equal one call over the whole sequence."""
    c = miras.compile(SPECS["omeganet"].replace("size=16", "size=4"))
    assert c.fused == "mlp", c.fused_reason
    q, k, v, gates, w, _ = _inputs(c, 1, 24, 1, 4, seed=6)
    st = State(w, None, None, None)
    whole, _ = c.functional(q, k, v, backend="reference", initial_state=st, chunk_size=8,
                            **gates)
    cut = lambda x, sl: x[:, sl]  # noqa: E731
    o1, mid = c.functional(*(x[:, :16].float() for x in (q, k, v)), backend="triton",
                           initial_state=State({n: x.float() for n, x in w.items()}, None,
                                               None, None), chunk_size=8,
                           **{n: cut(x, slice(0, 16)).float() for n, x in gates.items()})
    assert mid.window is not None and mid.window[0].shape[2] == 3
    with pytest.warns(FallbackWarning, match="window tail"):
        o2, _ = c.functional(*(x[:, 16:].float() for x in (q, k, v)), backend="triton",
                             initial_state=mid, chunk_size=8,
                             **{n: cut(x, slice(16, None)).float() for n, x in gates.items()})
    _compare({"o": whole}, {"o": torch.cat([o1, o2], 1)}, {}, 2e-5)


# ---- random user biases -------------------------------------------------------------------

# smooth terms of y − v and the outer functions around their sum (libdevice functions such as
# atan and log1p do not run under the interpreter)
_TERMS = ["(y - v)^2", "log(1 + (y - v)^2)", "sqrt(1 + (y - v)^2)", "c * tanh(y - v)^2",
          "1 - exp(-(y - v)^2 / c)", "(y - v)^4 / 4", "erf(y - v) * (y - v)"]
_OUTER = ["{s}", "log(1 + {s})", "sqrt(1 + {s})"]


@st.composite
def _user_bias(draw: st.DrawFn) -> str:
    terms = draw(st.lists(st.sampled_from(_TERMS), min_size=1, max_size=3, unique=True))
    return draw(st.sampled_from(_OUTER)).format(s="sum(" + " + ".join(terms) + ")")


@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(formula=_user_bias(), norm=st.sampled_from(["none", "layernorm"]))
def test_random_user_biases(formula: str, norm: str) -> None:
    """A bias the user writes goes through the same symbolic gradient and VJP as a built-in."""
    text = (f"bias b(c = 1.0) = {formula}\n"
            + _spec("user", f"mlp(depth=2, expansion=2, act=gelu, residual=true, norm={norm})",
                    "b(c=0.7)", "decay(alpha=gate(act=sigmoid), at=prev)",
                    "momentum(lr=gate(act=sigmoid), beta=gate(act=sigmoid))"))
    c = miras.compile(text)
    assert c.fused == "mlp", c.fused_reason
    inputs = _inputs(c, 1, 11, 1, 16, seed=5)
    out = _run(c, "triton", torch.float32, inputs, 8, grad=True)
    _compare(_run(c, "chunk", torch.float32, inputs, 8, grad=True), out, {}, 5e-5)
    _compare(_run(c, "reference", torch.float64, inputs, 8, grad=True), out, {}, 5e-5)
