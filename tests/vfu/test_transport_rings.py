"""Split rings through the virtio-pci transport over the real socket: malformed chains,
indirect descriptors, event idx and flag-based suppression, RING_RESET, and a device reset
with requests in flight. Each ring test runs on both ring implementations (``--ring c|py``).

Spec references are virtio 1.3. Helpers: tests/vfu/transport_kit.py.
"""
from __future__ import annotations

import os

import pytest

from tests.vfu.transport_kit import (BASE, EVENTQ, INDIRECT, NEEDS_RESET, NEXT,
                                          OK_LOW, PING, REQUESTQ, WRITE, add_ping, drain,
                                          fired, open_gpio, ping, qread, select_queue,
                                          shared_fixture, start_shared, take_descs)
from vfio_virtio.backends.control import ControlClient
from vfio_virtio.gpio import spec as G
from vfio_virtio_kit import vfio_user_spec as U
from vfio_virtio.virtio import spec as V

C = V
IND = V.bit(V.VIRTIO_F_INDIRECT_DESC)
EVIDX = V.bit(V.VIRTIO_F_EVENT_IDX)
RESET = V.bit(V.VIRTIO_F_RING_RESET)
IRQ = V.bit(G.VIRTIO_GPIO_F_IRQ)
FAR = 0x40000000                    # no DMA map there
BIG_IOVA, BIG_LEN = 1 << 32, (2 << 30) + 4096     # read-only, sparse: for length overflow


@pytest.fixture(scope="module", params=["c", "py"])
def ring_server(request, tmp_path_factory):
    """A server per ring implementation (the py twin must behave identically)."""
    s = start_shared(tmp_path_factory, "--ring", request.param)
    yield s
    s.stop()


@pytest.fixture
def srv(ring_server, request):
    yield from shared_fixture(ring_server, request)


def _open(srv, features=BASE):
    return open_gpio(srv, features=features)


# --- request path smoke (both rings) ----------------------------------------------------------

def test_request_path_smoke(srv):
    """5.17.6: GET_VALUE / SET_DIRECTION / SET_VALUE round trips, batched, through either
    ring implementation, with ring wraparound (2.7.13.3: idx wraps modulo queue size)."""
    g = _open(srv)
    try:
        d = g.drv
        g.set_direction(5, G.VIRTIO_GPIO_DIRECTION_OUT)
        g.set_value(5, 1)
        assert g.get_value(5) == 1
        ring = d.rings[REQUESTQ]
        for _ in range(5):                         # 5 x 3 chains through a 16-entry ring
            heads = [add_ping(ring, gpio) for gpio in (0, 5, 7)]
            d.kick(REQUESTQ)
            resp = {h: ring.written(h, 2) for h in heads}
            assert sorted(ring.used()) == sorted((h, 2) for h in heads)
            assert [resp[h] for h in heads] == [OK_LOW, bytes([0, 1]), OK_LOW]
    finally:
        g.close()


# --- malformed chains (2.7.5, 2.7.4.2, 2.7.5.3) -----------------------------------------------

def _big_map(d) -> int:
    """Map BIG_LEN bytes read-only at BIG_IOVA (sparse memfd): real, but never writable."""
    fd = os.memfd_create("vv-big", os.MFD_CLOEXEC)
    os.ftruncate(fd, BIG_LEN)
    d.client.dma_map(BIG_IOVA, BIG_LEN, fd, 0, U.VFIO_USER_F_DMA_REGION_READ)
    return fd


