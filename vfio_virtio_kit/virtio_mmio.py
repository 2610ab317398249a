"""The driver side of virtio-mmio version 2 (virtio 1.3 section 4.2), over vfio-user, with the
register block in BAR0 of the PCI function (the project's mmio mode).

Written from the specification's register table, as Linux's virtio_mmio uses it: 32-bit
aligned register accesses only (4.2.2.2), one interrupt for everything (4.2.3.4) read from
InterruptStatus and acknowledged through InterruptACK. The interrupt is INTx (an eventfd on
VFIO_PCI_INTX_IRQ_INDEX) or MSI-X vector 0. The method names follow
:class:`~vfio_virtio_kit.virtio_pci.VirtioPciDriver` so :class:`GpioDriver` drives either.
"""
from __future__ import annotations

import os
import select
import struct
import time

from vfio_virtio.pci import spec as P
from vfio_virtio_kit import vfio_user_spec as U
from vfio_virtio_kit.driver_ring import DriverRing
from vfio_virtio_kit.guestmem import GuestMemory
from vfio_virtio_kit.vfio_user import VfioUserClient
from vfio_virtio.virtio import mmio_spec as M
from vfio_virtio.virtio import spec as V
from vfio_virtio_kit.virtio_driver_base import VirtioDriverBase

BAR = 0


class VirtioMmioError(RuntimeError):
    """The device broke a rule of virtio 1.3 section 4.2 as seen by a driver."""


