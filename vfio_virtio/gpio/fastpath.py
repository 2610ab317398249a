"""The C request path, wired into an assembled device (issue 15).

:func:`install` replaces BAR0's region callback with the C one of ``vfio_virtio._fast``
(cffi_build/csrc/fastpath.c). From then on, inside the libvfio-user callback and without
Python:

* reads of the common configuration structure come from a register image, the ISR read
  clears the ISR bits kept in C, and in D3hot reads return all ones and writes are dropped;
* a notify write of the requestq pops the chains, runs the 5.17 request rules on the C line
  table (the sim backend's storage, shared with the controller), writes the responses,
  pushes used and raises the queue's interrupt (MSI-X or INTx).

Everything else reaches Python through one entry point (:func:`_py_bar0`), which runs the
usual handler (``PciFunction``'s gated BAR) and then :meth:`FastPath.sync`: every change of
configuration is made by Python, and Python re-renders the image after making it. Requests
C does not serve (names, SET_IRQ_TYPE, SET_DIRECTION NONE on an interrupt line) end C's
batch: Python serves that chain and the rest of the batch, in order, then the queue.

Hooks elsewhere: the transport's gating listeners (every power or running change, see
``virtio/transport_base.py``) re-render the gating flags, ``VirtioPciTransport.reset_event``
re-renders the whole image after a reset, the transport's ``isr`` lives here while installed,
and the server calls :func:`install` before ``realize``.
"""
from __future__ import annotations

import errno
import logging

from ..virtio import spec as V
from ..virtio.pci_transport import BAR_SIZE
from .lines_c import ffi, lib
from .spec import VIRTIO_GPIO_REQUESTQ as REQUESTQ

log = logging.getLogger(__name__)

_REGISTRY: dict[int, "FastPath"] = {}


def _addr(cdata, other_ffi) -> int:
    return int(other_ffi.cast("uintptr_t", cdata))


