"""The whole server stack in the test's own process, driven without a socket.

:class:`InProcessServer` builds the real :class:`~vfio_virtio.server.GpioServer` (real
libvfio-user context, PM capability, PCI function, virtio transport, core, gpio device,
sim backend) and never attaches a client. :class:`LocalClient` offers the part of
:class:`~vfio_virtio_kit.vfio_user.VfioUserClient` that the driver-side classes use
(config and BAR accesses, DMA map/unmap, IRQ wiring, resets) by entering the same Python
entry points libvfio-user's callbacks enter: the region handlers, the reset callback and the
DMA callback. What libvfio-user itself emulates for a client (the standard header's Command
register and the MSI-X Message Control word) is written into config space as it would.

So ``VirtioPciDriver(LocalClient(srv), mem)`` is an independent driver against the real
device, thousands of times faster than a socket round trip (model-based tests).
Interrupts are not delivered (no eventfds): callers look at the used rings.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import tempfile

from vfio_virtio.pci import spec as P
from vfio_virtio.server import GpioServer, ServerConfig
from vfio_virtio.vfu import context as vfu

CFG = vfu.CFG


class InProcessServer:
    """A :class:`GpioServer` in this process; ``close()`` removes it and its socket dir."""

    def __init__(self, **cfg) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="vv-inproc-")
        self.server = GpioServer(ServerConfig(socket=os.path.join(self._dir.name, "s"), **cfg))

    def __getattr__(self, name):
        return getattr(self.server, name)

    def drain(self) -> None:
        """Run what the server's loop has due now (deferred resume work, backend events)."""
        loop = self.server.loop
        for _ in range(8):
            loop.run_once(0)
            if not loop._timers:
                return

    def close(self) -> None:
        self.server.close()
        self.server.loop.close()
        self._dir.cleanup()

    def __enter__(self) -> "InProcessServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalClient:
    """A vfio-user client without a socket (see the module docstring)."""

    def __init__(self, srv: InProcessServer) -> None:
        self.srv = srv
        self.fn = srv.server.function
        self._maps: list[tuple[int, int, mmap.mmap]] = []
        self._anchors: list = []
        self.connected = True

    # --- regions --------------------------------------------------------------------------

    def _handler(self, index: int):
        return self.fn.ctx._regions[index]

    def _library_owned(self, offset: int) -> bool:
        """Config bytes libvfio-user answers itself: header and non-callback capabilities."""
        pm = self.fn.pm
        if pm.offset <= offset < pm.offset + P.PCI_PM_SIZEOF:
            return False
        return not any(off <= offset < off + size for off, size, _ in self.fn._cb_caps)

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        if index == CFG and self._library_owned(offset):
            return bytes(self.fn.cfg[offset:offset + count])
        data = self._handler(index).read(offset, count)
        self.srv.drain()
        return data

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == CFG and self._library_owned(offset):
            msix = self.fn._msix_off + P.PCI_MSIX_FLAGS
            if offset in (P.PCI_COMMAND, msix) and len(data) == 2:
                self.fn.cfg[offset:offset + 2] = data      # what libvfio-user emulates
            return
        self._handler(index).write(offset, bytes(data))
        self.srv.drain()

    def cfg_read(self, offset: int, count: int) -> bytes:
        return self.region_read(CFG, offset, count)

    def cfg_write(self, offset: int, data: bytes) -> None:
        self.region_write(CFG, offset, data)

    def cfg_read8(self, offset: int) -> int:
        return self.cfg_read(offset, 1)[0]

    def cfg_read16(self, offset: int) -> int:
        return int.from_bytes(self.cfg_read(offset, 2), "little")

    def cfg_write16(self, offset: int, value: int) -> None:
        self.cfg_write(offset, value.to_bytes(2, "little"))

    # --- DMA, IRQs, resets ----------------------------------------------------------------

    def dma_map(self, iova: int, size: int, fd: int | None, offset: int = 0,
                prot: int = 3) -> None:
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                       offset=offset)
        anchor = ctypes.c_char.from_buffer(mm)
        vaddr = ctypes.addressof(anchor)
        self._maps.append((iova, size, mm))
        self._anchors.append(anchor)
        self.fn.ctx.dma_cb(True, iova, size, vaddr, prot)

    def dma_unmap_all(self) -> None:
        for iova, size, _ in self._maps:
            self.fn.ctx.dma_cb(False, iova, size, 0, 0)
        self._release_maps()

    def _release_maps(self) -> None:
        self._anchors.clear()
        maps, self._maps = self._maps, []
        for _, _, mm in maps:
            mm.close()

    def set_irqs(self, *args, **kw) -> None:
        pass                          # no eventfds in process: interrupts are not delivered

    def disable_irqs(self, index: int) -> None:
        pass

    def device_reset(self) -> None:
        """VFIO_USER_DEVICE_RESET."""
        self.fn.ctx.reset_cb(vfu.RESET_DEVICE)
        self.srv.drain()

    def flr(self) -> None:
        """An FLR as libvfio-user reports it (Initiate FLR in the Express capability)."""
        self.fn.ctx.reset_cb(vfu.RESET_PCI_FLR)
        self.srv.drain()

    def disconnect(self) -> None:
        """The client went away: libvfio-user removes its DMA regions and reports
        VFU_RESET_LOST_CONN."""
        self.dma_unmap_all()
        self.fn.ctx.reset_cb(vfu.RESET_LOST_CONN)
        self.connected = False
        self.srv.drain()

    def close(self) -> None:
        if self.connected:
            self.disconnect()
        self._release_maps()
