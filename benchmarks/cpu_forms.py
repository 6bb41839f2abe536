"""Chunk form vs recurrent form on this CPU: tokens/s and peak memory, forward only.

Usage::

    .venv/bin/python benchmarks/cpu_forms.py              # T = 1K, 4K, 8K
    .venv/bin/python benchmarks/cpu_forms.py --lengths 1024 --specs titans

Prints one row per (spec, T, form) and the chunk/recurrent speed ratio. The recurrent form
is the token-by-token reference (``backend="reference"``, ``chunk_size=1``); the chunk form is
``backend="chunk"`` at the spec's own chunk size. Each measurement runs in a fresh process
(after one warm-up call) so that its peak resident memory is its own. Denormal floats are
flushed to zero: decaying memories otherwise hit the CPU's slow denormal path.
Target (issue 3): the chunk form is at least 10x the recurrent form at T = 4K and its time
grows linearly in T.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import miras  # noqa: E402

SPECS = {"titans": "examples/titans.miras", "gated_deltanet": "examples/gated_deltanet.miras",
         "atlas": "examples/atlas.miras"}
#: Atlas's degree-2 polynomial features turn D = 64 into 4161 memory inputs, and Muon needs
#: per-token weights: it is measured at head dim 16 (273 features) to fit this machine.
HEAD_DIM = {"atlas": 16}


def run(spec: str, T: int, form: str, batch: int, heads: int, dim: int) -> tuple[float, float]:
    """One measurement in this process: (tokens/s, peak RSS in MiB)."""
    c = miras.compile(ROOT / SPECS[spec])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.nn.functional.normalize(torch.randn(batch, T, heads, dim, generator=g),
                                             dim=-1) for _ in range(3))
    gates = {r: torch.rand(batch, T, heads, *([dim] if i.channel else []), generator=g)
             * 0.5 * i.scale + 0.25 * i.scale for r, i in c.gates.items()}
    kwargs = {"backend": "reference", "chunk_size": 1} if form == "recurrent" else {
        "backend": "chunk"}
    with torch.no_grad():
        warm = min(T, 256)
        c.functional(q[:, :warm], k[:, :warm], v[:, :warm], output_final_state=False, **kwargs,
                     **{r: x[:, :warm] for r, x in gates.items()})
        start = time.perf_counter()
        c.functional(q, k, v, output_final_state=False, **kwargs, **gates)
        elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return batch * T / elapsed, peak


def measure(args: argparse.Namespace, spec: str, T: int, form: str) -> tuple[float, float]:
    dim = HEAD_DIM.get(spec, args.dim)
    cmd = [sys.executable, __file__, "--one", spec, str(T), form, "--batch", str(args.batch),
           "--heads", str(args.heads), "--dim", str(dim), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", nargs="+", default=list(SPECS), choices=list(SPECS))
    ap.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 8192])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-recurrent", type=int, default=8192,
                    help="skip the recurrent form above this length (it is slow)")
    ap.add_argument("--one", nargs=3, metavar=("SPEC", "T", "FORM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.one:
        tps, peak = run(args.one[0], int(args.one[1]), args.one[2], args.batch, args.heads,
                        args.dim)
        print(tps, peak)
        return
    print(f"torch {torch.__version__}, {args.threads} threads, B={args.batch} H={args.heads} "
          f"D={args.dim}, forward only, fp32")
    print(f"{'spec':<16}{'D':>4}{'T':>7}{'form':>11}{'tokens/s':>12}{'peak RSS MiB':>14}"
          f"{'chunk/rec':>11}")
    for spec in args.specs:
        for T in args.lengths:
            chunk_tps, chunk_mem = measure(args, spec, T, "chunk")
            d = HEAD_DIM.get(spec, args.dim)
            print(f"{spec:<16}{d:>4}{T:>7}{'chunk':>11}{chunk_tps:>12.0f}{chunk_mem:>14.0f}",
                  flush=True)
            if T <= args.max_recurrent:
                rec_tps, rec_mem = measure(args, spec, T, "recurrent")
                print(f"{spec:<16}{d:>4}{T:>7}{'recurrent':>11}{rec_tps:>12.0f}{rec_mem:>14.0f}"
                      f"{chunk_tps / rec_tps:>10.1f}x", flush=True)


if __name__ == "__main__":
    main()
