"""The wheel ships grammar/ and templates/ and works without the source checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
    )
    (whl,) = out.glob("miras-*.whl")
    return whl


def test_wheel_contains_grammar_and_templates(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "miras/_data/grammar/miras.lark" in names
    templates = {n for n in names if n.startswith("miras/_data/templates/")}
    expected = {f"miras/_data/{p.relative_to(ROOT).as_posix()}"
                for p in (ROOT / "templates").rglob("*") if p.is_file()}
    assert expected and expected <= templates
    assert "miras/cli.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "miras = miras.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_unpacked_wheel_parses_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import miras, miras.resources as r;"
        "print(r.data_dir('grammar'));"
        "print(miras.load('model m { memory = matrix bias = l2 retention = none "
        "algorithm = gd }').name)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env={"PYTHONPATH": str(site), "PATH": ""}, timeout=120)
    assert r.returncode == 0, r.stderr
    grammar_dir, name = r.stdout.split()
    assert Path(grammar_dir).is_relative_to(site)
    assert name == "m"
