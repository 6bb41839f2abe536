"""The benchmark scripts run (tiny sizes); their numbers live in the README, not in tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_cpu_forms_runs() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_forms.py"), "--specs",
                        "gated_deltanet", "--lengths", "64", "--heads", "1", "--dim", "8"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("gated_deltanet")]
    assert [row[3] for row in rows] == ["chunk", "recurrent"]
    assert float(rows[1][-1].rstrip("x")) > 0


def test_kernels_smoke_runs() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke",
                        "--specs", "gated_deltanet,retnet", "--modes", "fwd"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()
            if line.startswith(("gated_deltanet", "retnet"))]
    backends = {(row[0], row[5]) for row in rows}
    assert {("gated_deltanet", "triton"), ("gated_deltanet", "chunk"), ("retnet", "triton"),
            ("retnet", "chunk")} <= backends
    # every fused row has a time; an unfused one says why
    for row in rows:
        if row[5] == "triton":
            assert row[6] != "-" or "not fused" in " ".join(row)


def test_compile_sm90_runs() -> None:
    """The exact kernels compile for sm_90 ahead of time (no GPU); skipped where the
    installed Triton lacks the AOT API or its bundled ptxas."""
    import os

    env = {n: x for n, x in os.environ.items() if n not in ("TRITON_INTERPRET", "MIRAS_AUTOTUNE")}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_sm90.py"), "--specs",
                        "deltanet", "--dims", "64", "--kernels", "exact_fwd"],
                       capture_output=True, text=True, timeout=300, env=env)
    if r.returncode == 2 and r.stdout.startswith("skip:"):
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("deltanet")]
    assert {row[2] for row in rows} == {"exact_fwd_prepare_kernel", "exact_fwd_h_kernel",
                                        "exact_fwd_o_kernel"}
    assert all("FAIL" not in row and int(row[-5]) > 0 for row in rows), r.stdout


def test_gdn_vs_fla_measures_the_fused_kernels(monkeypatch) -> None:
    """The GPU script's correctness path, on the CPU interpreter (its timing needs CUDA)."""
    import importlib.util

    import torch

    import miras

    spec = importlib.util.spec_from_file_location("gdn_vs_fla",
                                                  ROOT / "benchmarks" / "gdn_vs_fla.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "DEV", "cpu")
    c = miras.compile(ROOT / mod.SPECS["gated_deltanet"])
    x, go, gw = mod.make(c, 1, 20, 2, 16)
    out = mod.run(c, x, go, gw, "triton", torch.float32)
    ref = mod.run(c, x, go, gw, "chunk", torch.float64)
    assert set(out) == set(ref) and max(mod.rel(out[n], ref[n]) for n in out) < 1e-5
