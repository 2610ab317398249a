"""SimBackend: an in-memory bank of GPIO lines, the default backend.

Two sides:

* Device side (the :class:`~vfio_virtio.backends.base.Backend` interface), called by the
  controller on the loop thread.
* Host side, thread-safe, used by the control socket, tests and demos:
  :meth:`SimBackend.set_input` drives the level a line senses, :meth:`get_line` /
  :meth:`lines` read the state, :meth:`add_watcher` observes every change.

Every change of the level a non-output line senses becomes an event on the device side:
``(line, level)`` is queued and a byte is written to a pipe whose read end is
:meth:`fileno`, so the server's loop wakes up (no thread). Changes of an output's level by the
host are remembered as the line's input level and become visible when the line stops driving.

Storage (``store``): ``"c"`` (default) keeps the lines in the C line table
(:class:`~vfio_virtio.gpio.lines_c.LineTable`) that the C request path serves requests from;
changes C makes are listed there and reported to watchers from :meth:`read_events` (the
table's eventfd, which is also :meth:`fileno`, wakes the loop; C writes it only while
watchers are registered). ``"py"`` keeps them in Python objects (the reference path).
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from .base import DIR_IN, DIR_OUT, DIRECTION_NAMES, EDGES, Backend

_EDGE_CODE = {e: i for i, e in enumerate(EDGES)}     # none 0, rising 1, falling 2, both 3

log = logging.getLogger(__name__)

MAX_SIM_LINES = 0xFFFF  # ngpio is a le16
MAX_PENDING_EVENTS = 1 << 16  # beyond this the oldest events are dropped (a stuck loop)

Watcher = Callable[[dict], None]


class SimBackend(Backend):
    """Simulated lines. ``lines`` in 1..65535; ``names`` optional (validated by the caller,
    may be shorter than ``lines``: the rest are unnamed)."""

    kind = "sim"

    def __init__(self, lines: int, names: list[str] | None = None, store: str = "c") -> None:
        if not isinstance(lines, int) or isinstance(lines, bool) \
                or not 1 <= lines <= MAX_SIM_LINES:
            raise ValueError(f"sim backend: line count must be 1..{MAX_SIM_LINES}, got {lines!r}")
        if names is not None and len(names) > lines:
            raise ValueError(f"sim backend: {len(names)} names for {lines} lines")
        self._n = lines
        self._names = (list(names) + [""] * (lines - len(names))
                       if names and any(names) else None)
        if store not in ("c", "py"):
            raise ValueError(f"sim backend: store must be 'c' or 'py', not {store!r}")
        self._lock = threading.Lock()
        # per line: direction, value (driven value of an output), input (level the host
        # drives onto the pin), edge (code, _EDGE_CODE)
        if store == "c":
            from ..gpio.lines_c import LineTable
            self.line_table: "LineTable | None" = LineTable(lines)
            self._L = self.line_table.views
        else:
            from ..gpio.lines_c import PyLine
            self.line_table = None
            self._L = [PyLine() for _ in range(lines)]
        self._events: list[tuple[int, int]] = []
        self._watchers: list[Watcher] = []
        self._rfd = self._wfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._closed = False

    # ---- Backend interface (device side) ----------------------------------------------
    @property
    def nlines(self) -> int:
        return self._n

    @property
    def names(self) -> list[str] | None:
        return list(self._names) if self._names else None

    def get_direction(self, line: int) -> int:
        self.check_line(line)
        return self._L[line].direction

    def set_direction(self, line: int, direction: int, value: int = 0) -> None:
        self.check_direction(line, direction)
        with self._lock:
            before = self._visible(line)
            ln = self._L[line]
            ln.direction = direction
            if direction == DIR_OUT:
                ln.value = 1 if value else 0
            changed = self._visible(line) != before
        if changed:
            self._notify(line, "guest")

    def get_value(self, line: int) -> int:
        self.check_line(line)
        with self._lock:
            return self._visible(line)[1]

    def set_value(self, line: int, value: int) -> None:
        self.check_line(line)
        with self._lock:
            ln = self._L[line]
            if ln.direction != DIR_OUT:
                raise ValueError(f"line {line} is not an output")
            changed = ln.value != (1 if value else 0)
            ln.value = 1 if value else 0
        if changed:
            self._notify(line, "guest")

    def set_edge(self, line: int, edge: str) -> None:
        self.check_line(line)
        if edge not in EDGES:
            raise ValueError(f"bad edge {edge!r}")
        with self._lock:
            ln = self._L[line]
            changed = ln.edge != _EDGE_CODE[edge]
            ln.edge = _EDGE_CODE[edge]
        if changed:                      # the guest armed or disarmed an interrupt
            self._notify(line, "guest")

    def fileno(self) -> int | None:
        return self._rfd

    def read_events(self) -> list[tuple[int, int]]:
        try:
            os.eventfd_read(self._rfd)
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            ev, self._events = self._events, []
        self.report_changes()
        return ev

    def report_changes(self) -> None:
        """Tell watchers about the lines the C request path changed (source "guest")."""
        if self.line_table is not None:
            for line in self.line_table.take_changed():
                self._notify(line, "guest")

    def reset_lines(self) -> None:
        changed = []
        with self._lock:
            for i in range(self._n):
                before = self._visible(i)
                ln = self._L[i]
                ln.direction = DIR_IN
                ln.value = 0
                ln.edge = 0
                if self._visible(i) != before:
                    changed.append(i)
        for i in changed:
            self._notify(i, "reset")

    def line_info(self, line: int) -> dict:
        return self.get_line(line)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.line_table is not None:
                self.line_table.set_notify_fd(-1)
            os.close(self._rfd)

    # ---- host side (thread-safe) --------------------------------------------------------
    def set_input(self, line: int, level: int) -> None:
        """Drive ``level`` (0/1) onto ``line`` from the host side.

        A non-output line senses it at once (and the device gets an event if it changed);
        an output keeps driving its own value and senses this level once it stops driving.
        """
        self.check_line(line)
        if not isinstance(level, int) or level not in (0, 1):
            raise ValueError(f"level must be 0 or 1, got {level!r}")
        level = int(level)
        with self._lock:
            ln = self._L[line]
            if ln.input == level:
                return
            ln.input = level
            sensed = ln.direction != DIR_OUT
            if sensed:
                if len(self._events) >= MAX_PENDING_EVENTS:
                    del self._events[0]
                self._events.append((line, level))
        if sensed:
            self._wake()
        self._notify(line, "host")

    def get_line(self, line: int) -> dict:
        """State of one line: line, name, direction ('none'/'out'/'in'), value (what the
        guest sees: driven value of an output, sensed level otherwise), input (host level),
        edge (armed change detection)."""
        self.check_line(line)
        with self._lock:
            return self._info(line)

    def lines(self) -> list[dict]:
        """:meth:`get_line` for every line, one consistent snapshot."""
        with self._lock:
            return [self._info(i) for i in range(self._n)]

    def add_watcher(self, cb: Watcher) -> None:
        """Call ``cb(info)`` after every change (``info`` = get_line() plus ``source``:
        "guest", "host" or "reset"). Runs on the thread that made the change; keep it short
        and thread-safe (e.g. queue the info and wake your own loop)."""
        self.report_changes()                 # what changed before it registered is old news
        with self._lock:
            self._watchers.append(cb)
            if self.line_table is not None:
                self.line_table.set_notify_fd(self._wfd)

    def remove_watcher(self, cb: Watcher) -> None:
        """Stop calling ``cb``; a no-op if it was not registered."""
        with self._lock:
            if cb in self._watchers:
                self._watchers.remove(cb)
            if not self._watchers and self.line_table is not None:
                self.line_table.set_notify_fd(-1)

    # ---- internals ----------------------------------------------------------------------
    def _visible(self, line: int) -> tuple[int, int]:
        ln = self._L[line]
        d = ln.direction
        return d, ln.value if d == DIR_OUT else ln.input

    def _info(self, line: int) -> dict:
        d, v = self._visible(line)
        return {"line": line, "name": self._names[line] if self._names else "",
                "direction": DIRECTION_NAMES[d], "value": v, "input": self._L[line].input,
                "edge": EDGES[self._L[line].edge]}

    def _wake(self) -> None:
        try:
            os.eventfd_write(self._wfd, 1)
        except BlockingIOError:
            pass  # counter full: the loop is already awake
        except OSError:
            pass  # closed

    def _notify(self, line: int, source: str) -> None:
        with self._lock:
            watchers = list(self._watchers)
            if not watchers:
                return
            info = self._info(line)
        info["source"] = source
        for cb in watchers:
            try:
                cb(dict(info))
            except Exception:
                log.exception("sim watcher failed")
