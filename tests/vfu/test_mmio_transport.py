"""virtio-mmio front end (``--transport mmio``) over the real socket, as a virtio-mmio driver
(Linux's virtio_mmio, through guest/vv_mmio_bridge) observes it in BAR0.

Spec references are virtio 1.3 section 4.2 (VIRTIO_F_SUSPEND: virtio 1.4). Every BAR access
of the vfio-user client waits for the server's reply and the server handles a notification
inside that write, so "no interrupt" / "not completed" checks need no sleeps.
"""
from __future__ import annotations

import struct

import pytest

from tests.vfu.transport_kit import (ACK, BASE, DRIVER, DRIVER_OK, EVENTQ, FAILED,
                                          FEATURES_OK, NEEDS_RESET, OFFERED, OK_LOW, REQUESTQ,
                                          add_ping, server, shared_server)
from vfio_virtio.backends.control import ControlClient
from vfio_virtio.gpio import spec as G
from vfio_virtio.pci import spec as P
from vfio_virtio_kit.gpio_driver import DEFAULT_FEATURES
from vfio_virtio_kit.guestmem import GuestMemory
from vfio_virtio_kit.vfio_user import VfioUserClient
from vfio_virtio_kit.virtio_mmio import VirtioMmioDriver, VirtioMmioError, open_gpio
from vfio_virtio.virtio import mmio_spec as M
from vfio_virtio.virtio import spec as V

RUNNING = ACK | DRIVER | FEATURES_OK | DRIVER_OK
VRING, CONFIG = M.VIRTIO_MMIO_INT_VRING, M.VIRTIO_MMIO_INT_CONFIG
OUT = G.VIRTIO_GPIO_DIRECTION_OUT
MMIO = ("--transport", "mmio")
SERVER_ARGS = MMIO                     # for transport_kit's shared_server


@pytest.fixture
def g(server):
    """A GpioDriver over virtio-mmio (INTx), connected and mapped, not initialised."""
    gd = open_gpio(server.socket, bring_up=False)
    yield gd
    gd.close()


@pytest.fixture(params=["intx", "msix"])
def up(server, request):
    """Brought up (VERSION_1 + VIRTIO_GPIO_F_IRQ), queues of 16, on INTx or MSI-X vector 0."""
    gd = open_gpio(server.socket, irq=request.param)
    yield gd
    gd.close()


def ping(drv: VirtioMmioDriver) -> bytes:
    ring = drv.rings[REQUESTQ]
    head = add_ping(ring)
    drv.kick(REQUESTQ)
    resp = ring.written(head, 2)
    assert ring.used() == [(head, 2)]
    return resp


def settle(d) -> None:
    """Two round trips: the server's single loop handled everything queued before."""
    d.client.cfg_read16(0)
    d.client.cfg_read16(0)


# --- 4.2.2 identity, 4.2.3.1 discovery ------------------------------------------------------

def test_register_block_identity_and_pci_ids(g):
    """4.2.2.1: MagicValue 0x74726976, Version 2; DeviceID 41 (virtio-gpio, 5.17); the PCI
    IDs are outside virtio_pci's range (1af4:1000-107f) and there is no virtio vendor
    capability, so only the bridge binds the function (docs/MMIO.md)."""
    d = g.drv
    assert d.read32(M.MagicValue) == 0x74726976
    assert d.read32(M.Version) == 2
    assert d.read32(M.DeviceID) == 41
    assert d.read32(M.VendorID) == M.VV_MMIO_VENDOR_ID
    assert (d.vendor_id, d.device_id) == (0x1AF4, 0x10F9)
    assert not 0x1000 <= d.device_id <= 0x107F
    cfg = g.client.cfg_read(0, 256)
    pos, caps = cfg[P.PCI_CAPABILITY_LIST], []
    while pos:
        caps.append(cfg[pos])
        pos = cfg[pos + 1]
    assert P.PCI_CAP_ID_VNDR not in caps and P.PCI_CAP_ID_MSIX in caps
    assert g.client.region_info(0).size >= M.Config + 8


def test_only_aligned_32bit_register_accesses_act(g):
    """4.2.2.2: control registers are accessed 32 bits wide and aligned; anything else has
    no effect (reads 0, writes ignored) and does not disturb the device."""
    d = g.drv
    d.reset()
    assert g.client.region_read(0, M.MagicValue, 2) == b"\0\0"
    assert g.client.region_read(0, M.Version + 1, 4) == bytes(4)
    g.client.region_write(0, M.Status, bytes([ACK]))            # 1-byte status write
    assert d.read_status() == 0
    d.write_status(ACK)
    assert d.read_status() == ACK


