"""GpiodBackend: lines of a host gpiochip through libgpiod 2.x (PyPI ``gpiod``).

All selected lines are requested once, as inputs, in a single line request; direction,
output value and edge detection are changed with ``reconfigure_lines`` (always with the full
per-line configuration, since libgpiod resets lines missing from the config). The request's
fd joins the server's poll loop: :meth:`fileno` / :meth:`read_events`.

The chardev has no "inactive" state for a requested line: DIR_NONE is an input with edge
detection off (high impedance), reported as DIR_NONE by :meth:`get_direction`.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from .base import (DIR_IN, DIR_OUT, EDGE_BOTH, EDGE_FALLING, EDGE_NONE,
                   EDGE_RISING, EDGES, Backend, BackendError)

log = logging.getLogger(__name__)

CONSUMER = "vfio-virtio-gpio"


def _import_gpiod() -> Any:
    try:
        import gpiod  # type: ignore[import-not-found]
    except ImportError as e:
        raise ValueError("gpiod backend needs the libgpiod 2.x Python bindings "
                         "(pip install 'gpiod>=2.1')") from e
    if not hasattr(gpiod, "request_lines"):
        raise ValueError("gpiod backend needs libgpiod 2.x bindings; found an older 'gpiod'")
    return gpiod


def parse_offsets(text: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8]; ValueError on junk, duplicates or reversed ranges."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad line offset list {text!r}: expected e.g. '0-3,8'")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"bad line range {part!r}")
        out.extend(range(a, b + 1))
    if len(set(out)) != len(out):
        raise ValueError(f"line offset list {text!r} repeats a line")
    return out


class GpiodBackend(Backend):
    """Lines ``offsets`` (default: all) of the gpiochip at ``path``.

    ``lines``, if given, keeps only the first ``lines`` selected lines (ValueError if the
    selection is smaller). ``names`` overrides the chip's line names.
    """

    kind = "gpiod"

    def __init__(self, path: str, offsets: list[int] | None = None, lines: int | None = None,
                 names: list[str] | None = None) -> None:
        gpiod = self._gpiod = _import_gpiod()
        self.path = path
        try:
            if not gpiod.is_gpiochip_device(path):
                raise ValueError(f"{path!r} is not a GPIO character device")
            with gpiod.Chip(path) as chip:
                count = chip.get_info().num_lines
                sel = list(range(count)) if offsets is None else list(offsets)
                if any(not 0 <= o < count for o in sel):
                    raise ValueError(f"{path} has lines 0..{count - 1}; asked for {sel}")
                if lines is not None:
                    if lines > len(sel):
                        raise ValueError(f"{path}: {lines} lines asked, {len(sel)} available")
                    sel = sel[:lines]
                chip_names = [chip.get_line_info(o).name or "" for o in sel]
        except OSError as e:
            raise ValueError(f"cannot open gpiochip {path!r}: {e.strerror or e}") from e
        if not sel:
            raise ValueError(f"{path}: no lines selected")
        if names is not None and len(names) > len(sel):
            raise ValueError(f"{len(names)} names for {len(sel)} lines")
        self._offsets = sel
        self._names = (list(names) + [""] * (len(sel) - len(names))
                       if names is not None else chip_names)
        self._dir = [DIR_IN] * len(sel)
        self._out = [0] * len(sel)
        self._edge = [EDGE_NONE] * len(sel)
        try:
            self._req = gpiod.request_lines(path, consumer=CONSUMER,
                                            config={tuple(sel): self._settings(0)})
        except OSError as e:
            raise ValueError(f"cannot request lines {sel} of {path}: "
                             f"{os.strerror(e.errno) if e.errno else e}") from e

    # ---- helpers ----------------------------------------------------------------------
    def _settings(self, i: int) -> Any:
        g = self._gpiod
        L = g.line
        edge = {EDGE_NONE: L.Edge.NONE, EDGE_RISING: L.Edge.RISING,
                EDGE_FALLING: L.Edge.FALLING, EDGE_BOTH: L.Edge.BOTH}
        if self._dir[i] == DIR_OUT:
            return g.LineSettings(direction=L.Direction.OUTPUT,
                                  output_value=L.Value.ACTIVE if self._out[i] else
                                  L.Value.INACTIVE)
        return g.LineSettings(direction=L.Direction.INPUT, edge_detection=edge[self._edge[i]])

    def _apply(self) -> None:
        try:
            self._req.reconfigure_lines({self._offsets[i]: self._settings(i)
                                         for i in range(len(self._offsets))})
        except OSError as e:
            raise BackendError(e.errno, f"gpiod reconfigure failed: {e}") from e

    # ---- Backend interface --------------------------------------------------------------
    @property
    def nlines(self) -> int:
        return len(self._offsets)

    @property
    def names(self) -> list[str] | None:
        return list(self._names) if self._names and any(self._names) else None

    def get_direction(self, line: int) -> int:
        self.check_line(line)
        return self._dir[line]

    def set_direction(self, line: int, direction: int, value: int = 0) -> None:
        self.check_direction(line, direction)
        old = (self._dir[line], self._out[line], self._edge[line])
        self._dir[line] = direction
        if direction == DIR_OUT:
            self._out[line] = 1 if value else 0
            self._edge[line] = EDGE_NONE
        try:
            self._apply()
        except BackendError:
            self._dir[line], self._out[line], self._edge[line] = old
            raise

    def get_value(self, line: int) -> int:
        self.check_line(line)
        if self._dir[line] == DIR_OUT:
            return self._out[line]
        try:
            return 1 if self._req.get_value(self._offsets[line]) else 0
        except OSError as e:
            raise BackendError(e.errno, f"gpiod get_value failed: {e}") from e

    def set_value(self, line: int, value: int) -> None:
        self.check_line(line)
        v = self._gpiod.line.Value
        try:
            self._req.set_value(self._offsets[line], v.ACTIVE if value else v.INACTIVE)
        except OSError as e:
            raise BackendError(e.errno, f"gpiod set_value failed: {e}") from e
        self._out[line] = 1 if value else 0

    def set_edge(self, line: int, edge: str) -> None:
        self.check_line(line)
        if edge not in EDGES:
            raise ValueError(f"bad edge {edge!r}")
        old = self._edge[line]
        self._edge[line] = edge
        try:
            self._apply()
        except BackendError:
            self._edge[line] = old
            raise

    def fileno(self) -> int | None:
        return self._req.fd

    def read_events(self) -> list[tuple[int, int]]:
        index = {o: i for i, o in enumerate(self._offsets)}
        rising = self._gpiod.EdgeEvent.Type.RISING_EDGE
        out: list[tuple[int, int]] = []
        try:
            while self._req.wait_edge_events(0):
                for ev in self._req.read_edge_events():
                    i = index.get(ev.line_offset)
                    if i is not None:
                        out.append((i, 1 if ev.event_type == rising else 0))
        except OSError as e:
            log.warning("gpiod: reading edge events failed: %s", e)
        return out

    def reset_lines(self) -> None:
        n = len(self._offsets)
        self._dir, self._out, self._edge = [DIR_IN] * n, [0] * n, [EDGE_NONE] * n
        self._apply()

    def close(self) -> None:
        req, self._req = getattr(self, "_req", None), None
        if req is not None:
            try:
                req.release()
            except Exception:
                pass
