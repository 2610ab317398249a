"""Issue 15: the requestq and the hot registers are served in C, with no Python on the path.

What the guest sees must not change (the rest of the suite checks that); what changes is who
answers. The control socket's ``info`` reports the C path's counters: ``python`` counts the
BAR0 accesses handed to Python, ``chains`` the requests C completed. Before issue 15 every
access entered Python (there was no C path to report).
"""
from __future__ import annotations


from vfio_virtio.backends.control import ControlClient
from vfio_virtio.gpio import spec as G
from vfio_virtio.virtio import spec as V

REQUESTQ = G.VIRTIO_GPIO_REQUESTQ
OK = G.VIRTIO_GPIO_STATUS_OK
OUT, IN = G.VIRTIO_GPIO_DIRECTION_OUT, G.VIRTIO_GPIO_DIRECTION_IN


def counters(c: ControlClient) -> dict:
    fp = c.info().get("fast_path")
    assert fp is not None, "the server reports no C request path"
    return fp


def test_requests_are_served_in_c_without_python(gpio):
    d, c = gpio
    before = counters(c)
    d.set_value(3, 1)
    d.set_direction(3, OUT)
    assert d.get_value(3) == 1 and d.get_direction(3) == OUT
    for _ in range(20):
        assert d.request(G.VIRTIO_GPIO_MSG_GET_VALUE, 1) == bytes([OK, 0])
    after = counters(c)
    assert after["chains"] - before["chains"] == 24
    assert after["python"] == before["python"], "a request entered Python"
    assert after["irqs"] - before["irqs"] >= 24          # MSI-X raised from C
    assert c.get(3)["value"] == 1 and c.get(3)["direction"] == "out"   # the host sees it


def test_common_config_and_isr_reads_are_answered_in_c(gpio):
    d, c = gpio
    before = counters(c)
    feats = d.drv.device_features()
    assert feats >> G.VIRTIO_GPIO_F_IRQ & 1 and feats >> V.VIRTIO_F_VERSION_1 & 1
    assert d.drv.read_status() & V.VIRTIO_CONFIG_S_DRIVER_OK
    assert d.drv.num_queues() == 2
    d.drv.read_isr()
    after = counters(c)
    assert after["python"] == before["python"] + 2      # the two dfselect writes only
    assert after["reads"] - before["reads"] >= 5


def test_requests_c_cannot_serve_fall_back_in_order(gpio):
    """GET_LINE_NAMES and SET_IRQ_TYPE are Python's: a batch mixing them with C requests is
    answered in full, in ring order (per-line order, 5.17.6)."""
    d, c = gpio
    heads = [d.add_request(G.VIRTIO_GPIO_MSG_SET_VALUE, 2, 1),
             d.add_request(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 4, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH),
             d.add_request(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 2, OUT),
             d.add_request(G.VIRTIO_GPIO_MSG_GET_VALUE, 2),
             d.add_request(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 4, OUT)]   # irq enabled: ERR
    d.drv.kick(REQUESTQ)
    got = d.complete(len(heads))
    assert [got[h] for h in heads] == [bytes([OK, 0]), bytes([OK, 0]), bytes([OK, 0]),
                                       bytes([OK, 1]), bytes([G.VIRTIO_GPIO_STATUS_ERR, 0])]
    assert c.get(4)["edge"] == "both" and c.get(2)["value"] == 1
    assert d.names()[:2] == ["l0", "l1"]


def test_watchers_see_changes_made_by_the_c_path(gpio):
    d, c = gpio
    with c.watch() as w:
        d.set_direction(5, OUT)                 # value 0 driven: visible change (in 0 -> out 0)
        d.set_value(5, 1)
        ev = w.wait_for(lambda e: e.get("line") == 5 and e.get("value") == 1, timeout=5.0)
    assert ev["source"] == "guest" and ev["direction"] == "out"


def test_d3hot_gating_is_honoured_in_c(gpio):
    """PCI PM 1.2, 5.3: in D3hot a BAR read returns all ones and a write (here the requestq
    notify) is dropped; answered in C. Back in D0 (No_Soft_Reset) the queued request is
    served and the device state is as it was."""
    d, c = gpio
    d.set_value(6, 1)
    d.set_direction(6, OUT)
    d.drv.set_power_state(3)
    before = counters(c)
    cap = d.drv.caps[V.VIRTIO_PCI_CAP_COMMON_CFG]
    assert d.client.region_read(cap.bar, cap.offset + V.VIRTIO_PCI_COMMON_DF, 4) == b"\xff" * 4
    head = d.add_request(G.VIRTIO_GPIO_MSG_GET_VALUE, 6)
    d.drv.irq_pending(d.drv.queue_vectors[REQUESTQ])     # forget earlier interrupts
    d.drv.kick(REQUESTQ)                                 # dropped: nothing is used
    assert not d.drv.irq_pending(d.drv.queue_vectors[REQUESTQ])
    assert d.drv.rings[REQUESTQ].used_idx == d.drv.rings[REQUESTQ].last_used
    after = counters(c)
    assert after["python"] == before["python"] and after["chains"] == before["chains"]
    d.drv.set_power_state(0)
    d.drv.kick(REQUESTQ)
    assert d.complete(1)[head] == bytes([OK, 1])
    assert c.get(6)["direction"] == "out" and c.get(6)["value"] == 1
