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
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from .base import DIR_IN, DIR_OUT, DIRECTION_NAMES, EDGES, EDGE_NONE, Backend

log = logging.getLogger(__name__)

MAX_SIM_LINES = 0xFFFF  # ngpio is a le16
MAX_PENDING_EVENTS = 1 << 16  # beyond this the oldest events are dropped (a stuck loop)

Watcher = Callable[[dict], None]


class SimBackend(Backend):
    """Simulated lines. ``lines`` in 1..65535; ``names`` optional (validated by the caller,
    may be shorter than ``lines``: the rest are unnamed)."""

    kind = "sim"

    def __init__(self, lines: int, names: list[str] | None = None) -> None:
        if not isinstance(lines, int) or isinstance(lines, bool) \
                or not 1 <= lines <= MAX_SIM_LINES:
            raise ValueError(f"sim backend: line count must be 1..{MAX_SIM_LINES}, got {lines!r}")
        if names is not None and len(names) > lines:
            raise ValueError(f"sim backend: {len(names)} names for {lines} lines")
        self._n = lines
        self._names = (list(names) + [""] * (lines - len(names))
                       if names and any(names) else None)
        self._lock = threading.Lock()
        self._dir = [DIR_IN] * lines
        self._out = [0] * lines      # driven value (meaningful for outputs)
        self._in = [0] * lines       # level the host drives onto the pin
        self._edge = [EDGE_NONE] * lines
        self._events: list[tuple[int, int]] = []
        self._watchers: list[Watcher] = []
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
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
        return self._dir[line]

    def set_direction(self, line: int, direction: int, value: int = 0) -> None:
        self.check_direction(line, direction)
        with self._lock:
            before = self._visible(line)
            self._dir[line] = direction
            if direction == DIR_OUT:
                self._out[line] = 1 if value else 0
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
            if self._dir[line] != DIR_OUT:
                raise ValueError(f"line {line} is not an output")
            changed = self._out[line] != (1 if value else 0)
            self._out[line] = 1 if value else 0
        if changed:
            self._notify(line, "guest")

    def set_edge(self, line: int, edge: str) -> None:
        self.check_line(line)
        if edge not in EDGES:
            raise ValueError(f"bad edge {edge!r}")
        with self._lock:
            changed = self._edge[line] != edge
            self._edge[line] = edge
        if changed:                      # the guest armed or disarmed an interrupt
            self._notify(line, "guest")

    def fileno(self) -> int | None:
        return self._rfd

    def read_events(self) -> list[tuple[int, int]]:
        try:
            while os.read(self._rfd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            ev, self._events = self._events, []
        return ev

    def reset_lines(self) -> None:
        changed = []
        with self._lock:
            for i in range(self._n):
                before = self._visible(i)
                self._dir[i] = DIR_IN
                self._out[i] = 0
                self._edge[i] = EDGE_NONE
                if self._visible(i) != before:
                    changed.append(i)
        for i in changed:
            self._notify(i, "reset")

    def line_info(self, line: int) -> dict:
        return self.get_line(line)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._rfd)
            os.close(self._wfd)

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
            if self._in[line] == level:
                return
            self._in[line] = level
            sensed = self._dir[line] != DIR_OUT
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
        with self._lock:
            self._watchers.append(cb)

    def remove_watcher(self, cb: Watcher) -> None:
        """Stop calling ``cb``; a no-op if it was not registered."""
        with self._lock:
            if cb in self._watchers:
                self._watchers.remove(cb)

    # ---- internals ----------------------------------------------------------------------
    def _visible(self, line: int) -> tuple[int, int]:
        d = self._dir[line]
        return d, self._out[line] if d == DIR_OUT else self._in[line]

    def _info(self, line: int) -> dict:
        d, v = self._visible(line)
        return {"line": line, "name": self._names[line] if self._names else "",
                "direction": DIRECTION_NAMES[d], "value": v, "input": self._in[line],
                "edge": self._edge[line]}

    def _wake(self) -> None:
        try:
            os.write(self._wfd, b"\x01")
        except BlockingIOError:
            pass  # pipe full: the loop is already awake
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
