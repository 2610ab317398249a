"""Guest memory for tests and benchmarks: a memfd, mmap'd here, with a bump allocator.

The fd can be handed to a vfio-user server in a DMA map (it mmaps the same pages), or the
mapping can be registered directly in a :class:`vfio_virtio.dma.DmaTable` for tests that
need no socket (:meth:`GuestMemory.register`).
"""
from __future__ import annotations

import ctypes
import mmap
import os


class GuestMemory:
    """``size`` bytes of shared memory that the guest sees at IOVA ``iova``."""

    def __init__(self, size: int, iova: int = 0, name: str = "vv-guestmem") -> None:
        if size <= 0 or size % mmap.PAGESIZE:
            raise ValueError(f"size must be a positive multiple of {mmap.PAGESIZE}")
        self.size = size
        self.iova = iova
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._anchor = ctypes.c_char.from_buffer(self.mm)
        self.addr: int = ctypes.addressof(self._anchor)   # host address of iova
        self._next = 0

    def alloc(self, n: int, align: int = 16) -> int:
        """Reserve n bytes (zeroed at creation) aligned to ``align``; returns the IOVA."""
        if n <= 0 or align <= 0 or align & (align - 1):
            raise ValueError("alloc: n > 0 and a power-of-two alignment required")
        start = (self.iova + self._next + align - 1) & ~(align - 1)
        off = start - self.iova
        if off + n > self.size:
            raise MemoryError(f"guest memory exhausted ({n} bytes at {off:#x} of {self.size:#x})")
        self._next = off + n
        return start

    def _off(self, iova: int, n: int) -> int:
        off = iova - self.iova
        if off < 0 or n < 0 or off + n > self.size:
            raise ValueError(f"{iova:#x}+{n} outside guest memory")
        return off

    def read(self, iova: int, n: int) -> bytes:
        """Bytes at [iova, iova+n)."""
        off = self._off(iova, n)
        return self.mm[off:off + n]

    def write(self, iova: int, data: bytes) -> None:
        """Store data at iova."""
        off = self._off(iova, len(data))
        self.mm[off:off + len(data)] = data

    def host_addr(self, iova: int) -> int:
        """Host address of a guest address inside this memory."""
        return self.addr + self._off(iova, 0)

    def snapshot(self) -> bytes:
        """The whole memory (for differential tests)."""
        return self.mm[:]

    def restore(self, data: bytes) -> None:
        """Overwrite the whole memory with a snapshot of the same size."""
        if len(data) != self.size:
            raise ValueError("snapshot size mismatch")
        self.mm[:] = data

    def register(self, dma, prot: int = 3, offset: int = 0, length: int | None = None) -> None:
        """Add [iova+offset, +length) to a DmaTable directly (no vfio-user involved)."""
        length = self.size - offset if length is None else length
        self._off(self.iova + offset, length)
        dma.add(self.iova + offset, length, self.addr + offset, prot)

    def close(self) -> None:
        """Unmap and close; any DmaTable entry pointing here must be removed first."""
        if self.fd < 0:
            return
        del self._anchor
        self.mm.close()
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "GuestMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
