"""Build ids for the compiled extensions, and the stale-extension check on import.

The builder scripts (cffi_build/*.py) bake ``build_id(sources)`` into their extension; the
runtime wrappers call ``check_build_id`` with the same source list. When the sources on disk
changed since the extension was compiled, import fails with a message saying what to run,
rather than running old C code against new Python. Importable without any extension.
"""
from __future__ import annotations

import hashlib
import os

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFFI_BUILD = os.path.join(TOP, "cffi_build")


def build_id(paths: list[str], extra: str = "") -> str:
    """sha256 (first 16 hex digits) over the named files' contents, in the order given."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(os.path.basename(p).encode() + b"\0" + f.read() + b"\0")
    h.update(extra.encode())
    return h.hexdigest()[:16]


def check_build_id(module: str, baked: str, paths: list[str], extra: str = "") -> None:
    """Raise ImportError when ``module`` was built from other sources than those on disk.

    Skipped when the sources are absent (an installed, non-editable copy has no cffi_build/).
    """
    if not all(os.path.exists(p) for p in paths):
        return
    want = build_id(paths, extra)
    if baked != want:
        raise ImportError(
            f"{module} is stale: built from sources {baked}, the sources on disk are {want}. "
            "Run `make setup` (or `pip install -e .`) to rebuild the extensions.")
