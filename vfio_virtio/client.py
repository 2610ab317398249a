"""Python client of the control socket: the runtime API for people who drive lines from Python.

This module is part of the runtime package and its API is stable: :class:`ControlClient`,
:class:`ControlWatch` and :class:`ControlError` keep their names and signatures across
releases (additions only). The wire protocol is documented in docs/CONTROL.md; the server
side is :class:`vfio_virtio.backends.control.ControlServer`. The command-line face of the same
API is ``vfio-virtio-gpio-ctl`` (:mod:`vfio_virtio.ctl`).

Example::

    from vfio_virtio.client import ControlClient
    with ControlClient("/run/vv/gpio.ctl") as c:
        c.set(2, 1)                       # drive input line 2 high
        print(c.get(0)["value"])          # what the guest drives on line 0
        with c.watch() as w:
            ev = w.wait_for(lambda e: e["line"] == 0, timeout=10)
"""
from __future__ import annotations

import collections
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Iterator

__all__ = ["ControlClient", "ControlWatch", "ControlError", "ControlProtocolError"]


class ControlError(RuntimeError):
    """The server answered ``{"ok": false}``; the message is its ``error``."""


class ControlProtocolError(ControlError):
    """The peer does not speak the control protocol: a line that is not a JSON object."""


def _encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes) -> dict:
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError):
        msg = None
    if not isinstance(msg, dict):
        raise ControlProtocolError(f"not a control-protocol reply: {line[:80]!r}")
    return msg


class ControlClient:
    """Blocking client for the control socket.

    ``pump``, if given, is called while waiting for the server instead of blocking (e.g.
    ``lambda: loop.run_once(0.01)`` to serve a ControlServer on the same thread in tests).
    Every wait is bounded by ``timeout`` seconds (TimeoutError).
    """

    def __init__(self, path: str, timeout: float = 5.0,
                 pump: Callable[[], None] | None = None) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._pump = pump
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._connect()
        except BaseException:
            self._sock.close()
            raise
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._next_id = 0

    def _connect(self) -> None:
        deadline = time.monotonic() + self.timeout
        self._sock.settimeout(self.timeout)
        while True:
            try:
                self._sock.connect(self.path)
                return
            except BlockingIOError:  # listen backlog full: the server must run to accept
                if self._pump is None or time.monotonic() > deadline:
                    raise TimeoutError(f"cannot connect to {self.path}: backlog full")
                self._pump()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (hostile-input tests)."""
        self._sock.sendall(data)

    def read_message(self, timeout: float | None = None) -> dict | None:
        """Next JSON object from the server, or None on timeout. EOF raises ConnectionError;
        a line that is not a JSON object raises ControlProtocolError."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[:nl + 1]
                return _decode(line)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                if self._pump is not None:
                    self._sock.settimeout(0)
                    try:
                        data = self._sock.recv(65536)
                    except (BlockingIOError, socket.timeout):
                        self._pump()
                        continue
                else:
                    self._sock.settimeout(left)
                    data = self._sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                raise ConnectionError("control server closed the connection")
            self._buf += data

    def request(self, op: str, **fields: Any) -> dict:
        """Send ``{"op": op, **fields}`` and return the reply; ControlError if not ok."""
        with self._lock:
            self._next_id += 1
            rid = self._next_id
            self._sock.sendall(_encode({"op": op, "id": rid, **fields}))
            deadline = time.monotonic() + self.timeout
            while True:
                msg = self.read_message(max(0.0, deadline - time.monotonic()))
                if msg is None:
                    raise TimeoutError(f"no reply to {op!r} within {self.timeout}s")
                if msg.get("id") == rid:
                    break
        if not msg.get("ok"):
            raise ControlError(msg.get("error", "unknown error"))
        return msg

    def get(self, line: int) -> dict:
        """State of one line (see docs/CONTROL.md)."""
        r = self.request("get", line=line)
        return {k: v for k, v in r.items() if k not in ("ok", "id")}

    def set(self, line: int, value: int) -> dict:
        """Drive the input level of ``line``; returns the line's new state."""
        r = self.request("set", line=line, value=value)
        return {k: v for k, v in r.items() if k not in ("ok", "id")}

    def list(self) -> list[dict]:
        """State of every line."""
        return self.request("list")["lines"]

    def info(self) -> dict:
        """Backend kind, line count, names, protocol version (+ device glue extras)."""
        r = self.request("info")
        return {k: v for k, v in r.items() if k not in ("ok", "id")}

    def watch(self) -> "ControlWatch":
        """A new connection subscribed to change events."""
        return ControlWatch(self.path, self.timeout, self._pump)


class ControlWatch(ControlClient):
    """A watching connection: iterate events, or :meth:`wait_for` one matching a predicate."""

    def __init__(self, path: str, timeout: float = 5.0,
                 pump: Callable[[], None] | None = None) -> None:
        super().__init__(path, timeout, pump)
        self._pending: collections.deque[dict] = collections.deque()
        try:
            self.request("watch")
        except BaseException:
            self.close()
            raise

    def read_message(self, timeout: float | None = None) -> dict | None:
        msg = super().read_message(timeout)
        # keep events that arrive while a request waits for its reply
        while msg is not None and "event" in msg and self._lock.locked():
            self._pending.append(msg)
            msg = super().read_message(timeout)
        return msg

    def next_event(self, timeout: float | None = None) -> dict | None:
        """Next change event, or None if none arrives within ``timeout``."""
        if self._pending:
            return self._pending.popleft()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = super().read_message(max(0.0, deadline - time.monotonic()))
            if msg is None or "event" in msg:
                return msg

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float | None = None) -> dict:
        """First event satisfying ``predicate``; TimeoutError if none within ``timeout``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            ev = self.next_event(max(0.0, deadline - time.monotonic()))
            if ev is None:
                raise TimeoutError("no matching control event")
            if predicate(ev):
                return ev

    def __iter__(self) -> Iterator[dict]:
        while True:
            ev = self.next_event()
            if ev is None:
                return
            yield ev
