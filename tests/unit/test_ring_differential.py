"""C ring vs pure-Python ring on identical copies of random, often hostile, guest memory.

Both implementations must pop the same chains (head, error, buffers), write the same bytes
into guest memory (used ring, avail_event), take the same notify decisions and end in the
same state, for random descriptor tables, loops, bad indices, indirect tables, unmapped and
read/write-only buffers, avail idx jumps, and event idx on or off (virtio 1.3 section 2.7).
"""
from __future__ import annotations

import random
from collections import Counter

import pytest

from vfio_virtio.dma import PROT_READ, PROT_WRITE, DmaTable
from vfio_virtio_kit.guestmem import GuestMemory
from vfio_virtio.virtio import ring_spec as R
from vfio_virtio.virtio.queue import Virtqueue

BASE = 0x10000
MEM = 0x10000                      # 64 KiB per copy
RW = (BASE, 0x8000)                # rings + data
RO = (BASE + 0x8000, 0x4000)       # device-readable only
WO = (BASE + 0xC000, 0x2000)       # device-writable only
HOLE = BASE + 0xE000               # unmapped tail
BIG = (1 << 40, 1 << 33)           # write-only, never dereferenced: huge buffer lengths
FLAGS = (0, R.VRING_DESC_F_NEXT, R.VRING_DESC_F_WRITE, R.VRING_DESC_F_INDIRECT)
CASES = 4000


class Side:
    """One implementation with its own copy of guest memory and its own DmaTable."""

    def __init__(self, impl: str) -> None:
        self.mem = GuestMemory(MEM, iova=BASE)
        self.dma = DmaTable()
        self.impl = impl
        self.vq: Virtqueue | None = None

    def map(self, regions) -> None:
        self.dma.clear()
        for (iova, n), prot in regions:
            self.dma.add(iova, n, self.mem.addr + iova - BASE, prot)
        # only translated, never touched: the ring dereferences rings and indirect
        # tables (PROT_READ), never buffers
        self.dma.add(BIG[0], BIG[1], self.mem.addr + BIG[0], PROT_WRITE)


