"""The README's table of fused examples is what :mod:`miras.fusion` decides."""

from __future__ import annotations

from pathlib import Path

import miras
from miras import fusion

ROOT = Path(__file__).resolve().parent.parent


def test_readme_fused_table_is_true() -> None:
    models = [miras.load(p) for p in sorted((ROOT / "examples").glob("*.miras"))]
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- fused-table -->") + len("<!-- fused-table -->")
    end = text.index("<!-- /fused-table -->")
    assert text[start:end].strip() == fusion.table(models)


def test_every_reason_is_one_line() -> None:
    for p in sorted((ROOT / "examples").glob("*.miras")):
        f = fusion.decide(miras.load(p))
        assert (f.family is None) == bool(f.reason)
        assert "\n" not in f.reason and len(f.reason) < 120
