"""Rendering of jinja2 templates from ``templates/`` (strict: an undefined name is an error).

>>> render("summary.txt.jinja", name="m", rows=[("memory", "matrix")], gates=[])
'model m\\n  memory     matrix\\n  gates      none (every hyper-parameter is constant)\\n'
"""

from __future__ import annotations

import pprint
from functools import cache
from typing import Any

import jinja2

from miras.resources import data_dir


@cache
def environment() -> jinja2.Environment:
    """The one jinja2 environment of miras: StrictUndefined, trimmed blocks, no autoescape."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    # Python literals of plain data (plan values are str/int/float/bool/None/dict/list only)
    env.filters["pyrepr"] = pyrepr
    env.filters["pystr"] = pystr
    return env


def pyrepr(value: Any, width: int = 92) -> str:
    """A Python literal, wrapped to ``width`` columns (continuation lines unindented).

    >>> print(pyrepr({"a": 1, "b": [2, 3]}))
    {'a': 1, 'b': [2, 3]}
    """
    return pprint.pformat(value, width=width, sort_dicts=False)


def pystr(text: str) -> str:
    """A (possibly multi-line) string as parenthesised, line-per-line literals.

    >>> print(pystr("a\\nb\\n"))
    (
        'a\\n'
        'b\\n'
    )
    """
    lines = text.splitlines(keepends=True) or [""]
    body = "".join(f"    {line!r}\n" for line in lines)
    return f"(\n{body})"


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
