"""The fused 'dual' kernels against the PyTorch chunk path and the fp64 recurrence.

Under ``TRITON_INTERPRET=1`` (tests/conftest.py sets it without a GPU). Every case compares
the output, the final state (weights and momentum) and the gradients of a random linear loss
to q, k, v, every gate and the initial state, by relative error ‖ref − out‖/‖ref‖: against
``backend="chunk"`` with the same fp32 values, and against ``backend="reference"`` (the
chunk-anchored token-by-token recurrence) in fp64. Every kernel output buffer is filled with
NaN before the launch (``POISON``), so an element a kernel fails to write shows up as NaN.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import miras
from miras import fusion
from miras.runtime import fused
from miras.runtime import triton_support as ts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
F32, F64 = torch.float32, torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: on a GPU fp32 dots run on tf32 tensor cores (the interpreter computes them in fp32)
TOL_SCALE = 100.0 if DEVICE == "cuda" else 1.0

# the interpreter evaluates both sides of a tl.where (a masked 0/0 is expected)
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

DUAL_EXAMPLES = ["gla", "linear_attention", "mamba2", "polysketch", "retnet", "swla"]

GATED = ("retention = decay(alpha=gate(act=sigmoid{channel})) "
         "algorithm = {alg}")
MOMENTUM = "momentum(lr=gate(act=sigmoid), beta=gate(act=sigmoid))"


def _spec(bias: str, alg: str = "gd(lr=gate(act=sigmoid))", extra: str = "",
          defs: str = "", channel: bool = False) -> str:
    decay = GATED.format(alg=alg, channel=", channel=true" if channel else "")
    return f"{defs}\nmodel m {{ memory = matrix bias = {bias} {decay} {extra} }}"


def _compile(source: str | Path) -> miras.Compiled:
    c = miras.compile(source)
    assert c.fused == "dual", c.fused_reason
    c.kernels.POISON = True
    return c


def _inputs(c: miras.Compiled, B: int, T: int, H: int, D: int, seed: int,
            decay: tuple[float, float] = (0.6, 1.0)) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=F64) * scale

    x = {n: rnd(B, T, H, D, scale=0.5) for n in "qkv"}
    for n, info in c.gates.items():
        shape = (B, T, H, D) if info.channel else (B, T, H)
        lo, hi = decay if n == "decay" else (0.2, 1.0)
        x[f"gate.{n}"] = lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=F64)
    K = c.feature_dim(D)
    x["W0"] = rnd(B, H, D, K, scale=0.3 / K ** 0.5)
    x["S0"] = rnd(B, H, D, K, scale=0.1 / K ** 0.5)
    x["w.o"] = rnd(B, T, H, D)
    x["w.W"] = rnd(B, H, D, K)
    x["w.S"] = rnd(B, H, D, K)
    return x


def _run(c: miras.Compiled, x: dict, backend: str, dtype: torch.dtype, chunk: int) -> dict:
    """Output, final state and the gradients of a random linear loss, as fp64."""
    x = {n: t.to(DEVICE) for n, t in x.items()}
    leaves = {n: t.to(dtype).requires_grad_() for n, t in x.items() if not n.startswith("w.")}
    B, _, H, D = x["q"].shape
    state = copy.copy(c.initial_state(B, H, D, dtype=dtype, device=DEVICE))
    state.weights = {"W": leaves["W0"]}
    if state.momentum is not None:
        state.momentum = {"W": leaves["S0"]}
    gates = {n.split(".", 1)[1]: t for n, t in leaves.items() if n.startswith("gate.")}
    o, final = c.functional(leaves["q"], leaves["k"], leaves["v"], backend=backend,
                            chunk_size=chunk, initial_state=state, **gates)
    assert o.dtype == dtype and final is not None
    out = {"o": o, "W": final.weights["W"]}
    loss = (o * x["w.o"].to(dtype)).sum() + (final.weights["W"] * x["w.W"].to(dtype)).sum()
    if final.momentum is not None:
        out["S"] = final.momentum["W"]
        loss = loss + (final.momentum["W"] * x["w.S"].to(dtype)).sum()
    used = {n: t for n, t in leaves.items() if n != "S0" or state.momentum is not None}
    grads = torch.autograd.grad(loss, list(used.values()))
    out.update({f"d{n}": gr for n, gr in zip(used, grads, strict=True)})
    return {n: t.detach().to(device="cpu", dtype=F64) for n, t in out.items()}


def _rel(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((ref - out).norm() / ref.norm().clamp_min(1e-30))


def _check(c: miras.Compiled, *, B: int = 1, T: int = 20, H: int = 2, D: int = 16,
           chunk: int = 8, seed: int = 0, tol: float = 2e-5, reference: bool = True,
           decay: tuple[float, float] = (0.6, 1.0)) -> dict[str, float]:
    x = _inputs(c, B, T, H, D, seed, decay)
    out = _run(c, x, "triton", F32, chunk)
    errors = {}
    refs = [("chunk", _run(c, x, "chunk", F32, chunk))]
    if reference:
        refs.append(("reference", _run(c, x, "reference", F64, chunk)))
    for name, ref in refs:
        assert ref.keys() == out.keys()
        for key, r in ref.items():
            assert torch.isfinite(out[key]).all(), f"{key}: not every element written"
            err = _rel(r, out[key])
            errors[f"{name}.{key}"] = err
            assert err < tol * TOL_SCALE, f"{key} vs {name}: relative error {err:.2e}"
    return errors


@pytest.mark.parametrize("name", DUAL_EXAMPLES)
def test_dual_examples(name: str) -> None:
    m = miras.load(EXAMPLES / f"{name}.miras")
    assert fusion.decide(m).family == "dual"
    _check(_compile(EXAMPLES / f"{name}.miras"), D=8, T=20, chunk=8)


def test_huber_norm_momentum_not_separable() -> None:
    c = _compile(_spec("huber_norm(delta=1.0)", MOMENTUM))
    assert not c.kernels.SEPARABLE
    _check(c, T=21, chunk=8)


def test_window_with_momentum_crosses_chunks() -> None:
    # c = 5 > chunk 4: the window of a chunk's first tokens reaches back over two chunks
    c = _compile(_spec("l2", MOMENTUM, "window = sliding(size=5, gamma=gate(act=sigmoid))"))
    assert c.kernels.WINDOW == 5
    _check(c, T=19, chunk=4)


def test_channel_lr_lp_bias() -> None:
    c = _compile(_spec("lp(p=3)", "gd(lr=gate(act=sigmoid, channel=true))"))
    _check(c, T=20, chunk=8)


def test_odd_shapes_split_value_blocks() -> None:
    # T not a multiple of the chunk, head_dim 48 (two value blocks of 32), three heads
    c = _compile(_spec("l2", "implicit_gd(lr=gate(act=sigmoid))"))
    assert c.kernels.SEPARABLE
    _check(c, B=2, T=37, H=3, D=48, chunk=16, reference=False)


def test_bf16_inputs_keep_their_dtype() -> None:
    c = _compile(_spec("huber(delta=0.5)"))
    x = _inputs(c, 1, 24, 2, 16, 3)
    out = _run(c, x, "triton", torch.bfloat16, 8)
    ref = _run(c, x, "chunk", F32, 8)
    for key in ref:
        assert _rel(ref[key], out[key]) < 5e-2, key


def test_no_final_state_and_no_gradient_to_it() -> None:
    c = _compile(EXAMPLES / "mamba2.miras")
    x = _inputs(c, 1, 12, 2, 8, 4)
    q, k, v = (x[n].float().to(DEVICE) for n in "qkv")
    gates = {n.split(".", 1)[1]: t.float().to(DEVICE) for n, t in x.items()
             if n.startswith("gate.")}
    o, final = c.functional(q, k, v, backend="triton", chunk_size=8, output_final_state=False,
                            **gates)
    ref, _ = c.functional(q, k, v, backend="chunk", chunk_size=8, **gates)
    assert final is None and _rel(ref.double(), o.double()) < 1e-5 * TOL_SCALE


def test_feature_dim_limit_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    c = _compile(EXAMPLES / "polysketch.miras")
    monkeypatch.setattr(ts, "interpreted", lambda: True)
    assert c.kernels.unsupported(1024, 16) is None  # the interpreter runs any K
    monkeypatch.setattr(ts, "interpreted", lambda: False)
    assert "1024" in c.kernels.unsupported(1024, 16)
    assert c.kernels.unsupported(c.kernels.MAX_K, 16) is None
    monkeypatch.undo()
    monkeypatch.setattr(c.kernels, "unsupported", lambda K, V: "K too large")
    x = _inputs(c, 1, 10, 1, 4, 5)
    q, k, v = (x[n].float().to(DEVICE) for n in "qkv")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        o, _ = c.functional(q, k, v, backend="triton", chunk_size=8)
    assert any(issubclass(w.category, fused.FallbackWarning) for w in rec)
    ref, _ = c.functional(q, k, v, backend="chunk", chunk_size=8)
    # the whole chunks and the last partial one run as two calls: rounding may differ
    torch.testing.assert_close(o, ref, rtol=1e-6, atol=1e-6)


def test_strided_views_need_no_copy() -> None:
    # q, k, v as fused.run passes them: [B, H, T, D] views of [B, T, H, D] tensors
    c = _compile(_spec("l2", MOMENTUM, "window = sliding(size=3)"))
    assert c.kernels.STRIDED
    x = _inputs(c, 2, 13, 3, 16, 6)
    views = [x[n].float().transpose(1, 2).requires_grad_() for n in "qkv"]
    dense = [t.detach().contiguous().requires_grad_() for t in views]
    gates = {n.split(".", 1)[1]: t.float().transpose(1, 2) for n, t in x.items()
             if n.startswith("gate.")}
    state = {"weights.W": x["W0"].float(), "momentum.W": x["S0"].float()}
    outs = []
    for q, k, v in (views, dense):
        o, final = c.kernels.run(q, k, v, gates, state, 8, True)
        grads = torch.autograd.grad((o * x["w.o"].float().transpose(1, 2)).sum(), [q, k, v])
        outs.append((o, final["weights.W"], *grads))
    assert outs[0][0].transpose(1, 2).is_contiguous()  # o is written [B, T, H, V]
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


# ---- channel-wise decay (GLA) ------------------------------------------------------------------

CHANNEL_GD = "gd(lr=gate(act=sigmoid))"


def _channel(mp: pytest.MonkeyPatch, bias: str, alg: str = CHANNEL_GD, sub: int = 4
             ) -> miras.Compiled:
    """A channel-decay spec whose scores use sub-chunks of ``sub`` rows (short chunks then
    cross sub-chunk boundaries; the module is cached, so the setting is undone after)."""
    c = _compile(_spec(bias, alg, channel=True))
    assert c.gates["decay"].channel
    mp.setattr(c.kernels, "SUB_CHUNK", sub)
    return c


def test_gla_sub_chunks_and_partial_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    # chunk 24: a 32-row block whose last sub-chunk is padding; T = 53 ends mid-chunk
    c = _compile(EXAMPLES / "gla.miras")
    monkeypatch.setattr(c.kernels, "SUB_CHUNK", 8)
    _check(c, T=53, chunk=24, D=16)


def test_channel_decay_l2_huber_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    _check(_channel(monkeypatch, "l2"), T=21, chunk=16)
    _check(_channel(monkeypatch, "huber_norm(delta=1.0)"), T=19, chunk=16, seed=1)


def test_channel_decay_odd_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    # head_dim 48 (two value blocks), three heads, T not a multiple of the chunk
    c = _channel(monkeypatch, "l2", "implicit_gd(lr=gate(act=sigmoid))")
    _check(c, B=2, T=37, H=3, D=48, chunk=16, reference=False)


def test_channel_decay_with_channel_lr(monkeypatch: pytest.MonkeyPatch) -> None:
    c = _channel(monkeypatch, "lp(p=3)", "gd(lr=gate(act=sigmoid, channel=true))")
    _check(c, T=18, chunk=16)


@pytest.mark.parametrize(("lo", "hi", "chunk", "sub"), [(0.5, 0.7, 16, 4), (0.002, 0.02, 32, 16)])
def test_channel_decay_strong(monkeypatch: pytest.MonkeyPatch, lo: float, hi: float,
                              chunk: int, sub: int) -> None:
    # α down to 0.5 per token over a chunk of 16; then α ≈ 0.01, whose product over a chunk
    # of 32 (e^−150) would overflow 1/β in fp32 without the sub-chunk boundaries
    c = _channel(monkeypatch, "huber_norm(delta=1.0)", sub=sub)
    _check(c, T=2 * chunk + 5, chunk=chunk, decay=(lo, hi))


def test_channel_decay_fallbacks() -> None:
    m = miras.load(_spec("l2", MOMENTUM, channel=True))
    assert "momentum" in fusion.decide(m).reason
    m = miras.load(_spec("l2", channel=True, extra="window = sliding(size=3)"))
    assert "window" in fusion.decide(m).reason
    with pytest.raises(miras.MirasError, match="E136"):  # refused before fusion
        miras.load(_spec("l2", channel=True, extra="feature = poly(degree=2)"))
    m = miras.load(_spec("l2", channel=True, extra="parallel = exact(size=16)"))
    assert "channel-wise decay" in fusion.decide(m).reason
    # an MLP memory (Yaad) runs a channel-wise decay in the mlp family
    assert fusion.decide(miras.load(EXAMPLES / "yaad.miras")).family == "mlp"


# ---- random user biases -------------------------------------------------------------------

# (libdevice functions such as atan and log1p do not run under the interpreter)
_TERMS = ["(y - v)^2", "log(1 + (y - v)^2)", "sqrt(1 + (y - v)^2)", "c * tanh(y - v)^2",
          "1 - exp(-(y - v)^2 / c)", "softplus(y - v)", "(y - v)^4 / 4", "erf(y - v) * (y - v)",
          "c * y * v"]
_OUTER = ["{s}", "log(1 + {s})", "sqrt(1 + {s})", "c * {s} + {s}^2 / 8"]


@st.composite
def _user_bias(draw: st.DrawFn) -> str:
    terms = draw(st.lists(st.sampled_from(_TERMS), min_size=1, max_size=3, unique=True))
    inner = "sum(" + " + ".join(terms) + ")"
    return draw(st.sampled_from(_OUTER)).format(s=inner)


@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(formula=_user_bias(), momentum=st.booleans())
def test_random_user_biases(formula: str, momentum: bool) -> None:
    c = _compile(_spec("b(c=0.7)", MOMENTUM if momentum else "gd(lr=gate(act=sigmoid))",
                       defs=f"bias b(c = 1.0) = {formula}"))
    _check(c, T=11, chunk=8, D=8, tol=5e-5)
