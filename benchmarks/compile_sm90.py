"""Compile every fused Triton kernel for an H100 (sm_90) ahead of time, without a GPU.

Usage::

    python benchmarks/compile_sm90.py                          # every fused example, D = 64, 128
    python benchmarks/compile_sm90.py --specs titans --dims 64 --jobs 2

For each spec and head dim it runs the generated host code (``Compiled.functional(...,
backend="triton")``, forward and backward, bf16, chunk 64) on tiny CPU tensors with every
kernel launch *recorded* instead of executed: the kernel, its arguments and the constexprs the
host passes. Each recorded launch is then compiled with ``triton.compile`` for
``GPUTarget("cuda", 90, 32)`` (Triton's own argument specialisation, as a launch on the GPU
would do), once per autotune configuration, and the table gives registers per thread, the
per-thread stack frame and spill traffic (ptxas ``-v``: bytes of spill stores + loads), shared
memory, or FAIL with the first line of the error.
A kernel over 227 KiB of shared memory or 255 registers is marked as well.

Needs ``TRITON_INTERPRET`` unset (the kernel modules choose their autotune space at import)
and Triton ≥ 3.4 with its bundled ``ptxas``. It uses Triton's launch path piece by piece
(``create_function_from_signature`` → ``JITFunction._pack_args`` → ``ASTSource(fn,
signature, constexprs, attrs)`` → ``triton.compile(src, target=GPUTarget("cuda", 90, 32),
options=...)``), checked on 3.9. Differences in older releases: ``get_ptxas(arch)`` takes the
arch from 3.6 on (handled); ``triton.knobs.nvidia.dump_ptxas_log`` exists from 3.4 (else the
script runs ``ptxas -v`` on the PTX itself); 3.2–3.3 have neither ``_pack_args`` nor the
native specialiser (``ASTSource(fn, signature, constants=..., attrs=AttrsDescriptor)``), so
the script says so and exits 2 there instead of guessing the attributes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)
os.environ.pop("MIRAS_AUTOTUNE", None)
#: a fresh cache: a cached kernel would skip ptxas, whose log gives the registers and spills
_OWN_CACHE = "TRITON_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="miras-sm90-")
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")

import torch  # noqa: E402
import triton  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import miras  # noqa: E402
from miras.runtime import fused  # noqa: E402

SPECS = ("gated_deltanet", "deltanet", "retnet", "gla", "mamba2", "titans", "ttt_linear",
         "ttt_mlp")
#: H100: 227 KiB of shared memory per block (opt-in), 255 registers per thread
MAX_SHARED = 227 * 1024
MAX_REGS = 255


@dataclass
class Launch:
    spec: str
    dim: int
    kernel: Any  # JITFunction or Autotuner
    args: tuple
    kwargs: dict


@dataclass
class Job:
    spec: str
    dim: int
    name: str
    config: str
    fn: Any  # JITFunction
    args: tuple
    kwargs: dict


@dataclass
class Result:
    spec: str
    dim: int
    name: str
    config: str
    regs: int | None = None
    stack: int | None = None
    spill: int | None = None
    shared: int | None = None
    seconds: float = 0.0
    error: str = ""


def _ptxas_path() -> str:
    """The bundled ptxas for sm_90 (``get_ptxas(arch)`` in 3.6+, ``get_ptxas()`` before)."""
    from triton.backends.nvidia.compiler import get_ptxas
    try:
        tool = get_ptxas(90)
    except TypeError:
        tool = get_ptxas()
    return tool if isinstance(tool, str) else tool.path


def aot_api() -> str | None:
    """``None`` when this Triton can compile for sm_90 without a GPU, else why not."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as exc:
        return f"Triton {triton.__version__} lacks the AOT API ({exc})"
    from triton.runtime import jit
    if not (hasattr(jit.JITFunction, "_pack_args")
            and hasattr(jit, "create_function_from_signature")):
        return (f"Triton {triton.__version__} has no JITFunction._pack_args / "
                "create_function_from_signature (this script needs Triton >= 3.4)")
    try:
        path = _ptxas_path()
    except Exception as exc:
        return f"no ptxas ({exc})"
    if not path or not os.path.exists(path):
        return "no ptxas"
    return None


