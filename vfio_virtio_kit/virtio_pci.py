"""The driver side of virtio-pci modern (virtio 1.3 section 4.1), over vfio-user.

Written from the specification, not from the device code, so that tests can check
the device against an independent reading. Guest memory is a
:class:`~vfio_virtio_kit.guestmem.GuestMemory` mapped to the device with one
DMA map; queues are :class:`~vfio_virtio_kit.driver_ring.DriverRing` split rings.
Interrupts are MSI-X vectors wired to eventfds (VFIO_USER_DEVICE_SET_IRQS).
"""

from __future__ import annotations

import os
import select
import struct
import time
from dataclasses import dataclass

from vfio_virtio.pci import spec as P
from vfio_virtio_kit import vfio_user_spec as U
from vfio_virtio_kit.driver_ring import DriverRing
from vfio_virtio_kit.guestmem import GuestMemory
from vfio_virtio_kit.vfio_user import VfioUserClient
from vfio_virtio.virtio import spec as V
from vfio_virtio_kit.virtio_driver_base import VirtioDriverBase

_CAP = struct.Struct("<BBBBBB2xII")      # 4.1.4 struct virtio_pci_cap


class VirtioPciError(RuntimeError):
    """The device broke a rule of virtio 1.3 section 4.1 as seen by a driver."""


@dataclass
class VirtioCap:
    """One virtio vendor capability (4.1.4): where a structure lives."""

    cfg_type: int
    bar: int
    id: int
    offset: int
    length: int
    cap_offset: int              # position in config space
    cap_len: int
    notify_off_multiplier: int = 0


@dataclass
class MsixCap:
    """MSI-X capability (PCI Local Bus 6.8.2)."""

    cap_offset: int
    table_size: int
    table_bar: int
    table_offset: int
    pba_bar: int
    pba_offset: int


