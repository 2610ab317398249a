"""Guest console capture: QEMU's serial console arrives on a socket this side listens on.

A reader thread appends everything to the log file and to an in-memory buffer and notifies
waiters, so tests can wait for a console line (e.g. a kernel PM message) on a condition
variable with a timeout instead of sleeping or polling a file.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

__all__ = ["ConsoleReader"]


class ConsoleReader:
    """Accepts QEMU's console connection on ``listener`` and records it to ``log_path``."""

    def __init__(self, listener: socket.socket, log_path: Path, accept_timeout: float = 60.0) -> None:
        self._listener = listener
        self._log_path = log_path
        self._accept_timeout = accept_timeout
        self._cond = threading.Condition()
        self._data = bytearray()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="guest-console", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open(self._log_path, "ab", buffering=0) as log:
            try:
                self._listener.settimeout(self._accept_timeout)
                conn, _ = self._listener.accept()
            except OSError:
                conn = None
            if conn is not None:
                with conn:
                    while True:
                        try:
                            chunk = conn.recv(65536)
                        except OSError:
                            break
                        if not chunk:
                            break
                        log.write(chunk)
                        with self._cond:
                            self._data += chunk
                            self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def mark(self) -> int:
        """Current length of the captured console: pass to :meth:`wait_for` as ``start``."""
        with self._cond:
            return len(self._data)

    def text(self, start: int = 0) -> str:
        """Console text captured so far (from byte offset ``start``)."""
        with self._cond:
            return self._data[start:].decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str] | None:
        """Wait until ``pattern`` (a regex, multiline) matches the console from ``start``.

        Returns the match, or None on timeout or when the console closed without a match.
        """
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._data[start:].decode("utf-8", "replace"))
                if m is not None or self._closed:
                    return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the reader to finish (QEMU closed the console); closes the listener."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes an accept() still waiting
        except OSError:
            pass
        self._thread.join(timeout)
        try:
            self._listener.close()
        except OSError:
            pass