class FastPath:
    """The C register image and requestq state of one device."""

    def __init__(self, fn, transport, core, device) -> None:
        from ..dma import ffi as virtq_ffi
        from ..vfu import context as vfu
        self.fn, self.t, self.core, self.device = fn, transport, core, device
        ctl = device.ctl
        table = getattr(ctl.backend, "line_table", None)
        q = core.queues[REQUESTQ]
        self.f = f = ffi.new("struct vv_fast *")
        if table is not None and q.impl == "c":
            f.reqq = ffi.cast("struct vv_queue *", _addr(q._r.q, virtq_ffi))
            f.gpio = table.g
            table.g.names_size = ctl.gpio_names_size
            f.serve_requestq = 1
        self.table = table
        self.max_iovs = max(q.max_size, 4 * lib.VV_FAST_BATCH)
        self._iovs = ffi.new("struct vv_iov[]", self.max_iovs)
        f.iovs, f.max_iovs = self._iovs, self.max_iovs
        f.msix_vectors = fn.msix_vectors
        f.msix_cap = fn._msix_off
        f.slow = 1
        ctx = ffi.cast("void *", _addr(fn.ctx._ctx, vfu.ffi))
        if lib.vv_fast_install(f, ctx, BAR_SIZE) < 0:
            err = ffi.errno or errno.EIO
            raise OSError(err, f"vv_fast_install: {errno.errorcode.get(err, err)}")
        _REGISTRY[_addr(f, ffi)] = self
        self.isr = transport.isr
        self._stop = ffi.new("int[1]")
        transport.fast = self
        needs_reset, defer = core.needs_reset, device.defer

        def needs_reset_then_sync(reason: str) -> None:
            needs_reset(reason)
            self.sync()
        core.needs_reset = needs_reset_then_sync
        # Every BAR0 access Python serves (ours below, and the PCI_CFG window's) re-syncs.
        bar = fn._bars[0]
        bar_read, bar_write = bar.read, bar.write

        def read_then_sync(offset: int, count: int) -> bytes:
            try:
                return bar_read(offset, count)
            finally:
                self.sync(registers=False)

        def write_then_sync(offset: int, data: bytes) -> None:
            try:
                bar_write(offset, data)
            finally:
                self.sync()
        bar.read, bar.write = read_then_sync, write_then_sync
        # Deferred device work (resume) changes no common-config register; a broken queue
        # goes through needs_reset above.
        device.defer = lambda work: defer(lambda: (work(), self.sync(registers=False)))
        # The device's own scans of the requestq (DRIVER_OK, resume) take the C route too.
        queue_notify = device.queue_notify

        def queue_notify_c_first(index: int) -> None:
            if index == REQUESTQ and f.serve_requestq and core.running \
                    and core.queue_ready(REQUESTQ) and not q.broken:
                self.sync(registers=False)
                if lib.vv_fast_requestq(f) == 0:
                    return
                if f.npend:
                    self._take_pending()
            queue_notify(index)
        device.queue_notify = queue_notify_c_first
        transport.gating_listeners.append(lambda: self.sync(registers=False))
        self.sync()

    # --- state Python owns, mirrored into C ------------------------------------------------

    @property
    def isr(self) -> int:
        """The ISR status bits (C reads and clears them; Python sets them)."""
        return self.f.isr

    @isr.setter
    def isr(self, value: int) -> None:
        self.f.isr = value & 0xFF

    def set_gating(self, decodes_bars: bool, running: bool, slow: bool = False) -> None:
        """Power/running state: BARs decoded (D0), virtio core running, and whether every
        access must go to Python (``slow``: e.g. a No_Soft_Reset wake, where the first BAR
        access is activity Python must note)."""
        f = self.f
        f.decodes_bars, f.running, f.slow = bool(decodes_bars), bool(running), bool(slow)

    def sync(self, registers: bool = True) -> None:
        """Re-render the register image from Python's state (after Python changed it).
        The common configuration is rendered field by field in one pass (the bytes
        ``_common_read(0, VIRTIO_PCI_COMMON_CFG_LEN)`` returns, gaps 0)."""
        t = self.t
        if registers:
            n = V.VIRTIO_PCI_COMMON_CFG_LEN
            fields = self.__dict__.get("_render")
            if fields is None or self.__dict__.get("_render_of") is not t._fields:
                fields = [(off, off + f.size, f.size, f.get) for off, f in t._fields.items()
                          if off + f.size <= n]
                self._render, self._render_of = fields, t._fields
            img = bytearray(n)
            for lo, hi, size, get in fields:
                img[lo:hi] = get().to_bytes(size, "little")
            ffi.memmove(self.f.common, img, n)
            self.f.req_vector = t.queue_vectors[REQUESTQ]
        pm = self.fn.pm
        self.set_gating(pm.decodes_bars, self.core.running, pm.wake_pending)

    def counters(self) -> dict:
        """What C served: register reads, requestq kicks, chains, malformed chains,
        interrupts, and accesses handed to Python."""
        f = self.f
        return {"reads": f.c_reads, "kicks": f.c_kicks, "chains": f.c_chains,
                "malformed": f.c_malformed, "irqs": f.c_irqs, "python": f.py_calls}

    def serve(self, loop, vfu_fd: int, stall_s: float = 5.0) -> int:
        """Serve further vfio-user messages in C, blocking, until the loop has other work
        (another fd readable, a timer due) or the connection needs Python. A callback that
        adds a timer or a reader ends the C wait; it is re-planned and resumed unless a timer
        is due now. Returns vv_fast_serve's code (0, 1 stalled, -1 error)."""
        stop = self._stop
        loop.on_change = self._on_loop_change
        try:
            while True:
                fds = [fd for fd in loop.watched_fds() if fd != vfu_fd]
                t = loop.next_timeout()
                if t == 0.0 or len(fds) >= 63:
                    return 0
                ms = -1 if t is None else max(1, int(t * 1000))
                stop[0] = 0
                rc = lib.vv_fast_serve(self.f, vfu_fd, fds, len(fds), ms,
                                       int(stall_s * 1000), stop)
                if rc != 0 or not stop[0] or self.fn.ctx.poll_fd != vfu_fd:
                    return rc
        finally:
            loop.on_change = None

    def _on_loop_change(self) -> None:
        self._stop[0] = 1

    def close(self) -> None:
        lib.vv_fast_uninstall(self.f)
        _REGISTRY.pop(_addr(self.f, ffi), None)

    # --- the Python side of an access ------------------------------------------------------

    def _take_pending(self) -> None:
        """Serve the chains C left (a request it does not serve, and the rest of its
        batch), in order, then the queue goes on in Python."""
        f = self.f
        heads = [f.pend_heads[i] for i in range(f.npend)]
        f.npend = 0
        core, dev = self.core, self.device
        q = core.queues[REQUESTQ]
        done = []
        for h in heads:
            try:
                done.append(dev._request(q.chain_at(h)))
            except (OSError, ValueError):
                done.append((h, 0))
        q.push_batch(done)
        if core.check_queue(REQUESTQ):
            core.interrupt_queue(REQUESTQ)
            dev._complete(dev.ctl.take_completions())

    def access(self, buf, count: int, offset: int, is_write: bool) -> int:
        if self.f.npend:
            try:
                self._take_pending()
            finally:
                self.sync()
        bar = self.fn._bars[0]                 # gated, and re-syncs the image (above)
        if is_write:
            bar.write(offset, ffi.buffer(buf, count)[:])
        else:
            data = bar.read(offset, count)
            if len(data) != count:
                return -errno.EIO
            ffi.memmove(buf, data, count)
        return count


@ffi.def_extern()
def vv_fast_py_bar0(f, buf, count, offset, is_write):
    try:
        return _REGISTRY[_addr(f, ffi)].access(buf, count, offset, bool(is_write))
    except OSError as e:
        return -(e.errno or errno.EIO)
    except Exception:
        log.exception("BAR0 access at %#x+%d failed", offset, count)
        return -errno.EIO


def install(fn, transport, core, device) -> FastPath | None:
    """Serve BAR0 from C for this device (before ``realize``). Returns None (and changes
    nothing) when the transport is not virtio-pci."""
    if not hasattr(transport, "queue_vectors") or 0 not in fn._bars:
        return None
    return FastPath(fn, transport, core, device)