def _malformed(kind: str, ring, d):
    """Descriptors {idx: (addr, len, flags, next)} and head for one malformed class."""
    a, b, c = take_descs(ring, 3)
    req, resp = ring.buf(8, PING), ring.buf(2)
    good_table = lambda: ring.write_indirect([(req, 8, NEXT, 1), (resp, 2, WRITE, 0)])  # noqa: E731
    if kind == "index-out-of-range":          # 2.7.5: next must be < queue size
        return {a: (req, 8, NEXT, ring.size + 5)}, a
    if kind == "loop":                        # 2.7.5.3.1: chain longer than the queue
        return {a: (req, 8, NEXT, b), b: (req, 8, NEXT, a)}, a
    if kind == "nested-indirect":             # 2.7.5.3.1: no INDIRECT inside a table
        inner, n = good_table()
        outer, m = ring.write_indirect([(inner, n, INDIRECT, 0)])
        return {a: (outer, m, INDIRECT, 0)}, a
    if kind == "indirect-len":                # 2.7.5.3.1: table length a multiple of 16
        t, _ = good_table()
        return {a: (t, 24, INDIRECT, 0)}, a
    if kind == "indirect-and-next":           # 2.7.5.3.1: INDIRECT and NEXT together
        t, n = good_table()
        return {a: (t, n, INDIRECT | NEXT, b), b: (resp, 2, WRITE, 0)}, a
    if kind == "indirect-unmapped":
        return {a: (FAR, 32, INDIRECT, 0)}, a
    if kind == "buffer-unmapped":             # buffer address outside mapped memory
        return {a: (req, 8, NEXT, b), b: (FAR, 2, WRITE, 0)}, a
    if kind == "writable-in-readonly-map":    # device-writable buffer in a read-only map
        _big_map(d)
        return {a: (req, 8, NEXT, b), b: (BIG_IOVA, 2, WRITE, 0)}, a
    if kind == "readable-after-writable":     # 2.7.4.2: readable descriptors come first
        return {a: (resp, 2, WRITE | NEXT, b), b: (req, 8, 0, 0)}, a
    if kind == "zero-length":
        return {a: (req, 0, NEXT, b), b: (resp, 2, WRITE, 0)}, a
    if kind == "length-overflow":             # total length must fit the 32-bit used len
        _big_map(d)
        return {a: (BIG_IOVA, 0x80000000, NEXT, b), b: (BIG_IOVA, 0x80000000, NEXT, c),
                c: (resp, 2, WRITE, 0)}, a
    raise AssertionError(kind)


MALFORMED = ["index-out-of-range", "loop", "nested-indirect", "indirect-len",
             "indirect-and-next", "indirect-unmapped", "buffer-unmapped",
             "writable-in-readonly-map", "readable-after-writable", "zero-length",
             "length-overflow"]


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_chain_completes_and_queue_carries_on(srv, kind):
    """A malformed chain (2.7.5 / 2.7.4.2 / 2.7.5.3.1 rules the driver MUST follow) is
    completed with used length 0 without touching its buffers; the well-formed chains
    before and after it in the same batch complete normally, the device does not need a
    reset, and the queue keeps working."""
    g = _open(srv, BASE | IND)
    try:
        d = g.drv
        ring = d.rings[REQUESTQ]
        descs, bad = _malformed(kind, ring, d)
        first = add_ping(ring, publish=False)
        ring.add_raw(descs, bad, publish=False)
        last = add_ping(ring, 7, publish=False)
        ring.publish()
        d.kick(REQUESTQ)
        out = {first: ring.written(first, 2), last: ring.written(last, 2)}
        used = ring.used()
        assert sorted(used) == sorted([(first, 2), (bad, 0), (last, 2)])
        assert out == {first: OK_LOW, last: OK_LOW}
        assert not d.read_status() & NEEDS_RESET
        assert fired(d.eventfds[1])
        assert ping(d) == OK_LOW
    finally:
        g.close()


def test_indirect_chains(srv):
    """2.7.5.3 with VIRTIO_F_INDIRECT_DESC: chains in indirect tables, mixed with direct
    ones in one batch, are served."""
    g = _open(srv, BASE | IND)
    try:
        d = g.drv
        ring = d.rings[REQUESTQ]
        heads = [ring.add(out=[PING], in_lens=[2], indirect=bool(i % 2), publish=False)
                 for i in range(6)]
        ring.publish()
        d.kick(REQUESTQ)
        resp = [ring.written(h, 2) for h in heads]
        assert sorted(ring.used()) == sorted((h, 2) for h in heads)
        assert resp == [OK_LOW] * 6
        # split over several buffers in the table: header and response in 2 + 1 pieces
        h = ring.add(out=[PING[:3], PING[3:]], in_lens=[1, 1], indirect=True)
        d.kick(REQUESTQ)
        assert ring.written(h, 2) == OK_LOW
        assert ring.used() == [(h, 2)]
    finally:
        g.close()


def test_indirect_without_feature_is_malformed(srv):
    """2.7.5.3.1: the driver MUST NOT set VRING_DESC_F_INDIRECT unless the feature was
    negotiated; such a chain is completed with length 0 and the queue carries on."""
    g = _open(srv, BASE)
    try:
        d = g.drv
        ring = d.rings[REQUESTQ]
        req, resp = ring.buf(8, PING), ring.buf(2)
        t, n = ring.write_indirect([(req, 8, NEXT, 1), (resp, 2, WRITE, 0)])
        a, = take_descs(ring, 1)
        ring.add_raw({a: (t, n, INDIRECT, 0)}, a)
        d.kick(REQUESTQ)
        assert ring.used() == [(a, 0)]
        assert d.mem.read(resp, 2) == b"\0\0"
        assert ping(d) == OK_LOW
    finally:
        g.close()


# --- notification suppression (2.7.7, 2.7.10) -------------------------------------------------

