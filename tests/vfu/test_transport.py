"""virtio-pci transport over the real socket: the device status state machine (2.1, 3.1)
and the feature windows (2.2, 4.1.4.3), as a driver observes them.

Spec references are virtio 1.3. Helpers and fixtures: tests/vfu/transport_kit.py.
"""
from __future__ import annotations

import pytest

from tests.vfu.transport_kit import (ACK, BASE, CONFIG_VEC, DRIVER, DRIVER_OK, EVENTQ,
                                          FAILED, FEATURES_OK, NEEDS_RESET, NO_VECTOR, OFFERED,
                                          OK_LOW, REQUESTQ, add_ping, drain, fired, g, ping,
                                          qread, select_queue, server, shared_server, up)
from vfio_virtio.gpio import spec as G
from vfio_virtio.virtio import spec as V

C = V
__all__ = ["g", "up", "server", "shared_server"]   # fixtures: one server process per module


# --- 3.1.1 bring-up and 2.1 status ----------------------------------------------------------

def test_bring_up_sequence_reads_back_each_step(g):
    """3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK (re-read), queues, DRIVER_OK;
    each status bit accumulates and reads back; then the device serves requests."""
    d = g.drv
    d.reset()
    assert d.read_status() == 0
    d.write_status(ACK)
    assert d.read_status() == ACK
    d.write_status(ACK | DRIVER)
    assert d.read_status() == ACK | DRIVER
    assert d.device_features() == OFFERED
    d.write_driver_features(BASE)
    d.write_status(ACK | DRIVER | FEATURES_OK)
    assert d.read_status() == ACK | DRIVER | FEATURES_OK        # 3.1.1 step 6
    d.features = BASE
    d.enable_msix()
    d.set_config_vector(CONFIG_VEC)
    d.setup_queue(REQUESTQ, 16, 1)
    d.setup_queue(EVENTQ, 16, 2)
    d.write_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert d.read_status() == ACK | DRIVER | FEATURES_OK | DRIVER_OK
    assert ping(d) == OK_LOW


@pytest.mark.parametrize("features", [
    OFFERED | V.bit(V.VIRTIO_F_RING_PACKED),       # not offered
    BASE | V.bit(63),                               # not offered, top of the 64 bits
    V.bit(G.VIRTIO_GPIO_F_IRQ),                     # no VERSION_1 (legacy not offered)
    0,
], ids=["packed", "bit63", "no-version1", "none"])
def test_features_ok_refused(g, features):
    """2.2.2 / 3.1.1 step 6: the device does not set FEATURES_OK for a feature set it cannot
    accept (a bit it did not offer, or no VERSION_1: 7.2 legacy is not offered); a
    following DRIVER_OK is not accepted either (2.1.2: DRIVER_OK needs FEATURES_OK)."""
    d = g.drv
    d.reset()
    d.write_status(ACK | DRIVER)
    d.write_driver_features(features)
    d.write_status(ACK | DRIVER | FEATURES_OK)
    assert d.read_status() == ACK | DRIVER
    d.write_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert not d.read_status() & DRIVER_OK
    d.write_status(ACK | DRIVER | FAILED)           # what a driver does next
    assert d.read_status() & FAILED


def test_driver_ok_without_features_ok_is_ignored(g):
    """3.1.1 order: DRIVER_OK before FEATURES_OK is not accepted, and a queue the driver set
    up anyway is not processed."""
    d = g.drv
    d.reset()
    d.write_status(ACK | DRIVER)
    d.features = BASE
    ring = d.setup_queue(REQUESTQ, 16)
    d.write_status(ACK | DRIVER | DRIVER_OK)
    assert d.read_status() == ACK | DRIVER
    add_ping(ring)
    d.kick(REQUESTQ)
    assert ring.used() == []


