"""Issue 15: the D0 write with retention does only the work it must (real stack, in process).

A D3hot -> D0 write with No_Soft_Reset=1 that finds nothing to resume (no latched edge, no
buffer added while in D3hot) tells the gating listeners once, logs one INFO record and
schedules no deferred work; one that finds work still does it: a latched edge is delivered, a
request queued (and kicked) in D3hot is served, an eventq buffer added in D3hot is taken.
"""
from __future__ import annotations

import logging

import pytest

from vfio_virtio.gpio import spec as G
from vfio_virtio.pci import spec as P
from vfio_virtio_kit.inproc import InProcessServer

from test_power_cases import Guest

EDGE = G.VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH
IN = G.VIRTIO_GPIO_DIRECTION_IN


@pytest.fixture(params=["c", "py"], ids=["c_ring", "py_ring"])
def rig(request):
    srv = InProcessServer(control=None, no_soft_reset=True, lines=8, ring=request.param)
    g = Guest(srv)
    g.bring_up()
    for line in (0, 2):
        g.gpio.set_direction(line, IN)
        g.gpio.set_irq_type(line, EDGE)
        g.gpio.queue_irq(line)
    assert g.gpio.poll_events() == []
    deferred = []
    defer = srv.server.device.defer
    srv.server.device.defer = lambda fn: (deferred.append(fn), defer(fn))
    gating = []
    srv.server.transport.gating_listeners.append(lambda: gating.append(1))
    yield srv, g, deferred, gating
    g.close()
    srv.close()


def test_d0_write_with_nothing_to_resume_schedules_nothing(rig):
    srv, g, deferred, gating = rig
    g.drv.set_power_state(P.PCI_D3hot)
    assert len(gating) == 1                      # one gating change, not two
    gating.clear()
    g.drv.set_power_state(P.PCI_D0)
    assert g.drv.power_state() == P.PCI_D0
    assert len(gating) == 1
    assert deferred == []                        # nothing to deliver, no avail index moved
    assert g.request_completes(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 0) == bytes(
        [G.VIRTIO_GPIO_STATUS_OK, IN])
    # the held buffers still deliver
    srv.backend.set_input(0, 1)
    srv.drain()
    assert g.gpio.poll_events() == [(0, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]


def test_d0_write_logs_one_info_record(rig, caplog):
    srv, g, deferred, gating = rig
    g.drv.set_power_state(P.PCI_D3hot)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        g.drv.set_power_state(P.PCI_D0)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["PM: D3hot -> D0 (No_Soft_Reset=1): PMCSR write"]


def test_edge_latched_in_d3hot_is_delivered_at_d0(rig):
    srv, g, deferred, gating = rig
    g.drv.set_power_state(P.PCI_D3hot)
    srv.backend.set_input(2, 1)
    srv.drain()
    assert g.gpio.poll_events() == []            # latched, not delivered in D3hot
    g.drv.set_power_state(P.PCI_D0)
    assert len(deferred) == 1
    assert g.gpio.poll_events() == [(2, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]


def test_request_queued_in_d3hot_is_served_at_d0(rig):
    srv, g, deferred, gating = rig
    g.drv.set_power_state(P.PCI_D3hot)
    assert g.request_completes(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 0) is None   # dropped kick
    g.drv.set_power_state(P.PCI_D0)
    assert len(deferred) == 1                    # the requestq's avail index moved
    used = dict(g.drv.rings[0].used())
    assert len(used) == 1


def test_eventq_buffer_added_in_d3hot_is_taken_at_d0(rig):
    srv, g, deferred, gating = rig
    g.gpio.set_direction(4, IN)
    g.gpio.set_irq_type(4, EDGE)
    g.drv.set_power_state(P.PCI_D3hot)
    g.gpio.queue_irq(4)                          # kick dropped in D3hot
    g.drv.set_power_state(P.PCI_D0)
    assert len(deferred) == 1                    # the eventq's avail index moved
    srv.backend.set_input(4, 1)
    srv.drain()
    assert g.gpio.poll_events() == [(4, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]


def test_fast_image_render_matches_common_read():
    """FastPath.sync renders the C register image in one pass: byte for byte what the
    transport's own common-config read returns, for every queue select (and one past)."""
    from vfio_virtio.gpio.lines_c import ffi
    from vfio_virtio.virtio import spec as V
    srv = InProcessServer(control=None, no_soft_reset=True, lines=8)
    try:
        g = Guest(srv)
        g.bring_up()
        t, fp = srv.server.transport, srv.server.fast
        n = V.VIRTIO_PCI_COMMON_CFG_LEN
        for sel in (0, 1, 2):
            t.queue_select, t.dfselect, t.gfselect = sel, sel & 1, sel & 1
            fp.sync()
            assert bytes(ffi.buffer(fp.f.common, n)) == t._common_read(0, n)
        g.close()
    finally:
        srv.close()


@pytest.mark.parametrize("ring", ["c", "py"])
def test_avail_pending_follows_dma_map_changes(ring):
    """The avail idx peek is re-translated when guest memory is unmapped: an unmapped ring
    reads as work to do (the scan reports it), never as a read of stale host memory."""
    srv = InProcessServer(control=None, no_soft_reset=True, lines=8, ring=ring)
    try:
        g = Guest(srv)
        g.bring_up()
        q = srv.server.core.queues[1]
        assert q.avail_pending() is False
        g.client.dma_unmap_all()
        assert q.avail_pending() is True
        q.reset()
        assert q.avail_pending() is False        # disabled
        g.close()
    finally:
        srv.close()
