"""The fused 'scan' kernels (matrix memory, nonlinear retention) against the PyTorch chunk
path and the fp64 recurrence.

Under ``TRITON_INTERPRET=1`` (tests/conftest.py sets it without a GPU). Every case compares
the output, the final state (weights, momentum, accumulator) and the gradients of a random
linear loss to q, k, v, every gate and the initial state, by relative error
‖ref − out‖/‖ref‖: against ``backend="chunk"`` with the same fp32 values, and against
``backend="reference"`` (the chunk-anchored token-by-token recurrence) in fp64. Every kernel
output buffer is filled with NaN before the launch (``POISON``), so an element a kernel fails
to write shows up as NaN.
"""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import miras
from miras import fusion
from miras.compiler import build_plan, render_triton
from miras.runtime import fused
from miras.runtime import triton_support as ts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
F32, F64 = torch.float32, torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: on a GPU fp32 dots run on tf32 tensor cores (the interpreter computes them in fp32)
TOL_SCALE = 100.0 if DEVICE == "cuda" else 1.0

# the interpreter evaluates both sides of a tl.where (a masked log 0 or 0/0 is expected)
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

GD = "gd(lr=gate(act=sigmoid))"
MOMENTUM = "momentum(lr=gate(act=sigmoid), beta=gate(act=sigmoid))"
DECAY = "alpha=gate(act=sigmoid)"


def _spec(retention: str, alg: str = GD, bias: str = "l2", init: str = "normal") -> str:
    return (f"model m {{ memory = matrix(init={init}) bias = {bias} retention = {retention} "
            f"algorithm = {alg} }}")


def _compile(source: str | Path, model: str | None = None) -> miras.Compiled:
    c = miras.compile(source, model) if model else miras.compile(source)
    assert c.fused == "scan", c.fused_reason
    c.kernels.POISON = True
    return c


#: the initial weights each retention's domain needs
DOMAINS = {"normal": (-1.0, 1.0), "positive": (0.2, 1.0), "unit": (0.2, 0.8),
           "bounded": (-0.5, 0.5)}


def _inputs(c: miras.Compiled, B: int, T: int, H: int, D: int, seed: int, domain: str,
            lr: tuple[float, float] | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=F64) * scale

    x = {n: rnd(B, T, H, D, scale=0.5) for n in "qkv"}
    for n, info in c.gates.items():
        shape = (B, T, H, D) if info.channel else (B, T, H)
        lo, hi = {"decay": (0.6, 1.0), "threshold": (0.002, 0.02)}.get(n, (0.2, 1.0))
        x[f"gate.{n}"] = lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=F64)
    for slot in c.slots:  # learned hyper-parameters (the threshold θ) get gradients too
        if slot["source"] == "learned":
            shape = (H, D) if slot["channel"] else (H,)
            x[f"slot.{slot['name']}"] = 0.002 + 0.02 * torch.rand(*shape, generator=g,
                                                                  dtype=F64)
    if lr is not None:
        x["gate.lr"] = lr[0] + (lr[1] - lr[0]) * torch.rand(B, T, H, generator=g, dtype=F64)
    K = c.feature_dim(D)
    lo, hi = DOMAINS[domain]
    if domain == "normal":
        x["W0"] = rnd(B, H, D, K, scale=0.3 / K ** 0.5)
    else:  # positive entries, or inside (−1, 1) for a bounded mirror map
        x["W0"] = lo + (hi - lo) * torch.rand(B, H, D, K, generator=g, dtype=F64)
        if domain == "positive":
            x["W0"] = x["W0"] / K
    x["S0"] = rnd(B, H, D, K, scale=0.1 / K ** 0.5)
    x["A0"] = x["W0"] + rnd(B, H, D, K, scale=0.05 / K ** 0.5)
    for n in ("o", "W", "S", "A"):
        x[f"w.{n}"] = rnd(B, T, H, D) if n == "o" else rnd(B, H, D, K)
    return x


def _leaves(c: miras.Compiled, x: dict, dtype: torch.dtype) -> tuple:
    """``x`` on the device, its differentiable leaves in ``dtype`` and a fresh state."""
    x = {n: t.to(DEVICE) for n, t in x.items()}
    leaves = {n: t.to(dtype).requires_grad_() for n, t in x.items() if not n.startswith("w.")}
    B, _, H, D = x["q"].shape
    return x, leaves, copy.copy(c.initial_state(B, H, D, dtype=dtype, device=DEVICE))