def test_write_only_and_reserved_registers_read_zero(g):
    """4.2.2: write-only registers and holes in the table have no readable content."""
    d = g.drv
    for off in (M.DeviceFeaturesSel, M.QueueSel, M.QueueNum, M.QueueNotify, M.InterruptACK,
                M.QueueDescLow, 0x018, 0x0C4, 0x0F8):
        assert d.read32(off) == 0, hex(off)


# --- 3.1.1 bring-up, 2.1 status, 2.2 features ------------------------------------------------

def test_bring_up_sequence_reads_back_each_step(g):
    """3.1.1 / 4.2.3.1: each status bit accumulates and reads back; then requests flow."""
    d = g.drv
    d.reset()
    for st in (ACK, ACK | DRIVER):
        d.write_status(st)
        assert d.read_status() == st
    assert d.device_features() == OFFERED
    d.write_driver_features(BASE)
    d.write_status(ACK | DRIVER | FEATURES_OK)
    assert d.read_status() == ACK | DRIVER | FEATURES_OK
    d.features = BASE
    d.setup_queue(REQUESTQ, 16)
    d.setup_queue(EVENTQ, 16)
    d.write_status(RUNNING)
    assert d.read_status() == RUNNING
    assert ping(d) == OK_LOW


def test_device_feature_select_windows(g):
    """4.2.2: DeviceFeatures shows bits 32*DeviceFeaturesSel.. +31; none above 63."""
    d = g.drv
    for sel, want in ((0, OFFERED & 0xFFFFFFFF), (1, OFFERED >> 32), (2, 0), (0xFFFFFFFF, 0)):
        d.write32(M.DeviceFeaturesSel, sel)
        assert d.read32(M.DeviceFeatures) == want


@pytest.mark.parametrize("features", [OFFERED | V.bit(V.VIRTIO_F_RING_PACKED),
                                      V.bit(G.VIRTIO_GPIO_F_IRQ), 0],
                         ids=["packed", "no-version1", "none"])
def test_features_ok_refused(g, features):
    """2.2.2 / 3.1.1 step 6: FEATURES_OK does not stick for features not offered or without
    VERSION_1 (a version 2 device has no legacy interface, 4.2.4); DRIVER_OK then neither."""
    d = g.drv
    d.reset()
    d.write_status(ACK | DRIVER)
    d.write_driver_features(features)
    d.write_status(ACK | DRIVER | FEATURES_OK)
    assert d.read_status() == ACK | DRIVER
    d.write_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert not d.read_status() & DRIVER_OK
    d.write_status(ACK | DRIVER | FAILED)
    assert d.read_status() & FAILED


def test_reset_clears_interrupt_status_and_queue_ready(up):
    """4.2.2.1: upon reset the device clears InterruptStatus and QueueReady of every queue;
    the queues show their maximum size again."""
    d = up.drv
    ping(d)
    assert d.read32(M.InterruptStatus) & VRING            # not acknowledged
    d.write_status(0)
    assert d.read_status() == 0
    assert d.read32(M.InterruptStatus) == 0
    for q in (REQUESTQ, EVENTQ):
        d.select_queue(q)
        assert d.read32(M.QueueReady) == 0
        assert d.read32(M.QueueNumMax) == 256


def test_driver_cannot_clear_status_bits_or_set_needs_reset(up):
    """2.1.2: the driver MUST NOT clear a status bit (only 0 resets); NEEDS_RESET is the
    device's to set."""
    d = up.drv
    for v in (ACK, DRIVER_OK, RUNNING | NEEDS_RESET):
        d.write_status(v)
        assert d.read_status() == RUNNING
    assert ping(d) == OK_LOW


# --- 4.2.3.2 queues ---------------------------------------------------------------------------

def test_queue_num_max_and_absent_queues(g):
    """4.2.2: QueueNumMax is the maximum size, 0 for a queue that is not available; a driver
    cannot set up an absent queue."""
    d = g.drv
    d.negotiate(BASE)
    for q, want in ((REQUESTQ, 256), (EVENTQ, 256), (2, 0), (0xFFFFFFFF, 0)):
        d.select_queue(q)
        assert d.read32(M.QueueNumMax) == want
    with pytest.raises(VirtioMmioError):
        d.setup_queue(2)


def test_queue_ready_zero_takes_the_queue_away(up):
    """4.2.2 QueueReady reads the last value written; Linux's vm_del_vq writes 0 and checks it
    reads 0: the queue is then not used (2.7: no access while not ready)."""
    d = up.drv
    d.select_queue(REQUESTQ)
    assert d.read32(M.QueueReady) == 1
    d.write32(M.QueueReady, 0)
    assert d.read32(M.QueueReady) == 0
    ring = d.rings[REQUESTQ]
    add_ping(ring)
    d.kick(REQUESTQ)
    assert ring.used() == []


