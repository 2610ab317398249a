"""Handover: replace a running server process without the lines ever changing (docs/HANDOVER.md).

The running server (started with ``--handover H``) listens on the UNIX seqpacket socket
``H``. A new process started with ``--take-over H`` (and the same ``--socket``/``--backend``
flags) connects and the two exchange four messages (JSON, one per packet):

1. new -> old ``hello``: protocol version, backend spec, pid.
2. old -> new ``state``: the device snapshot (:meth:`GpioServer.snapshot`) and the backend's
   line-request description, with SCM_RIGHTS fds ``[socket lock, handover listener,
   line-request fds...]``. Before sending, the old process stops serving: it no longer
   reads the vfio-user socket or line events and closes its control socket.
3. new -> old ``committed``: the new process built its device from that state (the adopted
   line requests are not reconfigured: outputs keep driving as they are), realized its
   vfio-user socket at ``<socket>.takeover`` and renamed it onto ``<socket>`` (atomic: from
   this instant connections reach the new process). Or ``abort`` with an error.
4. old -> new ``bye``: the old process disowned the lines (no later call touches them),
   dropped its client and closed its copies of every fd without unlinking anything, and
   exits 0.

The lock file's flock lives on the open file description, so the passed fd keeps it held
throughout: no other server can take the socket in between. The handover listener is passed
too, so the next handover uses the same path. If the new process goes away before
``committed``, the old one resumes serving (its client, if any, was not dropped).

For the sim backend only state passes (lines are memory; a simulated input level the host
set through the control socket is not carried). A connected vfio-user client is dropped;
QEMU's client does not reconnect (see docs/HANDOVER.md for what the operator does).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import stat
import struct
import tempfile
import time

from .server import GpioServer, ServerConfig, ServerError

log = logging.getLogger(__name__)

PROTOCOL = 1
MAX_MSG = 4 << 20          # one snapshot of 1024 lines is well under this
MAX_FDS = 64
TIMEOUT = 30.0             # for each step of the exchange
HELLO_TIMEOUT = 2.0        # a peer that connects and stays silent blocks the loop this long


def _send(s: socket.socket, obj: dict, fds: list[int] = ()) -> None:
    data = json.dumps(obj).encode()
    if fds:
        socket.send_fds(s, [data], list(fds))
    else:
        s.send(data)


def _recv(s: socket.socket) -> tuple[dict, list[int]]:
    data, fds, flags, _ = socket.recv_fds(s, MAX_MSG, MAX_FDS)
    if not data:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("peer closed the handover connection")
    try:
        msg = json.loads(data)
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            raise ValueError("not a handover message")
    except ValueError as e:
        for fd in fds:
            os.close(fd)
        raise ConnectionError(f"bad handover message: {e}") from None
    return msg, list(fds)


def listen(path: str) -> socket.socket:
    """A 0600 seqpacket listener at ``path`` (a stale socket file is replaced)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"handover path {path!r} exists and is not a socket")
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    s.listen(2)
    return s


