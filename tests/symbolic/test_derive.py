"""derive(model) and explain(model) on the examples."""

from __future__ import annotations

import dataclasses
import glob
from typing import Any

import pytest
import sympy as sp

import miras
from miras import ir
from miras.symbolic import Derivation, derive, explain
from miras.validate import _not_affine

EXAMPLES = sorted(glob.glob("examples/*.miras"))


def _models() -> list[ir.Model]:
    seen: dict[str, ir.Model] = {}
    for path in EXAMPLES:
        for m in miras.check(path).models:
            seen.setdefault(m.name, m)
    return list(seen.values())


MODELS = _models()


def _no_sympy(obj: Any, path: str = "") -> None:
    if isinstance(obj, sp.Basic):
        raise AssertionError(f"sympy object at {path}")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _no_sympy(getattr(obj, f.name), f"{path}.{f.name}")
    elif isinstance(obj, tuple | list):
        for i, x in enumerate(obj):
            _no_sympy(x, f"{path}[{i}]")


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_every_example_derives_to_plain_data(model: ir.Model) -> None:
    d = derive(model)
    assert isinstance(d, Derivation) and d.model == model.name
    _no_sympy(d)
    # the symbolic truth agrees with the validator's syntactic rule on every example
    assert d.affine_update == (_not_affine(model) is None), (d.affine_reason, _not_affine(model))
    if isinstance(model.parallel, ir.Exact):
        assert d.affine_update


def test_explain_titans() -> None:
    text = explain(miras.load("examples/titans.miras"))
    for piece in ("model titans", "ℓ(y, v) = ½·Σⱼ (yⱼ − vⱼ)²", "∂ℓ/∂yⱼ = yⱼ − vⱼ",
                  "S_t = β_t·S_{t−1} − η_t·g_t", "U_t = S_t", "W_t = α_t·W_{t−1} + U_t",
                  "o_t = M(W_t; φ(q_t))", "gelu", "W₁·gelu(W₂·x)"):
        assert piece in text, piece


def test_explain_moneta() -> None:
    text = explain(miras.load("examples/moneta.miras"))
    for piece in ("(10⁻⁶ + (yⱼ − vⱼ)²)^(3/2)", "3·√(10⁻⁶ + (yⱼ − vⱼ)²)·(yⱼ − vⱼ)",
                  "A_t = α_t·A_{t−1} + U_t", "W_t = A_t / ‖A_t‖_4^2", "U_t = −η_t·g_t",
                  "LN("):
        assert piece in text, piece


def test_explain_cauchy() -> None:
    text = explain(miras.load("examples/cauchy.miras"))
    assert "ℓ(y, v) = Σⱼ log(1 + (yⱼ − vⱼ)²/c²)" in text
    assert "∂ℓ/∂yⱼ = 2·(yⱼ − vⱼ)/(c² + (yⱼ − vⱼ)²)" in text


def test_explain_other_shapes() -> None:
    yaad = explain(miras.load("examples/yaad.miras"))
    assert "switch" in yaad and "≤ δ_t" in yaad
    gdn = explain(miras.load("examples/gated_deltanet.miras"))
    assert "at α_t·W_{t−1}" in gdn
    longhorn = explain(miras.load("examples/longhorn.miras"))
    assert "δ_t = η_t/(1 + η_t·k_tᵀk_t)" in longhorn and "retention" not in longhorn
    atlas = explain(miras.load("examples/atlas.miras"))
    assert "NS_5" in atlas and "3.4445" in atlas and "window" in atlas
    bounded = explain(miras.check("examples/custom_retention.miras").model("bounded_memory"))
    assert "W_t = tanh(Z_t)" in bounded


def test_explain_latex() -> None:
    tex = explain(miras.load("examples/titans.miras"), latex=True)
    assert tex.count(r"\begin{aligned}") == 1 and r"\sum_{j}" in tex
    assert r"\alpha_t W_{t-1} + U_t" in tex and r"\beta_t" in tex
    body = tex.split(r"\begin{aligned}")[1]
    assert "·" not in body and "ℓ" not in body      # unicode translated
