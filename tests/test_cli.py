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
