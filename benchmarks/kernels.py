"""Fused Triton kernels vs the PyTorch chunk path vs FlashAttention vs flash-linear-attention.

Usage::

    python benchmarks/kernels.py                    # on a GPU: T = 2K..16K, D = 64 and 128, bf16
    python benchmarks/kernels.py --smoke            # CPU, Triton interpreter, tiny sizes (seconds)
    python benchmarks/kernels.py --specs titans --lengths 4096 --dims 64

For every (spec, head dim D, length T) it times the forward and forward+backward of

* ``triton``: ``Compiled.functional(..., backend="triton")`` (a spec outside the fused families
  prints its one-line fallback reason instead);
* ``chunk``: the PyTorch chunk path, eager, and ``chunk+compile``: the same under
  ``torch.compile`` (only at the shortest length: compiling the chunk loop takes minutes);
* ``sdpa``: causal ``scaled_dot_product_attention`` on the same q, k, v (FlashAttention-2 on
  CUDA);
* ``fla``: flash-linear-attention's hand-written ``chunk_gated_delta_rule`` (Gated DeltaNet
  specs only, when ``fla`` is installed);

with ``B·H`` filling the GPU (``B·T = --tokens``, ``H = 1024 / D``), and prints milliseconds,
tokens/s, achieved TFLOP/s (model FLOPs: the matmuls of each form, see :func:`flops`), peak
memory and the speed-up over the eager chunk path. Last, the card's measured bf16 matmul
rate, and the issue's targets checked against the numbers.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

if "--smoke" in sys.argv:  # the interpreter must be chosen before Triton kernels load
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import miras  # noqa: E402
from miras.runtime.fused import FallbackWarning  # noqa: E402

SPECS = {"gated_deltanet": "examples/gated_deltanet.miras", "titans": "examples/titans.miras",
         "retnet": "examples/retnet.miras", "gla": "examples/gla.miras",
         "ttt_mlp": "examples/ttt_mlp.miras", "yaad": "examples/yaad.miras",
         "bounded_memory": "examples/custom_retention.miras", "deltanet": "examples/deltanet.miras"}
#: measured by default (the others with --specs)
DEFAULT_SPECS = ("gated_deltanet", "titans", "retnet")


@dataclass
class Row:
    spec: str
    dim: int
    T: int
    batch: int
    heads: int
    mode: str
    backend: str
    ms: float | None
    tflops: float | None
    peak_gib: float | None
    note: str = ""

    def tokens_per_s(self) -> float | None:
        return None if self.ms is None else self.batch * self.T / (self.ms / 1e3)


def flops(spec: str, family: str | None, T: int, B: int, H: int, D: int, chunk: int,
          expansion: float = 4.0) -> float:
    """Model FLOPs of one forward pass (matmuls only; 2 per multiply-add).

    Linear-recurrent forms per chunk of ``C`` tokens: the intra-chunk ``C×C`` products and the
    state reads/writes ``C×D×D``; attention: ``2·T²·D`` causal. The MLP memory adds the
    hidden width ``E = expansion·D`` to every product of the dual form.
    """
    C = chunk
    n = T / C
    if spec == "sdpa":
        return 2.0 * T * T * D * B * H  # QKᵀ and PV, causal half of 4·T²·D
    if family == "mlp" or spec in ("titans", "ttt_mlp"):
        E = expansion * D
        # anchor pass (C·D·E + C·E·D), its backward (C·D·E), the query pass with the dual
        # form for both layers (C·D·E + C·E·D + C²·(D + 2E + D)), state updates (E·C·D · 2)
        per_chunk = 2 * (C * D * E * 4 + C * C * (2 * D + 2 * E) + 2 * E * C * D)
        return per_chunk * n * B * H
    if family == "scan":
        # anchor pass (C·D·D for y, C·D·D for the update factors), then per token the read
        # and the rank-1 update of the D×D weights (no tensor cores: the map is per entry)
        return 2 * (C * D * D * 2 + C * D * D * 2) * n * B * H
    # dual / exact matrix memory: K·Kᵀ, Q·Kᵀ, (A·K, A·V for exact), S reads and the update
    per_chunk = 2 * (C * C * D * 4 + C * D * D * 3)
    return per_chunk * n * B * H


def timeit(fn: Callable[[], object], device: str, reps: int) -> float:
    """Median milliseconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def inputs(c: miras.Compiled, B: int, T: int, H: int, D: int, dtype: torch.dtype, device: str
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device)

    q = torch.nn.functional.normalize(rand(B, T, H, D), dim=-1)
    k = torch.nn.functional.normalize(rand(B, T, H, D), dim=-1)
    v = rand(B, T, H, D) * 0.5
    gates = {}
    for role, info in c.gates.items():
        shape = (B, T, H, D) if info.channel else (B, T, H)
        lo, hi = {"decay": (0.95, 0.999), "momentum": (0.8, 0.95), "lr": (0.05, 0.5)}.get(
            role, (0.3, 0.9))
        gates[role] = (lo + (hi - lo) * torch.rand(*shape, generator=g)).to(device)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    return q, k, v, {n: x.to(dtype) for n, x in gates.items()}