# ---- recording the host code's launches ---------------------------------------------------


def record(spec: str, dim: int, chunk: int) -> list[Launch]:
    """Run the spec's fused forward and backward with every kernel launch recorded."""
    from triton.runtime.jit import KernelInterface

    launches: list[Launch] = []

    def getitem(self: Any, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            launches.append(Launch(spec, dim, self, args, kwargs))
        return launch

    c = miras.compile(ROOT / "examples" / f"{spec}.miras")
    if not c.fused:
        raise RuntimeError(f"not fused: {c.fused_reason}")
    c.kernels  # noqa: B018  (import the module before the launches are patched)
    B, T, H = 1, 2 * chunk, 1
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, dim, generator=g).to(torch.bfloat16) for _ in range(3))
    gates = {role: (0.5 + 0.4 * torch.rand(*((B, T, H, dim) if info.channel else (B, T, H)),
                                             generator=g)).to(torch.bfloat16)
             for role, info in c.gates.items()}
    leaves = [q, k, v, *gates.values()]
    for x in leaves:
        x.requires_grad_(True)
    old_get, old_can = KernelInterface.__getitem__, fused.can_run
    KernelInterface.__getitem__ = getitem  # type: ignore[method-assign]
    fused.can_run = lambda q: None  # type: ignore[assignment]
    try:
        o, _ = c.functional(q, k, v, backend="triton", chunk_size=chunk,
                            output_final_state=True, **gates)
        o.float().sum().backward()
    finally:
        KernelInterface.__getitem__ = old_get  # type: ignore[method-assign]
        fused.can_run = old_can  # type: ignore[assignment]
    return launches


def jobs_of(launch: Launch) -> list[Job]:
    """One job per autotune configuration (one for a plain ``@triton.jit`` kernel)."""
    kern = launch.kernel
    fn = kern
    while not hasattr(fn, "params") and hasattr(fn, "fn"):
        fn = fn.fn  # Autotuner (or heuristics) → JITFunction
    configs = getattr(kern, "configs", None)
    out = []
    if not configs:
        kw = dict(launch.kwargs)
        out.append(Job(launch.spec, launch.dim, fn.__name__, "w{} s{}".format(
            kw.get("num_warps", 4), kw.get("num_stages", 3)), fn, launch.args, kw))
        return out
    for cfg in configs:
        kw = {**launch.kwargs, **cfg.all_kwargs()} if hasattr(cfg, "all_kwargs") else {
            **launch.kwargs, **cfg.kwargs, "num_warps": cfg.num_warps,
            "num_stages": cfg.num_stages}
        kw = {n: x for n, x in kw.items() if x is not None}
        name = " ".join(f"{n}={x}" for n, x in cfg.kwargs.items())
        label = f"{name} w{cfg.num_warps} s{cfg.num_stages}".strip()
        out.append(Job(launch.spec, launch.dim, fn.__name__, label, fn, launch.args, kw))
    return out


# ---- compiling one job ----------------------------------------------------------------------

_JOBS: list[Job] = []
_PTXAS_RE = (re.compile(r"Used (\d+) registers"),
             re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                        r"(\d+) bytes spill loads"))


def _ptxas_log(ptx: str) -> str:
    """``ptxas -v`` on the kernel's PTX (when Triton did not print its own log)."""
    ptxas = _ptxas_path()
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        r = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", str(src), "-o", str(Path(d) / "k.o")],
                           capture_output=True, text=True)
    return r.stderr + r.stdout


