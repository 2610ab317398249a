"""A minimal QMP client (QEMU Machine Protocol, docs/interop/qmp-spec.rst) over one socket.

QEMU is started with ``-chardev socket,id=qmp,path=P -mon chardev=qmp,mode=control`` and
connects to a socket this side listens on, so there is no start-up race. Only what the tests
need: capabilities negotiation, ``execute`` with a timeout, and collected events.
"""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any

__all__ = ["QMPError", "QMPClient"]


class QMPError(RuntimeError):
    """QMP failure: an error reply, a timeout, or a closed connection."""


class QMPClient:
    """JSON-lines QMP client over a connected stream socket."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self._sock = sock
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        greeting = self._read(time.monotonic() + timeout)
        if "QMP" not in greeting:
            raise QMPError(f"no QMP greeting: {greeting!r}")
        self.greeting = greeting
        self.execute("qmp_capabilities", timeout=timeout)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPError("QMP timeout")
            ready, _, _ = select.select([self._sock], [], [], left)
            if not ready:
                continue
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QMPError("QMP connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError as exc:
            raise QMPError(f"bad QMP line {line!r}") from exc
        if not isinstance(msg, dict):
            raise QMPError(f"bad QMP message {msg!r}")
        return msg

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float = 10.0) -> Any:
        """Run one command; return its ``return`` value or raise :class:`QMPError`."""
        self._next_id += 1
        req: dict[str, Any] = {"execute": command, "id": self._next_id}
        if arguments:
            req["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(req).encode() + b"\n")
        except OSError as exc:
            raise QMPError(f"QMP send failed: {exc}") from exc
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read(deadline)
            if "event" in msg:
                self.events.append(msg)
                continue
            if msg.get("id") != self._next_id:
                continue
            if "error" in msg:
                raise QMPError(f"{command}: {msg['error']}")
            return msg.get("return")

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        """Return (and consume) the first event called ``name``, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("event") == name:
                    return self.events.pop(i)
            msg = self._read(deadline)
            if "event" in msg:
                self.events.append(msg)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        try:
            self._sock.close()
        except OSError:
            pass
