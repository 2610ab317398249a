"""The vfio-virtio-gpio server: builds the device stack and runs the single poll loop.

One client at a time (libvfio-user accepts one connection per context); when it disconnects
the next one is attached without a restart. SIGINT/SIGTERM stop the loop cleanly and remove the
socket. A lock file beside the socket tells a live server from a stale socket without
connecting to it (a connection would take the live server's only client slot).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import stat
import struct
import time
from dataclasses import dataclass

from . import snapshot as snapshot_schema
from .backends import make_backend
from .backends.control import ControlServer
from .dma import DmaTable
from .gpio.controller import GpioController
from .gpio.device import VirtioGpioDevice
from .loop import Loop
from .pci import spec as P
from .pci.function import PciFunction, PciIds
from .pci.pm import PowerManagement
from .virtio import spec as V
from .virtio.core import VirtioCore
from .virtio.pci_transport import VirtioPciTransport
from .vfu.framing import ConnectionGate

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = snapshot_schema.SNAPSHOT_FORMAT
SNAPSHOT_VERSION = snapshot_schema.SNAPSHOT_VERSION
MSIX_VECTORS = 3                        # requestq, eventq, config changes


# vfu_attach_ctx accepts and then waits, blocking, for the client's VERSION message: a
# client that connects and stays silent would freeze the whole loop (control socket, line
# events). A SIGALRM after this many seconds interrupts that recv (EINTR); the library
# closes the connection and the server goes back to listening.
ATTACH_TIMEOUT = 2.0


@contextlib.contextmanager
def _attach_deadline(seconds: float):
    """Interrupt blocking system calls in the body after ``seconds`` (main thread only;
    elsewhere the body runs without a deadline)."""
    try:
        old = signal.signal(signal.SIGALRM, lambda *_: None)
    except ValueError:                      # not the main thread
        yield
        return
    signal.siginterrupt(signal.SIGALRM, True)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# A client that stops reading its replies (a blocking send: SO_SNDTIMEO), or stops in the
# middle of a message (the framing gate's deadline; the loop goes on meanwhile), is dropped
# after this long (QEMU's own x-msg-timeout is 5 s).
CLIENT_IO_TIMEOUT = 5.0


def _conn_setopt(fd: int, timeout: float | None) -> None:
    """Set send/receive timeouts on the client connection ``fd``; None: shut it down."""
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError as e:
        log.warning("client connection fd %d: %s", fd, e)
        return
    try:
        if timeout is None:
            s.shutdown(socket.SHUT_RDWR)
        else:
            tv = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    except OSError as e:
        log.warning("client connection fd %d: %s", fd, e)
    finally:
        s.close()


class ServerError(Exception):
    """A start-up problem to report to the operator (no traceback)."""


@dataclass
class ServerConfig:
    socket: str
    lines: int = 8
    names: list[str] | None = None
    backend: str = "sim"
    control: str | None = None
    no_soft_reset: bool = True
    suspend_feature: bool = True
    keep_lines_on_disconnect: bool = True
    ring: str | None = None
    queue_size: int = 256
    ready_fd: int | None = None
    restore: str | None = None
    transport: str = "pci"
    snapshot: str | None = None         # saved on SIGUSR1 and at exit
    handover: str | None = None         # listen here for a successor (vfio_virtio.handover)
    take_over: str | None = None        # continue the server listening for one here
    fast: bool = True                   # BAR0 hot registers and the requestq in C (issue 15)
    msix: bool = True                   # False: INTx only (a device QEMU 11.1 can unplug)


def gpio_ids() -> PciIds:
    """Modern virtio-gpio: 1af4:1069 (0x1040 + 41), revision 1 (4.1.2.1: >= 1 for modern-only
    devices), subsystem 1af4:0040 (>= 0x40 for modern-only), class 'other system peripheral'."""
    return PciIds(vendor=V.VIRTIO_PCI_VENDOR_ID,
                  device=V.VIRTIO_PCI_MODERN_DEVICE_ID_BASE + 41,
                  subsys_vendor=V.VIRTIO_PCI_SUBSYS_VENDOR_ID, subsys=0x0040, revision=1,
                  class_code=(P.PCI_BASE_CLASS_SYSTEM, P.PCI_CLASS_SYSTEM_OTHER, 0))


class _SocketLock:
    """``<socket>.lock`` held (flock) for the server's life."""

    def __init__(self, sock_path: str) -> None:
        self.path = sock_path + ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise ServerError(f"socket {sock_path} is in use by a running server "
                              f"(lock {self.path} is held)") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        self.keep_file = False

    @classmethod
    def adopt(cls, sock_path: str, fd: int) -> "_SocketLock":
        """The lock of a server handing over: ``fd`` shares its open file description, so
        the flock stays held. The file is kept on release until ``keep_file`` is cleared."""
        self = cls.__new__(cls)
        self.path, self.fd, self.keep_file = sock_path + ".lock", fd, True
        return self

    def release(self) -> None:
        if not self.keep_file:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self.fd)


