"""The benchmark scripts run (tiny sizes); their numbers live in the README, not in tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
