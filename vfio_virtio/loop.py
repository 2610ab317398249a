"""The server's single poll loop.

Everything that waits on a file descriptor (the vfio-user socket, the sim backend's event
pipe, the control socket and its clients, the gpiod request fds) registers a reader here.
Callbacks run on the loop's thread, one at a time, so device state needs no locks.
"""
from __future__ import annotations

import logging
import selectors
import time
from typing import Callable

log = logging.getLogger(__name__)


class Loop:
    """A small selector loop: readers, and deadlines (call_later)."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._stopping = False
        #: called whenever a timer or reader is added or removed (a caller waiting outside
        #: this loop, e.g. the C serve loop of gpio/fastpath.py, must come back)
        self.on_change: Callable[[], None] | None = None

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable. Replaces an existing reader."""
        if self.on_change is not None:
            self.on_change()
        try:
            self._sel.modify(fd, selectors.EVENT_READ, callback)
        except KeyError:
            self._sel.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``; a no-op if it was not watched."""
        if self.on_change is not None:
            self.on_change()
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def call_later(self, delay: float, callback: Callable[[], None]) -> int:
        """Run ``callback()`` once after ``delay`` seconds; returns a handle for cancel()."""
        if self.on_change is not None:
            self.on_change()
        self._seq += 1
        self._timers.append((time.monotonic() + delay, self._seq, callback))
        self._timers.sort()
        return self._seq

    def cancel(self, handle: int) -> None:
        self._timers = [t for t in self._timers if t[1] != handle]

    def watched_fds(self) -> list[int]:
        """Every fd with a reader."""
        return [key.fd for key in self._sel.get_map().values()]

    def next_timeout(self) -> float | None:
        """Seconds until the earliest timer is due (0 if overdue), None without timers."""
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def stop(self) -> None:
        """Make run() return after the current iteration."""
        self._stopping = True

    def run_once(self, timeout: float | None = None) -> None:
        """Wait for one batch of events (or a timer) and dispatch them."""
        if self._timers:
            until = max(0.0, self._timers[0][0] - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        for key, _ in self._sel.select(timeout):
            try:
                key.data()
            except Exception:  # one bad handler must not stop the device
                log.exception("reader callback for fd %s failed", key.fd)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, cb = self._timers.pop(0)
            try:
                cb()
            except Exception:
                log.exception("timer callback failed")

    def run(self) -> None:
        self._stopping = False
        while not self._stopping:
            self.run_once(1.0)

    def close(self) -> None:
        self._sel.close()
