"""The driver side of a split virtqueue (virtio 1.3 section 2.7) in a GuestMemory.

For tests and benchmarks: adds well-formed chains (direct or indirect) the way a driver
would (2.7.13), and also raw or malformed descriptors, avail idx jumps, flags and event idx
fields, so device-side code can be driven through every path without a guest.
"""
from __future__ import annotations

import struct
from collections import deque

from vfio_virtio_kit.guestmem import GuestMemory
from vfio_virtio.virtio import ring_spec as R

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_ELEM = struct.Struct("<II")


class RingFull(Exception):
    """No free descriptors left for the chain."""


class DriverRing:
    """Split ring of ``size`` entries allocated in ``mem``; ``desc_addr``, ``avail_addr``
    and ``used_addr`` are the IOVAs to give the device (event idx fields always allocated).
    Buffers come from a circular arena of ``arena`` bytes: data of a chain still in flight
    is overwritten after the arena wraps."""

    def __init__(self, mem: GuestMemory, size: int, event_idx: bool = False,
                 indirect: bool = False, arena: int = 64 * 1024) -> None:
        self.mem = mem
        self.size = size
        self.event_idx = event_idx
        self.indirect = indirect
        self.desc_addr = mem.alloc(R.DESC_SIZE * size, R.DESC_ALIGN)
        self.avail_addr = mem.alloc(R.avail_ring_bytes(size, True), R.AVAIL_ALIGN)
        self.used_addr = mem.alloc(R.used_ring_bytes(size, True), R.USED_ALIGN)
        self._arena = mem.alloc(arena, 16)
        self._arena_size = arena
        self._arena_pos = 0
        self._free: deque[int] = deque(range(size))
        self._chains: dict[int, tuple[list[int], list[tuple[int, int]]]] = {}
        self.avail_idx = 0          # driver's shadow of avail->idx
        self.last_used = 0          # next used entry to read
        self._kick_old = 0          # avail idx at the last kick decision

    # -- raw access ---------------------------------------------------------------
    def _u16(self, iova: int) -> int:
        return _U16.unpack(self.mem.read(iova, 2))[0]

    def _put_u16(self, iova: int, v: int) -> None:
        self.mem.write(iova, _U16.pack(v & 0xFFFF))

    def buf(self, n: int, data: bytes = b"") -> int:
        """Carve n bytes from the arena (16-aligned), optionally filled; returns the IOVA."""
        n16 = (max(n, 1) + 15) & ~15
        if n16 > self._arena_size:
            raise ValueError(f"buffer of {n} bytes larger than the arena")
        if self._arena_pos + n16 > self._arena_size:
            self._arena_pos = 0
        iova = self._arena + self._arena_pos
        self._arena_pos += n16
        if data:
            self.mem.write(iova, data[:n])
        return iova

    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, next: int = 0,
                   table: int | None = None) -> None:
        """Write descriptor i of the ring's table (or of an indirect ``table`` IOVA)."""
        base = self.desc_addr if table is None else table
        self.mem.write(base + R.DESC_SIZE * i, _DESC.pack(addr, length, flags, next))

    def write_indirect(self, entries: list[tuple[int, int, int, int]]) -> tuple[int, int]:
        """Put an indirect table of (addr, len, flags, next) in the arena; (iova, len)."""
        iova = self.buf(R.DESC_SIZE * len(entries))
        for i, e in enumerate(entries):
            self.write_desc(i, *e, table=iova)
        return iova, R.DESC_SIZE * len(entries)

    def put_avail(self, head: int) -> None:
        """Place head in the next available ring slot; visible after :meth:`publish`."""
        self._put_u16(self.avail_addr + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF

    def publish(self) -> None:
        """Write avail->idx (2.7.13.3: after the ring entries)."""
        self._put_u16(self.avail_addr + 2, self.avail_idx)

    def set_avail_idx(self, v: int) -> None:
        """Write any avail->idx (e.g. an illegal jump) and adopt it as the shadow."""
        self.avail_idx = v & 0xFFFF
        self.publish()

    def start_at(self, idx: int) -> None:
        """Pretend both indices already ran up to idx (wraparound tests): sets avail->idx
        and used->idx; the device must be given the same last_avail_idx/used_idx."""
        self.set_avail_idx(idx)
        self._put_u16(self.used_addr + 2, idx)
        self.last_used = self._kick_old = idx & 0xFFFF

    def add_raw(self, descs: dict[int, tuple[int, int, int, int]], head: int,
                publish: bool = True) -> int:
        """Write descriptors {index: (addr, len, flags, next)} as given, offer ``head``."""
        for i, d in descs.items():
            self.write_desc(i, *d)
        self.put_avail(head)
        if publish:
            self.publish()
        return head

    # -- well-formed chains (2.7.13) -----------------------------------------------
    def add(self, out: list[bytes] = (), in_lens: list[int] = (), indirect: bool = False,
            publish: bool = True) -> int:
        """Offer a chain: device-readable buffers holding ``out``, then device-writable
        buffers of ``in_lens`` bytes. Indirect puts them in one indirect table (needs
        VIRTIO_F_INDIRECT_DESC). Returns the head. Raises RingFull."""
        bufs = [(self.buf(len(b), b), len(b), 0) for b in out]
        bufs += [(self.buf(n), n, R.VRING_DESC_F_WRITE) for n in in_lens]
        if not bufs:
            raise ValueError("a chain needs at least one buffer")
        need = 1 if indirect else len(bufs)
        if len(self._free) < need:
            raise RingFull(f"{len(self._free)} free descriptors, {need} needed")
        idxs = [self._free.popleft() for _ in range(need)]
        if indirect:
            entries = [(a, n, f | (R.VRING_DESC_F_NEXT if k + 1 < len(bufs) else 0), k + 1)
                       for k, (a, n, f) in enumerate(bufs)]
            t, tlen = self.write_indirect(entries)
            self.write_desc(idxs[0], t, tlen, R.VRING_DESC_F_INDIRECT, 0)
        else:
            for k, (a, n, f) in enumerate(bufs):
                last = k + 1 == len(bufs)
                self.write_desc(idxs[k], a, n, f | (0 if last else R.VRING_DESC_F_NEXT),
                                0 if last else idxs[k + 1])
        self._chains[idxs[0]] = (idxs, [(a, n) for a, n, f in bufs if f])
        self.put_avail(idxs[0])
        if publish:
            self.publish()
        return idxs[0]

    @property
    def free_count(self) -> int:
        return len(self._free)

    # -- used ring and notification fields ----------------------------------------
    @property
    def used_idx(self) -> int:
        """The device's used->idx."""
        return self._u16(self.used_addr + 2)

    @property
    def used_flags(self) -> int:
        return self._u16(self.used_addr)

    def used(self) -> list[tuple[int, int]]:
        """New used elements (id, len) since the last call; frees their descriptors."""
        out = []
        end = self.used_idx
        while self.last_used != end:
            slot = self.used_addr + 4 + 8 * (self.last_used % self.size)
            out.append(_ELEM.unpack(self.mem.read(slot, 8)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        for head, _ in out:
            chain = self._chains.pop(head, None)
            if chain:
                self._free.extend(chain[0])
        return out

    def in_buffers(self, head: int) -> list[tuple[int, int]]:
        """(iova, len) of the device-writable buffers of a chain added by :meth:`add`."""
        return list(self._chains[head][1])

    def written(self, head: int, n: int) -> bytes:
        """First n bytes of the device-writable buffers of a chain added by :meth:`add`
        (call before :meth:`used` releases it)."""
        parts = []
        for a, ln in self._chains[head][1]:
            parts.append(self.mem.read(a, min(ln, n)))
            n -= min(ln, n)
        return b"".join(parts)

    @property
    def avail_flags(self) -> int:
        return self._u16(self.avail_addr)

    @avail_flags.setter
    def avail_flags(self, v: int) -> None:
        self._put_u16(self.avail_addr, v)

    def suppress_interrupts(self, on: bool = True) -> None:
        """Set/clear VRING_AVAIL_F_NO_INTERRUPT (2.7.7; ignored by devices with event idx)."""
        self.avail_flags = R.VRING_AVAIL_F_NO_INTERRUPT if on else 0

    @property
    def used_event(self) -> int:
        """avail->used_event (2.7.7, event idx): interrupt me when used idx passes this."""
        return self._u16(self.avail_addr + 4 + 2 * self.size)

    @used_event.setter
    def used_event(self, v: int) -> None:
        self._put_u16(self.avail_addr + 4 + 2 * self.size, v)

    @property
    def avail_event(self) -> int:
        """used->avail_event (2.7.10), written by the device."""
        return self._u16(self.used_addr + 4 + 8 * self.size)

    def kick_needed(self) -> bool:
        """Driver's notify decision for what was published since the last call (2.7.10
        with event idx; else VRING_USED_F_NO_NOTIFY)."""
        old, new = self._kick_old, self.avail_idx
        self._kick_old = new
        if self.event_idx:
            return R.vring_need_event(self.avail_event, new, old)
        return not self.used_flags & R.VRING_USED_F_NO_NOTIFY

    def attach(self, vq) -> None:
        """Give a device-side Virtqueue this ring's addresses, size and features."""
        vq.size = self.size
        vq.desc_addr, vq.driver_addr, vq.device_addr = self.desc_addr, self.avail_addr, self.used_addr
        vq.event_idx, vq.indirect = self.event_idx, self.indirect
