"""virtio-pci transport over the real socket: virtqueue configuration in the common
configuration (4.1.4.3, 4.1.5.1.3), notifications (4.1.4.4), MSI-X vector validation and
VIRTIO_F_ACCESS_PLATFORM, as a driver observes them.

Spec references are virtio 1.3. Helpers and fixtures: tests/vfu/transport_kit.py.
"""
from __future__ import annotations

import pytest

from tests.vfu.transport_kit import (ACK, BASE, CONFIG_VEC, DRIVER, DRIVER_OK, EVENTQ,
                                          FEATURES_OK, NEEDS_RESET, NO_VECTOR, OK_LOW, REQUESTQ,
                                          fired, g, open_gpio, ping, qread, select_queue,
                                          server, shared_server, up)
from vfio_virtio.virtio import spec as V

C = V
__all__ = ["g", "up", "server", "shared_server"]   # fixtures: one server process per module


# --- 4.1.4.3 queue configuration --------------------------------------------------------------

def test_queue_size_invalid_values_keep_previous(g):
    """2.7 / 4.1.4.3.2: a split queue size is a power of 2 no larger than the maximum the
    device reported; other writes leave queue_size as it was."""
    d = g.drv
    d.negotiate(BASE)
    select_queue(d, REQUESTQ)
    qmax = qread(d, C.VIRTIO_PCI_COMMON_Q_SIZE)
    assert qmax == 256
    for bad in (0, 3, 6, 100, qmax * 2, 0xFFFF):
        d.common_write(C.VIRTIO_PCI_COMMON_Q_SIZE, bad, 2)
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_SIZE) == qmax
    d.common_write(C.VIRTIO_PCI_COMMON_Q_SIZE, 8, 2)
    assert qread(d, C.VIRTIO_PCI_COMMON_Q_SIZE) == 8
    d.common_write(C.VIRTIO_PCI_COMMON_Q_SIZE, 12, 2)
    assert qread(d, C.VIRTIO_PCI_COMMON_Q_SIZE) == 8
    d.enable_msix()
    d.set_config_vector(0)
    d.setup_queue(REQUESTQ, 8, 1)
    d.driver_ok()
    for _ in range(20):                          # wraps the 8-entry ring more than twice
        assert ping(d) == OK_LOW


def test_queue_select_out_of_range(up):
    """4.1.4.3.2: a queue_select beyond num_queues reads queue_size 0 (unavailable); writes
    to its fields are harmless for the real queues."""
    d = up.drv
    assert d.num_queues() == 2
    for sel in (2, 0x7FFF, 0xFFFF):
        select_queue(d, sel)
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_SELECT) == sel
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_SIZE) == 0
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_ENABLE) == 0
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_MSIX) == NO_VECTOR
        for field, size, v in ((C.VIRTIO_PCI_COMMON_Q_SIZE, 2, 4),
                               (C.VIRTIO_PCI_COMMON_Q_MSIX, 2, 1),
                               (C.VIRTIO_PCI_COMMON_Q_DESCLO, 4, 0x1000),
                               (C.VIRTIO_PCI_COMMON_Q_ENABLE, 2, 1),
                               (C.VIRTIO_PCI_COMMON_Q_RESET, 2, 1)):
            d.common_write(field, v, size)
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_SIZE) == 0
    for q, vec in ((REQUESTQ, 1), (EVENTQ, 2)):
        select_queue(d, q)
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_SIZE) == 16
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_MSIX) == vec
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_ENABLE) == 1
    assert d.read_status() == ACK | DRIVER | FEATURES_OK | DRIVER_OK
    assert ping(d) == OK_LOW


def test_enabled_queue_configuration_is_frozen(up):
    """4.1.4.3.2: the driver MUST NOT change queue fields once queue_enable is 1; the device
    ignores such writes (size, addresses) and writing 0 to queue_enable (4.1.4.3.2: the
    driver MUST NOT write 0), and the queue keeps working."""
    d = up.drv
    ring = d.rings[REQUESTQ]
    select_queue(d, REQUESTQ)
    d.common_write(C.VIRTIO_PCI_COMMON_Q_SIZE, 4, 2)
    d.common_write(C.VIRTIO_PCI_COMMON_Q_DESCLO, 0x2000, 4)
    d.common_write(C.VIRTIO_PCI_COMMON_Q_AVAILLO, 0x3000, 4)
    d.common_write(C.VIRTIO_PCI_COMMON_Q_USEDHI, 1, 4)
    d.common_write(C.VIRTIO_PCI_COMMON_Q_ENABLE, 0, 2)
    assert qread(d, C.VIRTIO_PCI_COMMON_Q_SIZE) == 16
    assert qread(d, C.VIRTIO_PCI_COMMON_Q_DESCLO, 8) == ring.desc_addr
    assert qread(d, C.VIRTIO_PCI_COMMON_Q_AVAILLO, 8) == ring.avail_addr
    assert qread(d, C.VIRTIO_PCI_COMMON_Q_USEDLO, 8) == ring.used_addr
    assert qread(d, C.VIRTIO_PCI_COMMON_Q_ENABLE) == 1
    assert ping(d) == OK_LOW