def test_driver_cannot_clear_status_bits(up):
    """2.1.2: the driver MUST NOT clear a device status bit; a write that tries leaves the
    bits set (only writing 0 resets) and the device keeps working."""
    d = up.drv
    full = ACK | DRIVER | FEATURES_OK | DRIVER_OK
    for v in (ACK, ACK | DRIVER, DRIVER_OK, FEATURES_OK | DRIVER_OK):
        d.write_status(v)
        assert d.read_status() == full
    d.write_status(full | NEEDS_RESET)              # DEVICE_NEEDS_RESET is the device's bit
    assert d.read_status() == full
    assert ping(d) == OK_LOW


def test_writing_zero_resets_every_register(up):
    """4.1.4.3.1: writing 0 to device_status resets the device; it reads back 0 and the
    common configuration shows power-on values (queues disabled, default sizes, no vectors,
    no driver features)."""
    d = up.drv
    ping(d)
    d.write_status(0)
    assert d.read_status() == 0
    assert qread(d, C.VIRTIO_PCI_COMMON_MSIX) == NO_VECTOR
    for sel in (0, 1):
        d.common_write(C.VIRTIO_PCI_COMMON_GFSELECT, sel, 4)
        assert d.common_read(C.VIRTIO_PCI_COMMON_GF, 4) == 0
    for q in (REQUESTQ, EVENTQ):
        select_queue(d, q)
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_ENABLE) == 0
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_SIZE) == 256
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_MSIX) == NO_VECTOR
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_DESCLO, 8) == 0
        assert qread(d, C.VIRTIO_PCI_COMMON_Q_RESET) == 0
    assert d.read_isr() == 0


def test_failed_stops_processing_until_reset(up):
    """2.1.1 FAILED: the driver gave up; the device stops using the queues. A reset and a
    new initialisation bring it back."""
    d = up.drv
    assert ping(d) == OK_LOW
    drain(d)
    d.add_status(FAILED)
    assert d.read_status() & FAILED
    ring = d.rings[REQUESTQ]
    add_ping(ring)
    d.kick(REQUESTQ)
    assert ring.used() == []
    assert not fired(d.eventfds[1])
    d.bring_up([REQUESTQ, EVENTQ], wanted=BASE, queue_size=16)
    assert ping(d) == OK_LOW


@pytest.mark.parametrize("breakage", ["avail-idx-jump", "head-out-of-range"])
def test_broken_ring_sets_needs_reset_with_config_interrupt(up, breakage):
    """2.1.2: an unrecoverable ring error sets DEVICE_NEEDS_RESET and, DRIVER_OK being set,
    sends a configuration change notification (4.1.5.3: on the config MSI-X vector). Broken
    per 2.7.13 / 2.7.6: avail idx more than queue size ahead, or a head index >= size. The
    device then ignores the queue; a reset recovers it (3.1.1)."""
    d = up.drv
    ring = d.rings[REQUESTQ]
    assert ping(d) == OK_LOW
    gen = qread(d, C.VIRTIO_PCI_COMMON_CFGGENERATION, 1)
    drain(d)
    if breakage == "avail-idx-jump":
        ring.set_avail_idx(ring.avail_idx + ring.size + 1)
    else:
        ring.add_raw({}, head=ring.size + 3)
    d.kick(REQUESTQ)
    assert d.read_status() & NEEDS_RESET
    assert d.read_status() & DRIVER_OK
    assert fired(d.eventfds[CONFIG_VEC])
    assert not fired(d.eventfds[1])
    # a broken device does not process further requests (on any queue)
    used_before = ring.used_idx
    ring.set_avail_idx(ring.used_idx)
    add_ping(ring)
    d.kick(REQUESTQ)
    assert ring.used_idx == used_before
    assert qread(d, C.VIRTIO_PCI_COMMON_CFGGENERATION, 1) in (gen, (gen + 1) & 0xFF)
    d.bring_up([REQUESTQ, EVENTQ], wanted=BASE, queue_size=16)
    assert d.read_status() == ACK | DRIVER | FEATURES_OK | DRIVER_OK
    assert ping(d) == OK_LOW