def compile_job(i: int) -> Result:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    job = _JOBS[i]
    res = Result(job.spec, job.dim, job.name, job.config)
    t0 = time.perf_counter()
    try:
        target = GPUTarget("cuda", 90, 32)
        backend = make_backend(target)
        fn = job.fn
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, spec, options = binder(*job.args, **job.kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, job.kwargs, bound, spec,
                                                              options)
        src = ASTSource(fn, signature, constexprs, attrs)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            with _knob("dump_ptxas_log", True):
                kernel = triton.compile(src, target=target, options=options.__dict__)
        log = out.getvalue()
        if "registers" not in log:
            log = _ptxas_log(kernel.asm["ptx"])
        regs = [int(m) for m in _PTXAS_RE[0].findall(log)]
        frames = _PTXAS_RE[1].findall(log)
        res.regs = max(regs) if regs else None
        res.stack = max((int(f) for f, _, _ in frames), default=0)
        res.spill = max((int(st) + int(ld) for _, st, ld in frames), default=0)
        res.shared = int(kernel.metadata.shared)
        if res.shared > MAX_SHARED:
            res.error = f"shared memory {res.shared} B > {MAX_SHARED} B (sm_90)"
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        msg = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
        res.error = f"{type(exc).__name__}: {msg}"[:160]
    res.seconds = time.perf_counter() - t0
    return res


@contextlib.contextmanager
def _knob(name: str, value: Any) -> Any:
    """Set ``triton.knobs.nvidia.<name>`` where this Triton has it (≥ 3.4)."""
    knobs = getattr(getattr(triton, "knobs", None), "nvidia", None)
    if knobs is None or not hasattr(knobs, name):
        yield
        return
    old = getattr(knobs, name)
    setattr(knobs, name, value)
    try:
        yield
    finally:
        setattr(knobs, name, old)


# ---- main -----------------------------------------------------------------------------------


def fmt(r: Result) -> str:
    if r.error and r.regs is None:
        return f"{r.spec:15} {r.dim:4} {r.name:28} {r.config:24} FAIL {r.error}"
    warn = f"  !! {r.error}" if r.error else ""
    warn += "  !! regs" if r.regs and r.regs > MAX_REGS else ""
    return (f"{r.spec:15} {r.dim:4} {r.name:28} {r.config:24} {r.regs or '-':>5} "
            f"{r.stack:>6} {r.spill:>6} {r.shared:>7} {r.seconds:6.1f}s{warn}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", default=",".join(SPECS))
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--kernels", default="", help="only kernels whose name contains one of these")
    args = ap.parse_args(argv)
    if (why := aot_api()) is not None:
        print(f"skip: {why}")
        return 2
    print(f"# Triton {triton.__version__}, target cuda sm_90 (warp 32), bf16, chunk {args.chunk}")
    failures: list[str] = []
    for spec in args.specs.split(","):
        for dim in (int(d) for d in args.dims.split(",")):
            try:
                launches = record(spec, dim, args.chunk)
            except Exception as exc:
                failures.append(f"{spec} {dim}: cannot record the launches: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                continue
            seen = set()
            for launch in launches:
                for job in jobs_of(launch):
                    key = (job.spec, job.dim, job.name, job.config)
                    wanted = not args.kernels or any(s in job.name
                                                     for s in args.kernels.split(","))
                    if key not in seen and wanted:
                        seen.add(key)
                        _JOBS.append(job)
    print(f"{'spec':15} {'D':>4} {'kernel':28} {'config':24} {'regs':>5} {'stack':>6} {'spill':>6} "
          f"{'shared':>7} {'time':>7}")
    sys.stdout.flush()
    results: list[Result] = []
    if args.jobs > 1 and len(_JOBS) > 1:
        import multiprocessing as mp
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("fork")) as ex:
            for r in ex.map(compile_job, range(len(_JOBS))):
                print(fmt(r), flush=True)
                results.append(r)
    else:
        for i in range(len(_JOBS)):
            r = compile_job(i)
            print(fmt(r), flush=True)
            results.append(r)
    for f in failures:
        print(f"FAIL {f}")
    bad = [r for r in results if r.error or (r.regs or 0) > MAX_REGS]
    print(f"# {len(results)} compiled, {len(bad)} failed, {len(failures)} specs not recorded")
    if _OWN_CACHE:
        shutil.rmtree(os.environ["TRITON_CACHE_DIR"], ignore_errors=True)
    return 1 if bad or failures else 0


if __name__ == "__main__":
    sys.exit(main())
