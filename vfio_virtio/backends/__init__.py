"""GPIO line backends: ``sim`` (in-memory, default) and ``gpiod`` (a host gpiochip).

:func:`make_backend` turns a ``--backend`` string into a :class:`Backend`.
"""
from __future__ import annotations

from .base import Backend, BackendError
from .sim import SimBackend

__all__ = ["Backend", "BackendError", "SimBackend", "make_backend"]

BACKEND_HELP = ("'sim' (simulated lines) or 'gpiod:/dev/gpiochipN[:OFFSETS]' "
                "(host chip; OFFSETS like 0-3,8 selects lines, default all)")


def make_backend(spec: str, lines: int | None, names: list[str] | None) -> Backend:
    """Build the backend described by ``spec``.

    * ``"sim"``: ``lines`` simulated lines (1..65535) named ``names``.
    * ``"gpiod:/dev/gpiochipN"`` or ``"gpiod:/dev/gpiochipN:0-3,8"``: those lines of a host
      chip (all by default); ``lines``, if not None, keeps the first ``lines`` of them;
      ``names`` overrides the chip's line names.

    ``names`` must be validated already (see :mod:`vfio_virtio.gpio.names`); it may be
    shorter than the line count (the rest are unnamed). Raises ValueError with a message
    suitable for the command line.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"empty backend; expected {BACKEND_HELP}")
    kind, _, rest = spec.partition(":")
    if kind == "sim":
        if rest:
            raise ValueError(f"backend 'sim' takes no argument (got {spec!r})")
        if lines is None:
            raise ValueError("backend 'sim' needs a line count")
        return SimBackend(lines, names)
    if kind == "gpiod":
        if not rest.startswith("/"):
            raise ValueError(f"backend {spec!r}: expected gpiod:/dev/gpiochipN[:OFFSETS]")
        path, _, offs = rest.partition(":")
        from .gpiod_backend import GpiodBackend, parse_offsets
        offsets = parse_offsets(offs) if offs else None
        return GpiodBackend(path, offsets=offsets, lines=lines, names=names)
    raise ValueError(f"unknown backend {spec!r}; expected {BACKEND_HELP}")