class Gen:
    """Random ring contents for one case."""

    def __init__(self, rnd: random.Random, size: int) -> None:
        self.r = rnd
        self.size = size

    def addr(self) -> int:
        r = self.r
        k = r.random()
        if k < 0.6:
            return r.randrange(BASE + 0x4000, BASE + 0x8000 - 64)
        if k < 0.75:
            return r.randrange(RO[0], RO[0] + RO[1])
        if k < 0.88:
            return r.randrange(WO[0], WO[0] + WO[1])
        if k < 0.93:
            return r.randrange(HOLE, BASE + MEM)
        if k < 0.95:
            return r.randrange(BIG[0], BIG[0] + BIG[1])
        return r.randrange(0, 1 << 64)

    def desc(self, n_entries: int, table_addrs: list[int]) -> bytes:
        r = self.r
        flags = 0
        if r.random() < 0.6:
            flags |= R.VRING_DESC_F_NEXT
        if r.random() < 0.35:
            flags |= R.VRING_DESC_F_WRITE
        if r.random() < 0.03:
            flags |= r.randrange(0, 1 << 16)
        if table_addrs and r.random() < 0.12:
            flags = (flags & ~R.VRING_DESC_F_NEXT) | R.VRING_DESC_F_INDIRECT
            if r.random() < 0.1:
                flags |= R.VRING_DESC_F_NEXT
            addr = r.choice(table_addrs)
            length = r.choice((16 * r.randrange(1, self.size + 2), 0, r.randrange(0, 200)))
        else:
            addr = self.addr()
            length = r.choice((r.randrange(1, 48), r.randrange(1, 48), 0, 0xFFFFFFFF,
                               r.randrange(0, 1 << 32)))
        nxt = r.randrange(0, n_entries) if r.random() < 0.9 else r.randrange(0, 1 << 16)
        return _pack(addr, length, flags, nxt)

    def good_buf(self, writable: bool) -> tuple[int, int]:
        r = self.r
        n = r.randrange(1, 48)
        if writable and r.random() < 0.05:
            return BIG[0] + r.randrange(0, 1 << 32), r.randrange(1 << 30, 1 << 32)
        if r.random() < 0.2:
            area = WO if writable else RO
            return r.randrange(area[0], area[0] + area[1] - n), n
        return r.randrange(BASE + 0x4000, BASE + 0x8000 - n), n

    def chain(self, idxs: list[int]) -> list[tuple[int, bytes]]:
        """A well-formed chain over descriptor slots idxs: readable then writable."""
        n_read = self.r.randrange(0, len(idxs) + 1)
        out = []
        for k, i in enumerate(idxs):
            addr, n = self.good_buf(k >= n_read)
            flags = (R.VRING_DESC_F_WRITE if k >= n_read else 0) | \
                (R.VRING_DESC_F_NEXT if k + 1 < len(idxs) else 0)
            out.append((i, _pack(addr, n, flags, idxs[k + 1] if k + 1 < len(idxs) else 0)))
        return out

    def good_table(self, desc: int, tables: list[int]) -> tuple[list[tuple[int, bytes]], list[int]]:
        """Partition the ring into well-formed chains (some via indirect tables)."""
        r, size = self.r, self.size
        order = list(range(size))
        r.shuffle(order)
        writes, heads = [], []
        while order:
            k = min(len(order), r.randrange(1, 5))
            idxs, order = order[:k], order[k:]
            heads.append(idxs[0])
            if tables and r.random() < 0.3:
                t = r.choice(tables)
                m = r.randrange(1, size + 1)
                for i, d in self.chain(list(range(m))):
                    writes.append((t + 16 * i, d))
                where = t if r.random() < 0.9 else r.choice((HOLE, WO[0], BIG[0]))
                writes.append((desc + 16 * idxs[0],
                               _pack(where, 16 * m, R.VRING_DESC_F_INDIRECT, 0)))
            else:
                writes += [(desc + 16 * i, d) for i, d in self.chain(idxs)]
        return writes, heads


def _pack(addr: int, length: int, flags: int, nxt: int) -> bytes:
    return (addr.to_bytes(8, "little") + length.to_bytes(4, "little")
            + flags.to_bytes(2, "little") + nxt.to_bytes(2, "little"))


def _layout(rnd: random.Random, size: int, event_idx: bool):
    desc = BASE
    avail = (desc + 16 * size + 1) & ~1
    used = (avail + R.avail_ring_bytes(size, True) + 3) & ~3
    k = rnd.random()
    if k < 0.03:
        desc += 8                                  # misaligned
    elif k < 0.05:
        used = RO[0]                               # used ring not writable
    elif k < 0.06:
        avail = HOLE
    elif k < 0.09:
        # used_event (event idx only) would be the first byte past the mapping (2.7.6)
        avail = RW[0] + RW[1] - R.avail_ring_bytes(size, False)
    return desc, avail, used


def _compare_chains(a, b, ma, mb):
    def norm(chains, m):
        return [(h, e, rl, wl, tuple((addr - m.addr, iova, n, w) for addr, iova, n, w in iovs))
                for h, e, rl, wl, iovs in chains]
    assert norm(a, ma) == norm(b, mb)


