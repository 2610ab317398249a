"""The PCI function: config space, capabilities, BARs, interrupts, DMA, resets.

Owns one libvfio-user context. Knows nothing of virtio: the layer above registers BAR handlers
and vendor capabilities, and listens for power-state changes and resets (``FunctionListener``).
"""
from __future__ import annotations

import errno
import logging
import struct
from dataclasses import dataclass
from typing import Callable, Protocol

from ..dma import DmaTable
from ..vfu import context as vfu
from . import spec as P
from ..power import Event, Pm
from .pm import PowerChange, PowerManagement

log = logging.getLogger(__name__)


class FunctionListener(Protocol):
    """What the PCI function tells the layer above it. The layer above decides what an
    event keeps (``vfio_virtio.power.decide``) and applies the PCI part through
    :meth:`PciFunction.apply_pm`."""

    def on_power_change(self, change: PowerChange) -> None: ...
    def on_reset_event(self, event: Event) -> None: ...
    def on_dma_change(self) -> None: ...


class BarHandler(Protocol):
    def read(self, offset: int, count: int) -> bytes: ...
    def write(self, offset: int, data: bytes) -> None: ...


@dataclass
class PciIds:
    vendor: int
    device: int
    subsys_vendor: int
    subsys: int
    revision: int
    class_code: tuple[int, int, int]


class _GatedBar:
    """BAR accesses pass only while the function decodes memory (D0); in D3hot a read
    returns all ones and a write is dropped, as a function in D3hot answers (PCI PM 1.2, 5.3)."""

    def __init__(self, fn: "PciFunction", idx: int, handler: BarHandler) -> None:
        self.fn, self.idx, self.handler = fn, idx, handler

    def read(self, offset: int, count: int) -> bytes:
        if not self.fn.pm.decodes_bars:
            return b"\xff" * count
        self.fn.pm.note_activity()
        data = self.handler.read(offset, count)
        self.fn.reassert_intx()
        return data

    def write(self, offset: int, data: bytes) -> None:
        if not self.fn.pm.decodes_bars:
            log.debug("BAR%d write at %#x dropped in D3hot", self.idx, offset)
            return
        self.fn.pm.note_activity()
        self.handler.write(offset, data)
        self.fn.reassert_intx()


class _ZeroBar:
    """The MSI-X table/PBA BAR: the client (QEMU) emulates the table; direct access reads 0."""

    def read(self, offset: int, count: int) -> bytes:
        return bytes(count)

    def write(self, offset: int, data: bytes) -> None:
        pass


