"""Sweeps (the `sweep` block), the noisy recall task, and `miras explore` end to end."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import miras
from miras import explorer, tasks
from miras.cli import app
from miras.printer import format_text
from miras.train import train
from miras.validate import check_text

BASE = """model base {
    memory = matrix
    bias = l2
    retention = decay(alpha=gate())
    algorithm = gd(lr=gate())
    parallel = chunk(size=8)
}
"""
# tiny settings: every run is a few seconds on one CPU core
TINY = "steps = 3  batch = 2  vocab = 16  d_model = 8  layers = 1"


def _codes(text: str) -> list[str]:
    with pytest.raises(miras.MirasError) as info:
        check_text(text)
    return info.value.codes


# ---- the sweep block ----------------------------------------------------------------------


def test_sweep_block_is_validated_into_a_sweep() -> None:
    s = check_text(BASE + "sweep s { base = base  bias = [l2, huber(delta=gate())]  "
                   "heads = 2  task = [mqar, noisy_mqar]  lengths = [16, 32]  seed = [0, 1] "
                   f" {TINY} }}").sweeps["s"]
    assert s.base.name == "base"
    assert [b.kind for b in s.vary["bias"]] == ["l2", "huber"]
    assert s.vary["bias"][1].delta.role == "delta"
    assert s.vary["heads"] == (2,)
    st = s.settings
    assert (st.tasks, st.lengths, st.train_length, st.seeds, st.steps) == (
        ("mqar", "noisy_mqar"), (16, 32), 16, (0, 1), 3)


@pytest.mark.parametrize(("body", "code"), [
    ("base = nope", "E101"),                 # unknown base model
    ("bias = [l2]", "E105"),                 # no base
    ("base = base  bias = [l2, l2]", "E161"),  # repeated value
    ("base = base  bias = []", "E161"),      # empty list
    ("base = base  steps = [1, 2]", "E161"),  # a setting that takes one value
    ("base = base  bias = [hubber]", "E101"),
    ("base = base  task = mqr", "E101"),
    ("base = base  lengths = [4]", "E104"),
    ("base = base  steps = 2.5", "E103"),
    ("base = base  biass = [l2]", "E101"),   # unknown field
    ("base = base  base = base", "E106"),
])
def test_sweep_diagnostics(body: str, code: str) -> None:
    assert code in _codes(BASE + f"sweep s {{ {body} }}")


def test_lists_outside_sweeps_are_E160() -> None:
    text = "model m { memory = matrix  bias = [l2]  retention = none  algorithm = gd(lr=[1]) }"
    assert _codes(text) == ["E160", "E160"]


def test_sweep_block_formats_canonically() -> None:
    text = BASE + "sweep s {base=base # the base\n bias=[l2,lp(3),] }\n"
    out = format_text(text)
    assert out.endswith("sweep s {\n    base = base  # the base\n    bias = [l2, lp(3)]\n}\n")
    assert format_text(out) == out
    assert check_text(out).sweeps["s"].vary["bias"][1].p == 3.0


# ---- the noisy recall task ----------------------------------------------------------------


def _pairs(x: torch.Tensor, y: torch.Tensor) -> list[tuple[dict[int, list[int]], dict[int, int]]]:
    """Per row: every value written for each key, and the scored answer for each key."""
    out = []
    for row, lab in zip(x.tolist(), y.tolist(), strict=True):
        first = next(i for i, t in enumerate(lab) if t != tasks.IGNORE)
        writes: dict[int, list[int]] = {}
        for i in range(0, first, 2):
            writes.setdefault(row[i], []).append(row[i + 1])
        answers = {row[i]: lab[i] for i in range(len(lab)) if lab[i] != tasks.IGNORE}
        out.append((writes, answers))
    return out


def test_noisy_mqar_answers_are_the_majority_and_noise_rate_holds() -> None:
    x, y = tasks.make_batch("noisy_mqar", batch=64, seq_len=64, vocab=64, seed=3, noise=0.5)
    corrupted = total = 0
    for writes, answers in _pairs(x, y):
        assert set(answers) == set(writes)  # every key is asked once
        for key, vals in writes.items():
            assert len(vals) == tasks.NOISY_REPEATS
            truth = max(set(vals), key=vals.count)
            assert vals.count(truth) >= tasks.NOISY_REPEATS - 1  # at most one outlier
            assert answers[key] == truth
            assert all(32 <= v < 64 for v in vals) and 1 <= key < 32
            corrupted += vals.count(truth) < tasks.NOISY_REPEATS
            total += 1
    assert abs(corrupted / total - 0.5) < 0.08  # 64 rows x 8 keys: binomial sd 0.022
    clean_x, clean_y = tasks.make_batch("noisy_mqar", batch=4, seq_len=64, vocab=64, seed=3,
                                        noise=0.0)
    for writes, _ in _pairs(clean_x, clean_y):
        assert all(len(set(v)) == 1 for v in writes.values())
    assert tasks.info("noisy_mqar", 64, 64).chance == 1 / 32


def test_mqar_with_more_slots_than_keys_uses_every_key_once() -> None:
    x, _ = tasks.make_batch("mqar", batch=2, seq_len=64, vocab=16, seed=0)
    keys = x[0, :14:2].tolist()
    assert sorted(keys) == list(range(1, 8))  # all V/2 - 1 keys, none repeated


# ---- explore ------------------------------------------------------------------------------


def _sweep_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "s.miras"
    path.write_text(BASE + "\nsweep s {\n    base = base\n    retention = [decay(alpha=gate()), "
                    f"kl]\n    task = noisy_mqar\n    lengths = [16, 32]\n    {TINY}\n{extra}}}\n")
    return path


def test_explore_matches_train_and_writes_tables(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path)
    out = tmp_path / "out"
    results = explorer.run_sweep(explorer.load_sweep(path), out=out, echo=lambda _: None)
    ok, bad = results
    assert (ok.status, bad.status, bad.codes) == ("ok", "invalid", ["E130"])
    # the independent reference: the same spec trained directly by miras.train
    spec = miras.Spec.from_file(path, "base")
    ref = train(miras.compile(spec.to_miras()), task="noisy_mqar", steps=3, batch=2,
                seq_len=16, vocab=16, d_model=8, layers=1, seed=0, eval_lengths=(32,))
    assert ok.losses == ref["losses"]
    assert ok.accuracy == ref["accuracy_by_length"] == {16: ref["accuracy"], 32: ok.accuracy[32]}
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "invalid"]
    assert float(rows[0]["acc@32"]) == round(ok.accuracy[32], 4)
    assert rows[1]["codes"] == "E130" and rows[1]["retention"] == "kl"
    doc = json.loads((out / "results.json").read_text())
    assert doc["results"][0]["losses"] == ok.losses
    assert doc["vary"] == {"retention": ["decay(alpha=gate())", "kl"]}
    assert (out / "accuracy_vs_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "runs").glob("*.json"))) == 1  # only the finished run


def test_explore_resumes_and_reruns_only_what_changed(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = _sweep_file(tmp_path)
    out = tmp_path / "out"
    first = explorer.run_sweep(explorer.load_sweep(path), out=out, echo=lambda _: None)
    calls: list[str] = []
    real = explorer._run_one
    monkeypatch.setattr(explorer, "_run_one", lambda *a, **k: calls.append(a[1].name)
                        or real(*a, **k))
    again = explorer.run_sweep(explorer.load_sweep(path), out=out, echo=lambda _: None)
    assert calls == [] and again[0].resumed and again[0].losses == first[0].losses
    more = explorer.load_sweep(path)
    more = explorer.Sweep(more.name, more.base, more.vary, more.settings.with_(seeds=(0, 1)))
    explorer.run_sweep(more, out=out, echo=lambda _: None)
    assert calls == ["base_retention_decay"]  # only the new seed trains


@pytest.mark.parametrize("damage", ["truncate", "edit", "foreign"])
def test_corrupted_resume_file_is_a_diagnostic(tmp_path: Path, damage: str) -> None:
    path = _sweep_file(tmp_path)
    out = tmp_path / "out"
    runner = CliRunner()
    assert runner.invoke(app, ["explore", str(path), "-o", str(out)]).exit_code == 0
    (run,) = (out / "runs").glob("*.json")
    text = run.read_text()
    if damage == "truncate":
        run.write_text(text[: len(text) // 2])
    elif damage == "edit":
        run.write_text(text.replace('"status": "ok"', '"status": "ok "'))
    else:
        run.write_text(json.dumps({"hello": 1}))
    res = runner.invoke(app, ["explore", str(path), "-o", str(out)])
    assert res.exit_code == 1
    assert "[E162]" in res.output and str(run) in res.output
    assert "Traceback" not in res.output


def test_cli_vary_and_its_diagnostics(tmp_path: Path) -> None:
    base = tmp_path / "b.miras"
    base.write_text(BASE)
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(app, ["explore", str(base), "-o", str(out), "--vary",
                              "bias=l2,huber(delta=gate())", "--steps", "2", "--lengths", "16",
                              "--task", "mqar"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["variant"], r["bias"], r["steps"]) for r in rows] == [
        ("base_bias_l2", "l2", "2"), ("base_bias_huber", "huber(delta=gate())", "2")]
    bad = runner.invoke(app, ["explore", str(base), "-o", str(out), "--vary", "bias=hubber"])
    assert bad.exit_code == 1 and "[E101]" in bad.output and "did you mean 'huber'" in bad.output
    bad = runner.invoke(app, ["explore", str(base), "-o", str(out), "--vary", "bias"])
    assert bad.exit_code == 1 and "[E163]" in bad.output and "Traceback" not in bad.output


def test_plots_are_skipped_without_matplotlib(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    said: list[str] = []
    results = [explorer.Result("v", {}, "mqar", 0, "ok", {16: 0.5}, 0.1, 1.0, [1.0], 16, 1)]
    sweep = explorer.load_sweep(_sweep_file(tmp_path))
    written = explorer.write_outputs(results, sweep, tmp_path / "o", said.append)
    assert [p.name for p in written] == ["results.csv", "results.json"]
    assert said == ["plots skipped: matplotlib is not installed (pip install 'miras[explore]')"]


def test_python_api_takes_text_values_and_builders() -> None:
    from miras.spec import lp

    rs = miras.explore(BASE, vary={"bias": ["l2", lp(4)]}, budget=1, lengths=(16,), batch=2,
                       vocab=16, d_model=8, layers=1)
    assert [(r.variant, r.fields) for r in rs] == [
        ("base_bias_l2", {"bias": "l2"}), ("base_bias_lp", {"bias": "lp(p=4)"})]
    table = miras.format_table(rs)
    assert table.splitlines()[0].split()[:5] == ["variant", "task", "seed", "status", "bias"]
    with pytest.raises(miras.MirasError) as info:
        miras.explore(BASE, vary={"bias": ["lpp(3)"]}, budget=1)
    assert info.value.codes == ["E101"]


def test_example_sweeps_check_and_are_canonical() -> None:
    root = Path(__file__).parent.parent / "examples" / "sweeps"
    files = sorted(root.glob("*.miras"))
    assert files
    for path in files:
        text = path.read_text()
        assert format_text(text, str(path)) == text, path
        sweep = explorer.load_sweep(path)
        assert sweep.vary and all(v for v in sweep.vary.values())
        assert all(isinstance(s, miras.Spec) for s in explorer.variants(sweep))