class Case:
    """One random workload: the queue's configuration and the driver's state across rounds."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.size = rnd.choice((1, 2, 4, 8, 8, 16, 32)) if rnd.random() > 0.02 \
            else rnd.choice((0, 3, 6))
        self.event_idx = rnd.random() < 0.5
        self.indirect = rnd.random() < 0.6
        self.desc, self.avail, self.used = _layout(rnd, self.size, self.event_idx)
        self.regions = [(RW, PROT_READ | PROT_WRITE), (RO, PROT_READ), (WO, PROT_WRITE)]
        self.start = rnd.randrange(0, 1 << 16) if rnd.random() < 0.3 else None
        self.gen = Gen(rnd, max(self.size, 1))
        self.avail_idx = 0


def set_up_queue(case: Case, s: Side, used_idx: int | None) -> None:
    """A fresh enabled queue on ``s`` with the case's configuration (and start index)."""
    s.mem.restore(bytes(MEM))
    s.map(case.regions)
    s.vq = Virtqueue(0, s.dma, max_size=256, impl=s.impl)
    s.vq.size, s.vq.desc_addr = case.size, case.desc
    s.vq.driver_addr, s.vq.device_addr = case.avail, case.used
    s.vq.event_idx, s.vq.indirect = case.event_idx, case.indirect
    s.vq.enable()
    if case.start is not None:              # run near/through the 16-bit wrap
        st = s.vq.get_state()
        st.update(last_avail_idx=case.start, used_idx=case.start, signalled_used=case.start)
        s.vq.set_state(st)
    if case.size:
        s.mem.write(case.used + 2, (s.vq.used_idx if used_idx is None else used_idx)
                    .to_bytes(2, "little"))


def table_writes(case: Case) -> tuple[list[tuple[int, bytes]], list[int]]:
    """Random indirect tables and a descriptor table (good chains, a few corrupted, or pure
    noise): the writes, and the heads of the good chains."""
    rnd, gen, size = case.rnd, case.gen, case.size
    writes = []
    n_tables = rnd.randrange(0, 4) if case.indirect or rnd.random() < 0.2 else 0
    tables = [rnd.randrange(BASE + 0x2000, BASE + 0x3F00) & ~15 for _ in range(n_tables)]
    for t in tables:
        entries = rnd.randrange(1, max(size, 1) + 2)
        writes.append((t, b"".join(gen.desc(entries, tables if rnd.random() < 0.1 else [])
                                   for _ in range(entries))))
    heads = []
    if size and rnd.random() < 0.7:
        w, heads = gen.good_table(case.desc, tables)
        writes += w
        for _ in range(rnd.choice((0, 0, 1, 2))):     # corrupt a few descriptors
            i = rnd.randrange(0, size)
            writes.append((case.desc + 16 * i, gen.desc(size, tables)))
    elif size and rnd.random() < 0.95:
        writes.append((case.desc, b"".join(gen.desc(size, tables) for _ in range(size))))
    if rnd.random() < 0.3:
        writes.append((gen.addr() & ~15, rnd.randbytes(rnd.randrange(1, 64))))
    return writes, heads


def avail_writes(case: Case, heads: list[int], last_avail_idx: int,
                 used_idx: int) -> list[tuple[int, bytes]]:
    """Offer heads on the avail ring (usually within the room left, sometimes a jump past
    it), then avail idx, avail flags and used_event."""
    rnd, size, avail = case.rnd, case.size, case.avail
    writes = []
    room = max(size, 1) - ((case.avail_idx - last_avail_idx) & 0xFFFF)
    if rnd.random() < 0.97:
        jump = rnd.randrange(0, max(room, 0) + 1)
    else:
        jump = rnd.choice((room + 1, rnd.randrange(0, 1 << 16)))
    for _ in range(jump if jump <= 64 else 0):
        if heads and rnd.random() < 0.8:
            head = rnd.choice(heads)
        elif rnd.random() < 0.99:
            head = rnd.randrange(0, max(size, 1))
        else:
            head = rnd.randrange(0, 1 << 16)
        if size:
            writes.append((avail + 4 + 2 * (case.avail_idx % size), head.to_bytes(2, "little")))
        case.avail_idx = (case.avail_idx + 1) & 0xFFFF
    if jump > 64:
        case.avail_idx = (case.avail_idx + jump) & 0xFFFF
    writes.append((avail + 2, case.avail_idx.to_bytes(2, "little")))
    writes.append((avail, rnd.choice((0, 0, 1, 0xFFFF)).to_bytes(2, "little")))
    if size:
        ev = rnd.choice((rnd.randrange(0, 1 << 16), (used_idx + rnd.randrange(0, 3)) & 0xFFFF))
        writes.append((avail + 4 + 2 * size, ev.to_bytes(2, "little")))
    return writes


