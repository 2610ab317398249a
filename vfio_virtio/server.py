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
import struct
import time
from dataclasses import dataclass

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

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "vfio-virtio-gpio-snapshot"
SNAPSHOT_VERSION = 1


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


# Every blocking send/recv on a client connection gives up after this long (QEMU's own
# x-msg-timeout is 5 s): a client that stops reading replies, or stops in the middle of a
# message, then gets dropped instead of freezing the loop (control socket, line events).
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
    fast: bool = True                   # BAR0 hot registers and the requestq in C (issue 15)


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

    def release(self) -> None:
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

    def __init__(self, cfg: ServerConfig, loop: Loop | None = None) -> None:
        self.cfg = cfg
        self.loop = loop or Loop()
        self.attached = False
        self.clients_served = 0
        self._closed = False
        sock = os.path.abspath(cfg.socket)
        self.socket_path = sock
        sock_dir = os.path.dirname(sock)
        if not os.path.isdir(sock_dir):
            raise ServerError(f"socket directory {sock_dir} does not exist")
        self._lock = _SocketLock(sock)
        try:
            self._build(sock)
        except Exception:
            self._lock.release()
            raise

    def _build(self, sock: str) -> None:
        cfg = self.cfg
        if os.path.lexists(sock):
            log.info("replacing stale socket %s", sock)
            os.unlink(sock)
        self.backend = make_backend(cfg.backend, cfg.lines, cfg.names)
        self.controller = GpioController(self.backend, cfg.names)
        self.device = VirtioGpioDevice(self.controller, cfg.queue_size,
                                       keep_lines_on_disconnect=cfg.keep_lines_on_disconnect)
        self.device.defer = lambda fn: self.loop.call_later(0, fn)
        self.dma = DmaTable()
        self.pm = PowerManagement(no_soft_reset=cfg.no_soft_reset)
        if cfg.transport == "mmio":
            from .virtio import mmio_transport as front
            ids = front.pci_ids()
        else:
            front, ids = None, gpio_ids()
        old_umask = os.umask(0o077)                 # the socket is created 0600
        try:
            self.function = PciFunction(sock, ids, self.pm, msix_vectors=3, dma=self.dma)
        finally:
            os.umask(old_umask)
        self.core = VirtioCore(self.device, self.dma, ring_impl=cfg.ring,
                               offer_suspend=cfg.suspend_feature)
        transport_cls = front.VirtioMmioTransport if front else VirtioPciTransport
        self.transport = transport_cls(self.function, self.core,
                                       len(self.controller.config_bytes()))
        self.fast = None
        if cfg.fast and front is None and (cfg.ring or os.environ.get("VFIO_VIRTIO_RING")
                                           or "c") == "c":
            from .gpio import fastpath
            self.fast = fastpath.install(self.function, self.transport, self.core, self.device)
        self.function.realize()
        if os.path.exists(sock):
            os.chmod(sock, 0o600)
        if cfg.restore:
            self.load_snapshot(cfg.restore)
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
        started = time.monotonic()
        said = False
        try:
            ctx.run()
        except ConnectionResetError:
            log.info("client disconnected; waiting for the next one")
            said = True
        except OSError as e:
            log.error("vfu_run_ctx: %s", e)
        # Attached or not is whatever libvfio-user's poll fd says: it is the connection while
        # a client is attached, the listening socket otherwise. vfu_run_ctx can drop the
        # connection and still return success (a reply to a client that went away: do_reply
        # resets the context and returns 0), and an error need not mean it dropped it.
        if ctx.poll_fd != self._poll_fd:
            self.attached = False
            self._rewatch()
            if not said:
                log.info("client connection closed; waiting for the next one")
        elif time.monotonic() - started >= CLIENT_IO_TIMEOUT:
            # a send or receive ran into the timeout: the client does not read its replies or
            # stopped in the middle of a message. Shut the connection; the library sees EOF.
            log.warning("client stalled for %.1f s: dropping it", time.monotonic() - started)
            _conn_setopt(self._poll_fd, None)
        elif self.fast is not None:
            # further messages are served in C until the loop has other work (issue 15)
            rc = self.fast.serve(self.loop, self._poll_fd, CLIENT_IO_TIMEOUT)
            if ctx.poll_fd != self._poll_fd:
                self.attached = False
                self._rewatch()
                log.info("client connection closed; waiting for the next one")
            elif rc == 1:
                log.warning("client stalled: dropping it")
                _conn_setopt(self._poll_fd, None)

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
                "core": self.core.get_state(),
                "msix_enabled": self.function.msix_enabled}

    def save_snapshot(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.snapshot(), f, indent=1)
        os.replace(tmp, path)
        log.info("snapshot saved to %s", path)

    def load_snapshot(self, path: str) -> None:
        """Import a snapshot; on any inconsistency nothing is applied (ServerError)."""
        try:
            with open(path) as f:
                d = json.load(f)
            if d.get("format") != SNAPSHOT_FORMAT or d.get("version") != SNAPSHOT_VERSION:
                raise ValueError("not a vfio-virtio-gpio snapshot of a known version")
            if d["lines"] != self.controller.ngpio:
                raise ValueError(f"snapshot has {d['lines']} lines, this device "
                                 f"{self.controller.ngpio}")
            before = self.snapshot()
            try:
                self.pm.set_state(d["pm"])
                self.transport.set_state(d["transport"])
                self.core.set_state(d["core"])
            except Exception:
                self.pm.set_state(before["pm"])
                raise
        except (OSError, ValueError, KeyError, TypeError) as e:
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
