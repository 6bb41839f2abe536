"""Gated DeltaNet on a GPU: the fused ``exact`` kernels vs flash-linear-attention.

Usage (a CUDA machine; fla optional)::

    python benchmarks/gdn_vs_fla.py               # correctness, then timing
    SKIP_CHECK=1 python benchmarks/gdn_vs_fla.py  # timing only

1. Correctness: output, final state and every gradient of the fused kernels against the
   fp64 PyTorch chunk path, for Gated DeltaNet (decay at=decayed) and a DeltaNet-style spec
   with decay at=prev, in fp32 and bf16 (relative errors printed).
2. Timing (bf16, autotuned, ``triton.testing.do_bench`` warm-up 25 ms, 100 ms of
   repetitions): the generated ``ExactFunction`` on head-first tensors (``ours``),
   ``Compiled.functional(..., backend="triton")`` on ``[B, T, H, D]`` tensors (``ours_e2e``),
   and fla's ``chunk_gated_delta_rule`` (``fla``, ``scale=1``), forward and forward+backward,
   at (B, T, H, D) = (8, 2048, 16, 128), (2, 8192, 16, 128), (4, 4096, 32, 64).

fla 0.6.0 refuses its gated backward on Triton 3.4-3.7.0 on Hopper (its issue #640); the
script lifts that guard to time it, so fla's forward+backward time counts but its gradients
there may be wrong. This is the measurement behind the H100 table of
``benchmarks/RESULTS.md`` (run then from a scratch copy of this script).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("MIRAS_AUTOTUNE", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import triton
from triton.testing import do_bench

import miras
from miras.runtime.engine import State

DEV = "cuda"
SPECS = {
    "gated_deltanet": "examples/gated_deltanet.miras",
    "delta_prev": """model delta_prev { memory = matrix  bias = l2
        retention = decay(alpha=gate(act=sigmoid), at=prev)
        algorithm = gd(lr=gate(act=sigmoid))  parallel = exact(size=64) }""",
}
BENCH_SPEC = """model gdn_bench { memory = matrix  bias = l2
    retention = decay(alpha=gate(act=mamba), at=decayed)
    algorithm = gd(lr=gate(act=sigmoid))  parallel = exact(size=64) }"""


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def make(c: miras.Compiled, B: int, T: int, H: int, D: int, seed: int = 0
         ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """fp64 inputs (q, k, v, initial W, gates) and the cotangents of o and the final W."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x = {"q": rnd(B, T, H, D), "k": torch.nn.functional.normalize(rnd(B, T, H, D), dim=-1),
         "v": rnd(B, T, H, D), "w0": 0.3 * rnd(B, H, D, D)}
    for role in c.gates:
        lo, hi = (0.2, 0.9) if role == "lr" else (0.9, 1.0)
        x[role] = lo + (hi - lo) * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    go, gw = rnd(B, T, H, D).to(DEV), rnd(B, H, D, D).to(DEV)
    return {n: t.to(DEV) for n, t in x.items()}, go, gw


def run(c: miras.Compiled, x: dict[str, torch.Tensor], go: torch.Tensor, gw: torch.Tensor,
        backend: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    leaves = {n: t.to(dtype).requires_grad_(True) for n, t in x.items()}
    if dtype != torch.float64:  # the state stays fp32
        leaves["w0"] = x["w0"].float().requires_grad_(True)
    gates = {n: t for n, t in leaves.items() if n not in ("q", "k", "v", "w0")}
    o, fin = c.functional(leaves["q"], leaves["k"], leaves["v"],
                          initial_state=State({"W": leaves["w0"]}),
                          backend=backend, **gates)  # type: ignore[arg-type]
    assert fin is not None
    loss = (o.double() * go).sum() + (fin.weights["W"].double() * gw).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"o": o, "W_T": fin.weights["W"],
            **{"d" + n: t for n, t in zip(leaves, grads, strict=True)}}


def check() -> None:
    t0 = time.time()
    for name, src in SPECS.items():
        c = miras.compile(src)
        assert c.fused == "exact", c.fused_reason
        for B, T, H, D, dtype in [(2, 300, 3, 64, torch.float32), (1, 200, 2, 48, torch.float32),
                                  (2, 300, 3, 128, torch.bfloat16)]:
            x, go, gw = make(c, B, T, H, D)
            out = run(c, x, go, gw, "triton", dtype)
            ref = run(c, x, go, gw, "chunk", torch.float64)
            errs = {n: rel(out[n], ref[n]) for n in out}
            bad = any(not e < 1e9 for e in errs.values())
            print(f"{name:15s} B{B} T{T} H{H} D{D} {str(dtype)[6:]:9s} "
                  f"max {max(errs.values()):.1e} ",
                  " ".join(f"{n}={e:.0e}" for n, e in errs.items()), "NaN!" if bad else "",
                  flush=True)
    print(f"correctness done in {time.time() - t0:.0f}s", flush=True)


