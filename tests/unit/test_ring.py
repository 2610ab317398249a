"""Split virtqueue, device side (virtio 1.3 section 2.7), through both implementations."""
from __future__ import annotations

import errno

import pytest

from tests.unit.ringkit import HOLE_IOVA, RO_IOVA, WO_IOVA, Rig
from vfio_virtio.dma import lib
from vfio_virtio.virtio import ring_spec as R
from vfio_virtio.virtio.queue import Virtqueue

NEXT, WRITE, INDIRECT = R.VRING_DESC_F_NEXT, R.VRING_DESC_F_WRITE, R.VRING_DESC_F_INDIRECT


@pytest.fixture(params=["c", "py"])
def impl(request):
    return request.param


@pytest.fixture
def rig_factory(impl):
    rigs = []

    def make(**kw):
        rigs.append(Rig(impl, **kw))
        return rigs[-1]
    yield make
    for r in rigs:
        r.close()


def test_constants_match_c_header():
    """ring_spec.py mirrors virtq.h: the two implementations must speak the same codes."""
    for name in dir(R):
        if name.startswith(("VQ_ERR_", "VQ_BROKEN_", "VRING_")) or name == "VQ_MAX_SIZE":
            assert getattr(lib, name) == getattr(R, name), name


def test_round_trip_data_and_used_len(rig_factory):
    """2.7.13 / 2.7.8: device reads the driver's out data, writes in data, reports len."""
    r = rig_factory()
    h1 = r.dr.add([b"hello", b" world"], [4])
    h2 = r.dr.add([b"x"], [2, 3])
    chains = r.vq.pop_batch()
    assert [(c.head, c.error, c.readable_len, c.writable_len) for c in chains] == \
        [(h1, 0, 11, 4), (h2, 0, 1, 5)]
    assert chains[0].read() == b"hello world" and chains[0].read(7) == b"hello w"
    assert chains[1].write(b"abcdefg") == 5          # short: only 5 writable bytes
    assert chains[1].write(b"Z", offset=4) == 1
    assert r.dr.written(h2, 5) == b"abcdZ"
    assert r.vq.push_batch([(h1, 0), (h2, 5)])
    assert r.dr.used() == [(h1, 0), (h2, 5)]
    assert r.vq.pop_batch() == []


def test_wraparound_at_65535(rig_factory, impl):
    """2.7.6/2.7.8: idx fields are free-running 16-bit counters; ring slot = idx mod size."""
    r = rig_factory(size=4)
    st = r.vq.get_state()
    st.update(last_avail_idx=0xFFFA, used_idx=0xFFFA, signalled_used=0xFFFA)
    r.vq.set_state(st)
    r.dr.start_at(0xFFFA)
    seen = []
    for rnd in range(6):
        heads = [r.dr.add([bytes([rnd, k])], [1]) for k in range(2)]
        chains = r.vq.pop_batch()
        assert [c.head for c in chains] == heads
        assert [c.read() for c in chains] == [bytes([rnd, k]) for k in range(2)]
        r.vq.push_batch([(c.head, 1) for c in chains])
        assert r.dr.used() == [(h, 1) for h in heads]
        seen.append(r.vq.last_avail_idx)
    assert seen == [0xFFFC, 0xFFFE, 0, 2, 4, 6]
    assert r.dr.used_idx == 6 and not r.vq.broken


def test_batch_limit_and_iov_space(rig_factory):
    """One call pops at most max_chains; a chain that does not fit in the iovec space left
    is not consumed and comes first in the next call."""
    r = rig_factory(size=8, indirect=True)
    heads = [r.dr.add([b"a"], [1]) for _ in range(4)]
    assert [c.head for c in r.vq.pop_batch(2)] == heads[:2]
    backend = r.vq._r
    assert [c[0] for c in backend.pop_batch(8, 8)] == heads[2:]     # 4 iovs of 8
    r.vq.push_batch([(h, 0) for h in heads])
    r.dr.used()
    big = [r.dr.add([b"a"] * 5, [], indirect=True), r.dr.add([b"b"] * 4, [], indirect=True)]
    assert [c[0] for c in backend.pop_batch(8, 8)] == big[:1]     # 5 + 4 > 8 iovs
    assert [c[0] for c in backend.pop_batch(8, 8)] == big[1:]
    assert backend.pop_batch(8, 8) == []


