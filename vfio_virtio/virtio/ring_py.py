"""Pure-Python split ring, device side: the twin of cffi_build/csrc/virtq.c.

Same state, same checks in the same order, same results; the differential test
(tests/unit/test_ring_differential.py) holds the two together. Any change here must be made
in virtq.c too. Guest memory is reached through host addresses from the DmaTable, with
ctypes. Python offers no acquire/release loads: this twin relies on the ordering of CPython's
own memory accesses on x86 (TSO) and is meant as the reference and the fallback, not as the
fast path.
"""
from __future__ import annotations

import ctypes
import errno
import struct

from vfio_virtio.dma import PROT_READ, PROT_WRITE, DmaTable
from vfio_virtio.virtio import ring_spec as R

_DESC = struct.Struct("<QIHH")
_ELEM = struct.Struct("<II")
_U16 = struct.Struct("<H")

# (head, error, readable_len, writable_len, iovs); iov = (host_addr, iova, len, writable 0/1)
RawChain = tuple[int, int, int, int, tuple[tuple[int, int, int, int], ...]]


def _u16(addr: int) -> int:
    return _U16.unpack(ctypes.string_at(addr, 2))[0]


def _put_u16(addr: int, v: int) -> None:
    ctypes.memmove(addr, _U16.pack(v & 0xFFFF), 2)


class _NoSpace(Exception):
    """The chain's buffers do not fit in the iovs left in this batch."""


class _Walk:
    """A chain walk in progress (struct walk in virtq.c): the table it reads, where it is,
    how many more descriptors it may read (TTL), and what it has gathered."""

    __slots__ = ("table", "tsize", "idx", "ttl", "iovs", "rlen", "wlen", "total",
                 "in_indirect", "seen_write")

    def __init__(self, table: int, head: int, size: int) -> None:
        self.table, self.tsize, self.idx, self.ttl = table, size, head, size
        self.iovs: list[tuple[int, int, int, int]] = []
        self.rlen = self.wlen = self.total = 0
        self.in_indirect = self.seen_write = False