class VirtioPciDriver(VirtioDriverBase):
    """A virtio-pci modern driver: capability walk (4.1.4), initialization (3.1.1),
    queues (4.1.5.1.3), notifications (4.1.4.4), MSI-X (4.1.5.1.2).

    ``mem`` is DMA-mapped whole, READ|WRITE, at construction (``map_dma=False`` to
    skip). Raises VirtioPciError when the capability list is unusable.
    """

    error = VirtioPciError

    def __init__(self, client: VfioUserClient, mem: GuestMemory | None = None, *,
                 map_dma: bool = True) -> None:
        self.client = client
        self.mem = mem
        self.rings: dict[int, DriverRing] = {}
        self.notify_offs: dict[int, int] = {}
        self.notify_data: dict[int, int] = {}
        self.queue_vectors: dict[int, int] = {}
        self.eventfds: list[int] = []
        self.features = 0
        if mem is not None and map_dma:
            client.dma_map(mem.iova, mem.size, mem.fd, 0,
                           U.VFIO_USER_F_DMA_REGION_READ | U.VFIO_USER_F_DMA_REGION_WRITE)
        self.scan()

    # ---- capability walk (4.1.4) --------------------------------------------------
    def scan(self) -> None:
        """Walk the PCI capability list; record the first virtio structure of each
        type (4.1.4: the driver SHOULD use the first one it can support), MSI-X and PM."""
        cfg = self.client.cfg_read(0, P.PCI_CFG_SPACE_SIZE)
        self.config_space = cfg
        self.vendor_id, self.device_id = struct.unpack_from("<HH", cfg, 0)
        self.pci_caps: list[tuple[int, int]] = []
        self.virtio_caps: list[VirtioCap] = []
        self.caps: dict[int, VirtioCap] = {}
        self.msix: MsixCap | None = None
        if not struct.unpack_from("<H", cfg, P.PCI_STATUS)[0] & P.PCI_STATUS_CAP_LIST:
            raise VirtioPciError("PCI status has no capability list")
        pos, seen = cfg[P.PCI_CAPABILITY_LIST] & 0xFC, set()
        while pos and pos not in seen and len(seen) < 48:
            if pos < P.PCI_STD_HEADER_SIZEOF or pos + 2 > len(cfg):
                raise VirtioPciError(f"capability pointer {pos:#x} outside config space")
            seen.add(pos)
            cap_id, nxt = cfg[pos], cfg[pos + 1] & 0xFC
            self.pci_caps.append((cap_id, pos))
            if cap_id == P.PCI_CAP_ID_VNDR and pos + V.VIRTIO_PCI_CAP_LEN <= len(cfg):
                self._parse_virtio_cap(cfg, pos)
            elif cap_id == P.PCI_CAP_ID_MSIX and pos + P.PCI_CAP_MSIX_SIZEOF <= len(cfg):
                ctrl, table, pba = struct.unpack_from("<HII", cfg, pos + 2)
                self.msix = MsixCap(pos, (ctrl & P.PCI_MSIX_FLAGS_QSIZE) + 1,
                                    table & 7, table & ~7, pba & 7, pba & ~7)
            pos = nxt
        for need in (V.VIRTIO_PCI_CAP_COMMON_CFG, V.VIRTIO_PCI_CAP_NOTIFY_CFG, V.VIRTIO_PCI_CAP_ISR_CFG):
            if need not in self.caps:
                raise VirtioPciError(f"no usable virtio capability of cfg_type {need}")

    def _parse_virtio_cap(self, cfg: bytes, pos: int) -> None:
        _, _, cap_len, cfg_type, bar, cid, off, length = _CAP.unpack_from(cfg, pos)
        # 4.1.4: ignore reserved cfg_type and bar values; cap_len must cover the struct.
        if not V.VIRTIO_PCI_CAP_COMMON_CFG <= cfg_type <= V.VIRTIO_PCI_CAP_PCI_CFG or bar > 5:
            return
        if cap_len < V.VIRTIO_PCI_CAP_LEN:
            return
        cap = VirtioCap(cfg_type, bar, cid, off, length, pos, cap_len)
        if cfg_type == V.VIRTIO_PCI_CAP_NOTIFY_CFG:
            if cap_len < V.VIRTIO_PCI_NOTIFY_CAP_LEN or pos + 20 > len(cfg):
                return
            cap.notify_off_multiplier = struct.unpack_from("<I", cfg, pos + 16)[0]
        self.virtio_caps.append(cap)
        self.caps.setdefault(cfg_type, cap)

    def find_pci_cap(self, cap_id: int) -> int | None:
        """Config-space offset of the first capability with ``cap_id``."""
        return next((pos for cid, pos in self.pci_caps if cid == cap_id), None)

    # ---- structure access (4.1.3.1: natural widths) -------------------------------
    def _rd(self, cfg_type: int, off: int, size: int) -> int:
        cap = self.caps[cfg_type]
        return int.from_bytes(self.client.region_read(cap.bar, cap.offset + off, size), "little")

    def _wr(self, cfg_type: int, off: int, value: int, size: int) -> None:
        cap = self.caps[cfg_type]
        self.client.region_write(cap.bar, cap.offset + off, value.to_bytes(size, "little"))

    def common_read(self, off: int, size: int) -> int:
        """Read a common configuration field (V.VIRTIO_PCI_COMMON_*)."""
        return self._rd(V.VIRTIO_PCI_CAP_COMMON_CFG, off, size)

    def common_write(self, off: int, value: int, size: int) -> None:
        """Write a common configuration field."""
        self._wr(V.VIRTIO_PCI_CAP_COMMON_CFG, off, value, size)

    def _common_write64(self, off: int, value: int) -> None:
        self.common_write(off, value & 0xFFFFFFFF, 4)
        self.common_write(off + 4, value >> 32, 4)

    def read_status(self) -> int:
        return self.common_read(V.VIRTIO_PCI_COMMON_STATUS, 1)

    def write_status(self, status: int) -> None:
        self.common_write(V.VIRTIO_PCI_COMMON_STATUS, status, 1)

    def add_status(self, bits: int) -> None:
        """Set status bits on top of the current value (3.1.1 accumulates them)."""
        self.write_status(self.read_status() | bits)

    def num_queues(self) -> int:
        return self.common_read(V.VIRTIO_PCI_COMMON_NUMQ, 2)

    def reset(self, timeout: float = 5.0) -> None:
        """4.1.4.3.2: write 0 to device_status, then wait until it reads back 0.
        (Reading the register is the only signal the spec gives: bounded poll.)"""
        self.write_status(0)
        deadline = time.monotonic() + timeout
        while self.read_status() != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("device_status did not read back 0 after reset")
        for q in list(self.rings):
            del self.rings[q]

    # ---- features and bring-up (3.1.1) --------------------------------------------
    def device_features(self) -> int:
        """All 64 offered feature bits, through device_feature_select 0 and 1."""
        f = 0
        for sel in (0, 1):
            self.common_write(V.VIRTIO_PCI_COMMON_DFSELECT, sel, 4)
            f |= self.common_read(V.VIRTIO_PCI_COMMON_DF, 4) << (32 * sel)
        return f

    def write_driver_features(self, features: int) -> None:
        for sel in (0, 1):
            self.common_write(V.VIRTIO_PCI_COMMON_GFSELECT, sel, 4)
            self.common_write(V.VIRTIO_PCI_COMMON_GF, (features >> (32 * sel)) & 0xFFFFFFFF, 4)


    def setup_queue(self, index: int, size: int | None = None, vector: int | None = None) -> DriverRing:
        """4.1.5.1.3: select the queue, read its maximum size (0: unavailable), write a
        smaller size if asked, the MSI-X vector (read back: NO_VECTOR means refused),
        the ring addresses, then queue_enable = 1."""
        if self.mem is None:
            raise ValueError("setup_queue needs guest memory")
        self.common_write(V.VIRTIO_PCI_COMMON_Q_SELECT, index, 2)
        qmax = self.common_read(V.VIRTIO_PCI_COMMON_Q_SIZE, 2)
        if qmax == 0:
            raise VirtioPciError(f"queue {index} is not available (queue_size 0)")
        size = qmax if size is None else min(size, qmax)
        if size != qmax:
            self.common_write(V.VIRTIO_PCI_COMMON_Q_SIZE, size, 2)
        if vector is not None:
            self.common_write(V.VIRTIO_PCI_COMMON_Q_MSIX, vector, 2)
            if self.common_read(V.VIRTIO_PCI_COMMON_Q_MSIX, 2) != vector:
                raise VirtioPciError(f"queue {index}: MSI-X vector {vector} refused")
            self.queue_vectors[index] = vector
        ring = DriverRing(self.mem, size, event_idx=self.has(V.VIRTIO_F_EVENT_IDX),
                          indirect=self.has(V.VIRTIO_F_INDIRECT_DESC))
        self._common_write64(V.VIRTIO_PCI_COMMON_Q_DESCLO, ring.desc_addr)
        self._common_write64(V.VIRTIO_PCI_COMMON_Q_AVAILLO, ring.avail_addr)
        self._common_write64(V.VIRTIO_PCI_COMMON_Q_USEDLO, ring.used_addr)
        self.notify_offs[index] = self.common_read(V.VIRTIO_PCI_COMMON_Q_NOFF, 2)
        if self.has(V.VIRTIO_F_NOTIF_CONFIG_DATA):   # 4.1.4.3: use it in place of the index
            self.notify_data[index] = self.common_read(V.VIRTIO_PCI_COMMON_Q_NDATA, 2)
        self.common_write(V.VIRTIO_PCI_COMMON_Q_ENABLE, 1, 2)
        self.rings[index] = ring
        return ring

    def bring_up(self, queues: int | list[int], wanted: int | None = None,
                 queue_size: int | None = None, msix: bool = True) -> None:
        """Whole 3.1.1 sequence: negotiate, wire MSI-X (config vector 0, queue i on
        vector i+1 when the table is large enough), set up ``queues``, DRIVER_OK."""
        qs = list(range(queues)) if isinstance(queues, int) else list(queues)
        self.negotiate(wanted)
        use_msix = msix and self.msix is not None
        if use_msix:
            self.enable_msix()
            self.set_config_vector(0)
        for i, q in enumerate(qs):
            vec = None
            if use_msix:
                vec = min(i + 1, len(self.eventfds) - 1)
            self.setup_queue(q, queue_size, vec)
        self.driver_ok()

    # ---- MSI-X (4.1.5.1.2) ----------------------------------------------------------
    def enable_msix(self, nvec: int | None = None) -> list[int]:
        """Wire one eventfd per MSI-X table entry (SET_IRQS DATA_EVENTFD|TRIGGER) and
        set MSI-X Enable in Message Control. Returns the eventfds (vector order)."""
        if self.msix is None:
            raise VirtioPciError("device has no MSI-X capability")
        n = self.msix.table_size if nvec is None else min(nvec, self.msix.table_size)
        self.disable_msix()
        self.eventfds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(n)]
        self.client.set_irqs(U.VFIO_PCI_MSIX_IRQ_INDEX, 0, self.eventfds)
        pos = self.msix.cap_offset + P.PCI_MSIX_FLAGS
        ctrl = self.client.cfg_read16(pos)
        self.client.cfg_write16(pos, (ctrl | P.PCI_MSIX_FLAGS_ENABLE) & ~P.PCI_MSIX_FLAGS_MASKALL)
        return self.eventfds

    def disable_msix(self) -> None:
        """Disable every MSI-X vector on the server and close our eventfds."""
        if self.eventfds:
            self.client.disable_irqs(U.VFIO_PCI_MSIX_IRQ_INDEX)
        for fd in self.eventfds:
            os.close(fd)
        self.eventfds = []

    def set_config_vector(self, vector: int) -> None:
        """config_msix_vector, read back (NO_VECTOR means the device refused)."""
        self.common_write(V.VIRTIO_PCI_COMMON_MSIX, vector, 2)
        if self.common_read(V.VIRTIO_PCI_COMMON_MSIX, 2) != vector:
            raise VirtioPciError(f"config MSI-X vector {vector} refused")

    def wait_irq(self, vector: int, timeout: float = 5.0) -> int:
        """Wait for MSI-X ``vector``; returns the eventfd count (interrupts coalesced).
        Raises TimeoutError."""
        fd = self.eventfds[vector]
        if not select.select([fd], [], [], timeout)[0]:
            raise TimeoutError(f"no interrupt on MSI-X vector {vector} within {timeout}s")
        return os.eventfd_read(fd)

    def irq_pending(self, vector: int) -> bool:
        """Whether ``vector`` fired (consumes it)."""
        try:
            return os.eventfd_read(self.eventfds[vector]) > 0
        except BlockingIOError:
            return False

    # ---- notifications (4.1.4.4) and used buffers ----------------------------------
    def notify_addr(self, queue: int) -> tuple[int, int]:
        """(bar, offset) of the queue's notification address:
        cap.offset + queue_notify_off * notify_off_multiplier."""
        cap = self.caps[V.VIRTIO_PCI_CAP_NOTIFY_CFG]
        return cap.bar, cap.offset + self.notify_offs[queue] * cap.notify_off_multiplier

    def kick(self, queue: int) -> None:
        """Notify the device (4.1.5.2): le16 queue index, or with
        VIRTIO_F_NOTIFICATION_DATA le32 {vqn:16, next_off:15, next_wrap:1} where
        next_off/next_wrap are bits 0-14/15 of the split ring's avail idx."""
        bar, off = self.notify_addr(queue)
        vq = self.notify_data.get(queue, queue)      # NOTIF_CONFIG_DATA replaces the index
        if self.has(V.VIRTIO_F_NOTIFICATION_DATA):
            idx = self.rings[queue].avail_idx
            val = vq | (idx & 0x7FFF) << 16 | (idx >> 15 & 1) << 31
            self.client.region_write(bar, off, val.to_bytes(4, "little"))
        else:
            self.client.region_write(bar, off, vq.to_bytes(2, "little"))

    def wait_used(self, queue: int, timeout: float = 5.0) -> list[tuple[int, int]]:
        """New used elements of ``queue``, waiting on its MSI-X vector up to ``timeout``."""
        ring = self.rings[queue]
        deadline = time.monotonic() + timeout
        while True:
            if self.has(V.VIRTIO_F_EVENT_IDX):
                ring.used_event = ring.last_used      # re-arm, as virtqueue_enable_cb does
            got = ring.used()
            if got:
                return got
            if queue not in self.queue_vectors:
                raise VirtioPciError(f"queue {queue} has no MSI-X vector to wait on")
            self.wait_irq(self.queue_vectors[queue], max(0.0, deadline - time.monotonic()))

    def read_isr(self) -> int:
        """ISR status byte (4.1.4.5; reading clears it)."""
        return self._rd(V.VIRTIO_PCI_CAP_ISR_CFG, 0, 1)

    # ---- device configuration (4.1.4.6, 2.5.1 generation) --------------------------
    def read_config(self, off: int, n: int, retries: int = 100) -> bytes:
        """Device-specific config bytes, read with natural aligned widths and retried
        until config_generation is unchanged across the read (2.5.1 / 4.1.4.3)."""
        if V.VIRTIO_PCI_CAP_DEVICE_CFG not in self.caps:
            raise VirtioPciError("device has no device-specific configuration")
        for _ in range(retries):
            gen = self.common_read(V.VIRTIO_PCI_COMMON_CFGGENERATION, 1)
            out, pos = bytearray(), off
            while pos < off + n:
                w = 4 if pos % 4 == 0 and off + n - pos >= 4 else 2 if pos % 2 == 0 and off + n - pos >= 2 else 1
                out += self._rd(V.VIRTIO_PCI_CAP_DEVICE_CFG, pos, w).to_bytes(w, "little")
                pos += w
            if self.common_read(V.VIRTIO_PCI_COMMON_CFGGENERATION, 1) == gen:
                return bytes(out)
        raise VirtioPciError("config_generation kept changing")

    # ---- PCI power management (PCI PM 1.2, PMCSR) ---------------------------------
    def set_power_state(self, d: int) -> None:
        """Write PowerState (0 = D0, 3 = D3hot) into PMCSR, keeping PME_En and not
        touching PME_Status (RW1C)."""
        pm = self.find_pci_cap(P.PCI_CAP_ID_PM)
        if pm is None:
            raise VirtioPciError("device has no PM capability")
        pmcsr = self.client.cfg_read16(pm + P.PCI_PM_CTRL)
        new = (pmcsr & ~(P.PCI_PM_CTRL_STATE_MASK | P.PCI_PM_CTRL_PME_STATUS)) | (d & 3)
        self.client.cfg_write16(pm + P.PCI_PM_CTRL, new)

    def power_state(self) -> int:
        pm = self.find_pci_cap(P.PCI_CAP_ID_PM)
        if pm is None:
            raise VirtioPciError("device has no PM capability")
        return self.client.cfg_read16(pm + P.PCI_PM_CTRL) & P.PCI_PM_CTRL_STATE_MASK

    def close(self) -> None:
        """Close our eventfds (the client and memory belong to the caller)."""
        for fd in self.eventfds:
            os.close(fd)
        self.eventfds = []