def test_event_idx_used_event_suppression(srv):
    """2.7.10 with VIRTIO_F_EVENT_IDX: the device interrupts when the used idx passes
    used_event (the entry placed at used_event triggers it) and SHOULD NOT otherwise; a
    batch that crosses used_event gives one interrupt. It ignores avail->flags (2.7.7.2)."""
    g = _open(srv, BASE | EVIDX)
    try:
        d = g.drv
        ring = d.rings[REQUESTQ]
        vec = d.eventfds[1]
        assert ping(d) == OK_LOW                  # used idx 0 -> 1, used_event 0: interrupt
        assert fired(vec)
        ring.used_event = 3
        for want in (False, False, True, False):  # 1->2, 2->3, 3->4 (entry 3), 4->5
            assert ping(d) == OK_LOW
            assert fired(vec) is want
        ring.used_event = 6                       # one batch 5 -> 8 crosses it once
        for _ in range(3):
            add_ping(ring, publish=False)
        ring.publish()
        d.kick(REQUESTQ)
        assert len(ring.used()) == 3 and fired(vec)
        ring.used_event = 20                      # batch 8 -> 10 does not reach it
        for _ in range(2):
            add_ping(ring)
        d.kick(REQUESTQ)
        assert len(ring.used()) == 2 and not fired(vec)
        ring.suppress_interrupts(True)            # flags are ignored with event idx
        ring.used_event = ring.used_idx
        assert ping(d) == OK_LOW
        assert fired(vec)
    finally:
        g.close()


def test_event_idx_device_publishes_avail_event(srv):
    """2.7.10: with VIRTIO_F_EVENT_IDX the driver kicks only when avail idx passes
    used->avail_event; this device writes avail_event = its next avail index after each
    pass over the ring, so a driver using kick_if_needed() is never left without a kick."""
    g = _open(srv, BASE | EVIDX)
    try:
        d = g.drv
        ring = d.rings[REQUESTQ]
        for n in (1, 3, 2):
            heads = [add_ping(ring) for _ in range(n)]
            assert d.kick_if_needed(REQUESTQ)
            assert ring.avail_event == ring.avail_idx
            assert sorted(ring.used()) == sorted((h, 2) for h in heads)
    finally:
        g.close()


def test_no_interrupt_flag_without_event_idx(srv):
    """2.7.7.2 without VIRTIO_F_EVENT_IDX: VRING_AVAIL_F_NO_INTERRUPT set means the device
    SHOULD NOT interrupt (used buffers still appear); cleared, it MUST interrupt."""
    g = _open(srv, BASE)
    try:
        d = g.drv
        ring = d.rings[REQUESTQ]
        vec = d.eventfds[1]
        ring.suppress_interrupts(True)
        for _ in range(3):
            assert ping(d) == OK_LOW
            assert not fired(vec)
        ring.suppress_interrupts(False)
        assert ping(d) == OK_LOW
        assert fired(vec)
    finally:
        g.close()


# --- RING_RESET (4.1.4.3.2, 2.6.1) -----------------------------------------------------------

def _edge(ctl: ControlClient, line: int) -> None:
    ctl.set(line, 0)
    ctl.set(line, 1)


def test_ring_reset_requestq(srv):
    """4.1.4.3.2 with VIRTIO_F_RING_RESET: queue_reset = 1 resets the queue; once the reset
    has completed "the device MUST present 0 in both queue_reset and queue_enable" (Linux's
    vp_modern_set_queue_reset() polls for it; issue 12); buffers offered before the reset are never
    used (2.6.1.1); after a new setup and queue_enable the queue works, queue_reset reads 0.
    The other queue is not affected."""
    g = _open(srv, BASE | RESET)
    try:
        d = g.drv
        old = d.rings[REQUESTQ]
        assert ping(d) == OK_LOW
        for _ in range(2):
            add_ping(old)                     # offered, not kicked
        select_queue(d, REQUESTQ)
        d.common_write(C.VIRTIO_PCI_COMMON_Q_RESET, 1, 2)
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_RESET) == 0
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_ENABLE) == 0
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_SIZE) == 256        # default again
        d.kick(REQUESTQ)                      # a reset queue is not processed
        assert old.used_idx == 1
        select_queue(d, EVENTQ)
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_ENABLE) == 1
        new = d.setup_queue(REQUESTQ, 8, 1)
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_RESET) == 0
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_SIZE) == 8
        drain(d)
        assert ping(d) == OK_LOW              # exactly the new request: nothing stale
        assert fired(d.eventfds[1])
        assert old.used_idx == 1
        assert new.used_idx == 1
    finally:
        g.close()