class PciFunction:
    """A PCI Express endpoint served over vfio-user.

    ``msix_vectors`` 0 builds the function without MSI-X (no capability, no BAR1): INTx
    only. QEMU 11.1's vfio-user-pci aborts when a device with MSI-X is unplugged
    (docs/HANDOVER.md, "Re-plugging"), so a device meant to be re-plugged is served so.
    """

    MSIX_BAR = 1
    MSIX_BAR_SIZE = 0x1000
    MSIX_PBA_OFFSET = 0x800

    def __init__(self, socket_path: str, ids: PciIds, pm: PowerManagement,
                 msix_vectors: int, dma: DmaTable | None = None) -> None:
        if not 0 <= msix_vectors <= 128:
            raise ValueError(f"msix_vectors must be 0..128, not {msix_vectors}")
        self.ids = ids
        self.pm = pm
        self.msix_vectors = msix_vectors
        self.dma = dma if dma is not None else DmaTable()
        self.listener: FunctionListener | None = None
        # The INTx level as the layer above sees it (virtio: ISR status non-zero), or None.
        self.intx_pending: Callable[[], bool] | None = None
        self._cb_caps: list[tuple[int, int, BarHandler]] = []   # (offset, size, handler)
        self._bars: dict[int, _GatedBar] = {}
        self.ctx = vfu.Context(socket_path)
        ctx = self.ctx
        ctx.pci_init(express=True)
        ctx.set_ids(ids.vendor, ids.device, ids.subsys_vendor, ids.subsys)
        ctx.set_class(*ids.class_code)
        self.cfg = ctx.config_view(P.PCI_CFG_SPACE_EXP_SIZE)
        self.cfg[P.PCI_REVISION_ID] = ids.revision
        self.cfg[P.PCI_INTERRUPT_PIN] = 1          # INTA#, the fallback when MSI-X is off
        # Config callback first, so capabilities can route to it (docs/FACTS.md, libvfio-user).
        ctx.setup_region(vfu.CFG, P.PCI_CFG_SPACE_EXP_SIZE, _ConfigHandler(self), vfu.REGION_RW)
        pm.offset = ctx.add_capability(pm.cap_bytes(), flags=vfu.CAP_CALLBACK)
        self._msix_off = ctx.add_capability(self._msix_cap()) if msix_vectors else 0
        ctx.add_capability(self._express_cap())
        if msix_vectors:
            ctx.setup_region(vfu.BAR0 + self.MSIX_BAR, self.MSIX_BAR_SIZE, _ZeroBar(),
                             vfu.REGION_RW | vfu.REGION_MEM)
        ctx.setup_irqs(vfu.IRQ_INTX, 1)
        if msix_vectors:
            ctx.setup_irqs(vfu.IRQ_MSIX, msix_vectors)
        ctx.setup_reset(self._on_reset)
        ctx.setup_dma(self._on_dma)
        pm.cfg = self.cfg
        pm.listeners.append(self._on_power_change)

    # --- building -------------------------------------------------------------------------

    def _msix_cap(self) -> bytes:
        ctrl = (self.msix_vectors - 1) & P.PCI_MSIX_FLAGS_QSIZE
        return struct.pack("<BBHII", P.PCI_CAP_ID_MSIX, 0, ctrl, self.MSIX_BAR,
                           self.MSIX_PBA_OFFSET | self.MSIX_BAR)

    @staticmethod
    def _express_cap() -> bytes:
        cap = bytearray(P.PCI_CAP_EXP_ENDPOINT_SIZEOF_V2)
        struct.pack_into("<BBH", cap, 0, P.PCI_CAP_ID_EXP, 0,
                         P.PCI_EXP_FLAGS_VERS2 | (P.PCI_EXP_TYPE_ENDPOINT << 4))
        struct.pack_into("<I", cap, 0x0C, 0x11)     # LinkCap: 2.5 GT/s, x1
        struct.pack_into("<H", cap, 0x12, 0x11)     # LinkSta: 2.5 GT/s, x1
        return bytes(cap)

    def add_bar(self, idx: int, size: int, handler: BarHandler) -> None:
        """A 32-bit memory BAR (size a power of two >= 4 KiB) served by ``handler``."""
        if idx == self.MSIX_BAR or not 0 <= idx <= 5:
            raise ValueError(f"BAR{idx} is not available")
        self._bars[idx] = _GatedBar(self, idx, handler)
        self.ctx.setup_region(vfu.BAR0 + idx, size, self._bars[idx],
                              vfu.REGION_RW | vfu.REGION_MEM)

    def bar_read(self, idx: int, offset: int, count: int) -> bytes:
        """A BAR access from inside the function (e.g. virtio's PCI_CFG window), gated by
        the power state like a client's."""
        return self._bars[idx].read(offset, count)

    def bar_write(self, idx: int, offset: int, data: bytes) -> None:
        self._bars[idx].write(offset, data)

    def add_vendor_cap(self, data: bytes, handler: BarHandler | None = None) -> int:
        """A vendor-specific capability; read-only unless ``handler`` takes its accesses."""
        if handler is None:
            return self.ctx.add_capability(data, flags=vfu.CAP_READONLY)
        off = self.ctx.add_capability(data, flags=vfu.CAP_CALLBACK)
        self._cb_caps.append((off, len(data), handler))
        return off

    def realize(self) -> None:
        self.ctx.realize()

    # --- interrupts -----------------------------------------------------------------------

    @property
    def msix_enabled(self) -> bool:
        if not self._msix_off:
            return False
        ctrl = struct.unpack_from("<H", self.cfg, self._msix_off + P.PCI_MSIX_FLAGS)[0]
        return bool(ctrl & P.PCI_MSIX_FLAGS_ENABLE)

    @property
    def intx_disabled(self) -> bool:
        cmd = struct.unpack_from("<H", self.cfg, P.PCI_COMMAND)[0]
        return bool(cmd & P.PCI_COMMAND_INTX_DISABLE)

    def trigger_msix(self, vector: int) -> bool:
        """Signal MSI-X ``vector``; False when not deliverable (D3hot, MSI-X off, no eventfd)."""
        if not self.pm.decodes_bars or not self.msix_enabled:
            return False
        if not 0 <= vector < self.msix_vectors:
            return False
        return self.ctx.irq_trigger(vector)

    def trigger_intx(self) -> bool:
        """Assert INTx (an eventfd edge; the client re-asserts until the ISR is read)."""
        if not self.pm.decodes_bars or self.msix_enabled or self.intx_disabled:
            return False
        return self.ctx.irq_trigger(0)

    def reassert_intx(self) -> None:
        """INTx is a level (PCI 3.0 2.2.6), signalled as an eventfd edge; a vfio client
        deasserts it at every BAR access (QEMU: vfio_intx_eoi after each region access), so
        while the layer above still has an interrupt pending, signal it again. Without this
        an interrupt that arrives just before an unrelated BAR access is lost for good."""
        pending = self.intx_pending
        if pending is not None and pending() and not self.msix_enabled:
            self.trigger_intx()

    # --- callbacks from libvfio-user / PM -------------------------------------------------

    _RESET_EVENTS = {vfu.RESET_DEVICE: Event.DEVICE_RESET, vfu.RESET_PCI_FLR: Event.FLR,
                     vfu.RESET_LOST_CONN: Event.LOST_CONNECTION}

    def _on_power_change(self, change: PowerChange) -> None:
        if self.listener is not None:
            self.listener.on_power_change(change)

    def _on_reset(self, kind: int) -> None:
        event = self._RESET_EVENTS.get(kind)
        if event is None:
            log.warning("unknown reset type %d: treated as a device reset", kind)
            event = Event.DEVICE_RESET
        log.info("reset from the client: %s", event.value)
        if event is Event.LOST_CONNECTION:
            self.dma.clear()                   # the client's memory went with it
        if self.listener is not None:
            self.listener.on_reset_event(event)
        else:
            self.apply_pm(Pm.RESET)

    def apply_pm(self, action: Pm) -> None:
        """The PCI part of a reset outcome: RESET is a function reset (PM capability to its
        power-on state, MSI-X Enable/Function Mask and Command's Interrupt Disable cleared);
        KEEP does nothing."""
        if action is Pm.RESET:
            self._reset_config()
            self.pm.reset()

    def _reset_config(self) -> None:
        """A function reset returns MSI-X Enable/Function Mask and Command's Interrupt
        Disable to their reset values (the client re-programs them)."""
        if self._msix_off:
            pos = self._msix_off + P.PCI_MSIX_FLAGS
            ctrl = struct.unpack_from("<H", self.cfg, pos)[0]
            ctrl &= ~(P.PCI_MSIX_FLAGS_ENABLE | P.PCI_MSIX_FLAGS_MASKALL)
            struct.pack_into("<H", self.cfg, pos, ctrl)
        cmd = struct.unpack_from("<H", self.cfg, P.PCI_COMMAND)[0]
        struct.pack_into("<H", self.cfg, P.PCI_COMMAND, cmd & ~P.PCI_COMMAND_INTX_DISABLE)

    def _on_dma(self, mapped: bool, iova: int, length: int, vaddr: int, prot: int) -> None:
        if mapped:
            if vaddr == 0:
                log.warning("DMA map iova=%#x len=%#x has no fd: not accessible (guest RAM "
                            "must be shared: memory-backend-memfd,share=on)", iova, length)
                return
            self.dma.add(iova, length, vaddr, prot)
        else:
            self.dma.remove(iova, length)
        if self.listener is not None:
            self.listener.on_dma_change()