def test_event_idx_avail_event_and_used_event(rig_factory):
    """2.7.10: device publishes avail_event = last_avail_idx; interrupts only when used idx
    passes the driver's used_event; the first decision after enable always notifies."""
    r = rig_factory(event_idx=True)
    for _ in range(3):
        r.dr.add([b"q"], [1])
    chains = r.vq.pop_batch()
    assert r.dr.avail_event == 3
    r.dr.used_event = 1                     # "interrupt me when entry 1 is used"
    r.vq.push(chains[0].head, 1)
    assert r.vq.needs_notify()              # first decision: signalled_used not valid yet
    r.vq.push(chains[1].head, 1)            # used idx 1 -> 2: passes used_event 1
    assert r.vq.needs_notify()
    r.vq.push(chains[2].head, 1)            # 2 -> 3: used_event still 1: suppressed
    assert not r.vq.needs_notify()
    assert not r.vq.needs_notify()          # nothing pushed since
    assert len(r.dr.used()) == 3
    r.dr.used_event = 3
    r.dr.add([b"q"], [1])
    r.vq.push(r.vq.pop_batch()[0].head, 1)  # 3 -> 4 passes 3
    assert r.vq.needs_notify()
    r.dr.used()
    r.dr.avail_flags = R.VRING_AVAIL_F_NO_INTERRUPT   # ignored with event idx (2.7.7)
    r.dr.used_event = 4
    r.dr.add([b"q"], [1])
    r.vq.push(r.vq.pop_batch()[0].head, 1)
    assert r.vq.needs_notify()


def test_driver_kick_suppression_via_avail_event(rig_factory):
    """2.7.10: the driver kicks only when its new avail idx passes avail_event."""
    r = rig_factory(event_idx=True)
    r.dr.add([b"a"], [1])
    assert r.dr.kick_needed()               # avail_event 0, avail 0 -> 1
    r.dr.add([b"a"], [1])
    assert not r.dr.kick_needed()           # device has not caught up: no new kick
    r.vq.pop_batch()
    r.dr.add([b"a"], [1])
    assert r.dr.kick_needed()


def test_no_interrupt_flag_without_event_idx(rig_factory):
    """2.7.7.2: without event idx, VRING_AVAIL_F_NO_INTERRUPT suppresses interrupts."""
    r = rig_factory()
    r.dr.suppress_interrupts(True)
    for _ in range(2):
        r.dr.add([b"a"], [1])
    c = r.vq.pop_batch()
    r.vq.push(c[0].head, 0)
    assert not r.vq.needs_notify()
    r.dr.suppress_interrupts(False)
    r.vq.push(c[1].head, 0)
    assert r.vq.needs_notify()
    assert not r.vq.needs_notify()          # nothing new to signal


def test_indirect_chain(rig_factory):
    """2.7.5.3: an indirect table carries the whole chain; write flag on the pointer ignored."""
    r = rig_factory(indirect=True)
    h = r.dr.add([b"ind", b"irect"], [3, 4], indirect=True)
    [c] = r.vq.pop_batch()
    assert (c.head, c.error, c.readable_len, c.writable_len) == (h, 0, 8, 7)
    assert c.read() == b"indirect"
    assert c.write(b"0123456") == 7 and r.dr.written(h, 7) == b"0123456"
    # a direct descriptor followed by an indirect one (last, no NEXT) is a valid chain
    buf = r.dr.buf(2, b"hi")
    t, tlen = r.dr.write_indirect([(r.dr.buf(3), 3, WRITE, 0)])
    r.dr.add_raw({5: (buf, 2, NEXT, 6), 6: (t, tlen, INDIRECT | WRITE, 0)}, head=5)
    [c] = r.vq.pop_batch()
    assert (c.error, c.read(), c.writable_len) == (0, b"hi", 3)