def _call(c: miras.Compiled, x: dict, leaves: dict, state, backend: str, chunk: int,
          final: bool) -> tuple:
    """The output, the final state and the linear loss of the output."""
    gates = {n.split(".", 1)[1]: t for n, t in leaves.items() if n.startswith("gate.")}
    params = {n: t for n, t in leaves.items() if n.startswith("slot.")}
    o, st = c.functional(leaves["q"], leaves["k"], leaves["v"], backend=backend,
                         chunk_size=chunk, initial_state=state, output_final_state=final,
                         params=params, **gates)
    assert o.dtype == leaves["q"].dtype
    return o, st, (o * x["w.o"].to(o.dtype)).sum()


def _run(c: miras.Compiled, x: dict, backend: str, dtype: torch.dtype, chunk: int,
         final: bool = True) -> dict:
    """Output, final state and the gradients of a random linear loss, as fp64."""
    x, leaves, state = _leaves(c, x, dtype)
    state.weights = {"W": leaves["W0"]}
    if state.momentum is not None:
        state.momentum = {"W": leaves["S0"]}
    if state.accum is not None:
        state.accum = {"W": leaves["A0"]}
    o, st, loss = _call(c, x, leaves, state, backend, chunk, final)
    out = {"o": o}
    if final:
        assert st is not None
        for key, w in (("W", st.weights), ("S", st.momentum), ("A", st.accum)):
            if w is not None:
                out[key] = w["W"]
                loss = loss + (w["W"] * x[f"w.{key}"].to(dtype)).sum()
    used = {n: t for n, t in leaves.items()
            if (n != "S0" or state.momentum is not None) and (n != "A0" or state.accum is not None)}
    grads = torch.autograd.grad(loss, list(used.values()), allow_unused=True)
    out.update({f"d{n}": gr for n, gr in zip(used, grads, strict=True) if gr is not None})
    return {n: t.detach().to(device="cpu", dtype=F64) for n, t in out.items()}