def test_ring_addresses_use_both_halves():
    """4.2.2 QueueDesc/Driver/DeviceLow+High: a ring above 4 GiB works (the high halves are
    taken, not dropped)."""
    from vfio_virtio_kit.server_proc import ServerProcess
    with ServerProcess(*MMIO) as srv:
        client = VfioUserClient(srv.socket)
        mem = GuestMemory(1 << 20, iova=0x2_4000_0000)
        d = VirtioMmioDriver(client, mem)
        try:
            d.bring_up([REQUESTQ, EVENTQ], wanted=BASE, queue_size=8)
            assert d.rings[REQUESTQ].desc_addr >> 32 == 2
            assert ping(d) == OK_LOW
        finally:
            d.close()
            client.close()
            mem.close()


def test_queue_config_writes_ignored_while_ready(up):
    """4.2.3.2: the ring of a ready queue cannot be moved: address writes are ignored and the
    queue keeps working where it is."""
    d = up.drv
    d.select_queue(REQUESTQ)
    d.write32(M.QueueDescLow, 0x1000)
    d.write32(M.QueueNum, 4)
    assert ping(d) == OK_LOW


def test_queue_reset(server):
    """4.2.2.1 with VIRTIO_F_RING_RESET: writing 1 resets the queue; "the device MUST present
    0 in both QueueReset and QueueReady when queue reset has completed" (issue 12: this test
    used to expect 1 until re-enabled). Held eventq buffers are forgotten, never used;
    re-enabling the queue makes it work again."""
    g = open_gpio(server.socket, features=DEFAULT_FEATURES | V.bit(V.VIRTIO_F_RING_RESET))
    try:
        d = g.drv
        assert d.has(V.VIRTIO_F_RING_RESET)
        d.select_queue(EVENTQ)
        assert d.read32(M.QueueReset) == 0
        g.set_irq_type(1, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)
        g.queue_irq(1)
        d.select_queue(EVENTQ)
        d.write32(M.QueueReset, 1)
        assert d.read32(M.QueueReset) == 0 and d.read32(M.QueueReady) == 0
        assert d.rings[EVENTQ].used() == []
        d.setup_queue(EVENTQ, 16)
        d.select_queue(EVENTQ)
        assert d.read32(M.QueueReset) == 0 and d.read32(M.QueueReady) == 1
        assert g.get_value(0) == 0
    finally:
        g.close()


def test_queue_reset_without_the_feature_is_ignored(up):
    d = up.drv
    d.select_queue(REQUESTQ)
    d.write32(M.QueueReset, 1)
    assert d.read32(M.QueueReset) == 0 and d.read32(M.QueueReady) == 1
    assert ping(d) == OK_LOW


def test_notify_for_a_nonexistent_queue_is_ignored(up):
    """4.2.3.3: QueueNotify carries the queue index; an index without a queue does nothing."""
    d = up.drv
    for bad in (2, 0xFFFF, 0xFFFFFFFF):
        d.kick(bad)
    assert d.read_status() == RUNNING
    assert ping(d) == OK_LOW


# --- 4.2.3.4 interrupts ---------------------------------------------------------------------

def test_used_buffer_notification_and_ack(up):
    """4.2.2.1: InterruptStatus shows Used Buffer Notification from the moment it happens until
    the driver writes it to InterruptACK; the interrupt (INTx or MSI-X vector 0) fires; bits
    for events that did not happen are 0."""
    d = up.drv
    d.irq_fired()
    d.handle_irq()
    ping(d)
    assert d.irq_fired()
    assert d.read32(M.InterruptStatus) == VRING
    d.write32(M.InterruptACK, CONFIG)                  # acknowledging another bit: no change
    assert d.read32(M.InterruptStatus) == VRING
    d.write32(M.InterruptACK, VRING)
    assert d.read32(M.InterruptStatus) == 0
    d.irq_fired()
    d.read32(M.MagicValue)
    assert not d.irq_fired()                           # nothing pending: no interrupt


def test_intx_is_reasserted_while_status_is_pending(server):
    """INTx is a level (PCI 2.3 2.2.6): a vfio client drops it at the next BAR access, so the
    device asserts it again after every access that leaves InterruptStatus non-zero, and stops
    once the driver acknowledged everything."""
    g = open_gpio(server.socket, irq="intx")
    try:
        d = g.drv
        ping(d)
        assert d.irq_fired()
        d.read32(M.ConfigGeneration)                   # an unrelated access: still pending
        assert d.irq_fired()
        d.write32(M.InterruptACK, VRING)
        assert not d.irq_fired()
    finally:
        g.close()