def _pop_one_bad(r, descs, head=0):
    """Offer a malformed chain then a good one; the bad one must not stop the batch."""
    r.dr.add_raw(descs, head=head)
    good = r.dr.buf(1, b"g")
    r.dr.add_raw({7: (good, 1, 0, 0)}, head=7)
    chains = r.vq.pop_batch()
    assert [c.head for c in chains] == [head, 7]
    assert chains[1].error == 0 and chains[1].read() == b"g"
    bad = chains[0]
    assert (bad.iovs, bad.readable_len, bad.writable_len) == ((), 0, 0)
    # the bad chain is still completable (len 0) and the queue keeps working
    assert r.vq.push_batch([(head, 0), (7, 0)]) and not r.vq.broken
    assert r.dr.used() == [(head, 0), (7, 0)]
    return bad.error


def test_malformed_direct_chains(rig_factory):
    """2.7.5 / 2.7.4.2 / 2.7.5.3.1: every bad chain class gives its error code."""
    r = rig_factory(size=8)
    b = r.dr.buf(16)
    E = R
    assert _pop_one_bad(r, {0: (b, 4, NEXT, 8)}) == E.VQ_ERR_DESC_INDEX          # next >= size
    assert _pop_one_bad(r, {0: (b, 4, NEXT, 1), 1: (b, 4, NEXT, 0)}) == E.VQ_ERR_CHAIN_LEN
    assert _pop_one_bad(r, {0: (b, 4, NEXT, 0)}) == E.VQ_ERR_CHAIN_LEN          # self loop
    assert _pop_one_bad(r, {0: (b, 4, WRITE | NEXT, 1), 1: (b, 4, 0, 0)}) == E.VQ_ERR_ORDER
    assert _pop_one_bad(r, {0: (HOLE_IOVA, 4, 0, 0)}) == E.VQ_ERR_UNMAPPED
    assert _pop_one_bad(r, {0: (RO_IOVA, 4, WRITE, 0)}) == E.VQ_ERR_UNMAPPED    # needs PROT_WRITE
    assert _pop_one_bad(r, {0: (WO_IOVA, 4, 0, 0)}) == E.VQ_ERR_UNMAPPED        # needs PROT_READ
    assert _pop_one_bad(r, {0: (RO_IOVA + 0xFFF0, 32, 0, 0)}) == E.VQ_ERR_UNMAPPED  # straddles
    assert _pop_one_bad(r, {0: (b, 0, 0, 0)}) == E.VQ_ERR_ZERO_LEN
    assert _pop_one_bad(r, {0: (b, 4, INDIRECT, 0)}) == E.VQ_ERR_INDIRECT_FEATURE
    # a mapped buffer that is never touched: only its length counts towards 2**32
    r.dma.add(1 << 40, 1 << 33, 1 << 46, 3)
    assert _pop_one_bad(r, {0: (1 << 40, 0xFFFFFFFF, NEXT, 1),
                            1: (1 << 40, 1, 0, 0)}) == E.VQ_ERR_LEN_OVERFLOW
    r.dma.remove(1 << 40, 1 << 33)
    # a chain of exactly size descriptors is fine (2.7.5.3.1 limit)
    r.dr.add_raw({i: (b, 1, NEXT if i < 7 else 0, i + 1) for i in range(8)}, head=0)
    [c] = r.vq.pop_batch()
    assert c.error == 0 and len(c.iovs) == 8