class HandoverListener:
    """The running server's side: waits in the loop for a successor on ``path``."""

    def __init__(self, server: GpioServer, path: str, sock: socket.socket | None = None):
        self.server = server
        self.path = os.path.abspath(path)
        self.sock = sock if sock is not None else listen(self.path)
        self.sock.setblocking(False)
        self.handed_over = False
        server.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.settimeout(HELLO_TIMEOUT)
        with conn:
            try:
                uid = struct.unpack("3i", conn.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
                if uid not in (os.getuid(), 0):
                    log.error("handover: refused a peer of uid %d", uid)
                    return
                self._serve(conn)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("handover failed: %s", e)

    def _serve(self, conn: socket.socket) -> None:
        srv = self.server
        hello, fds = _recv(conn)
        for fd in fds:
            os.close(fd)
        conn.settimeout(TIMEOUT)
        if hello.get("op") != "hello" or hello.get("version") != PROTOCOL:
            _send(conn, {"op": "error", "error": f"expected hello version {PROTOCOL}"})
            return
        if hello.get("backend") != srv.cfg.backend:
            _send(conn, {"op": "error", "error": f"backend {hello.get('backend')!r} differs "
                         f"from the running server's {srv.cfg.backend!r}"})
            return
        log.info("handover to pid %s: stopping service", hello.get("pid"))
        if srv.attached:
            log.warning("handover: a client is attached; it will be disconnected "
                        "(QEMU's vfio-user client does not reconnect)")
        self._pause()
        be = srv.backend
        bstate = be.handover_state() if hasattr(be, "handover_state") else None
        line_fds = [fd for fd, _ in be.requests] if bstate is not None else []
        try:
            _send(conn, {"op": "state", "snapshot": srv.snapshot(), "backend": bstate},
                  [srv._lock.fd, self.sock.fileno(), *line_fds])
            reply, fds = _recv(conn)
            for fd in fds:
                os.close(fd)
        except (OSError, ConnectionError) as e:
            log.error("handover: successor went away (%s): resuming service", e)
            self._resume()
            return
        if reply.get("op") != "committed":
            log.error("handover: successor aborted (%s): resuming service",
                      reply.get("error", reply.get("op")))
            self._resume()
            return
        self._retire()
        try:
            _send(conn, {"op": "bye"})
        except OSError:
            pass
        log.info("handover complete: exiting")

    def _pause(self) -> None:
        srv = self.server
        srv.loop.remove_reader(srv._poll_fd)
        bfd = srv.backend.fileno()
        if bfd is not None:
            srv.loop.remove_reader(bfd)
        if srv.control is not None:
            srv.control.close()
            srv.control = None

    def _resume(self) -> None:
        srv = self.server
        srv.loop.add_reader(srv._poll_fd, srv._on_vfu)
        bfd = srv.backend.fileno()
        if bfd is not None:
            srv.loop.add_reader(bfd, srv.device.on_backend_events)
        if srv.cfg.control:
            from .backends.control import ControlServer
            srv.control = ControlServer(srv.cfg.control, srv.backend, srv.loop)

    def _retire(self) -> None:
        """The successor serves now: let go of everything without touching lines or paths."""
        srv = self.server
        if hasattr(srv.backend, "disown"):
            srv.backend.disown()
        srv.loop.remove_reader(self.sock.fileno())
        srv._closed = True                  # GpioServer.close() must not unlink anything
        srv.function.ctx.destroy()          # drops the client, closes the old listener
        srv.backend.close()
        os.close(srv._lock.fd)
        self.sock.close()
        self.handed_over = True
        srv.loop.stop()


def take_over(cfg: ServerConfig) -> GpioServer:
    """The new process's side: connect to ``cfg.take_over`` and continue the old server."""
    sock_path = os.path.abspath(cfg.socket)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.settimeout(TIMEOUT)
    try:
        s.connect(cfg.take_over)
    except OSError as e:
        raise ServerError(f"cannot reach the running server's handover socket "
                          f"{cfg.take_over}: {e.strerror or e}") from None
    t0 = time.monotonic()
    with s:
        try:
            _send(s, {"op": "hello", "version": PROTOCOL, "backend": cfg.backend,
                      "pid": os.getpid()})
            msg, fds = _recv(s)
        except (OSError, ConnectionError) as e:
            raise ServerError(f"handover: {e}") from None
        if msg.get("op") != "state" or len(fds) < 2:
            for fd in fds:
                os.close(fd)
            raise ServerError(f"handover refused: {msg.get('error', msg.get('op'))}")
        lock_fd, hfd, line_fds = fds[0], fds[1], fds[2:]
        try:
            server = _build(cfg, msg, lock_fd, line_fds, sock_path)
        except Exception as e:
            os.close(hfd)
            try:
                _send(s, {"op": "abort", "error": str(e)[:500]})
            except OSError:
                pass
            if isinstance(e, (ServerError, ValueError, OSError)):
                raise ServerError(f"handover aborted, the old server keeps serving: {e}") \
                    from None
            raise
        finally:
            for fd in (lock_fd, *line_fds):    # the server and backend own dups of them
                os.close(fd)
        _send(s, {"op": "committed"})
        try:
            _recv(s)                    # bye (or EOF: the old process is gone either way)
        except (OSError, ConnectionError):
            pass
    server._lock.keep_file = False
    os.ftruncate(server._lock.fd, 0)
    os.pwrite(server._lock.fd, f"{os.getpid()}\n".encode(), 0)
    if hasattr(server.backend, "commit"):
        server.backend.commit()
    hsock = socket.socket(fileno=hfd)
    if cfg.handover and os.path.abspath(cfg.handover) == os.path.abspath(cfg.take_over):
        server.handover = HandoverListener(server, cfg.handover, sock=hsock)
    else:
        hsock.detach()
        os.close(hfd)
        if cfg.handover:
            server.handover = HandoverListener(server, cfg.handover)
    log.info("took over %s: exchange %.1f ms", sock_path, (time.monotonic() - t0) * 1e3)
    return server


def _build(cfg: ServerConfig, msg: dict, lock_fd: int, line_fds: list[int],
           sock_path: str) -> GpioServer:
    backend = None
    if msg.get("backend") is not None:
        from .backends.gpiod_backend import GpiodBackend
        dups = [os.dup(fd) for fd in line_fds]
        try:
            backend = GpiodBackend.adopt(msg["backend"], dups, names=cfg.names)
        except Exception:
            for fd in dups:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
    elif line_fds:
        raise ValueError("line-request fds without a backend description")
    fd, snap = tempfile.mkstemp(prefix=".handover-", dir=os.path.dirname(sock_path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(msg["snapshot"], f)
        tmp_sock = sock_path + ".takeover"
        server = GpioServer(dataclasses.replace(cfg, restore=snap), backend=backend,
                            lock_fd=os.dup(lock_fd), bind_path=tmp_sock)
    except Exception:
        if backend is not None:
            backend.disown()
            backend.close()
        raise
    finally:
        os.unlink(snap)
    os.rename(tmp_sock, sock_path)          # the commit point: clients now reach us
    return server


def start_server(cfg: ServerConfig) -> GpioServer:
    """A server for ``cfg``: taken over from a running one (``take_over``) or new; with a
    handover listener when ``cfg.handover`` is set."""
    if cfg.take_over:
        return take_over(cfg)
    server = GpioServer(cfg)
    if cfg.handover:
        try:
            server.handover = HandoverListener(server, cfg.handover)
        except OSError as e:
            server.close()
            raise ServerError(f"handover socket {cfg.handover}: {e.strerror or e}") from None
    return server
