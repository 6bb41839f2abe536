"""Shared pytest options: ``--update-goldens`` rewrites golden files instead of comparing;
the Triton interpreter on machines without a GPU."""

from __future__ import annotations

import os

import pytest
import torch

# The fused kernels are tested on the CPU through Triton's interpreter, which must be chosen
# before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="rewrite the golden files under tests/golden from the current output")


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))