def test_malformed_indirect_chains(rig_factory):
    """2.7.5.3.1: no nested tables, no INDIRECT|NEXT, sane table length, TTL inside."""
    r = rig_factory(size=8, indirect=True)
    b = r.dr.buf(16)
    E = R

    def tbl(entries):
        return r.dr.write_indirect(entries)
    t, n = tbl([(b, 4, 0, 0)])
    assert _pop_one_bad(r, {0: (t, n, INDIRECT | NEXT, 1)}) == E.VQ_ERR_INDIRECT_NEXT
    assert _pop_one_bad(r, {0: (t, 0, INDIRECT, 0)}) == E.VQ_ERR_INDIRECT_LEN
    assert _pop_one_bad(r, {0: (t, 24, INDIRECT, 0)}) == E.VQ_ERR_INDIRECT_LEN
    t9, n9 = tbl([(b, 1, NEXT, i + 1) for i in range(8)] + [(b, 1, 0, 0)])
    assert _pop_one_bad(r, {0: (t9, n9, INDIRECT, 0)}) == E.VQ_ERR_INDIRECT_LEN  # > size
    assert _pop_one_bad(r, {0: (HOLE_IOVA, 32, INDIRECT, 0)}) == E.VQ_ERR_INDIRECT_UNMAPPED
    assert _pop_one_bad(r, {0: (WO_IOVA, 32, INDIRECT, 0)}) == E.VQ_ERR_INDIRECT_UNMAPPED
    inner, m = tbl([(b, 4, 0, 0)])
    t, n = tbl([(inner, m, INDIRECT, 0)])
    assert _pop_one_bad(r, {0: (t, n, INDIRECT, 0)}) == E.VQ_ERR_NESTED_INDIRECT
    t, n = tbl([(b, 4, NEXT, 1), (b, 4, NEXT, 0)])
    assert _pop_one_bad(r, {0: (t, n, INDIRECT, 0)}) == E.VQ_ERR_CHAIN_LEN      # loop in table
    t, n = tbl([(b, 4, NEXT, 2), (b, 4, 0, 0)])
    assert _pop_one_bad(r, {0: (t, n, INDIRECT, 0)}) == E.VQ_ERR_DESC_INDEX     # next >= entries
    # 5 direct + 4 indirect buffers: 9 > size 8
    t, n = tbl([(b, 1, NEXT, i + 1) for i in range(3)] + [(b, 1, 0, 0)])
    descs = {i: (b, 1, NEXT, i + 1) for i in range(1, 6)}
    descs[6] = (t, n, INDIRECT, 0)
    assert _pop_one_bad(r, {**descs, 5: (b, 1, NEXT, 6)}, head=1) == E.VQ_ERR_CHAIN_LEN


def test_broken_avail_idx_jump(rig_factory):
    """2.7.13.2 device side: avail idx more than size ahead cannot be real: queue broken."""
    r = rig_factory(size=8)
    r.dr.set_avail_idx(9)
    assert r.vq.pop_batch() == [] and r.vq.broken == R.VQ_BROKEN_AVAIL_IDX
    assert not r.vq.push(0, 0)              # nothing more is written to a broken queue
    assert r.dr.used_idx == 0


def test_avail_idx_jump_of_exactly_size_is_fine(rig_factory):
    r = rig_factory(size=4)
    for _ in range(4):
        r.dr.add([b"a"], [])
    assert len(r.vq.pop_batch()) == 4 and not r.vq.broken


def test_broken_head_keeps_earlier_chains(rig_factory):
    """A head >= size cannot even be completed: broken, but chains before it come back."""
    r = rig_factory(size=8)
    h = r.dr.add([b"a"], [1])
    r.dr.put_avail(8)
    r.dr.publish()
    chains = r.vq.pop_batch()
    assert [c.head for c in chains] == [h] and r.vq.broken == R.VQ_BROKEN_HEAD
    assert r.vq.pop_batch() == []


def test_rings_unmapped_and_bad_config(rig_factory, impl):
    """Rings outside mapped memory, misaligned rings or a bad size: queue broken (2.7)."""
    r = rig_factory()
    r.dr.add([b"a"], [1])
    r.dma.remove(r.mem.iova, r.mem.size)
    assert r.vq.pop_batch() == [] and r.vq.broken == R.VQ_BROKEN_RING_UNMAPPED
    for field, value in (("size", 6), ("size", 0), ("desc_addr", 8), ("driver_addr", 1),
                         ("device_addr", 2)):
        vq = Virtqueue(1, r.dma, impl=impl)
        r.dr.attach(vq)
        setattr(vq, field, getattr(vq, field) + value if field != "size" else value)
        vq.enable()
        assert vq.broken == R.VQ_BROKEN_CONFIG, field
        assert vq.pop_batch() == [] and not vq.needs_notify()