def qemu_command_hint(sock: str) -> str:
    dev = json.dumps({"driver": "vfio-user-pci", "socket": {"type": "unix", "path": sock}})
    return ("qemu-system-x86_64 -accel tcg -M q35,memory-backend=mem -m 512 "
            "-object memory-backend-memfd,id=mem,size=512M,share=on "
            f"-device '{dev}' ...")


class GpioServer:
    """The assembled device: backend -> controller -> virtio-gpio -> virtio core -> PCI."""

    def __init__(self, cfg: ServerConfig, loop: Loop | None = None, *, backend=None,
                 lock_fd: int | None = None, bind_path: str | None = None) -> None:
        """``backend``, ``lock_fd`` (the socket lock, held) and ``bind_path`` (realize the
        vfio-user socket there; the caller renames it onto ``cfg.socket``) are given by a
        handover (vfio_virtio.handover); otherwise all are made here."""
        self.cfg = cfg
        self.msix_vectors = MSIX_VECTORS if cfg.msix else 0
        self.loop = loop or Loop()
        self.attached = False
        self.clients_served = 0
        self._closed = False
        sock = os.path.abspath(cfg.socket)
        self.socket_path = sock
        sock_dir = os.path.dirname(sock)
        if not os.path.isdir(sock_dir):
            raise ServerError(f"socket directory {sock_dir} does not exist")
        if os.path.lexists(sock) and not stat.S_ISSOCK(os.lstat(sock).st_mode):
            raise ServerError(f"{sock} exists and is not a socket: not replacing it")
        self._lock = _SocketLock(sock) if lock_fd is None else _SocketLock.adopt(sock, lock_fd)
        self._bind_path = bind_path or sock
        try:
            self._build(self._bind_path, backend)
        except BaseException:
            self._undo_build(own_backend=backend is None)
            self._lock.release()
            raise

    def _undo_build(self, own_backend: bool) -> None:
        """A start-up step failed: remove what _build made (socket, context, and the backend
        if it was made here; a handed-over backend is the handover's to give back)."""
        fn = getattr(self, "function", None)
        if fn is not None:
            fn.ctx.destroy()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._bind_path)
        backend = getattr(self, "backend", None)
        if backend is not None and own_backend:
            with contextlib.suppress(Exception):
                backend.close()

    def _build(self, sock: str, backend=None) -> None:
        cfg = self.cfg
        if os.path.lexists(sock):            # a socket (checked above), ours, not in use
            log.info("replacing stale socket %s", sock)
            os.unlink(sock)
        self.backend = backend if backend is not None else \
            make_backend(cfg.backend, cfg.lines, cfg.names)
        self.controller = GpioController(self.backend, cfg.names)
        self.device = VirtioGpioDevice(self.controller, cfg.queue_size)
        self.device.defer = lambda fn: self.loop.call_later(0, fn)
        # a bad snapshot is refused before the socket exists
        restore = self.read_snapshot(cfg.restore) if cfg.restore else None
        # vfu_run_ctx only once a whole message is queued: a stalled client never blocks us
        self._gate = ConnectionGate(self.loop, CLIENT_IO_TIMEOUT)
        self.dma = DmaTable()
        self.pm = PowerManagement(no_soft_reset=cfg.no_soft_reset)
        if cfg.transport == "mmio":
            from .virtio import mmio_transport as front
            ids = front.pci_ids()
        else:
            front, ids = None, gpio_ids()
        old_umask = os.umask(0o077)                 # the socket is created 0600
        try:
            self.function = PciFunction(sock, ids, self.pm, msix_vectors=self.msix_vectors,
                                        dma=self.dma)
        finally:
            os.umask(old_umask)
        self.core = VirtioCore(self.device, self.dma, ring_impl=cfg.ring,
                               offer_suspend=cfg.suspend_feature)
        transport_cls = front.VirtioMmioTransport if front else VirtioPciTransport
        self.transport = transport_cls(
            self.function, self.core, len(self.controller.config_bytes()),
            reset_lines_on_disconnect=not cfg.keep_lines_on_disconnect)
        self.fast = None
        if cfg.fast and front is None and (cfg.ring or os.environ.get("VFIO_VIRTIO_RING")
                                           or "c") == "c":
            from .gpio import fastpath
            self.fast = fastpath.install(self.function, self.transport, self.core, self.device)
        self.function.realize()
        if os.path.exists(sock):
            os.chmod(sock, 0o600)
        if restore is not None:
            self.load_snapshot(cfg.restore, restore)
        if self.fast is not None:
            self.fast.sync()
        self._poll_fd = self.function.ctx.poll_fd
        self.loop.add_reader(self._poll_fd, self._on_vfu)
        bfd = self.backend.fileno()
        if bfd is not None:
            self.loop.add_reader(bfd, self.device.on_backend_events)
        self.control = ControlServer(cfg.control, self.backend, self.loop,
                                     info=self._info) if cfg.control else None

    def _info(self) -> dict:
        """Extra fields of the control socket's ``info``: what the C request path served."""
        return {"fast_path": self.fast.counters() if self.fast is not None else None}

    # --- the vfio-user socket -------------------------------------------------------------

    def _on_vfu(self) -> None:
        ctx = self.function.ctx
        if not self.attached:
            try:
                with _attach_deadline(ATTACH_TIMEOUT):
                    if not ctx.attach():
                        return
            except OSError as e:
                log.warning("attach failed: %s", e)
                return
            self.attached = True
            self.clients_served += 1
            log.info("client %d attached", self.clients_served)
            self._rewatch()
            _conn_setopt(self._poll_fd, CLIENT_IO_TIMEOUT)
            return
        if not self._gate.admit(self._poll_fd, self._on_vfu):
            return                          # part of a message: the gate calls us again
        started = time.monotonic()
        said = False
        try:
            ctx.run()
        except ConnectionResetError:
            log.info("client disconnected; waiting for the next one")
            said = True
        except OSError as e:
            log.error("vfu_run_ctx: %s", e)
        if self._detached(said):
            return
        if time.monotonic() - started >= CLIENT_IO_TIMEOUT:
            # a reply send ran into the timeout: the client does not read its replies.
            # Shut the connection; the library sees EOF.
            log.warning("client stalled for %.1f s: dropping it", time.monotonic() - started)
            _conn_setopt(self._poll_fd, None)
            return
        if self.fast is not None:
            # further messages are served in C until the loop has other work (issue 15)
            rc = self.fast.serve(self.loop, self._poll_fd, CLIENT_IO_TIMEOUT)
            if not self._detached(False) and rc == 1:
                log.warning("client stalled: dropping it")
                _conn_setopt(self._poll_fd, None)

    def _detached(self, said: bool) -> bool:
        """Whether the client went away (then forget its connection and listen again).
        Attached or not is whatever libvfio-user's poll fd says: it is the connection while a
        client is attached, the listening socket otherwise. vfu_run_ctx can drop the
        connection and still return success (a reply to a client that went away: do_reply
        resets the context and returns 0), and an error need not mean it dropped it."""
        if self.function.ctx.poll_fd == self._poll_fd:
            return False
        self._gate.forget()                  # the gate's dup of the old connection
        self.attached = False
        self._rewatch()
        if not said:
            log.info("client connection closed; waiting for the next one")
        return True

    def _rewatch(self) -> None:
        self.loop.remove_reader(self._poll_fd)
        self._poll_fd = self.function.ctx.poll_fd
        self.loop.add_reader(self._poll_fd, self._on_vfu)

    # --- snapshots ------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """The complete device state (PCI PM, transport, virtio core, queues, lines)."""
        return {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION,
                "lines": self.controller.ngpio,
                "pm": self.pm.get_state(), "transport": self.transport.get_state(),
                "core": self.core.get_state()}

    def save_snapshot(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.snapshot(), f, indent=1)
        os.replace(tmp, path)
        log.info("snapshot saved to %s", path)

    def read_snapshot(self, path: str) -> dict:
        """Read ``path`` and check the whole snapshot against the schema (vfio_virtio/
        snapshot.py) for this device; ServerError (one line) if it does not fit."""
        try:
            return snapshot_schema.validate(
                snapshot_schema.read_snapshot(path), ngpio=self.controller.ngpio,
                transport=self.cfg.transport, nqueues=self.device.num_queues,
                max_queue_size=self.cfg.queue_size, msix_vectors=self.msix_vectors)
        except snapshot_schema.SnapshotError as e:
            raise ServerError(f"cannot restore snapshot {path}: {e}") from None

    def load_snapshot(self, path: str, d: dict | None = None) -> None:
        """Import a snapshot (``d``: already read by :meth:`read_snapshot`). It is validated
        as a whole before anything is applied; on any problem nothing is (ServerError)."""
        if d is None:
            d = self.read_snapshot(path)
        try:
            before = self.snapshot()
            try:
                self.pm.set_state(d["pm"])
                self.transport.set_state(d["transport"])
                self.core.set_state(d["core"])
            except Exception:
                self.pm.set_state(before["pm"])
                raise
        except (ValueError, KeyError, TypeError) as e:
            raise ServerError(f"cannot restore snapshot {path}: {e}") from None
        self.pm.sync(self.function.cfg)
        log.info("snapshot restored from %s", path)

    # --- running --------------------------------------------------------------------------

    def announce(self) -> None:
        """Readiness: the ready fd gets a line and is closed; stdout gets the QEMU hint."""
        line = f"READY {self.socket_path}\n"
        if self.cfg.ready_fd is not None:
            try:
                os.write(self.cfg.ready_fd, line.encode())
                os.close(self.cfg.ready_fd)
            except OSError as e:
                log.warning("ready fd %d: %s", self.cfg.ready_fd, e)
        print(line.strip(), flush=True)
        print("attach a guest with:\n  " + qemu_command_hint(self.socket_path), flush=True)

    def install_signals(self) -> None:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._sig = (r, w)
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(s, lambda *_: None)
        # the CLI blocks SIGUSR1 from its start (its default action would kill us): one
        # that came meanwhile is delivered now, to the wakeup fd
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})

        def on_signal() -> None:
            try:
                data = r.recv(64)
            except BlockingIOError:
                return
            if signal.SIGUSR1 in data and self.cfg.snapshot:
                try:
                    self.save_snapshot(self.cfg.snapshot)
                except OSError as e:
                    log.error("snapshot: %s", e)
            if any(b in (signal.SIGINT, signal.SIGTERM) for b in data):
                log.info("signal received: stopping")
                self.loop.stop()
        self.loop.add_reader(r.fileno(), on_signal)

    def serve_forever(self) -> None:
        self.loop.run()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.control is not None:
            self.control.close()
        self._gate.close()
        self.loop.remove_reader(self._poll_fd)
        self.function.ctx.destroy()
        if self.fast is not None:
            self.fast.close()
        for p in (self.socket_path,):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        self.backend.close()
        self._lock.release()
