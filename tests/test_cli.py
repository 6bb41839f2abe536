"""The command line: exit codes, output shapes, and no tracebacks for user input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import miras
from miras.cli import app

ROOT = Path(__file__).parent.parent
TITANS = ROOT / "examples" / "titans.miras"
runner = CliRunner()

GOOD = "model m { memory = matrix  bias = l2  retention = none  algorithm = gd }\n"
BAD = ("model m {\n    memory = matrix\n    bias = hubber\n    retention = none\n"
       "    algorithm = gd\n}\n")


@pytest.fixture
def good(tmp_path: Path) -> Path:
    p = tmp_path / "good.miras"
    p.write_text(GOOD)
    return p


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    p = tmp_path / "bad.miras"
    p.write_text(BAD)
    return p


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.output.strip() == f"miras {miras.__version__}"


def test_check_clean(good: Path) -> None:
    r = runner.invoke(app, ["check", str(good)])
    assert r.exit_code == 0
    assert r.output.strip() == f"{good}: ok (m)"


def test_check_reports_diagnostic_with_caret(bad: Path) -> None:
    r = runner.invoke(app, ["check", str(bad)])
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert lines[0] == f"{bad}:3:12: error: unknown bias 'hubber'; did you mean 'huber'? [E101]"
    assert lines[1] == "        bias = hubber"
    assert lines[2] == "               ^~~~~~"
    assert "Traceback" not in r.output


def test_check_json(bad: Path, good: Path) -> None:
    r = runner.invoke(app, ["check", "--format", "json", str(good), str(bad)])
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert [(d["code"], d["line"], d["column"]) for d in data] == [("E101", 3, 12)]


def test_check_missing_file_is_a_diagnostic(tmp_path: Path) -> None:
    r = runner.invoke(app, ["check", str(tmp_path / "nope.miras")])
    assert r.exit_code == 1
    assert "[E007]" in r.output


def test_usage_error_exit_code_2(good: Path) -> None:
    assert runner.invoke(app, ["check"]).exit_code == 2
    assert runner.invoke(app, ["emit", "--stage", "nonsense", str(good)]).exit_code == 2
    assert runner.invoke(app, ["frobnicate"]).exit_code == 2


def test_fmt_prints_and_checks(tmp_path: Path) -> None:
    messy = tmp_path / "messy.miras"
    messy.write_text("model m{memory=matrix bias=l2 retention=none algorithm=gd}")
    r = runner.invoke(app, ["fmt", str(messy)])
    assert r.exit_code == 0
    assert r.output == ("model m {\n    memory = matrix\n    bias = l2\n    retention = none\n"
                        "    algorithm = gd\n}\n")
    assert runner.invoke(app, ["fmt", "--check", str(messy)]).exit_code == 1
    assert runner.invoke(app, ["fmt", "-w", str(messy)]).exit_code == 0
    assert runner.invoke(app, ["fmt", "--check", str(messy)]).exit_code == 0


def test_fmt_syntax_error(tmp_path: Path) -> None:
    p = tmp_path / "broken.miras"
    p.write_text("model m {\n    bias = l2\n")
    r = runner.invoke(app, ["fmt", str(p)])
    assert r.exit_code == 1
    assert "[E003]" in r.output


def test_list_mentions_every_choice() -> None:
    r = runner.invoke(app, ["list"])
    assert r.exit_code == 0
    for name in ["mlp", "huber", "robust_shift", "kl", "elastic_net", "bregman", "muon",
                 "implicit_gd", "sliding", "exact", "mac", "gate:"]:
        assert name in r.output
    data = json.loads(runner.invoke(app, ["list", "--format", "json"]).output)
    assert data["bias"]["lp"]["params"]["p"]["default"] == "3"


def test_emit_ast_and_ir(good: Path) -> None:
    ast_json = json.loads(runner.invoke(app, ["emit", "--stage", "ast", str(good)]).output)
    assert ast_json["items"][0]["node"] == "ModelDef"
    ir_json = json.loads(runner.invoke(app, ["emit", "--stage", "ir", str(good)]).output)
    assert ir_json["models"][0]["bias"] == {"kind": "l2"}


def test_compile_shows_summary_and_ir() -> None:
    r = runner.invoke(app, ["compile", str(TITANS)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("model titans\n")
    assert "validated IR" in r.output
    assert miras.check(r.output.split("validated IR (canonical text):\n", 1)[1]).model() == \
        miras.load(TITANS)


def test_compile_unknown_model_is_usage_error(good: Path) -> None:
    r = runner.invoke(app, ["compile", "--model", "nope", str(good)])
    assert r.exit_code == 2
    assert "no model named 'nope'" in r.output


def test_installed_entry_point_runs(bad: Path) -> None:
    exe = Path(sys.executable).parent / "miras"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "miras"]
    r = subprocess.run([*cmd, "check", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "[E101]" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("spec", ["moneta", "linear_attention", "gated_deltanet", "titans"])
def test_compile_out_writes_stand_alone_modules(spec: str, tmp_path: Path) -> None:
    from miras import fusion

    r = runner.invoke(app, ["compile", str(EXAMPLES / f"{spec}.miras"), "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    m = miras.load(EXAMPLES / f"{spec}.miras")
    fused = fusion.decide(m).family
    assert ("fused: Triton kernels" in r.output) == (fused is not None)
    names = sorted(p.name for p in tmp_path.iterdir())
    expected = [f"{m.name}.py", f"{m.name}_layer.py"] + ([f"{m.name}_triton.py"] if fused else [])
    assert names == sorted(expected)
    # the layer module runs in a fresh interpreter from the folder, without the compiler:
    # it must not import the parser, the symbolic engine or the templates
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import torch; "
            f"import {m.name}_layer as L; torch.manual_seed(0); "
            "y = L.layer(16, heads=2)(torch.randn(1, 5, 16)); assert y.shape == (1, 5, 16); "
            "bad = [n for n in ('lark', 'pydantic', 'sympy', 'jinja2', 'miras.compiler') "
            "if n in sys.modules]; print('loaded', bad); assert not bad, bad")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "loaded" in run.stdout
    ruff = subprocess.run([sys.executable, "-m", "ruff", "check", "--config",
                           str(Path(__file__).parent.parent / "pyproject.toml"), str(tmp_path)],
                          capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout


def test_emit_triton_of_unfused_spec_says_why() -> None:
    r = runner.invoke(app, ["emit", "--stage", "triton", str(EXAMPLES / "longhorn.miras")])
    assert r.exit_code == 1
    assert "is not fused: a channel-wise lr in the exact chunk form" in r.output