def test_no_interrupt_when_the_driver_suppresses_it(up):
    """2.7.7: with VRING_AVAIL_F_NO_INTERRUPT the device does not notify: no status bit."""
    d = up.drv
    d.handle_irq()
    d.irq_fired()
    d.rings[REQUESTQ].suppress_interrupts()
    ping(d)
    assert d.read32(M.InterruptStatus) == 0
    assert not d.irq_fired()


def test_broken_ring_config_notification_and_generation(up):
    """2.1.2 / 4.2.3.4: an unrecoverable ring error sets DEVICE_NEEDS_RESET and a
    Configuration Change Notification; ConfigGeneration changes (4.2.2.1); a reset and a new
    bring-up recover."""
    d = up.drv
    ring = d.rings[REQUESTQ]
    gen = d.read32(M.ConfigGeneration)
    d.handle_irq()
    d.irq_fired()
    ring.set_avail_idx(ring.avail_idx + ring.size + 1)
    d.kick(REQUESTQ)
    assert d.read_status() & NEEDS_RESET
    assert d.irq_fired()
    assert d.handle_irq() == CONFIG
    assert d.read32(M.ConfigGeneration) != gen
    d.bring_up([REQUESTQ, EVENTQ], wanted=BASE, queue_size=16)
    assert d.read_status() == RUNNING
    assert ping(d) == OK_LOW


# --- 4.2.2 Config, shared memory -----------------------------------------------------------

def test_config_space_at_0x100(g):
    """4.2.2 Config / 5.17.4: ngpio (le16) and gpio_names_size (le32) at 0x100, read with the
    field's own width (4.2.2.2); bytes past the structure read 0; writes are ignored."""
    ngpio, names_size = g.config()
    assert ngpio == 8 and names_size >= len("l0l1l2l3l4l5l6l7") + 8
    c = g.client
    assert c.region_read(0, M.Config, 2) == struct.pack("<H", 8)
    assert c.region_read(0, M.Config, 1) == b"\x08"
    c.region_write(0, M.Config, b"\x01\x00")
    assert c.region_read(0, M.Config, 2) == struct.pack("<H", 8)
    assert c.region_read(0, M.Config + 8, 4) == bytes(4)
    assert g.drv.read32(M.ConfigGeneration) == g.drv.read32(M.ConfigGeneration)


def test_shared_memory_regions_absent(g):
    """4.2.2: reading SHMLen of an unused SHMSel ID gives -1 (all ones): no regions."""
    d = g.drv
    for sel in (0, 1, 0xFFFFFFFF):
        d.write32(M.SHMSel, sel)
        assert d.read32(M.SHMLenLow) == d.read32(M.SHMLenHigh) == 0xFFFFFFFF
        assert d.read32(M.SHMBaseLow) == d.read32(M.SHMBaseHigh) == 0xFFFFFFFF


# --- virtio-gpio through the mmio front end (5.17) -----------------------------------------

def test_gpio_requests_and_names(up):
    """5.17.6: requests through the requestq behind virtio-mmio: names, output, readback."""
    assert up.names() == [f"l{i}" for i in range(8)]
    up.set_value(3, 1)
    up.set_direction(3, OUT)
    assert up.get_direction(3) == OUT
    assert up.get_value(3) == 1
    up.set_direction(3, G.VIRTIO_GPIO_DIRECTION_NONE)


