"""The catalog: one registry, complete docs, and the README agrees with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from miras import catalog, ir
from miras.diagnostics import CODES

README = (Path(__file__).parent.parent / "README.md").read_text()

REQUIRED = {
    "memory": {"vector", "matrix", "mlp", "gated_mlp", "nonparametric"},
    "bias": {"dot", "l2", "l1", "lp", "huber", "huber_coord", "huber_norm", "robust_shift"},
    "retention": {"none", "decay", "lq", "kl", "elastic_net", "soft_threshold", "fdiv",
                  "bregman"},
    "algorithm": {"gd", "momentum", "muon", "implicit_gd", "nonparametric"},
    "feature": {"identity", "poly", "exp_taylor", "sketch"},
    "parallel": {"recurrent", "chunk", "exact"},
    "hybrid": {"mac", "mag", "mal"},
}


@pytest.mark.parametrize("axis", sorted(REQUIRED))
def test_required_choices_present(axis: str) -> None:
    assert REQUIRED[axis] <= set(catalog.entries(axis))


def test_every_entry_documented() -> None:
    for axis in catalog.AXES:
        for e in catalog.entries(axis).values():
            assert e.summary, f"{axis}.{e.name} has no docstring"
            for p in e.params.values():
                assert p.doc, f"{axis}.{e.name}.{p.name} has no doc"


def test_paper_references_on_model_choices() -> None:
    for axis in ("memory", "bias", "retention", "algorithm"):
        for e in catalog.entries(axis).values():
            assert e.ref, f"{axis}.{e.name} has no paper reference"


def test_gate_roles_are_the_fixed_names() -> None:
    roles = {p.role for axis in catalog.AXES for e in catalog.entries(axis).values()
             for p in e.params.values() if p.role}
    assert roles == set(ir.ROLES)
    assert catalog.lookup("algorithm", "gd").params["lr"].role == "lr"
    assert catalog.lookup("retention", "decay").params["alpha"].role == "decay"
    assert catalog.lookup("algorithm", "momentum").params["beta"].role == "momentum"
    assert catalog.lookup("bias", "huber").params["delta"].role == "delta"
    assert catalog.lookup("window", "sliding").params["gamma"].role == "gamma"


def test_nothing_listed_twice() -> None:
    for axis, classes in catalog.AXES.items():
        names = [str(c.model_fields["kind"].default) for c in classes]
        assert len(names) == len(set(names)), axis
        for c in classes:
            assert c.axis == axis


def test_readme_lists_every_choice_and_code() -> None:
    for axis in catalog.AXES:
        row = next(line for line in README.splitlines() if line.startswith(f"| {axis} |"))
        listed = set(re.findall(r"`([a-z_0-9]+)", row))
        assert listed == set(catalog.entries(axis)), axis
    for code in CODES:
        assert f"| {code} |" in README, f"README does not document {code}"


def test_render_text_groups_by_axis() -> None:
    text = catalog.render_text()
    positions = [text.index(f"\n{axis}:") if i else text.index(f"{axis}:")
                 for i, axis in enumerate(catalog.AXES)]
    assert positions == sorted(positions)
    assert "p = 3: the exponent p (≥ 1, ≤ 16)" in text