def measure(run: Callable[[], torch.Tensor], grads: list[torch.Tensor], mode: str, device: str,
            reps: int) -> tuple[float, float | None]:
    """(ms, peak GiB) of the forward, or of forward + backward."""
    if mode == "fwd":
        def step() -> object:
            with torch.no_grad():
                return run()
    else:
        def step() -> object:
            for x in grads:
                x.grad = None
            o = run()
            o.backward(torch.ones_like(o))
            return o
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    ms = timeit(step, device, reps)
    peak = ((torch.cuda.max_memory_allocated() - base) / 2**30) if device == "cuda" else None
    return ms, peak


def bench_spec(spec: str, D: int, T: int, B: int, H: int, args: argparse.Namespace,
               device: str, dtype: torch.dtype, rows: list[Row]) -> None:
    c = miras.compile(ROOT / SPECS[spec])
    chunk = c.module.CHUNK if not args.smoke else 8
    q, k, v, gates = inputs(c, B, T, H, D, dtype, device)
    leaves = [q, k, v, *gates.values()]
    for x in leaves:
        x.requires_grad_(True)
    fam = c.fused
    model_flops = flops(spec, fam, T, B, H, D, chunk)
    compiled_fn = None

    def run_backend(backend: str) -> Callable[[], torch.Tensor]:
        def f() -> torch.Tensor:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FallbackWarning)
                o, _ = c.functional(q, k, v, backend=backend, chunk_size=chunk,  # type: ignore[arg-type]
                                    output_final_state=False, **gates)
            return o
        return f

    backends: list[tuple[str, Callable[[], torch.Tensor] | None, str]] = [
        ("triton", run_backend("triton") if fam else None,
         "" if fam else f"not fused: {c.fused_reason}")]
    if T <= args.max_chunk_len:
        backends.append(("chunk", run_backend("chunk"), ""))
    else:
        backends.append(("chunk", None, f"skipped above T={args.max_chunk_len}"))
    if args.compile and T == min(args.lengths) and device == "cuda":
        compiled_fn = torch.compile(run_backend("chunk"))
        backends.append(("chunk+compile", compiled_fn, ""))
    for mode in args.modes:
        base_ms = None
        for name, fn, note in backends:
            if fn is None:
                rows.append(Row(spec, D, T, B, H, mode, name, None, None, None, note))
                continue
            try:
                ms, peak = measure(fn, leaves, mode, device, args.reps)
            except Exception as exc:  # report and go on: one failing backend is a result too
                rows.append(Row(spec, D, T, B, H, mode, name, None, None, None,
                                f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"))
                continue
            mult = 1.0 if mode == "fwd" else 3.0
            rows.append(Row(spec, D, T, B, H, mode, name, ms, model_flops * mult / ms / 1e9,
                            peak))
            if name == "chunk":
                base_ms = ms
        if base_ms is not None:
            for r in rows:
                if (r.spec, r.dim, r.T, r.mode) == (spec, D, T, mode) and r.ms and not r.note:
                    r.note = f"{base_ms / r.ms:.1f}x chunk"
    if spec == "gated_deltanet":
        bench_fla(q, k, v, gates, spec, D, T, B, H, args, device, rows, model_flops)


def bench_fla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: dict[str, torch.Tensor],
              spec: str, D: int, T: int, B: int, H: int, args: argparse.Namespace, device: str,
              rows: list[Row], model_flops: float) -> None:
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception:
        rows.append(Row(spec, D, T, B, H, "-", "fla", None, None, None, "fla not installed"))
        return
    if device != "cuda":
        return
    g = torch.log(gates["decay"].float()).detach().requires_grad_(True)
    beta = gates["lr"].detach().requires_grad_(True)
    leaves = [q, k, v, g, beta]

    def f() -> torch.Tensor:
        o, _ = chunk_gated_delta_rule(q, k, v, g, beta, scale=1.0, output_final_state=False)
        return o

    for mode in args.modes:
        try:
            ms, peak = measure(f, leaves, mode, device, args.reps)
        except Exception as exc:  # fla refuses some Triton/GPU pairs (its issue #640)
            rows.append(Row(spec, D, T, B, H, mode, "fla", None, None, None,
                            f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"))
            continue
        mult = 1.0 if mode == "fwd" else 3.0
        rows.append(Row(spec, D, T, B, H, mode, "fla", ms, model_flops * mult / ms / 1e9, peak))


def bench_sdpa(D: int, T: int, B: int, H: int, args: argparse.Namespace, device: str,
               dtype: torch.dtype, rows: list[Row]) -> None:
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(device, dtype).requires_grad_(True)
               for _ in range(3))

    def f() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    for mode in args.modes:
        ms, peak = measure(f, [q, k, v], mode, device, args.reps)
        mult = 1.0 if mode == "fwd" else 3.5
        rows.append(Row("sdpa", D, T, B, H, mode, "sdpa", ms,
                        flops("sdpa", None, T, B, H, D, 1) * mult / ms / 1e9, peak))


def matmul_rate(device: str, dtype: torch.dtype) -> float | None:
    """The card's measured dense bf16 matmul rate (TFLOP/s), 8192³."""
    if device != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = timeit(lambda: a @ b, device, 10)
    return 2 * n**3 / ms / 1e9


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows: list[Row]) -> None:
    head = (f"{'spec':<15} {'D':>4} {'T':>6} {'BxH':>7} {'mode':<6} {'backend':<14} "
            f"{'ms':>9} {'Mtok/s':>8} {'TFLOP/s':>8} {'peak GiB':>9}  note")
    print(head)
    print("-" * len(head))
    for r in rows:
        tps = r.tokens_per_s()
        print(f"{r.spec:<15} {r.dim:>4} {r.T:>6} {f'{r.batch}x{r.heads}':>7} {r.mode:<6} "
              f"{r.backend:<14} {fmt(r.ms, '.3f'):>9} {fmt(tps and tps / 1e6):>8} "
              f"{fmt(r.tflops):>8} {fmt(r.peak_gib):>9}  {r.note}")


def targets(rows: list[Row], peak: float | None) -> None:
    """The issue's targets, checked against the rows (printed, never asserted)."""
    def ms(spec: str, backend: str, D: int, T: int, mode: str) -> float | None:
        for r in rows:
            if (r.spec, r.backend, r.dim, r.T, r.mode) == (spec, backend, D, T, mode) and r.ms:
                return r.ms
        return None

    print("\ntargets")
    for r in rows:
        if r.spec != "gated_deltanet" or r.backend != "triton" or not r.ms:
            continue
        fla = ms("gated_deltanet", "fla", r.dim, r.T, r.mode)
        sdpa = ms("sdpa", "sdpa", r.dim, r.T, r.mode)
        parts = [f"GDN D={r.dim} T={r.T} {r.mode}:"]
        if fla:
            parts.append(f"{r.ms / fla:.2f}x fla's time (target <= 1.2)")
        if sdpa:
            parts.append(f"{sdpa / r.ms:.2f}x SDPA's speed (target > 1 from 4K)")
        print("  " + " ".join(parts))
    for r in rows:
        if r.spec != "titans" or r.backend != "triton" or not r.ms:
            continue
        chunk = ms("titans", "chunk", r.dim, r.T, r.mode)
        parts = [f"Titans D={r.dim} T={r.T} {r.mode}:"]
        if chunk:
            parts.append(f"{chunk / r.ms:.1f}x the chunk path (target >= 10)")
        if peak and r.tflops:
            parts.append(f"{100 * r.tflops / peak:.0f}% of the bf16 matmul rate (target >= 30)")
        print("  " + " ".join(parts))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny sizes")
    ap.add_argument("--specs", default=",".join(DEFAULT_SPECS),
                    help=f"comma-separated, from {', '.join(SPECS)}")
    ap.add_argument("--lengths", default="2048,4096,8192,16384")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--tokens", type=int, default=32768, help="B·T per measurement")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-chunk-len", type=int, default=8192,
                    help="longest T for the eager PyTorch chunk path")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.smoke:
        args.lengths, args.dims, args.tokens, args.reps = "24", "16", 24, 1
    args.lengths = [int(x) for x in args.lengths.split(",")]
    dims = [int(x) for x in args.dims.split(",")]
    args.modes = args.modes.split(",")
    specs = args.specs.split(",")
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (interpreter)'}"
          f", torch {torch.__version__}, dtype {str(dtype).removeprefix('torch.')}")
    rows: list[Row] = []
    for D in dims:
        H = 2 if args.smoke else max(1, 1024 // D)
        for T in args.lengths:
            B = max(1, args.tokens // T)
            for spec in specs:
                bench_spec(spec, D, T, B, H, args, device, dtype, rows)
            if device == "cuda" or args.smoke:
                bench_sdpa(D, T, B, H, args, device, dtype, rows)
            if device == "cuda":
                torch.cuda.empty_cache()
    print_table(rows)
    peak = matmul_rate(device, dtype)
    if peak:
        print(f"\nbf16 matmul rate (8192^3): {peak:.0f} TFLOP/s")
    targets(rows, peak)
    if math.isnan(sum(r.ms or 0.0 for r in rows)):
        sys.exit(1)


if __name__ == "__main__":
    main()
