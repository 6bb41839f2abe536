"""miras.compile end to end: every example runs; reductions to known recurrences (fp64)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import miras
from miras.compiler import compile as compile_spec

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.miras"))
B, T, H, D = 2, 12, 2, 6


def _inputs(seed: int = 0, channel_gates: dict[str, bool] | None = None):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    return (torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1),
            v, g)


def _gates(c: miras.Compiled, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Gate values inside each gate's range: (0.25, 0.75) times its scale."""
    return {role: (torch.rand(B, T, H, *([D] if info.channel else []), generator=g,
                              dtype=torch.float64) * 0.5 + 0.25) * info.scale
            for role, info in c.gates.items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_chunk_form_equals_reference(path: Path) -> None:
    c = compile_spec(path)
    q, k, v, g = _inputs()
    gates = _gates(c, g)
    for chunk in (None, 1, 5):
        o_ref, s_ref = c.functional(q, k, v, backend="reference", chunk_size=chunk, **gates)
        o_chk, s_chk = c.functional(q, k, v, backend="chunk", chunk_size=chunk, **gates)
        assert o_ref.shape == (B, T, H, D)
        assert torch.isfinite(o_ref).all()
        assert _rel(o_chk, o_ref) < 1e-10
        for n, t in s_ref.tensors().items():
            assert _rel(s_chk.tensors()[n], t) < 1e-10


def _closed_form(q, k, v, write):
    """y_t = M_t q_t with M_t = write(M_{t−1}, t) (row convention: y = M k)."""
    m = torch.zeros(B, H, D, D, dtype=torch.float64)
    out = []
    for t in range(T):
        m = write(m, t)
        out.append(torch.einsum("bhij,bhj->bhi", m, q[:, t]))
    return torch.stack(out, 1)


def _outer(a, b):
    return torch.einsum("bhi,bhj->bhij", a, b)


def _mv(m, x):
    return torch.einsum("bhij,bhj->bhi", m, x)


def test_linear_attention_is_hebbian_write() -> None:
    c = compile_spec("examples/linear_attention.miras")
    q, k, v, _ = _inputs()
    o, _ = c.functional(q, k, v, backend="reference")
    ref = _closed_form(q, k, v, lambda m, t: m + _outer(v[:, t], k[:, t]))
    torch.testing.assert_close(o, ref, rtol=1e-12, atol=1e-12)
    o_chunk, _ = c.functional(q, k, v)  # dot bias: anchoring changes nothing
    torch.testing.assert_close(o_chunk, ref, rtol=1e-12, atol=1e-12)


def test_retnet_decays_per_head() -> None:
    c = compile_spec("examples/retnet.miras")
    q, k, v, _ = _inputs()
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float64))  # [H]
    o, _ = c.functional(q, k, v, backend="reference")
    ref = _closed_form(q, k, v, lambda m, t: gamma.view(1, H, 1, 1) * m
                       + _outer(v[:, t], k[:, t]))
    torch.testing.assert_close(o, ref, rtol=1e-12, atol=1e-12)


def test_deltanet_and_gated_deltanet_and_longhorn() -> None:
    q, k, v, g = _inputs()
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64)
    alpha = torch.rand(B, T, H, generator=g, dtype=torch.float64) * 0.5 + 0.5
    c = compile_spec("examples/deltanet.miras")
    o, _ = c.functional(q, k, v, lr=beta)
    b = lambda t: beta[:, t].view(B, H, 1, 1)  # noqa: E731
    a = lambda t: alpha[:, t].view(B, H, 1, 1)  # noqa: E731
    ref = _closed_form(q, k, v, lambda m, t: m - b(t) * _outer(_mv(m, k[:, t]) - v[:, t],
                                                                k[:, t]))
    torch.testing.assert_close(o, ref, rtol=1e-12, atol=1e-12)
    c = compile_spec("examples/gated_deltanet.miras")
    o, _ = c.functional(q, k, v, lr=beta, decay=alpha)
    # M_t = α_t (I − β_t k kᵀ) M_{t−1} + β_t v kᵀ
    ref = _closed_form(q, k, v, lambda m, t: a(t) * m - b(t) * _outer(
        _mv(a(t) * m, k[:, t]) - v[:, t], k[:, t]))
    torch.testing.assert_close(o, ref, rtol=1e-12, atol=1e-12)
    c = compile_spec("examples/longhorn.miras")
    lr = torch.rand(B, T, H, D, generator=g, dtype=torch.float64)
    o, _ = c.functional(q, k, v, lr=lr)

    def longhorn(m, t):
        kt = k[:, t]
        eps = lr[:, t] / (1 + lr[:, t] * (kt * kt).sum(-1, keepdim=True))  # [B, H, D]
        return m - eps.unsqueeze(-1) * _outer(_mv(m, kt) - v[:, t], kt)

    torch.testing.assert_close(o, _closed_form(q, k, v, longhorn), rtol=1e-12, atol=1e-12)


