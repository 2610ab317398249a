"""DmaTable: the IOVA -> host table the C ring reads (docs/INTERFACES.md, guest memory)."""
from __future__ import annotations

import errno
import random

import pytest

from vfio_virtio import _buildid
from vfio_virtio.dma import MAX_REGIONS, PROT_READ, PROT_WRITE, VIRTQ_SOURCES, DmaTable, \
    ffi, lib
from vfio_virtio_kit.guestmem import GuestMemory

U64 = (1 << 64) - 1


def c_translate(t: DmaTable, iova: int, n: int, prot: int) -> int | None:
    p = lib.vv_dma_translate(t.c_table, iova, n, prot)
    return int(ffi.cast("uintptr_t", p)) or None


@pytest.fixture
def mem():
    m = GuestMemory(64 * 1024, iova=0x10000)
    yield m
    m.close()


def test_read_write_through_table(mem):
    t = DmaTable()
    mem.register(t)
    t.write(0x10010, b"guest")
    assert mem.read(0x10010, 5) == b"guest" and t.read(0x10010, 5) == b"guest"
    for bad in (0xFFFF, 0x10000 + 64 * 1024 - 2):       # before, straddling the end
        with pytest.raises(OSError) as ei:
            t.read(bad, 4)
        assert ei.value.errno == errno.EFAULT


def test_permissions_enforced(mem):
    """A device-writable buffer needs PROT_WRITE, a readable one PROT_READ."""
    t = DmaTable()
    t.add(0x10000, 4096, mem.addr, PROT_READ)
    t.add(0x20000, 4096, mem.addr + 4096, PROT_WRITE)
    with pytest.raises(OSError):
        t.write(0x10000, b"x")
    with pytest.raises(OSError):
        t.read(0x20000, 1)
    assert t.translate(0x10000, 1, PROT_READ) == mem.addr
    assert t.translate(0x10000, 1, PROT_READ | PROT_WRITE) is None
    assert c_translate(t, 0x20000, 1, PROT_READ) is None


def test_range_must_lie_in_one_region(mem):
    """Adjacent regions are not merged: a range across both is not translated."""
    t = DmaTable()
    t.add(0x10000, 4096, mem.addr, 3)
    t.add(0x11000, 4096, mem.addr + 4096, 3)
    assert t.translate(0x10FFF, 2, PROT_READ) is None
    assert c_translate(t, 0x10FFF, 2, PROT_READ) is None
    assert t.translate(0x10FFE, 2, PROT_READ) == mem.addr + 0xFFE


def test_no_overflow_at_top_of_address_space():
    t = DmaTable()
    t.add(U64 - 0xFFF, 0x1000, 0x7000_0000_0000, 3)      # never dereferenced
    for iova, n in ((U64 - 0xF, 32), (U64, 2), (U64 - 0xFFF, 1 << 63), (0, 1)):
        assert t.translate(iova, n, 1) is None and c_translate(t, iova, n, 1) is None
    assert t.translate(U64, 1, 1) == c_translate(t, U64, 1, 1) == 0x7000_0000_0FFF
    assert t.translate(U64 - 0xFFF, 0, 1) is None and c_translate(t, U64 - 0xFFF, 0, 1) is None


def test_add_errors_and_generation():
    t = DmaTable()
    g = t.generation
    for args in ((0, 0, 0x1000, 3), (0, 4096, 0x1000, 8), (U64, 2, 0x1000, 3)):
        with pytest.raises(OSError) as ei:
            t.add(*args)
        assert ei.value.errno == errno.EINVAL
    t.add(0x1000, 0x1000, 0x10000, 3)
    with pytest.raises(OSError) as ei:
        t.add(0x1800, 0x1000, 0x20000, 3)
    assert ei.value.errno == errno.EEXIST
    for i in range(1, MAX_REGIONS):
        t.add(0x100000 * i, 0x1000, 0x10000, 3)
    with pytest.raises(OSError) as ei:
        t.add(0x7000_0000, 0x1000, 0x10000, 3)
    assert ei.value.errno == errno.ENOSPC
    assert t.c_table.n == MAX_REGIONS and t.generation == g + MAX_REGIONS
    assert not t.remove(0x1000, 0x800)                    # only exact regions
    assert t.remove(0x1000, 0x1000) and t.generation == g + MAX_REGIONS + 1
    assert t.translate(0x1000, 1, 1) is None and c_translate(t, 0x1000, 1, 1) is None
    t.clear()
    assert t.regions == [] and t.c_table.n == 0 and t.c_table.generation == t.generation


def test_c_and_python_translate_agree():
    """The pure-Python twin of vv_dma_translate gives the same answer on random queries."""
    rnd = random.Random(7)
    t = DmaTable()
    for i in range(8):
        t.add(0x10000 * (2 * i + 1), 0x8000 + 0x1000 * i, 0x7f00_0000_0000 + 0x100000 * i,
              rnd.choice((1, 2, 3)))
    for _ in range(5000):
        iova = rnd.choice((rnd.randrange(0, 0x120000), rnd.randrange(0, 1 << 64)))
        n = rnd.choice((0, 1, 16, 0x1000, 0x9000, rnd.randrange(0, 1 << 64)))
        prot = rnd.choice((1, 2, 3))
        assert t.translate(iova, n, prot) == c_translate(t, iova, n, prot)


def test_stale_extension_refused(tmp_path):
    """A BUILD_ID that differs from the sources on disk makes import fail with advice."""
    import os
    if not all(os.path.exists(p) for p in VIRTQ_SOURCES):
        pytest.skip("installed without cffi_build/: no sources to compare against")
    baked = ffi.string(lib.VV_VIRTQ_BUILD_ID).decode()
    assert baked == _buildid.build_id(VIRTQ_SOURCES)      # the one in use is fresh
    src = tmp_path / "virtq.c"
    src.write_text("int x;\n")
    old = _buildid.build_id([str(src)])
    _buildid.check_build_id("m", old, [str(src)])         # unchanged: accepted
    src.write_text("int y;\n")                            # source edited, not rebuilt
    with pytest.raises(ImportError, match="make setup"):
        _buildid.check_build_id("m", old, [str(src)])