def load_fla() -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    try:
        import fla.ops.common.chunk_o as chunk_o
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as exc:
        print("no fla:", exc)
        return None
    chunk_o.IS_NVIDIA_HOPPER = False  # timing only: see the module docstring
    return chunk_gated_delta_rule


def bench() -> None:
    os.environ["MIRAS_AUTOTUNE"] = "1"
    fla = load_fla()
    c = miras.compile(BENCH_SPEC)
    kern = c.kernels
    for B, T, H, D in [(8, 2048, 16, 128), (2, 8192, 16, 128), (4, 4096, 32, 64)]:
        g = torch.Generator(device=DEV).manual_seed(0)

        def rnd(*shape: int, g: torch.Generator = g) -> torch.Tensor:
            return torch.randn(*shape, device=DEV, generator=g)

        q = torch.nn.functional.normalize(rnd(B, H, T, D), dim=-1).bfloat16()
        k = torch.nn.functional.normalize(rnd(B, H, T, D), dim=-1).bfloat16()
        v = (rnd(B, H, T, D) * 0.5).bfloat16()
        beta = (0.05 + 0.45 * torch.rand(B, H, T, device=DEV, generator=g)).bfloat16()
        alpha = (0.95 + 0.049 * torch.rand(B, H, T, device=DEV, generator=g)).bfloat16()
        h0 = torch.zeros(B, H, D, D, device=DEV)
        for t in (q, k, v, beta, alpha):
            t.requires_grad_(True)
        tq, tk, tv = (t.detach().transpose(1, 2).contiguous().requires_grad_(True)
                      for t in (q, k, v))
        tb = beta.detach().transpose(1, 2).contiguous().requires_grad_(True)
        tg = torch.log(alpha.detach().float()).transpose(1, 2).contiguous().requires_grad_(True)
        ta = alpha.detach().transpose(1, 2)
        fns: dict[str, Callable[[], torch.Tensor]] = {
            "ours": lambda q=q, k=k, v=v, beta=beta, alpha=alpha, h0=h0:
                kern.ExactFunction.apply(q, k, v, beta, alpha, h0, 64, True)[0],
            "ours_e2e": lambda tq=tq, tk=tk, tv=tv, tb=tb, ta=ta:
                c.functional(tq, tk, tv, lr=tb, decay=ta, backend="triton")[0],
        }
        head_first = {"ours"}
        if fla is not None:
            fns["fla"] = lambda tq=tq, tk=tk, tv=tv, tg=tg, tb=tb, h0=h0: fla(
                tq, tk, tv, tg, tb, scale=1.0, initial_state=h0.transpose(-1, -2).contiguous(),
                output_final_state=True)[0]
        o1 = fns["ours"]()
        do = torch.randn_like(o1)
        if fla is not None:
            print(f"B{B} T{T} H{H} D{D}: rel(ours, fla) o = "
                  f"{rel(o1.transpose(1, 2), fns['fla']()):.2e}", flush=True)
        res = {}
        for name, f in fns.items():
            with torch.no_grad():
                fwd = do_bench(f, warmup=25, rep=100)
            grad_o = do if name in head_first else do.transpose(1, 2)

            def fwd_bwd(f: Callable[[], torch.Tensor] = f, grad_o: torch.Tensor = grad_o
                        ) -> None:
                f().backward(grad_o)

            both = do_bench(fwd_bwd, warmup=25, rep=100)
            res[name] = (fwd, both)
            print(f"  {name:9s} fwd {fwd:.3f} ms  fwd+bwd {both:.3f} ms", flush=True)
        if "fla" in res:
            print(f"  ratio ours/fla fwd {res['ours'][0] / res['fla'][0]:.2f} "
                  f"fwd+bwd {res['ours'][1] / res['fla'][1]:.2f}", flush=True)


if __name__ == "__main__":
    print("torch", torch.__version__, "triton", triton.__version__,
          torch.cuda.get_device_name(), flush=True)
    if not os.environ.get("SKIP_CHECK"):
        check()
    bench()