def _rel(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((ref - out).norm() / ref.norm().clamp_min(1e-30))


def _check(c: miras.Compiled, *, B: int = 1, T: int = 36, H: int = 2, D: int = 16,
           chunk: int = 16, seed: int = 0, tol: float = 2e-5, domain: str = "normal",
           reference: bool = True, final: bool = True, tols: dict | None = None,
           lr: tuple[float, float] | None = None) -> dict[str, float]:
    x = _inputs(c, B, T, H, D, seed, domain, lr)
    return _compare(_run, c, x, chunk, final, reference, tol, tols)


def _compare(run, c: miras.Compiled, x: dict, chunk: int, final: bool, reference: bool,
             tol: float, tols: dict | None, fp32_floor: bool = False) -> dict[str, float]:
    """The fused run against the fp32 chunk path and the fp64 recurrence (``run``: _run or
    _mlp_run): every relative error under its tolerance. With ``fp32_floor`` (an
    ill-conditioned case) a tolerance is at least twice the chunk path's own error against
    the fp64 recurrence (three times against the chunk path itself)."""
    out = run(c, x, "triton", F32, chunk, final)
    errors = {}
    refs = [("chunk", run(c, x, "chunk", F32, chunk, final))]
    if reference:
        refs.append(("reference", run(c, x, "reference", F64, chunk, final)))
    for name, ref in refs:
        assert ref.keys() == out.keys()
        for key, r in ref.items():
            assert torch.isfinite(out[key]).all(), f"{key}: not every element written"
            err = _rel(r, out[key])
            errors[f"{name}.{key}"] = err
            limit = (tols or {}).get(key, tol) * TOL_SCALE
            if fp32_floor and reference:
                floor = _rel(refs[1][1][key], refs[0][1][key])
                limit = max(limit, (2.0 if name == "reference" else 3.0) * floor)
            assert err < limit, f"{key} vs {name}: relative error {err:.2e}"
    return errors


def _bounded(alg: str = GD) -> str:
    """custom_retention.miras's bounded_memory (atanh/tanh mirror map, a regulariser), with
    another algorithm."""
    text = (EXAMPLES / "custom_retention.miras").read_text()
    return text.replace("algorithm = gd(lr=gate(act=sigmoid))\n    parallel = chunk(size=64)\n}",
                        f"algorithm = {alg}\n    parallel = chunk(size=64)\n}}")


# (retention, algorithm, bias, memory init, weights' domain): every map with GD and momentum
CASES = {
    "lq": ("lq(q=4, alpha=gate(act=sigmoid))", GD, "l2", "normal", "normal"),
    "lq_momentum": ("lq(q=3, alpha=gate(act=sigmoid))", MOMENTUM, "l2", "normal", "normal"),
    # r = q/(q − 1) < 2: the norm multiplies (no clamp)
    "lq_ftrl_huber": ("lq(q=4, form=ftrl)", GD, "huber(delta=0.5)", "normal", "normal"),
    "kl": ("kl(alpha=gate(act=sigmoid))", GD, "l2", "uniform", "positive"),
    "kl_all_momentum": ("kl(alpha=gate(act=sigmoid), scale=2.0, softmax_axis=all)", MOMENTUM,
                        "huber_norm(delta=1.0)", "uniform", "positive"),
    "fdiv": ("fdiv(scale=1.0)", GD, "l2", "uniform", "positive"),
    "fdiv_momentum": ("fdiv(scale=0.5)", MOMENTUM, "lp(p=3)", "uniform", "positive"),
    "entropy": ("bregman(potential=entropy, alpha=gate(act=sigmoid))", GD, "l2", "uniform",
                "positive"),
    "logit_momentum": ("bregman(potential=logit, alpha=gate(act=sigmoid))", MOMENTUM, "l2",
                       "uniform", "unit"),
    "elastic_net": ("elastic_net(alpha=gate(act=sigmoid), threshold=learned(init=0.01))", GD,
                    "l2", "normal", "normal"),
    "elastic_ftrl_smooth_momentum": (
        "elastic_net(alpha=gate(act=sigmoid), threshold=0.01, form=ftrl, smooth=true)",
        MOMENTUM, "l2", "normal", "normal"),
    "soft_threshold_smooth": ("soft_threshold(threshold=learned(init=0.01), smooth=true)",
                              "implicit_gd(lr=gate(act=sigmoid))", "l2", "normal", "normal"),
    "soft_threshold_momentum": ("soft_threshold(threshold=learned(init=0.01))", MOMENTUM, "l2",
                                "normal", "normal"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_retentions(case: str) -> None:
    retention, alg, bias, init, domain = CASES[case]
    c = _compile(_spec(retention, alg, bias, init))
    _check(c, domain=domain, seed=len(case))


@pytest.mark.parametrize("alg", [GD, MOMENTUM])
def test_bounded_memory_example(alg: str) -> None:
    # a small lr keeps tanh away from ±1, where atanh of the next chunk's start is
    # ill-conditioned (rounding, not the kernels, would then dominate the comparison)
    m = miras.load(EXAMPLES / "custom_retention.miras", "bounded_memory")
    assert fusion.decide(m).family == "scan"
    c = _compile(EXAMPLES / "custom_retention.miras", "bounded_memory") if alg == GD else \
        _compile(_bounded(alg), "bounded_memory")
    _check(c, T=24, domain="bounded", lr=(0.02, 0.1))


def test_value_blocks_and_partial_chunk() -> None:
    # head_dim 48: two value blocks of 32 for a row softmax; T = 13 ends inside a chunk and,
    # without a final state, the kernels run that partial chunk themselves; the lag token
    c = _compile(_spec("kl(alpha=gate(act=sigmoid))", MOMENTUM, "l2", "uniform"))
    assert c.kernels.SPLIT_V and c.kernels.LAG
    _check(c, T=13, D=48, chunk=8, domain="positive", final=False, reference=False)
    # an element-wise map, with the final state
    c = _compile(_spec("elastic_net(alpha=gate(act=sigmoid), threshold=0.005)", GD, "lp(p=3)"))
    assert c.kernels.SPLIT_V
    _check(c, T=19, D=40, chunk=8, reference=False)


def test_whole_matrix_maps_keep_one_value_block() -> None:
    # ℓq normalises the whole matrix: one program holds all of V
    c = _compile(_spec("lq(q=4)", GD))
    assert not c.kernels.SPLIT_V
    _check(c, T=19, D=40, chunk=8, final=False, reference=False)


def test_non_fused_combinations_warn_with_their_reason() -> None:
    for spec, why in [
        (_spec("kl(alpha=gate(act=sigmoid))", GD, "l2", "uniform")
         .replace("}", "window = sliding(size=17) }"), "Omega window of 17"),
        (_spec("soft_threshold()", "gd(lr=gate(act=sigmoid, channel=true))")
         .replace("}", "window = sliding(size=2) }"), "channel-wise lr with an Omega window"),
        (_spec("lq(q=4)", "muon(lr=gate(act=sigmoid))"), "Muon"),
    ]:
        c = miras.compile(spec)
        assert c.fused is None and why in c.fused_reason
        x = _inputs(c, 1, 8, 1, 8, 0, "positive")
        q, k, v = (x[n].float().to(DEVICE) for n in "qkv")
        gates = {n.split(".", 1)[1]: t.float().to(DEVICE) for n, t in x.items()
                 if n.startswith("gate.")}
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            o, _ = c.functional(q, k, v, backend="triton", chunk_size=4, **gates)
        assert any(issubclass(w.category, fused.FallbackWarning) and why in str(w.message)
                   for w in rec)
        ref, _ = c.functional(q, k, v, backend="chunk", chunk_size=4, **gates)
        torch.testing.assert_close(o, ref)
    # a channel-wise factor cannot scale φ(k)'s wider columns: refused before fusion (E136)
    spec = _spec("elastic_net(alpha=gate(act=sigmoid, channel=true))").replace(
        "}", "feature = poly(degree=2) }")
    with pytest.raises(miras.MirasError, match="E136"):
        miras.load(spec)


def test_fusion_reasons() -> None:
    def reason(spec: str) -> str:
        return fusion.decide(miras.load(spec)).reason

    assert fusion.decide(miras.load(_spec("kl()", init="uniform"))).family == "scan"
    mlp = ("model m { memory = mlp(depth=2) bias = l2 retention = lq(q=4) "
           "algorithm = gd(lr=gate(act=sigmoid)) }")
    assert fusion.decide(miras.load(mlp)).family == "scan"
    for name in ("memora", "moneta", "memora_h", "moneta_h"):  # MLP memories (scan_mlp)
        assert fusion.decide(miras.load(EXAMPLES / f"{name}.miras")).family == "scan"
    for old, new, why in [
        ("depth=2", "depth=3", "of depth 3"),
        ("mlp(depth=2)", "mlp(depth=2, expansion=8)", "wider than 4"),
        ("}", "window = sliding(size=2) }", "Omega window"),
        ("}", "feature = poly(degree=2) }", "feature map"),
        ("bias = l2", "bias = huber(delta=gate(act=sigmoid))", "not a constant"),
    ]:
        assert why in reason(mlp.replace(old, new, 1)), (new, reason(mlp.replace(old, new, 1)))
    gated = mlp.replace("mlp(depth=2)", "gated_mlp()")
    assert "on gated_mlp memory" in reason(gated)


def test_bf16_inputs_keep_their_dtype() -> None:
    # the same bf16-rounded values through the fp32 chunk path: what differs is the rounding
    # of the kernels' bf16 outputs and gradients
    c = _compile(_spec("soft_threshold(threshold=0.01, smooth=true)", GD))
    _bf16_check(_run, c, _inputs(c, 1, 24, 2, 16, 3, "normal"))


def _bf16_check(run, c: miras.Compiled, x: dict) -> dict:
    """``x`` rounded to bf16: the kernels in bf16 against the fp32 chunk path; returns x."""
    x = {n: t.to(torch.bfloat16).to(F64) for n, t in x.items()}
    out = run(c, x, "triton", torch.bfloat16, 8)
    ref = run(c, x, "chunk", F32, 8)
    for key in ref:
        assert _rel(ref[key], out[key]) < 2e-2, key
    return x


def test_channel_wise_lr() -> None:
    # η [B, T, H, D] scales the anchor gradient's value rows
    c = _compile(_spec("kl(alpha=gate(act=sigmoid))", "gd(lr=gate(act=sigmoid, channel=true))",
                       "l2", "uniform"))
    assert c.gates["lr"].channel
    _check(c, T=21, chunk=8, domain="positive")


def test_fused_state_continues_like_one_call() -> None:
    # ℓq: the accumulator comes back from the kernels; a call that ends inside a chunk leaves
    # a state the next call continues
    c = _compile(_spec("lq(q=4, alpha=gate(act=sigmoid))", MOMENTUM))
    B, T, H, D, cut, chunk = 1, 21, 2, 16, 13, 8
    x = {n: t.float() for n, t in _inputs(c, B, T, H, D, 1, "normal").items()}
    q, k, v = x["q"], x["k"], x["v"]
    gates = {n.split(".", 1)[1]: t for n, t in x.items() if n.startswith("gate.")}

    def sl(a: int, b: int) -> dict[str, torch.Tensor]:
        return {n: t[:, a:b] for n, t in gates.items()}

    o_ref, s_ref = c.functional(q, k, v, backend="chunk", chunk_size=chunk, **gates)
    o1, s1 = c.functional(q[:, :cut], k[:, :cut], v[:, :cut], backend="triton",
                          chunk_size=chunk, **sl(0, cut))
    o2, s2 = c.functional(q[:, cut:], k[:, cut:], v[:, cut:], initial_state=s1,
                          backend="chunk", chunk_size=chunk, **sl(cut, T))
    assert s_ref is not None and s2 is not None and s2.accum is not None
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_ref, rtol=1e-4, atol=1e-5)
    for a, b in ((s2.weights, s_ref.weights), (s2.accum, s_ref.accum),
                 (s2.momentum, s_ref.momentum)):
        torch.testing.assert_close(a["W"], b["W"], rtol=1e-4, atol=1e-5)


def test_chunk_of_one_is_the_recurrence() -> None:
    # chunk 1: every token is its own group (the exact per-token recurrence of the paper)
    c = _compile(_spec("bregman(potential=entropy, alpha=gate(act=sigmoid))", MOMENTUM, "l2",
                       "uniform"))
    _check(c, T=7, chunk=1, domain="positive")


@pytest.mark.parametrize(("retention", "alg", "window", "chunk"), [
    # with the lag token: the second group's window reaches back into the first
    ("kl(alpha=gate(act=sigmoid))", GD, "sliding(size=3, gamma=gate(act=sigmoid))", 8),
    # c = 5 > chunk 4: the window of a chunk's first tokens reaches back over two chunks
    ("lq(q=4, alpha=gate(act=sigmoid))", MOMENTUM, "sliding(size=5)", 4),
])
def test_omega_window(retention: str, alg: str, window: str, chunk: int) -> None:
    init = "uniform" if retention.startswith("kl") else "normal"
    c = _compile(_spec(retention, alg, "l2", init).replace("}", f"window = {window} }}"))
    assert c.kernels.WINDOW > 1
    _check(c, T=19, chunk=chunk, domain="positive" if init == "uniform" else "normal")


@pytest.mark.parametrize(("retention", "alg", "extra"), [
    ("kl(alpha=gate(act=sigmoid, channel=true))", MOMENTUM, ""),
    # the accumulator with per-column β, and a window
    ("lq(q=4, alpha=gate(act=sigmoid, channel=true))", GD, "window = sliding(size=3)"),
])
def test_channel_wise_decay(retention: str, alg: str, extra: str) -> None:
    # α [B, T, H, K] scales the key columns of Z (and β_t of the base)
    init = "uniform" if retention.startswith("kl") else "normal"
    c = _compile(_spec(retention, alg, "l2", init).replace("}", f"{extra} }}"))
    assert c.gates["decay"].channel
    _check(c, T=21, chunk=8, domain="positive" if init == "uniform" else "normal")


def test_generated_modules_are_deterministic_and_lint_clean(tmp_path: Path) -> None:
    # each retention prints different pieces into the template: every kind once
    specs = {"bounded": (EXAMPLES / "custom_retention.miras", "bounded_memory")}
    for case in ("lq_ftrl_huber", "kl_all_momentum", "fdiv", "logit_momentum",
                 "elastic_ftrl_smooth_momentum", "soft_threshold_momentum"):
        retention, alg, bias, init, _ = CASES[case]
        specs[case] = (_spec(retention, alg, bias, init), None)
    for case in ("lq_ftrl_depth1", "kl", "fdiv", "entropy_depth1", "soft_threshold_smooth",
                 "lq_momentum"):
        retention, depth, norm, init, _, bias, lr, _, *alg = MLP_CASES[case]
        specs[f"mlp_{case}"] = (_mlp_spec(retention, depth, norm, bias, init, lr, *alg), None)
    for name in ("moneta", "memora"):
        specs[name] = (EXAMPLES / f"{name}.miras", None)
    for name, (source, model) in specs.items():
        p = build_plan(source, model)
        text = render_triton(p)
        assert text is not None and text == render_triton(p)
        assert 'FAMILY = "scan"' in text
        ast.parse(text)
        (tmp_path / f"{name}_triton.py").write_text(text)
    ruff = subprocess.run([sys.executable, "-m", "ruff", "check", "--config",
                           str(EXAMPLES.parent / "pyproject.toml"), str(tmp_path)],
                          capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout


def test_dims_limit_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # on a GPU a program holds a whole row block of W: too large a one falls back (the
    # interpreter runs any)
    lq = _compile(_spec("lq(q=4)"))  # the whole matrix in one program
    kl = _compile(_spec("kl()", init="uniform"))  # value blocks of 32 rows
    monkeypatch.setattr(ts, "interpreted", lambda: True)
    assert lq.kernels.unsupported(1024, 1024) is None
    monkeypatch.setattr(ts, "interpreted", lambda: False)
    assert "1024" in lq.kernels.unsupported(1024, 16)
    assert "entries" in lq.kernels.unsupported(256, 128)
    assert lq.kernels.unsupported(128, 128) is None and kl.kernels.unsupported(256, 256) is None


# ---- MLP memories (scan_mlp.py.jinja): per-token weights of each layer ------------------------

def _mlp_spec(retention: str, depth: int = 2, norm: str = "layernorm", bias: str = "l2",
              init: str = "normal", lr: str = "gate(act=sigmoid)", alg: str = "gd") -> str:
    beta = ", beta=gate(act=sigmoid)" if alg == "momentum" else ""
    return (f"model m {{ memory = mlp(depth={depth}, expansion=2, act=gelu, residual=true, "
            f"norm={norm}, init={init}) bias = {bias} retention = {retention} "
            f"algorithm = {alg}(lr={lr}{beta}) }}")


def _mlp_inputs(c: miras.Compiled, B: int, T: int, H: int, D: int, seed: int,
                domain: str) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = {n: torch.randn(B, T, H, D, generator=g, dtype=F64) * 0.5 for n in "qkv"}
    for n, info in c.gates.items():
        shape = (B, T, H, D) if info.channel else (B, T, H)
        lo, hi = {"decay": (0.6, 1.0), "threshold": (0.002, 0.02)}.get(n, (0.2, 1.0))
        x[f"gate.{n}"] = lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=F64)
    for slot in c.slots:
        if slot["source"] == "learned":
            shape = (H, D) if slot["channel"] else (H,)
            x[f"slot.{slot['name']}"] = 0.002 + 0.02 * torch.rand(*shape, generator=g,
                                                                  dtype=F64)
    state = c.initial_state(B, H, D, dtype=F64)
    for n, w in state.weights.items():
        if domain == "positive":
            # a row-softmax memory: positive rows of sum 1, spread out (near-uniform rows make
            # W1 a's entries nearly equal, which the layernorm then divides by their spread),
            # but not to tiny entries (the gradient of log W is 1/W: it amplifies rounding)
            w0 = torch.exp(1.5 * torch.randn(*w.shape, generator=g, dtype=F64))
            x[f"W.{n}"] = w0 / w0.sum(-1, keepdim=True)
        else:
            x[f"W.{n}"] = torch.randn(*w.shape, generator=g, dtype=F64) / w.shape[-1] ** 0.5
        x[f"A.{n}"] = x[f"W.{n}"] + 0.05 * torch.randn(*w.shape, generator=g, dtype=F64) \
            / w.shape[-1] ** 0.5
        x[f"S.{n}"] = 0.1 * torch.randn(*w.shape, generator=g, dtype=F64) / w.shape[-1] ** 0.5
        for key in "WAS":
            x[f"w.{key}.{n}"] = torch.randn(*w.shape, generator=g, dtype=F64)
    x["w.o"] = torch.randn(B, T, H, D, generator=g, dtype=F64)
    return x


def _mlp_run(c: miras.Compiled, x: dict, backend: str, dtype: torch.dtype, chunk: int,
             final: bool = True) -> dict:
    """Output, final state and the gradients of a random linear loss, as fp64."""
    x, leaves, state = _leaves(c, x, dtype)
    names = list(state.weights)
    state.weights = {n: leaves[f"W.{n}"] for n in names}
    for key, field in (("A", "accum"), ("S", "momentum")):
        if getattr(state, field) is not None:
            setattr(state, field, {n: leaves[f"{key}.{n}"] for n in names})
        else:
            leaves = {n: t for n, t in leaves.items() if not n.startswith(f"{key}.")}
    o, st, loss = _call(c, x, leaves, state, backend, chunk, final)
    out = {"o": o}
    if final:
        assert st is not None
        for key, w in (("W", st.weights), ("A", st.accum), ("S", st.momentum)):
            for n, t in (w or {}).items():
                out[f"{key}.{n}"] = t
                loss = loss + (t * x[f"w.{key}.{n}"].to(dtype)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    out.update({f"d{n}": gr for n, gr in zip(leaves, grads, strict=True) if gr is not None})
    return {n: t.detach().to(device="cpu", dtype=F64) for n, t in out.items()}


def _mlp_check(c: miras.Compiled, *, B: int = 1, T: int = 21, H: int = 2, D: int = 4,
               chunk: int = 8, seed: int = 0, tol: float = 2e-5, domain: str = "normal",
               final: bool = True) -> dict[str, float]:
    x = _mlp_inputs(c, B, T, H, D, seed, domain)
    # a softmax memory under a layernorm: W1's rows average A's entries, whose spread the
    # layernorm divides by (ill-conditioned in fp32: the chunk path is as far off)
    floor = domain == "positive" and c.kernels.NORM == 1
    return _compare(_mlp_run, c, x, chunk, final, True, tol, None, floor)


CHANNEL_GATE = "gate(act=sigmoid, channel=true)"

# (retention, depth, norm, memory init, weights' domain, bias, lr, head dim[, algorithm]):
# every map once
MLP_CASES = {
    "lq": ("lq(q=4, alpha=gate(act=sigmoid))", 2, "layernorm", "normal", "normal", "l2",
           "gate(act=sigmoid)", 4),
    "lq_ftrl_depth1": ("lq(q=4, form=ftrl)", 1, "rmsnorm", "normal", "normal", "l2",
                       "gate(act=sigmoid)", 4),
    # softmax rows under a layernorm: ill-conditioned in fp32 (see _mlp_check); head dim 8
    "kl": ("kl(alpha=gate(act=sigmoid))", 2, "layernorm", "uniform", "positive", "l2",
           "gate(act=sigmoid)", 8),
    "fdiv": ("fdiv(scale=1.0)", 2, "none", "uniform", "positive", "huber(delta=0.5)",
             "gate(act=sigmoid)", 8),
    "entropy_depth1": ("bregman(potential=entropy, alpha=gate(act=sigmoid))", 1, "none",
                       "uniform", "positive", "l2", "gate(act=sigmoid)", 8),
    "elastic_net": ("elastic_net(alpha=gate(act=sigmoid), threshold=learned(init=0.01))", 2,
                    "layernorm", "normal", "normal", "l2", "gate(act=sigmoid)", 4),
    "soft_threshold_smooth": ("soft_threshold(threshold=learned(init=0.01), smooth=true)", 2,
                              "rmsnorm", "normal", "normal", "l2", "gate(act=sigmoid)", 4),
    # momentum (S_t = μ_t S_{t−1} − G_t scanned per token, then Z): with an accumulator, a
    # channel-wise decay, and a row softmax
    "lq_momentum": (f"lq(q=3, alpha={CHANNEL_GATE})", 2, "layernorm", "normal", "normal",
                    "l2", "gate(act=sigmoid)", 4, "momentum"),
    "kl_momentum_depth1": ("kl(alpha=gate(act=sigmoid))", 1, "rmsnorm", "uniform", "positive",
                           "l2", "gate(act=sigmoid)", 8, "momentum"),
    # Moneta's and Memora's shapes: channel-wise α and η
    "moneta": (f"lq(q=4, alpha={CHANNEL_GATE}, form=moneta)", 2, "layernorm", "normal",
               "normal", "lp(p=3, smooth=sqrt, eps=1e-6)", CHANNEL_GATE, 4),
    "memora": (f"kl(alpha={CHANNEL_GATE}, softmax_axis=row)", 2, "layernorm", "uniform",
               "positive", "l2", CHANNEL_GATE, 8),
}


#: the hard threshold's gradients near its kink: the fp32 chunk path is as far from the fp64
#: recurrence (about 3e-5) as the kernels, in the other direction
MLP_TOL = {"elastic_net": 1e-4}


@pytest.mark.parametrize("case", sorted(MLP_CASES))
def test_mlp_memories(case: str) -> None:
    retention, depth, norm, init, domain, bias, lr, D, *alg = MLP_CASES[case]
    c = _compile(_mlp_spec(retention, depth, norm, bias, init, lr, *alg))
    assert c.kernels.DEPTH == depth
    _mlp_check(c, D=D, domain=domain, seed=len(case), tol=MLP_TOL.get(case, 5e-5))


def test_mlp_examples_partial_chunk_and_chunk_of_one() -> None:
    # the examples themselves (expansion 4) with head dim 8: T = 13 ends inside a chunk, no
    # final state (the last group's end only through the outputs); Memora's lag token
    for name, domain in (("moneta", "normal"), ("memora", "positive")):
        c = _compile(EXAMPLES / f"{name}.miras")
        _mlp_check(c, T=13, D=8, chunk=8, domain=domain, final=False, tol=5e-5)
    # chunk 1: every token its own group (the per-token recurrence)
    c = _compile(_mlp_spec("lq(q=3, alpha=gate(act=sigmoid))", 1, "none"))
    _mlp_check(c, T=6, chunk=1)


@pytest.mark.parametrize("name", ["moneta_h", "memora_h"])
def test_mlp_hybrid_layer(name: str) -> None:
    # the hybrid's memory layer (samba: the memory layer alone) with the fused kernels, in a
    # model's layer with its projections, gates and initial weights (Memora: init=uniform).
    # Moneta's parameter gradients differ by about 3e-4 (the fp32 chunk path is 1e-4 from
    # fp64 there too: ‖·‖_4 and the layernorm); the kernels' precision is tested above
    c = miras.compile(EXAMPLES / f"{name}.miras")
    assert c.fused == "scan"
    c.kernels.POISON = True
    torch.manual_seed(0)
    x = torch.randn(1, 11, 16, device=DEVICE)
    outs, grads = {}, {}
    for backend in ("triton", "chunk"):
        torch.manual_seed(1)
        layer = c.layer(16, heads=2, backend=backend, chunk_size=4).to(DEVICE)
        y = layer(x)
        y.square().sum().backward()
        outs[backend] = y.detach()
        grads[backend] = torch.cat([p.grad.flatten() for p in layer.parameters()
                                    if p.grad is not None])
    assert _rel(outs["chunk"], outs["triton"]) < 1e-4 * TOL_SCALE
    assert _rel(grads["chunk"], grads["triton"]) < 1e-3 * TOL_SCALE


def test_mlp_bf16_and_state_continuation() -> None:
    c = _compile(_mlp_spec("lq(q=4, alpha=gate(act=sigmoid))"))
    x = _bf16_check(_mlp_run, c, _mlp_inputs(c, 1, 12, 2, 4, 3, "normal"))
    # a fused call's final state (weights and accumulator of each layer) continues in the
    # chunk path like one call (the cut at a chunk end)
    q, k, v = (x[n].float().to(DEVICE) for n in "qkv")
    gates = {n.split(".", 1)[1]: t.float().to(DEVICE) for n, t in x.items()
             if n.startswith("gate.")}
    o_ref, s_ref = c.functional(q, k, v, backend="chunk", chunk_size=4, **gates)
    o1, s1 = c.functional(q[:, :8], k[:, :8], v[:, :8], backend="triton", chunk_size=4,
                          **{n: g[:, :8] for n, g in gates.items()})
    o2, s2 = c.functional(q[:, 8:], k[:, 8:], v[:, 8:], initial_state=s1, backend="chunk",
                          chunk_size=4, **{n: g[:, 8:] for n, g in gates.items()})
    assert s1 is not None and s1.accum is not None and set(s1.weights) == {"W0", "W1"}
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_ref, rtol=1e-4, atol=1e-5)
    assert s2 is not None and s_ref is not None
    for a, b in ((s2.weights, s_ref.weights), (s2.accum, s_ref.accum)):
        for n in a:
            torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-5)


def test_mlp_dims_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # on a GPU each program holds every weight matrix whole: Moneta's and Memora's (hidden
    # 4 × head_dim) up to head_dim 32
    c = _compile(EXAMPLES / "moneta.miras")
    monkeypatch.setattr(ts, "interpreted", lambda: True)
    assert c.kernels.unsupported(128, 128) is None
    monkeypatch.setattr(ts, "interpreted", lambda: False)
    assert c.kernels.unsupported(32, 32) is None
    assert "whole on chip" in c.kernels.unsupported(64, 64)
