"""Guest memory table: IOVA -> host address, shared with the C ring fast path.

The vfu layer fills a :class:`DmaTable` from libvfio-user's DMA register/unregister
callbacks; the C code in ``vfio_virtio._virtq`` reads ``c_table`` directly. Every add or
remove bumps :attr:`DmaTable.generation`: host addresses obtained before (chains popped from
a ring) must not be used after it changed (see ``Chain`` in ``vfio_virtio.virtio.queue``).
"""
from __future__ import annotations

import ctypes
import errno
import os

from vfio_virtio import _buildid

# Order and names must match cffi_build/build_virtq.py (SOURCE_NAMES).
VIRTQ_SOURCES = [os.path.join(_buildid.CFFI_BUILD, n) for n in
                 ("build_virtq.py", "csrc/vv_dma.h", "csrc/virtq.h", "csrc/virtq.c")]

try:
    from vfio_virtio import _virtq
except ImportError as e:  # pragma: no cover - depends on the build state
    raise ImportError(f"vfio_virtio._virtq is not built ({e}): run `make setup` "
                      "or `.venv/bin/python cffi_build/build_virtq.py`") from e

ffi = _virtq.ffi
lib = _virtq.lib
_buildid.check_build_id("vfio_virtio._virtq", ffi.string(lib.VV_VIRTQ_BUILD_ID).decode(),
                        VIRTQ_SOURCES)

PROT_READ = 1
PROT_WRITE = 2
MAX_REGIONS = lib.VV_DMA_MAX_REGIONS
_U64 = (1 << 64) - 1


def _efault(what: str) -> OSError:
    return OSError(errno.EFAULT, f"{what}: {os.strerror(errno.EFAULT)}")


class DmaTable:
    """IOVA -> host address regions, at most :data:`MAX_REGIONS`, non-overlapping.

    ``c_table`` is a cdata ``struct vv_dma_table *`` owned by this object; the Python list
    of regions and the C table always hold the same regions in the same order.
    """

    def __init__(self) -> None:
        self.c_table = ffi.new("struct vv_dma_table *")
        self._regions: list[tuple[int, int, int, int]] = []
        self._generation = 0

    @property
    def generation(self) -> int:
        """Bumped on every add/remove/clear (never wraps on the Python side)."""
        return self._generation

    @property
    def regions(self) -> list[tuple[int, int, int, int]]:
        """Copy of the regions as (iova, len, vaddr, prot)."""
        return list(self._regions)

    def _sync(self) -> None:
        t = self.c_table
        for i, (iova, length, vaddr, prot) in enumerate(self._regions):
            r = t.r[i]
            r.iova, r.len, r.vaddr, r.prot = iova, length, vaddr, prot
        t.n = len(self._regions)
        self._generation += 1
        t.generation = self._generation & 0xFFFFFFFF

    def add(self, iova: int, length: int, vaddr: int, prot: int) -> None:
        """Map guest [iova, iova+length) at host ``vaddr`` with ``prot`` (PROT_READ|PROT_WRITE).

        Raises OSError(EINVAL) for a zero length, a range past 2**64 or bad prot bits,
        OSError(EEXIST) if it overlaps a mapped region, OSError(ENOSPC) if the table is full.
        """
        if (length <= 0 or iova < 0 or vaddr <= 0 or iova + length - 1 > _U64
                or vaddr + length - 1 > _U64 or prot & ~(PROT_READ | PROT_WRITE)):
            raise OSError(errno.EINVAL, f"bad DMA region iova={iova:#x} len={length:#x} "
                                        f"vaddr={vaddr:#x} prot={prot}")
        for r_iova, r_len, _, _ in self._regions:
            if iova < r_iova + r_len and r_iova < iova + length:
                raise OSError(errno.EEXIST, f"DMA region {iova:#x}+{length:#x} overlaps "
                                            f"{r_iova:#x}+{r_len:#x}")
        if len(self._regions) >= MAX_REGIONS:
            raise OSError(errno.ENOSPC, f"DMA table full ({MAX_REGIONS} regions)")
        self._regions.append((iova, length, vaddr, prot))
        self._sync()

    def remove(self, iova: int, length: int) -> bool:
        """Unmap the region added with exactly (iova, length). Returns whether it existed."""
        for i, r in enumerate(self._regions):
            if r[0] == iova and r[1] == length:
                del self._regions[i]
                self._sync()
                return True
        return False

    def clear(self) -> None:
        """Unmap everything (lost connection, device reset of the DMA state)."""
        self._regions.clear()
        self._sync()

    def translate(self, iova: int, length: int, prot: int) -> int | None:
        """Host address of [iova, iova+length) if wholly inside one region whose prot
        includes ``prot``; None otherwise. Pure-Python twin of C ``vv_dma_translate``."""
        if length <= 0:
            return None
        for r_iova, r_len, vaddr, r_prot in self._regions:
            if iova < r_iova:
                continue
            off = iova - r_iova
            if off >= r_len or length > r_len - off:
                continue
            if r_prot & prot != prot:
                return None
            return vaddr + off
        return None

    def read(self, iova: int, n: int) -> bytes:
        """Read n bytes of guest memory; OSError(EFAULT) unless mapped readable."""
        if n == 0:
            return b""
        addr = self.translate(iova, n, PROT_READ)
        if addr is None:
            raise _efault(f"DMA read {iova:#x}+{n}")
        return ctypes.string_at(addr, n)

    def write(self, iova: int, data: bytes) -> None:
        """Write data to guest memory; OSError(EFAULT) unless mapped writable."""
        if not data:
            return
        addr = self.translate(iova, len(data), PROT_WRITE)
        if addr is None:
            raise _efault(f"DMA write {iova:#x}+{len(data)}")
        ctypes.memmove(addr, bytes(data), len(data))