# --- 4.1.4.3 feature windows ----------------------------------------------------------------

def test_device_feature_select_windows(g):
    """4.1.4.3: device_feature shows bits 32*select .. 32*select+31; the device offers no
    bit above 63, so select 2 and beyond read 0."""
    d = g.drv
    for sel, want in ((0, OFFERED & 0xFFFFFFFF), (1, OFFERED >> 32), (2, 0), (0xFFFFFFFF, 0)):
        d.common_write(C.VIRTIO_PCI_COMMON_DFSELECT, sel, 4)
        assert d.common_read(C.VIRTIO_PCI_COMMON_DFSELECT, 4) == sel
        assert d.common_read(C.VIRTIO_PCI_COMMON_DF, 4) == want
    d.common_write(C.VIRTIO_PCI_COMMON_DF, 0, 4)              # read-only for the driver
    d.common_write(C.VIRTIO_PCI_COMMON_DFSELECT, 0, 4)
    assert d.common_read(C.VIRTIO_PCI_COMMON_DF, 4) == OFFERED & 0xFFFFFFFF


def test_driver_feature_select_windows(g):
    """4.1.4.3: driver_feature_select picks which 32 bits driver_feature reads and writes;
    windows are independent; windows beyond bit 63 read 0 and ignore writes."""
    d = g.drv
    d.reset()
    d.write_status(ACK | DRIVER)
    gf, gfs = C.VIRTIO_PCI_COMMON_GF, C.VIRTIO_PCI_COMMON_GFSELECT
    lo, hi = V.bit(G.VIRTIO_GPIO_F_IRQ) | V.bit(V.VIRTIO_F_EVENT_IDX), BASE >> 32
    for sel, v in ((0, lo), (1, hi)):
        d.common_write(gfs, sel, 4)
        d.common_write(gf, v, 4)
    d.common_write(gfs, 2, 4)
    d.common_write(gf, 0xFFFFFFFF, 4)
    assert d.common_read(gf, 4) == 0
    for sel, v in ((0, lo), (1, hi)):
        d.common_write(gfs, sel, 4)
        assert d.common_read(gf, 4) == v
    d.write_status(ACK | DRIVER | FEATURES_OK)
    assert d.read_status() & FEATURES_OK          # the windows combined: lo | hi << 32


def test_feature_writes_after_features_ok_are_ignored(up):
    """3.1.1 step 5 / 2.2.2: features are fixed at FEATURES_OK; later driver_feature writes
    change nothing."""
    d = up.drv
    gf, gfs = C.VIRTIO_PCI_COMMON_GF, C.VIRTIO_PCI_COMMON_GFSELECT
    for sel in (0, 1):
        d.common_write(gfs, sel, 4)
        d.common_write(gf, (OFFERED >> 32 * sel) & 0xFFFFFFFF, 4)
    got = 0
    for sel in (0, 1):
        d.common_write(gfs, sel, 4)
        got |= d.common_read(gf, 4) << 32 * sel
    assert got == BASE
    assert ping(d) == OK_LOW


def test_config_generation_and_device_config_stable(up):
    """2.5.1 / 4.1.4.3: config_generation changes only when the device configuration
    changes; virtio-gpio's (ngpio, gpio_names_size) never does (5.17.4)."""
    d = up.drv
    gen = qread(d, C.VIRTIO_PCI_COMMON_CFGGENERATION, 1)
    ngpio, names_size = up.config()
    assert ngpio == 8 and names_size == len(b"l0\0l1\0l2\0l3\0l4\0l5\0l6\0l7\0")
    for _ in range(3):
        ping(d)
    d.common_write(C.VIRTIO_PCI_COMMON_CFGGENERATION, gen + 1, 1)   # read-only
    assert qread(d, C.VIRTIO_PCI_COMMON_CFGGENERATION, 1) == gen
    assert up.config() == (ngpio, names_size)
