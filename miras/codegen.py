"""Rendering of jinja2 templates from ``templates/`` (strict: an undefined name is an error).

>>> render("summary.txt.jinja", name="m", rows=[("memory", "matrix")], gates=[])
'model m\\n  memory     matrix\\n  gates      none (every hyper-parameter is constant)\\n'
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2

from miras.resources import data_dir


@cache
def environment() -> jinja2.Environment:
    """The one jinja2 environment of miras: StrictUndefined, trimmed blocks, no autoescape."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
