"""A content-hashed on-disk cache of generated modules, and their import.

Generated code must live in real files (Triton reads kernel sources with ``inspect``), so
every module is written once to ``<cache>/<hash[:2]>/<name>.py`` and imported from there.
Writes go to a temporary file in the same folder and are renamed into place, so two
processes compiling the same spec at once both see a complete file.

The cache folder is ``$MIRAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/miras``, else
``~/.cache/miras``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType


def cache_dir() -> Path:
    env = os.environ.get("MIRAS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "miras"


def content_hash(text: str) -> str:
    """SHA-256 of a text, hex.

    >>> content_hash("x")[:12]
    '2d711642b726'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write(name: str, source: str, folder: Path | None = None) -> Path:
    """Write ``source`` as ``<name>.py`` (atomically); return the path."""
    root = (folder or cache_dir()) / content_hash(source)[:2]
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.py"
    if path.exists() and path.read_text(encoding="utf-8") == source:
        return path
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(source)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: Path) -> ModuleType:
    """Import a generated module from its file (once per path and content)."""
    key = f"miras_generated.{path.stem}"
    mod = sys.modules.get(key)
    if mod is not None and getattr(mod, "__file__", None) == str(path):
        return mod
    spec = importlib.util.spec_from_file_location(key, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module
