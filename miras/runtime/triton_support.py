"""The small runtime the generated Triton modules import (nothing from the compiler).

>>> autotune_configs([dict(BV=32), dict(BV=64)], num_warps=[4])[0].kwargs["BV"] in (32, 64)
True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import triton


def interpreted() -> bool:
    """Whether Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotune_configs(space: Sequence[dict[str, Any]], num_warps: Sequence[int] = (4,),
                     num_stages: Sequence[int] = (2,)) -> list[triton.Config]:
    """Autotuning configurations; under the interpreter (or with ``MIRAS_AUTOTUNE=0``, to
    spare compile time) a single forced one: the first."""
    if interpreted() or os.environ.get("MIRAS_AUTOTUNE", "1") == "0":
        return [triton.Config(space[0], num_warps=num_warps[0], num_stages=num_stages[0])]
    return [triton.Config(kw, num_warps=w, num_stages=s)
            for kw in space for w in num_warps for s in num_stages]


def block(n: int, least: int = 16) -> int:
    """The power-of-two block covering ``n`` (at least ``least``; ``tl.dot`` needs 16)."""
    return max(least, triton.next_power_of_2(n))


def contiguous(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(x.contiguous() for x in xs)


def dot_fp32(x: torch.Tensor) -> bool:
    """Whether ``tl.dot`` should take fp32 operands for inputs like ``x``: fp32 inputs, and
    bf16 under the interpreter (whose bf16 ``tl.dot`` is wrong in Triton 3.9)."""
    return x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and interpreted())