SPEC = "model m {{ memory = {mem}  bias = {bias}  retention = {ret}  algorithm = {alg}{extra} }}"


def _run(text: str, chunk: int | None = None, **gates):
    q, k, v, _ = _inputs(3)
    o, _ = compile_spec(text).functional(q, k, v, backend="reference", chunk_size=chunk,
                                         **gates)
    return o


@pytest.mark.parametrize("mem", ["matrix", "mlp(depth=2, expansion=2)"])
def test_omega_window_of_one_is_the_online_rule(mem: str) -> None:
    base = dict(mem=mem, bias="l2", ret="decay(alpha=0.9)", alg="gd(lr=0.3)")
    plain = _run(SPEC.format(**base, extra=""), 1)
    window = _run(SPEC.format(**base, extra="  window = sliding(size=1)"), 1)
    torch.testing.assert_close(window, plain, rtol=1e-12, atol=1e-12)
    wider = _run(SPEC.format(**base, extra="  window = sliding(size=3)"), 1)
    assert _rel(wider, plain) > 1e-3


@pytest.mark.parametrize("mem", ["matrix", "mlp(depth=2, expansion=2)"])
def test_lp_two_is_l2_with_twice_the_step(mem: str) -> None:
    lp = _run(SPEC.format(mem=mem, bias="lp(p=2)", ret="none", alg="gd(lr=0.2)", extra=""), 1)
    l2 = _run(SPEC.format(mem=mem, bias="l2", ret="none", alg="gd(lr=0.4)", extra=""), 1)
    torch.testing.assert_close(lp, l2, rtol=1e-10, atol=1e-10)


def test_moneta_with_q_two_is_plain_decay() -> None:
    mem = "mlp(depth=2, expansion=2)"
    lq = _run(SPEC.format(mem=mem, bias="lp(p=3)", ret="lq(q=2, alpha=0.8)", alg="gd(lr=0.1)",
                          extra=""), 1)
    decay = _run(SPEC.format(mem=mem, bias="lp(p=3)", ret="decay(alpha=0.8)",
                             alg="gd(lr=0.1)", extra=""), 1)
    torch.testing.assert_close(lq, decay, rtol=1e-10, atol=1e-10)


def test_softmax_attention_and_sliding_window() -> None:
    q, k, v, _ = _inputs()
    o, _ = compile_spec("examples/softmax_attention.miras").functional(q, k, v)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / D**0.5
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    ref = torch.einsum("bhts,bshd->bthd", scores.masked_fill(~mask, -torch.inf).softmax(-1), v)
    torch.testing.assert_close(o, ref, rtol=1e-12, atol=1e-12)
    swa = compile_spec("model w { memory = nonparametric  bias = l2  retention = none  "
                       "algorithm = nonparametric  window = sliding(size=3) }")
    o, _ = swa.functional(q, k, v)
    band = mask & ~torch.ones(T, T, dtype=torch.bool).tril(-3)
    ref = torch.einsum("bhts,bshd->bthd", scores.masked_fill(~band, -torch.inf).softmax(-1), v)
    torch.testing.assert_close(o, ref, rtol=1e-12, atol=1e-12)


def test_gates_are_listed_and_checked() -> None:
    c = compile_spec("examples/titans.miras")
    assert {r: i.shape() for r, i in c.gates.items()} == {
        "decay": "[B, T, H]", "lr": "[B, T, H]", "momentum": "[B, T, H]"}
    q, k, v, g = _inputs()
    with pytest.raises(TypeError, match="missing gate 'decay'"):
        c.functional(q, k, v)
    with pytest.raises(TypeError, match="unexpected gate"):
        c.functional(q, k, v, **_gates(c, g), delta=torch.ones(B, T, H))


def test_compiled_module_is_cached_and_deterministic(tmp_path: Path) -> None:
    from miras.compiler import build_plan, render_torch

    a = render_torch(build_plan("examples/titans.miras"))
    b = render_torch(build_plan("examples/titans.miras"))
    assert a == b
    assert a.startswith("# Generated by miras")
    c1 = compile_spec("examples/titans.miras", cache_dir=tmp_path)
    c2 = compile_spec("examples/titans.miras", cache_dir=tmp_path)
    assert c1.path == c2.path and c1.module is c2.module
    # the recurrence module, and the fused kernels (titans is in the mlp family)
    files = sorted(p.name for p in tmp_path.rglob("*.py"))
    assert len(files) == 2 and files[1] == files[0].replace(".py", "_triton.py")


def test_two_processes_compiling_at_once_share_one_module(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys, miras; c = miras.compile('examples/titans.miras', cache_dir=sys.argv[1]);"
            " print(c.path)")
    root = Path(__file__).parent.parent
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    paths = {o.strip() for o, _ in outs}
    assert len(paths) == 1
    files = list(tmp_path.rglob("*.py"))
    assert len(files) == 2 and not list(tmp_path.rglob("*.tmp"))