class _ConfigHandler:
    """Config-space accesses the library hands us: the PM capability, callback vendor caps,
    and everything outside the header and library-handled capabilities."""

    def __init__(self, fn: PciFunction) -> None:
        self.fn = fn

    def _route(self, offset: int, count: int):
        pm = self.fn.pm
        if pm.offset and pm.offset <= offset < pm.offset + P.PCI_PM_SIZEOF:
            return "pm", None
        for off, size, handler in self.fn._cb_caps:
            if off <= offset < off + size:
                return "cap", (off, handler)
        return None, None

    def read(self, offset: int, count: int) -> bytes:
        if offset < 0 or offset + count > P.PCI_CFG_SPACE_EXP_SIZE:
            raise OSError(errno.EINVAL, "config read out of range")
        kind, extra = self._route(offset, count)
        if kind == "pm":
            return self.fn.pm.read(offset, count, self.fn.cfg)
        if kind == "cap":
            off, handler = extra
            return handler.read(offset - off, count)
        return bytes(self.fn.cfg[offset:offset + count])

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > P.PCI_CFG_SPACE_EXP_SIZE:
            raise OSError(errno.EINVAL, "config write out of range")
        kind, extra = self._route(offset, len(data))
        if kind == "pm":
            self.fn.pm.write(offset, data, self.fn.cfg)
        elif kind == "cap":
            off, handler = extra
            handler.write(offset - off, data)
        else:
            log.debug("config write at %#x (%d bytes) to read-only space ignored",
                      offset, len(data))