def test_gpio_irq_through_the_eventq(server_factory):
    """5.17.6.2: an unmasked rising-edge line with a buffer queued completes it VALID on an
    edge, signalled through InterruptStatus and the one interrupt."""
    srv = server_factory(*MMIO, "--lines", "8")
    for irq in ("intx", "msix"):
        with open_gpio(srv.socket, irq=irq) as g, ControlClient(srv.control) as host:
            host.set(1, 0)
            g.set_irq_type(1, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)
            g.queue_irq(1)
            settle(g)
            assert g.poll_events() == []
            g.drv.handle_irq()
            g.drv.irq_fired()
            host.set(1, 1)
            settle(g)                                  # the control socket's edge is handled
            assert g.drv.irq_fired()
            assert g.drv.handle_irq() == VRING
            assert g.events(timeout=5) == [(1, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]


# --- power management: what the mmio path does on suspend -----------------------------------

def _configure(g, host) -> None:
    host.set(1, 0)
    g.set_value(0, 1)
    g.set_direction(0, OUT)
    g.set_irq_type(1, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)
    g.queue_irq(1)


def test_suspend_feature_keeps_queues_and_events(server_factory):
    """virtio 1.4 VIRTIO_F_SUSPEND through virtio-mmio: SUSPEND reads back with DRIVER_OK
    clear; nothing is processed or signalled while suspended, an edge is latched; DRIVER_OK
    resumes with the queues, the queued eventq buffer and the lines intact. This is what a
    virtio_mmio freeze could do instead of a reset, if Linux negotiated the feature."""
    srv = server_factory(*MMIO)
    with open_gpio(srv.socket, features=DEFAULT_FEATURES | V.bit(V.VIRTIO_F_SUSPEND)) as g, \
            ControlClient(srv.control) as host:
        d = g.drv
        assert d.has(V.VIRTIO_F_SUSPEND)
        _configure(g, host)
        d.write_status(RUNNING | V.VIRTIO_CONFIG_S_SUSPEND)
        st = d.read_status()
        assert st & V.VIRTIO_CONFIG_S_SUSPEND and not st & DRIVER_OK
        head = g.add_request(G.VIRTIO_GPIO_MSG_GET_VALUE, 0)
        d.kick(REQUESTQ)
        host.set(1, 1)
        settle(g)
        d.handle_irq()
        d.irq_fired()
        assert d.rings[REQUESTQ].used() == [] and d.rings[EVENTQ].used() == []
        assert not d.irq_fired() and d.read32(M.InterruptStatus) == 0
        assert host.get(0)["value"] == 1
        d.write_status(RUNNING)
        assert d.read_status() == RUNNING
        assert g.complete(1)[head] == bytes([G.VIRTIO_GPIO_STATUS_OK, 1])
        assert g.events(timeout=5) == [(1, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]


def test_virtio_mmio_restore_without_driver_restore_loses_the_queues(server_factory):
    """What Linux's virtio_mmio does on every suspend (virtio_device_restore): reset, ACK,
    DRIVER, FEATURES_OK, then DRIVER_OK; gpio-virtio has no restore callback so its queues
    are never set up again. The device is right to ignore them (4.2.2.1: QueueReady cleared on
    reset): the queued eventq buffer is gone and a request is never answered."""
    srv = server_factory(*MMIO)
    with open_gpio(srv.socket) as g, ControlClient(srv.control) as host:
        d = g.drv
        _configure(g, host)
        rings = dict(d.rings)
        d.negotiate(DEFAULT_FEATURES)                  # reset + re-negotiation
        d.rings = rings                                # the driver still believes in them
        d.driver_ok()
        assert d.read_status() == RUNNING
        for q in (REQUESTQ, EVENTQ):
            d.select_queue(q)
            assert d.read32(M.QueueReady) == 0
        head = g.add_request(G.VIRTIO_GPIO_MSG_GET_VALUE, 0)
        d.kick(REQUESTQ)
        host.set(1, 1)
        settle(g)
        assert d.rings[REQUESTQ].used() == [] and d.rings[EVENTQ].used() == []
        with pytest.raises(TimeoutError):
            g.complete(1, timeout=0.3)
        assert host.get(0)["value"] == 1               # only the virtio state was lost
        del head


def test_d3hot_with_no_soft_reset_keeps_state_and_gates_the_bar(server_factory):
    """PCI PM through the bridge: in D3hot BAR0 reads all ones (no decode) and nothing is
    processed; back in D0 with No_Soft_Reset the device continues with all state. (virtio_mmio
    resets it anyway in its restore callback: the test above.)"""
    srv = server_factory(*MMIO, "--no-soft-reset")
    with open_gpio(srv.socket, irq="msix") as g, ControlClient(srv.control) as host:
        d = g.drv
        _configure(g, host)
        d.set_power_state(P.PCI_D3hot)
        assert d.read32(M.MagicValue) == 0xFFFFFFFF
        host.set(1, 1)
        settle(g)
        assert d.rings[EVENTQ].used() == []
        d.set_power_state(P.PCI_D0)
        assert d.read_status() == RUNNING
        assert g.events(timeout=5) == [(1, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]
        assert g.get_value(0) == 1


def test_lost_connection_resets(server):
    """A client that goes away leaves a reset device for the next one (vfio-user LOST_CONN)."""
    with open_gpio(server.socket) as g:
        ping(g.drv)
    with open_gpio(server.socket, bring_up=False) as g:
        assert g.drv.read_status() == 0
        assert g.drv.read32(M.InterruptStatus) == 0
