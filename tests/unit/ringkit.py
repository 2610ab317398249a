"""Shared set-up for the ring unit tests: guest memory registered in a DmaTable directly."""
from __future__ import annotations

from vfio_virtio.dma import PROT_READ, PROT_WRITE, DmaTable
from vfio_virtio_kit.driver_ring import DriverRing
from vfio_virtio_kit.guestmem import GuestMemory
from vfio_virtio.virtio.queue import Virtqueue

MEM_IOVA = 0x100000
MEM_SIZE = 1 << 20
RO_IOVA = 0x400000      # a device-read-only region
WO_IOVA = 0x500000      # a device-write-only region
HOLE_IOVA = 0x300000    # never mapped
SIDE = 0x10000


class Rig:
    """A DriverRing in mapped guest memory plus a Virtqueue attached to it."""

    def __init__(self, impl: str, size: int = 8, event_idx: bool = False,
                 indirect: bool = False, max_size: int = 256) -> None:
        self.mem = GuestMemory(MEM_SIZE, iova=MEM_IOVA)
        self.side = GuestMemory(2 * SIDE)
        self.dma = DmaTable()
        self.mem.register(self.dma)
        self.dma.add(RO_IOVA, SIDE, self.side.addr, PROT_READ)
        self.dma.add(WO_IOVA, SIDE, self.side.addr + SIDE, PROT_WRITE)
        self.dr = DriverRing(self.mem, size, event_idx=event_idx, indirect=indirect)
        self.vq = Virtqueue(0, self.dma, max_size=max_size, impl=impl)
        self.dr.attach(self.vq)
        self.vq.enable()

    def close(self) -> None:
        self.dma.clear()
        self.mem.close()
        self.side.close()