def test_ring_reset_eventq_drops_held_buffers(srv):
    """2.6.1.1: after a queue reset the device does not use buffers of the old ring: an
    irq buffer held for a line is not completed into it; with a new eventq, a new buffer
    gets the next interrupt. The requestq keeps working meanwhile."""
    g = _open(srv, BASE | RESET | IRQ)
    try:
        d = g.drv
        with ControlClient(srv.control) as ctl:
            g.set_direction(2, G.VIRTIO_GPIO_DIRECTION_IN)
            g.set_irq_type(2, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)
            old = d.rings[EVENTQ]
            g.queue_irq(2)
            select_queue(d, EVENTQ)
            d.common_write(C.VIRTIO_PCI_COMMON_Q_RESET, 1, 2)
            assert qread(d, C.VIRTIO_PCI_COMMON_Q_RESET) == 0      # completed
            assert ping(d) == OK_LOW
            new = d.setup_queue(EVENTQ, 16, 2)
            head = g.queue_irq(2)
            _edge(ctl, 2)
            assert g.events() == [(2, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]
            assert old.used_idx == 0 and new.used_idx == 1
            assert head not in g.irq_heads
    finally:
        g.close()


def test_queue_reset_ignored_without_feature(srv):
    """4.1.4.3.2: queue_reset only exists with VIRTIO_F_RING_RESET; without it a write
    does nothing (reads 0, queue stays enabled with its buffers)."""
    g = _open(srv, BASE)
    try:
        d = g.drv
        ring = d.rings[REQUESTQ]
        head = add_ping(ring)                 # offered before the write, kicked after
        select_queue(d, REQUESTQ)
        d.common_write(C.VIRTIO_PCI_COMMON_Q_RESET, 1, 2)
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_RESET) == 0
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_ENABLE) == 1
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_MSIX) == 1
        d.kick(REQUESTQ)
        assert ring.used() == [(head, 2)]
        assert ping(d) == OK_LOW
    finally:
        g.close()


# --- device reset with requests in flight (2.4, 4.1.4.3.1) ------------------------------------

def test_reset_with_requests_in_flight(srv):
    """2.4.1: after a reset the device does not touch the old rings; requests offered but
    not kicked and irq buffers the device held are never completed, neither into the old
    rings nor into the rings of the next initialisation, which work normally."""
    g = _open(srv, BASE | IRQ)
    try:
        d = g.drv
        with ControlClient(srv.control) as ctl:
            ctl.set(2, 0)
            g.set_direction(2, G.VIRTIO_GPIO_DIRECTION_IN)
            g.set_irq_type(2, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)
            old_req, old_evt = d.rings[REQUESTQ], d.rings[EVENTQ]
            g.queue_irq(2)                    # held by the device
            for _ in range(3):
                add_ping(old_req)             # offered, not kicked
            req_used, evt_used = old_req.used_idx, old_evt.used_idx
            d.reset()
            _edge(ctl, 2)                     # no interrupt config, no rings: dropped
            d.bring_up([REQUESTQ, EVENTQ], wanted=BASE | IRQ, queue_size=16)
            assert ping(d) == OK_LOW          # exactly one new completion
            g.set_direction(2, G.VIRTIO_GPIO_DIRECTION_IN)
            g.set_irq_type(2, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)
            g.queue_irq(2)
            _edge(ctl, 2)
            assert g.events() == [(2, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]
            assert d.rings[EVENTQ].used_idx == 1
            assert (old_req.used_idx, old_evt.used_idx) == (req_used, evt_used)
            assert d.rings[REQUESTQ].used() == []
    finally:
        g.close()


def test_ring_memory_unmapped_under_a_live_queue(srv):
    """2.1.2: the rings vanish from DMA space while the queue is live (hostile or buggy
    client): the device cannot use the queue, sets DEVICE_NEEDS_RESET with a config
    interrupt instead of touching stale memory, and recovers after a reset and a new map."""
    g = _open(srv, BASE)
    try:
        d = g.drv
        assert ping(d) == OK_LOW
        drain(d)
        d.client.dma_unmap(d.mem.iova, d.mem.size)
        add_ping(d.rings[REQUESTQ])
        d.kick(REQUESTQ)
        assert d.read_status() & NEEDS_RESET
        assert fired(d.eventfds[0]) and not fired(d.eventfds[1])
        d.client.dma_map(d.mem.iova, d.mem.size, d.mem.fd, 0,
                         U.VFIO_USER_F_DMA_REGION_READ | U.VFIO_USER_F_DMA_REGION_WRITE)
        d.disable_msix()
        d.bring_up([REQUESTQ, EVENTQ], wanted=BASE, queue_size=16)
        assert ping(d) == OK_LOW
    finally:
        g.close()