def _enable_with(d, desc: int, avail: int, used: int) -> None:
    select_queue(d, REQUESTQ)
    d.common_write(C.VIRTIO_PCI_COMMON_Q_SIZE, 16, 2)
    for field, v in ((C.VIRTIO_PCI_COMMON_Q_DESCLO, desc), (C.VIRTIO_PCI_COMMON_Q_AVAILLO, avail),
                     (C.VIRTIO_PCI_COMMON_Q_USEDLO, used)):
        d.common_write(field, v & 0xFFFFFFFF, 4)
        d.common_write(field + 4, v >> 32, 4)
    d.common_write(C.VIRTIO_PCI_COMMON_Q_ENABLE, 1, 2)


@pytest.mark.parametrize("where", ["desc-misaligned", "avail-misaligned", "used-misaligned",
                                   "desc-unmapped", "used-unmapped"])
def test_bad_ring_addresses_need_reset(g, where):
    """2.7 alignment (descriptor table 16, available ring 2, used ring 4) and 2.7 rings in
    driver memory: the driver MUST respect them. This device accepts queue_enable, then at
    DRIVER_OK (when it first uses the rings) sets DEVICE_NEEDS_RESET (2.1.2) with a config
    interrupt; a reset and a correct setup recover."""
    d = g.drv
    d.negotiate(BASE)
    d.enable_msix()
    d.set_config_vector(CONFIG_VEC)
    base = d.mem.alloc(0x4000, 0x1000)
    desc, avail, used = base, base + 0x1000, base + 0x2000
    far = 0x40000000                             # nothing is mapped there
    desc, avail, used = {"desc-misaligned": (desc + 8, avail, used),
                         "avail-misaligned": (desc, avail + 1, used),
                         "used-misaligned": (desc, avail, used + 2),
                         "desc-unmapped": (far, avail, used),
                         "used-unmapped": (desc, avail, far)}[where]
    _enable_with(d, desc, avail, used)
    assert qread(d, C.VIRTIO_PCI_COMMON_Q_ENABLE) == 1
    d.driver_ok()
    assert d.read_status() & NEEDS_RESET
    assert fired(d.eventfds[CONFIG_VEC])
    d.disable_msix()
    d.bring_up([REQUESTQ, EVENTQ], wanted=BASE, queue_size=16)
    assert ping(d) == OK_LOW


def test_msix_vector_out_of_range_reads_no_vector(g):
    """4.1.5.1.2: a vector the device cannot use reads back VIRTIO_MSI_NO_VECTOR (the table
    has 3 entries: 0..2 are accepted)."""
    d = g.drv
    d.negotiate(BASE)
    table = d.msix.table_size
    assert table == 3
    for v in (0, 2, table, 0x7FF, NO_VECTOR - 1):
        want = v if v < table else NO_VECTOR
        d.common_write(C.VIRTIO_PCI_COMMON_MSIX, v, 2)
        assert qread(d, C.VIRTIO_PCI_COMMON_MSIX) == want
        select_queue(d, EVENTQ)
        d.common_write(C.VIRTIO_PCI_COMMON_Q_MSIX, v, 2)
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_MSIX) == want


def test_stray_notifications_are_harmless(up):
    """4.1.4.4: a queue's notification address is cap.offset + queue_notify_off *
    notify_off_multiplier. Writes elsewhere in the notify structure (no such queue, odd
    widths) or reads of it change nothing; the device keeps working."""
    d = up.drv
    cap = d.caps[C.VIRTIO_PCI_CAP_NOTIFY_CFG]
    for off, data in ((2 * cap.notify_off_multiplier, b"\x02\x00"), (cap.length, b"\x05\x00"),
                      (0x800, b"\xff" * 4), (1, b"\x00"), (0, b"\x07" * 8)):
        d.client.region_write(cap.bar, cap.offset + off, data)
    assert d.client.region_read(cap.bar, cap.offset, 4) == bytes(4)
    assert d.read_status() == ACK | DRIVER | FEATURES_OK | DRIVER_OK
    assert ping(d) == OK_LOW


# --- ACCESS_PLATFORM (docs/FACTS.md) -----------------------------------------------------------

@pytest.mark.parametrize("accept", [True, False], ids=["accepted", "declined"])
def test_access_platform_offered_and_optional(server, accept):
    """virtio 1.3 6.1 VIRTIO_F_ACCESS_PLATFORM is offered (addresses are IOVAs of the
    client's DMA maps); a driver that accepts it and one that declines it are both served
    (the device does not require it: without a vIOMMU IOVA == guest-physical)."""
    feats = BASE | (V.bit(V.VIRTIO_F_ACCESS_PLATFORM) if accept else 0)
    gd = open_gpio(server, bring_up=False)
    try:
        d = gd.drv
        assert d.device_features() & V.bit(V.VIRTIO_F_ACCESS_PLATFORM)
        d.bring_up([REQUESTQ, EVENTQ], wanted=feats, queue_size=16)
        assert d.features == feats
        assert ping(d) == OK_LOW
        assert gd.get_value(3) == 0
    finally:
        gd.close()
