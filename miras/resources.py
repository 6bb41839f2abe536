"""Locate the grammar and the templates, in a source checkout or in an installed wheel.

In the repository they live at the top level (``grammar/``, ``templates/``); the wheel ships
them as ``miras/_data/grammar`` and ``miras/_data/templates`` (see ``pyproject.toml``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PKG = Path(__file__).resolve().parent


@cache
def data_dir(name: str) -> Path:
    """The folder ``name`` (``"grammar"`` or ``"templates"``).

    >>> (data_dir("grammar") / "miras.lark").is_file()
    True
    """
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"miras data folder {name!r} is missing from the installation")


def grammar_text() -> str:
    return (data_dir("grammar") / "miras.lark").read_text(encoding="utf-8")