def pop_push_compare(case: Case, c: Side, p: Side, stats: Counter) -> int:
    """Pop (in batches with tight iovec space), push, decide on notifying, on both sides;
    everything must agree. Returns how many times a notify was due."""
    rnd, size = case.rnd, max(case.size, 1)
    notified = 0
    max_iovs = size + rnd.randrange(0, 3 * size)
    for _ in range(rnd.randrange(1, 4)):
        mc = rnd.randrange(0, 20)
        rc_ = c.vq._r.pop_batch(mc, max_iovs)
        rp = p.vq._r.pop_batch(mc, max_iovs)
        _compare_chains(rc_, rp, c.mem, p.mem)
        stats["chains"] += len(rc_)
        stats["good"] += sum(1 for ch in rc_ if not ch[1])
        stats.update(R.ERR_NAMES[ch[1]] for ch in rc_ if ch[1])
        items = [(ch[0], rnd.randrange(0, 1 << 32)) for ch in rc_ if rnd.random() < 0.8]
        if rnd.random() < 0.05:
            items.append((rnd.randrange(0, 1 << 16), 0))
        ids, lens = [i for i, _ in items], [n for _, n in items]
        assert c.vq._r.push_batch(ids, lens) == p.vq._r.push_batch(ids, lens)
        notify = c.vq.needs_notify()
        assert notify == p.vq.needs_notify()
        notified += notify
        assert c.vq.get_state() == p.vq.get_state()
        assert c.mem.snapshot() == p.mem.snapshot()
    return notified


def run_case(seed: int, c: Side, p: Side) -> dict:
    """Three rounds of identical random driver writes into both memories, each followed by
    pop/push/notify on both rings; returns what the workload reached (for coverage)."""
    case = Case(random.Random(seed))
    set_up_queue(case, c, None)
    set_up_queue(case, p, c.vq.used_idx)
    case.avail_idx = c.vq.last_avail_idx
    stats: Counter = Counter()
    notified = 0
    for _round in range(3):
        writes, heads = table_writes(case)
        writes += avail_writes(case, heads, c.vq.last_avail_idx, c.vq.used_idx)
        if case.rnd.random() < 0.05:
            case.regions = [(RW, PROT_READ)] + case.regions[1:]      # rings become read-only
        for s in (c, p):
            for iova, data in writes:
                if BASE <= iova and iova + len(data) <= BASE + MEM:
                    s.mem.write(iova, data)
            s.map(case.regions)
        notified += pop_push_compare(case, c, p, stats)
    if c.vq.broken:
        stats[R.BROKEN_NAMES[c.vq.broken]] += 1
    stats["notified"] += notified
    stats["event_idx" if case.event_idx else "no_event_idx"] += 1
    return stats


@pytest.fixture(scope="module")
def sides():
    c, p = Side("c"), Side("py")
    yield c, p
    for s in (c, p):
        s.dma.clear()
        s.mem.close()


def test_c_and_python_rings_agree(sides):
    """Identical chains, used ring, avail_event, notify decisions and state, C vs Python,
    over CASES random workloads (fixed seeds). Also checks the workload reached every
    chain error and every broken reason, so the comparison covers them all."""
    c, p = sides
    total: Counter = Counter()
    for seed in range(CASES):
        try:
            total.update(run_case(seed, c, p))
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {e}") from e
    missing = [n for n in list(R.ERR_NAMES.values()) + list(R.BROKEN_NAMES.values())
               if total[n] == 0]
    assert not missing, (missing, total)
    assert total["good"] > 1000 and total["notified"] > 100, total
    assert total["event_idx"] > 1000 and total["no_event_idx"] > 1000, total
