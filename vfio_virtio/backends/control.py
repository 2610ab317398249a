"""JSON-lines control socket for a backend: the host's view of the GPIO lines.

:class:`ControlServer` listens on a UNIX stream socket (mode 0600) inside the server's poll
loop. The client, the runtime Python API, is :mod:`vfio_virtio.client` (its names are still
importable from here). The protocol is documented in docs/CONTROL.md. Every request is one JSON object on one line; every reply is
one line ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}`` (with ``"id"`` echoed
when the request had one). Hostile input gets an error reply, never a crash.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import socket
import stat
from typing import Any, Callable

from .base import Backend

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024          # longest request line accepted (bytes, newline excluded)
MAX_OUTBUF = 1 << 20          # a client that lets this much output pile up is dropped
MAX_CLIENTS = 64
_RETRY_DELAY = 0.01           # seconds between retries of a blocked send


class _Conn:
    __slots__ = ("sock", "fd", "inbuf", "outbuf", "watching")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.watching = False


class ControlServer:
    """Serve the control protocol for ``backend`` on ``path`` inside ``loop``.

    ``info`` is an optional callable whose dict is merged into the ``info`` reply (the device
    glue can add its own state). A stale socket file at ``path`` is replaced; any other
    existing file is an error (FileExistsError).
    """

    def __init__(self, path: str, backend: Backend, loop: Any,
                 info: Callable[[], dict] | None = None) -> None:
        self.path = os.fspath(path)
        self.backend = backend
        self.loop = loop
        self._info = info
        self._conns: dict[int, _Conn] = {}
        self._events: collections.deque[dict] = collections.deque()
        self._retry: int | None = None
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise FileExistsError(f"control socket path {self.path!r} exists and is "
                                      "not a socket")
            os.unlink(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            self._sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._sock.listen(64)
        self._sock.setblocking(False)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        loop.add_reader(self._sock.fileno(), self._accept)
        loop.add_reader(self._wake_r, self._flush_events)
        if hasattr(backend, "add_watcher"):
            backend.add_watcher(self._on_change)
        self._closed = False

    # ---- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening, drop every client and unlink the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if hasattr(self.backend, "remove_watcher"):
            self.backend.remove_watcher(self._on_change)
        for conn in list(self._conns.values()):
            self._drop(conn)
        self.loop.remove_reader(self._sock.fileno())
        self.loop.remove_reader(self._wake_r)
        if self._retry is not None:
            self.loop.cancel(self._retry)
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        try:
            os.unlink(self.path)
        except OSError:
            pass

    @property
    def client_count(self) -> int:
        return len(self._conns)

    # ---- connections ------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("control: accept failed: %s", e)
                return
            if len(self._conns) >= MAX_CLIENTS:
                try:
                    sock.send(_encode({"ok": False, "error": "too many clients"}))
                except OSError:
                    pass
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            self._conns[conn.fd] = conn
            self.loop.add_reader(conn.fd, lambda c=conn: self._readable(c))

    def _drop(self, conn: _Conn) -> None:
        if self._conns.pop(conn.fd, None) is None:
            return
        self.loop.remove_reader(conn.fd)
        conn.sock.close()

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.inbuf += data
        while conn.fd in self._conns:
            nl = conn.inbuf.find(b"\n")
            if nl > MAX_LINE or (nl < 0 and len(conn.inbuf) > MAX_LINE):
                # cannot resynchronise on a stream of unbounded lines: answer and hang up
                self._send(conn, {"ok": False, "error": f"line longer than {MAX_LINE} "
                                  "bytes; closing"})
                self._drop(conn)
                return
            if nl < 0:
                return
            line = bytes(conn.inbuf[:nl])
            del conn.inbuf[:nl + 1]
            if line.strip():
                self._send(conn, self._dispatch(conn, line))

    def _send(self, conn: _Conn, obj: dict) -> None:
        conn.outbuf += _encode(obj)
        if len(conn.outbuf) > MAX_OUTBUF:
            log.warning("control: client fd %d does not read its replies; dropped", conn.fd)
            self._drop(conn)
            return
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        while conn.outbuf:
            try:
                n = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                self._schedule_retry()
                return
            except OSError:
                self._drop(conn)
                return
            del conn.outbuf[:n]

    def _schedule_retry(self) -> None:
        # Loop has readers only: retry blocked sends on a short timer.
        if self._retry is None and not self._closed:
            self._retry = self.loop.call_later(_RETRY_DELAY, self._retry_all)

    def _retry_all(self) -> None:
        self._retry = None
        for conn in list(self._conns.values()):
            if conn.outbuf:
                self._flush(conn)

    # ---- watch events -----------------------------------------------------------------
    def _on_change(self, info: dict) -> None:
        """Backend watcher: any thread. Queue and wake the loop."""
        self._events.append(info)
        try:
            os.write(self._wake_w, b"\x01")
        except OSError:
            pass

    def _flush_events(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass
        while self._events:
            ev = {"event": "change", **self._events.popleft()}
            for conn in list(self._conns.values()):
                if conn.watching:
                    self._send(conn, ev)

    # ---- requests ---------------------------------------------------------------------
    def _dispatch(self, conn: _Conn, line: bytes) -> dict:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            return {"ok": False, "error": f"bad JSON: {e}"[:200]}
        if not isinstance(req, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        reply = self._op(conn, req)
        if "id" in req and isinstance(req["id"], (int, str)) and not isinstance(req["id"], bool):
            reply["id"] = req["id"]
        return reply

    def _op(self, conn: _Conn, req: dict) -> dict:
        op = req.get("op")
        b = self.backend
        try:
            if op == "get":
                return {"ok": True, **b.line_info(self._line(req))}
            if op == "set":
                line = self._line(req)
                value = req.get("value")
                if type(value) is not int or value not in (0, 1):
                    return {"ok": False, "error": "value must be 0 or 1"}
                if not hasattr(b, "set_input"):
                    return {"ok": False, "error": f"backend {b.kind!r} cannot drive inputs"}
                b.set_input(line, value)
                return {"ok": True, **b.line_info(line)}
            if op == "list":
                lines = b.lines() if hasattr(b, "lines") else \
                    [b.line_info(i) for i in range(b.nlines)]
                return {"ok": True, "lines": lines}
            if op == "watch":
                conn.watching = True
                return {"ok": True, "watching": True}
            if op == "info":
                out = {"ok": True, "protocol": PROTOCOL_VERSION, "backend": b.kind,
                       "lines": b.nlines, "names": b.names or []}
                if self._info is not None:
                    out.update(self._info())
                return out
        except _BadRequest as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # backend failure: report, keep serving
            log.exception("control: op %r failed", op)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"[:200]}
        return {"ok": False, "error": f"unknown op {op!r}"[:200]}

    def _line(self, req: dict) -> int:
        line = req.get("line")
        if type(line) is not int or not 0 <= line < self.backend.nlines:
            raise _BadRequest(f"line must be an integer 0..{self.backend.nlines - 1}")
        return line


class _BadRequest(Exception):
    pass


def _encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


_CLIENT_NAMES = ("ControlClient", "ControlWatch", "ControlError", "ControlProtocolError")


def __getattr__(name: str) -> Any:
    """The client moved to :mod:`vfio_virtio.client`; old imports from here keep working."""
    if name in _CLIENT_NAMES:
        from .. import client
        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