def test_push_rejects_bad_head(rig_factory):
    r = rig_factory(size=8)
    with pytest.raises(ValueError):
        r.vq.push_batch([(1, 0), (8, 0)])
    assert r.dr.used_idx == 0 and r.vq.used_idx == 0


def test_chain_invalid_after_dma_change_and_chain_at(rig_factory):
    """Chains hold host addresses: any DMA map/unmap invalidates them (EFAULT)."""
    r = rig_factory()
    h = r.dr.add([b"keep"], [4])
    [c] = r.vq.pop_batch()
    r.dma.add(0x900000, 4096, r.side.addr, 3)
    with pytest.raises(OSError) as ei:
        c.read()
    assert ei.value.errno == errno.EFAULT
    with pytest.raises(OSError):
        c.write(b"x")
    again = r.vq.chain_at(h)                 # re-walk after the change: valid again
    assert again.read() == b"keep" and again.writable_len == 4
    with pytest.raises(ValueError):
        r.vq.chain_at(8)


def test_state_round_trip_continues_queue(rig_factory, impl):
    """get_state/set_state: a new queue (either implementation) carries on where the old
    one stopped, including the event idx signalled state."""
    r = rig_factory(event_idx=True)
    for _ in range(3):
        r.dr.add([b"s"], [1])
    chains = r.vq.pop_batch()
    r.vq.push(chains[0].head, 1)
    assert r.vq.needs_notify()
    state = r.vq.get_state()
    other = "py" if impl == "c" else "c"
    vq2 = Virtqueue(0, r.dma, impl=other)
    vq2.set_state(state)
    assert vq2.get_state() == state and vq2.enabled
    assert vq2.chain_at(chains[1].head).read() == b"s"
    r.dr.used_event = 0xFFFF                 # far away: no interrupt
    vq2.push_batch([(chains[1].head, 1), (chains[2].head, 1)])
    assert not vq2.needs_notify()
    h = r.dr.add([b"new"], [])
    assert [c.head for c in vq2.pop_batch()] == [h]
    with pytest.raises(ValueError):
        vq2.set_state({**state, "used_idx": 70000})


def test_config_read_only_while_enabled_and_reset(rig_factory):
    r = rig_factory()
    with pytest.raises(RuntimeError):
        r.vq.size = 16
    r.vq.reset()
    assert not r.vq.enabled and r.vq.size == 256 and r.vq.desc_addr == 0


def test_impl_selection(monkeypatch, rig_factory):
    r = rig_factory()
    monkeypatch.setenv("VFIO_VIRTIO_RING", "py")
    assert Virtqueue(0, r.dma).impl == "py"
    monkeypatch.delenv("VFIO_VIRTIO_RING")
    assert Virtqueue(0, r.dma).impl == "c"
    with pytest.raises(ValueError):
        Virtqueue(0, r.dma, impl="rust")
    with pytest.raises(ValueError):
        Virtqueue(0, r.dma, max_size=100)


def test_long_run_through_natural_wrap(rig_factory):
    """2.7.6/2.7.8: 66000 chains through a 256-entry ring: indices wrap through 65535 on
    their own; every chain comes back once, in order, with its data and used length."""
    r = rig_factory(size=256, event_idx=True, max_size=256)
    total, batch, k = 66_000, 100, 0
    while k < total:
        n = min(batch, total - k)
        heads = [r.dr.add([(k + j).to_bytes(4, "little")], [4]) for j in range(n)]
        chains = r.vq.pop_batch(n)
        assert [c.head for c in chains] == heads
        for j, c in enumerate(chains):
            assert int.from_bytes(c.read(), "little") == k + j
            c.write(c.read()[::-1])
        r.vq.push_batch([(c.head, 4) for c in chains])
        assert [u for u in r.dr.used()] == [(h, 4) for h in heads]
        k += n
    assert r.vq.used_idx == r.vq.last_avail_idx == total & 0xFFFF and not r.vq.broken
    assert r.dr.avail_event == total & 0xFFFF