class PyRing:
    """Device-side split ring state plus pop/push/notify, in Python."""

    def __init__(self, dma: DmaTable) -> None:
        self.dma = dma
        self.desc_addr = self.driver_addr = self.device_addr = 0
        self.size = 0
        self.last_avail_idx = self.used_idx = self.signalled_used = 0
        self.signalled_used_valid = False
        self.event_idx = self.indirect = self.enabled = False
        self.broken = 0

    def check(self) -> int:
        """0, or VQ_BROKEN_CONFIG for a bad size or a misaligned ring (2.7)."""
        s = self.size
        if s <= 0 or s > R.VQ_MAX_SIZE or s & (s - 1):
            return R.VQ_BROKEN_CONFIG
        if self.desc_addr & 15 or self.driver_addr & 1 or self.device_addr & 3:
            return R.VQ_BROKEN_CONFIG
        return 0

    def _map_rings(self) -> tuple[int, int, int, int]:
        """(rc, desc, avail, used) host addresses; rc is 0 or a VQ_BROKEN_* code."""
        rc = self.check()
        if rc:
            return rc, 0, 0, 0
        t = self.dma.translate
        desc = t(self.desc_addr, 16 * self.size, PROT_READ)
        avail = t(self.driver_addr, R.avail_ring_bytes(self.size, self.event_idx), PROT_READ)
        used = t(self.device_addr, R.used_ring_bytes(self.size, self.event_idx), PROT_WRITE)
        if not desc or not avail or not used:
            return R.VQ_BROKEN_RING_UNMAPPED, 0, 0, 0
        return 0, desc, avail, used

    def _walk(self, desc: int, head: int, cap: int) -> RawChain:
        """Walk the chain at head (2.7.5, 2.7.5.3); raises _NoSpace if over cap iovs."""
        w = _Walk(desc, head, self.size)
        while True:
            if w.ttl == 0:
                err = R.VQ_ERR_CHAIN_LEN
                break
            w.ttl -= 1
            addr, length, flags, nxt = _DESC.unpack(ctypes.string_at(w.table + 16 * w.idx, 16))
            if flags & R.VRING_DESC_F_INDIRECT:
                err = self._enter_indirect(w, addr, length, flags)
                if err:
                    break
                continue
            err = self._add_buffer(w, addr, length, flags, cap)
            if err or not flags & R.VRING_DESC_F_NEXT:
                break
            w.idx = nxt
            if w.idx >= w.tsize:
                err = R.VQ_ERR_DESC_INDEX
                break
        if err:
            return (head, err, 0, 0, ())
        return (head, 0, w.rlen, w.wlen, tuple(w.iovs))

    def _enter_indirect(self, w: "_Walk", addr: int, length: int, flags: int) -> int:
        """Switch ``w`` to the indirect table at ``addr`` (2.7.5.3.1: needs the feature, one
        table per chain, never with NEXT). Returns 0 or a VQ_ERR_* code."""
        if not self.indirect:
            return R.VQ_ERR_INDIRECT_FEATURE
        if w.in_indirect:
            return R.VQ_ERR_NESTED_INDIRECT
        if flags & R.VRING_DESC_F_NEXT:
            return R.VQ_ERR_INDIRECT_NEXT
        if length == 0 or length & 15 or length // 16 > self.size:
            return R.VQ_ERR_INDIRECT_LEN
        t = self.dma.translate(addr, length, PROT_READ)
        if not t:
            return R.VQ_ERR_INDIRECT_UNMAPPED
        w.table, w.in_indirect, w.tsize, w.idx = t, True, length // 16, 0
        w.ttl = w.tsize
        return 0

    def _add_buffer(self, w: "_Walk", addr: int, length: int, flags: int, cap: int) -> int:
        """Append one buffer to ``w``, translated with the permission it needs (2.7.4.2:
        writable buffers come last). Returns 0 or a VQ_ERR_* code; _NoSpace past ``cap``."""
        if length == 0:
            return R.VQ_ERR_ZERO_LEN
        writable = 1 if flags & R.VRING_DESC_F_WRITE else 0
        if not writable and w.seen_write:
            return R.VQ_ERR_ORDER
        host = self.dma.translate(addr, length, PROT_WRITE if writable else PROT_READ)
        if not host:
            return R.VQ_ERR_UNMAPPED
        w.total += length
        if w.total > 0xFFFFFFFF:
            return R.VQ_ERR_LEN_OVERFLOW
        if len(w.iovs) >= self.size:
            return R.VQ_ERR_CHAIN_LEN
        if len(w.iovs) >= cap:
            raise _NoSpace()
        w.iovs.append((host, addr, length, writable))
        if writable:
            w.seen_write = True
            w.wlen += length
        else:
            w.rlen += length
        return 0

    def pop_batch(self, max_chains: int, max_iovs: int) -> list[RawChain]:
        """Twin of vv_pop_batch. Raises ValueError where C returns -EINVAL."""
        out: list[RawChain] = []
        if not self.enabled or self.broken or max_chains == 0:
            return out
        rc, desc, avail, used = self._map_rings()
        if rc:
            self.broken = rc
            return out
        if max_iovs < self.size:
            raise ValueError(f"max_iovs {max_iovs} < queue size {self.size}")
        mask = self.size - 1
        avail_event = used + 4 + 8 * self.size
        used_iovs = 0
        while True:
            avail_idx = _u16(avail + 2)
            if (avail_idx - self.last_avail_idx) & 0xFFFF > self.size:
                self.broken = R.VQ_BROKEN_AVAIL_IDX
                return out
            while len(out) < max_chains and self.last_avail_idx != avail_idx:
                head = _u16(avail + 4 + 2 * (self.last_avail_idx & mask))
                if head >= self.size:
                    self.broken = R.VQ_BROKEN_HEAD
                    return out
                try:
                    chain = self._walk(desc, head, max_iovs - used_iovs)
                except _NoSpace:
                    return out
                used_iovs += len(chain[4])
                out.append(chain)
                self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
            if self.event_idx:
                _put_u16(avail_event, self.last_avail_idx)   # 2.7.10
            if len(out) >= max_chains:
                return out
            if _u16(avail + 2) == self.last_avail_idx:
                return out

    def chain_at(self, head: int, max_iovs: int) -> RawChain:
        """Twin of vv_chain_at: ValueError for -EINVAL, OSError(EFAULT) for -EFAULT."""
        if self.check() or not 0 <= head < self.size or max_iovs < self.size:
            raise ValueError(f"chain_at({head}): bad head or queue config")
        desc = self.dma.translate(self.desc_addr, 16 * self.size, PROT_READ)
        if not desc:
            raise OSError(errno.EFAULT, "descriptor table not mapped")
        return self._walk(desc, head, max_iovs)

    def push_batch(self, ids: list[int], lens: list[int]) -> int:
        """Twin of vv_push_batch: 0, -EINVAL, -EIO or -EFAULT."""
        if not self.enabled or self.broken:
            return -errno.EIO
        if any(i >= self.size for i in ids):
            return -errno.EINVAL
        rc, _, _, used = self._map_rings()
        if rc:
            self.broken = rc
            return -errno.EFAULT
        mask = self.size - 1
        idx = self.used_idx
        for i, n in zip(ids, lens):
            ctypes.memmove(used + 4 + 8 * (idx & mask), _ELEM.pack(i, n), 8)
            idx = (idx + 1) & 0xFFFF
        _put_u16(used + 2, idx)   # 2.7.8.2: after the entries
        self.used_idx = idx
        return 0

    def needs_notify(self) -> bool:
        """Twin of vv_needs_notify (2.7.7.2, 2.7.10)."""
        if not self.enabled or self.broken:
            return False
        rc, _, avail, _ = self._map_rings()
        if rc:
            self.broken = rc
            return False
        old, now, valid = self.signalled_used, self.used_idx, self.signalled_used_valid
        if valid and old == now:
            return False
        self.signalled_used, self.signalled_used_valid = now, True
        if self.event_idx:
            ev = _u16(avail + 4 + 2 * self.size)
            return not valid or R.vring_need_event(ev, now, old)
        return not _u16(avail) & R.VRING_AVAIL_F_NO_INTERRUPT
