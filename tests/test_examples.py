"""Every example spec is clean, canonical and documents its paper."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import miras
from miras.cli import app

EXAMPLES_DIR = Path(__file__).parent.parent / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.miras"))

MODELS = [
    "linear_attention", "retnet", "mamba2", "gla", "deltanet", "gated_deltanet", "longhorn",
    "ttt_linear", "ttt_mlp", "titans", "titans_mac", "titans_mag", "titans_mal", "moneta",
    "yaad", "memora", "dla", "swla", "omeganet", "atlas", "atlas_pp", "deep_transformer",
    "swdt", "dot", "softmax_attention", "polysketch",
]


def test_every_named_model_has_an_example() -> None:
    stems = {p.stem for p in EXAMPLES}
    assert set(MODELS) <= stems, set(MODELS) - stems


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_clean(path: Path) -> None:
    checked = miras.run_frontend(path)
    assert checked.warnings == []
    assert checked.program.models, "an example declares at least one model"
    header = path.read_text().splitlines()[0]
    assert header.startswith("#"), "examples start with a comment naming the paper"


def test_cli_check_and_fmt_examples() -> None:
    runner = CliRunner()
    files = [str(p) for p in EXAMPLES]
    assert runner.invoke(app, ["check", "-q", *files]).exit_code == 0
    assert runner.invoke(app, ["fmt", "--check", *files]).exit_code == 0


def test_semantics_pinned_in_examples() -> None:
    titans = miras.load(EXAMPLES_DIR / "titans.miras")
    gdn = miras.load(EXAMPLES_DIR / "gated_deltanet.miras")
    assert titans.retention.kind == "decay" and titans.retention.at == "prev"
    assert gdn.retention.kind == "decay" and gdn.retention.at == "decayed"
    assert gdn.parallel.kind == "exact"