class VirtioMmioDriver(VirtioDriverBase):
    """A virtio-mmio v2 driver: discovery (4.2.3.1), initialization (3.1.1, 4.2.3.2),
    queues (4.2.3.2), notifications (4.2.3.3), the interrupt (4.2.3.4).

    ``irq`` is "intx" or "msix" (vector 0), wired at construction. ``mem`` is DMA-mapped whole
    at construction unless ``map_dma`` is False. Raises VirtioMmioError if MagicValue or
    Version are wrong, or DeviceID is 0 (a placeholder device, 4.2.3.1.1).
    """

    error = VirtioMmioError

    def __init__(self, client: VfioUserClient, mem: GuestMemory | None = None, *,
                 map_dma: bool = True, irq: str = "intx", check: bool = True) -> None:
        if irq not in ("intx", "msix"):
            raise ValueError(f"irq must be 'intx' or 'msix', not {irq!r}")
        self.client, self.mem, self.irq = client, mem, irq
        self.rings: dict[int, DriverRing] = {}
        self.features = 0
        self.eventfds: list[int] = []
        self.status_seen = 0               # InterruptStatus bits read by handle_irq()
        cfg = client.cfg_read(0, P.PCI_CFG_SPACE_SIZE)
        self.vendor_id, self.device_id = struct.unpack_from("<HH", cfg, 0)
        self.msix_cap = self._find_cap(cfg, P.PCI_CAP_ID_MSIX)
        self.pm_cap = self._find_cap(cfg, P.PCI_CAP_ID_PM)
        if mem is not None and map_dma:
            client.dma_map(mem.iova, mem.size, mem.fd, 0,
                           U.VFIO_USER_F_DMA_REGION_READ | U.VFIO_USER_F_DMA_REGION_WRITE)
        if check:
            self.discover()
        self.wire_irq(irq)

    @staticmethod
    def _find_cap(cfg: bytes, cap_id: int) -> int | None:
        pos, seen = cfg[P.PCI_CAPABILITY_LIST] & 0xFC, set()
        while pos and pos not in seen and P.PCI_STD_HEADER_SIZEOF <= pos < len(cfg) - 1:
            seen.add(pos)
            if cfg[pos] == cap_id:
                return pos
            pos = cfg[pos + 1] & 0xFC
        return None

    # ---- registers (4.2.2.2: 32-bit aligned) ----------------------------------------
    def read32(self, off: int) -> int:
        return int.from_bytes(self.client.region_read(BAR, off, 4), "little")

    def write32(self, off: int, value: int) -> None:
        self.client.region_write(BAR, off, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def discover(self) -> None:
        """4.2.3.1.1: check MagicValue and Version; DeviceID 0 means no device."""
        magic, version = self.read32(M.MagicValue), self.read32(M.Version)
        if magic != M.MAGIC_VALUE:
            raise VirtioMmioError(f"MagicValue {magic:#x}")
        if version != M.VERSION:
            raise VirtioMmioError(f"Version {version} (only 2 is supported)")
        self.virtio_device_id = self.read32(M.DeviceID)
        self.virtio_vendor_id = self.read32(M.VendorID)
        if self.virtio_device_id == 0:
            raise VirtioMmioError("DeviceID 0: placeholder, no device")

    def read_status(self) -> int:
        return self.read32(M.Status)

    def write_status(self, status: int) -> None:
        self.write32(M.Status, status)

    def add_status(self, bits: int) -> None:
        self.write_status(self.read_status() | bits)

    def reset(self, timeout: float = 5.0) -> None:
        """Write 0 to Status and wait for it to read back 0 (bounded poll; 4.2.3.1)."""
        self.write_status(0)
        deadline = time.monotonic() + timeout
        while self.read_status() != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("Status did not read back 0 after reset")
        self.rings.clear()

    # ---- features and bring-up (3.1.1) ------------------------------------------------
    def device_features(self) -> int:
        f = 0
        for sel in (0, 1):
            self.write32(M.DeviceFeaturesSel, sel)
            f |= self.read32(M.DeviceFeatures) << (32 * sel)
        return f

    def write_driver_features(self, features: int) -> None:
        for sel in (0, 1):
            self.write32(M.DriverFeaturesSel, sel)
            self.write32(M.DriverFeatures, features >> (32 * sel))


    def select_queue(self, index: int) -> None:
        self.write32(M.QueueSel, index)

    def setup_queue(self, index: int, size: int | None = None,
                    vector: int | None = None) -> DriverRing:
        """4.2.3.2: select, check QueueReady is 0, read QueueNumMax (0: absent), write
        QueueNum, the three ring addresses, then QueueReady = 1. ``vector`` is ignored
        (virtio-mmio has one interrupt)."""
        if self.mem is None:
            raise ValueError("setup_queue needs guest memory")
        self.select_queue(index)
        if self.read32(M.QueueReady):
            raise VirtioMmioError(f"queue {index} is already ready")
        qmax = self.read32(M.QueueNumMax)
        if qmax == 0:
            raise VirtioMmioError(f"queue {index} is not available (QueueNumMax 0)")
        size = qmax if size is None else min(size, qmax)
        self.write32(M.QueueNum, size)
        ring = DriverRing(self.mem, size, event_idx=self.has(V.VIRTIO_F_EVENT_IDX),
                          indirect=self.has(V.VIRTIO_F_INDIRECT_DESC))
        for lo, addr in ((M.QueueDescLow, ring.desc_addr), (M.QueueDriverLow, ring.avail_addr),
                         (M.QueueDeviceLow, ring.used_addr)):
            self.write32(lo, addr)
            self.write32(lo + 4, addr >> 32)
        self.write32(M.QueueReady, 1)
        self.rings[index] = ring
        return ring

    def bring_up(self, queues: int | list[int], wanted: int | None = None,
                 queue_size: int | None = None, msix: bool = True) -> None:
        """The whole 3.1.1 sequence. ``msix`` is accepted for VirtioPciDriver compatibility;
        the interrupt kind was chosen at construction."""
        qs = list(range(queues)) if isinstance(queues, int) else list(queues)
        self.negotiate(wanted)
        for q in qs:
            self.setup_queue(q, queue_size)
        self.driver_ok()

    # ---- the interrupt (4.2.3.4) -------------------------------------------------------
    def wire_irq(self, kind: str) -> None:
        """One eventfd on INTx, or on MSI-X vector 0 with MSI-X enabled."""
        self.unwire_irq()
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.eventfds = [fd]
        self.irq = kind
        if kind == "intx":
            self.client.set_irqs(U.VFIO_PCI_INTX_IRQ_INDEX, 0, [fd])
            return
        if self.msix_cap is None:
            raise VirtioMmioError("device has no MSI-X capability")
        self.client.set_irqs(U.VFIO_PCI_MSIX_IRQ_INDEX, 0, [fd])
        pos = self.msix_cap + P.PCI_MSIX_FLAGS
        ctrl = self.client.cfg_read16(pos)
        self.client.cfg_write16(pos, (ctrl | P.PCI_MSIX_FLAGS_ENABLE) & ~P.PCI_MSIX_FLAGS_MASKALL)

    def unwire_irq(self) -> None:
        if self.eventfds:
            idx = U.VFIO_PCI_INTX_IRQ_INDEX if self.irq == "intx" else U.VFIO_PCI_MSIX_IRQ_INDEX
            self.client.disable_irqs(idx)
            if self.irq == "msix" and self.msix_cap is not None:
                pos = self.msix_cap + P.PCI_MSIX_FLAGS
                self.client.cfg_write16(pos, self.client.cfg_read16(pos) & ~P.PCI_MSIX_FLAGS_ENABLE)
        for fd in self.eventfds:
            os.close(fd)
        self.eventfds = []

    def irq_fired(self) -> bool:
        """Whether the interrupt eventfd was signalled (consumes it; non-blocking)."""
        try:
            return os.eventfd_read(self.eventfds[0]) > 0
        except BlockingIOError:
            return False

    def wait_irq(self, vector: int = 0, timeout: float = 5.0) -> int:
        fd = self.eventfds[0]
        if not select.select([fd], [], [], timeout)[0]:
            raise TimeoutError(f"no {self.irq} interrupt within {timeout}s")
        return os.eventfd_read(fd)

    def irq_pending(self, vector: int = 0) -> bool:
        return self.irq_fired()

    def handle_irq(self) -> int:
        """What Linux's vm_interrupt does: read InterruptStatus, write it to InterruptACK.
        Returns the bits (also accumulated in ``status_seen``)."""
        st = self.read32(M.InterruptStatus)
        if st:
            self.write32(M.InterruptACK, st)
        self.status_seen |= st
        return st

    # ---- notifications and used buffers ----------------------------------------------
    def kick(self, queue: int) -> None:
        """4.2.3.3: write the queue index to QueueNotify."""
        self.write32(M.QueueNotify, queue)

    def wait_used(self, queue: int, timeout: float = 5.0) -> list[tuple[int, int]]:
        """New used elements of ``queue``, waiting on the interrupt and handling it."""
        ring = self.rings[queue]
        deadline = time.monotonic() + timeout
        while True:
            got = ring.used()
            if got:
                return got
            self.wait_irq(0, max(0.0, deadline - time.monotonic()))
            self.handle_irq()

    # ---- device configuration (4.2.2 Config, 2.5.1 generation) -----------------------
    def read_config(self, off: int, n: int, retries: int = 100) -> bytes:
        """Config bytes with natural aligned widths (4.2.2.2), retried until
        ConfigGeneration is unchanged across the read."""
        for _ in range(retries):
            gen = self.read32(M.ConfigGeneration)
            out, pos = bytearray(), off
            while pos < off + n:
                w = 4 if pos % 4 == 0 and off + n - pos >= 4 else \
                    2 if pos % 2 == 0 and off + n - pos >= 2 else 1
                out += self.client.region_read(BAR, M.Config + pos, w)
                pos += w
            if self.read32(M.ConfigGeneration) == gen:
                return bytes(out)
        raise VirtioMmioError("ConfigGeneration kept changing")

    # ---- PCI power management ----------------------------------------------------------
    def set_power_state(self, d: int) -> None:
        if self.pm_cap is None:
            raise VirtioMmioError("device has no PM capability")
        pos = self.pm_cap + P.PCI_PM_CTRL
        pmcsr = self.client.cfg_read16(pos)
        self.client.cfg_write16(pos, (pmcsr & ~(P.PCI_PM_CTRL_STATE_MASK
                                                | P.PCI_PM_CTRL_PME_STATUS)) | (d & 3))

    def power_state(self) -> int:
        if self.pm_cap is None:
            raise VirtioMmioError("device has no PM capability")
        return self.client.cfg_read16(self.pm_cap + P.PCI_PM_CTRL) & P.PCI_PM_CTRL_STATE_MASK

    def close(self) -> None:
        """Close our eventfds (the client and memory belong to the caller)."""
        for fd in self.eventfds:
            os.close(fd)
        self.eventfds = []


def open_gpio(socket: str, irq: str = "intx", features: int | None = None,
              queue_size: int | None = 16, bring_up: bool = True, timeout: float = 5.0):
    """A :class:`GpioDriver` over virtio-mmio: connected, memory mapped, interrupt wired,
    brought up with requestq and eventq unless ``bring_up`` is False."""
    from vfio_virtio_kit.gpio_driver import DEFAULT_FEATURES, EVENTQ, REQUESTQ, GpioDriver
    client = VfioUserClient(socket, timeout=timeout)
    mem = GuestMemory(8 << 20, iova=0x100000)
    try:
        drv = VirtioMmioDriver(client, mem, irq=irq)
    except Exception:
        client.close()
        mem.close()
        raise
    g = GpioDriver(client, mem, drv)
    if bring_up:
        drv.bring_up([REQUESTQ, EVENTQ],
                     wanted=DEFAULT_FEATURES if features is None else features,
                     queue_size=queue_size)
    return g
