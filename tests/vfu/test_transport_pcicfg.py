"""virtio-pci transport over the real socket: the PCI configuration access capability
(VIRTIO_PCI_CAP_PCI_CFG, 4.1.4.9), a window into BAR0 through config space.

Spec references are virtio 1.3. Helpers and fixtures: tests/vfu/transport_kit.py.
"""
from __future__ import annotations

import struct

import pytest

from tests.vfu.transport_kit import (ACK, DRIVER, g, open_gpio, qread, select_queue,
                                          server, shared_server)
from vfio_virtio.virtio import spec as V

C = V
__all__ = ["g", "server", "shared_server"]   # fixtures: one server process per module


# --- 4.1.4.9 PCI configuration access capability ----------------------------------------------

class _Window:
    """virtio_pci_cfg_cap through config space: cap.bar (+4), cap.offset (+8), cap.length
    (+12), pci_cfg_data (+16)."""

    def __init__(self, d) -> None:
        self.c = d.client
        self.pos = d.caps[C.VIRTIO_PCI_CAP_PCI_CFG].cap_offset

    def select(self, bar: int, offset: int, length: int) -> None:
        self.c.cfg_write(self.pos + 4, bytes([bar]))
        self.c.cfg_write32(self.pos + 8, offset)
        self.c.cfg_write32(self.pos + 12, length)

    def read(self) -> int:
        return self.c.cfg_read32(self.pos + 16)

    def write(self, value: int, length: int = 4) -> None:
        self.c.cfg_write(self.pos + 16, value.to_bytes(4, "little")[:length])


def test_pci_cfg_window_reads_and_writes_bar0(g):
    """4.1.4.9: with cap.bar/offset/length set, reading pci_cfg_data reads that BAR range and
    writing it writes there: num_queues, device_status, ngpio through config space."""
    d = g.drv
    w = _Window(d)
    gen = qread(d, C.VIRTIO_PCI_COMMON_CFGGENERATION, 1)
    common = d.caps[C.VIRTIO_PCI_CAP_COMMON_CFG]
    devcfg = d.caps[C.VIRTIO_PCI_CAP_DEVICE_CFG]
    w.select(common.bar, common.offset + C.VIRTIO_PCI_COMMON_NUMQ, 2)
    assert w.read() & 0xFFFF == 2
    raw = d.client.cfg_read(w.pos, 20)
    assert struct.unpack_from("<BII", raw, 4)[0] == common.bar        # fields read back
    w.select(devcfg.bar, devcfg.offset, 2)
    assert w.read() & 0xFFFF == 8                                    # ngpio
    w.select(common.bar, common.offset + C.VIRTIO_PCI_COMMON_STATUS, 1)
    w.write(ACK, 1)
    assert d.read_status() == ACK
    assert w.read() & 0xFF == ACK
    w.write(ACK | DRIVER, 4)                    # a 4-byte data write, 1 byte selected
    assert d.read_status() == ACK | DRIVER
    assert qread(d, C.VIRTIO_PCI_COMMON_CFGGENERATION, 1) == gen    # the next byte untouched
    w.write(0, 1)
    assert d.read_status() == 0
    # a virtio reset is not a PCI reset: the window keeps its selection
    assert struct.unpack_from("<BxxxII", d.client.cfg_read(w.pos + 4, 12)) == \
        (common.bar, common.offset + C.VIRTIO_PCI_COMMON_STATUS, 1)


def test_pci_cfg_window_cleared_by_function_reset(server):
    """4.1.4.9 fields are config-space registers: a function reset (VFIO_USER_DEVICE_RESET,
    or the client going away) returns cap.bar/offset/length/pci_cfg_data to 0, so a reserved
    bar value written by one driver cannot hide the capability from the next (4.1.4: the
    driver ignores a capability with a reserved bar)."""
    for how in ("device-reset", "reconnect"):
        gd = open_gpio(server, bring_up=False)
        try:
            w = _Window(gd.drv)
            w.select(7, 0x1234, 4)
            w.write(0xAABBCCDD)
            if how == "device-reset":
                gd.client.device_reset()
                assert gd.client.cfg_read(w.pos + 4, 16) == bytes(16)
        finally:
            gd.close()
        gd = open_gpio(server, bring_up=False)
        try:
            assert C.VIRTIO_PCI_CAP_PCI_CFG in gd.drv.caps
            assert gd.client.cfg_read(w.pos + 4, 16) == bytes(16)
        finally:
            gd.close()


@pytest.mark.parametrize("bar, off, length", [
    (1, C.VIRTIO_PCI_COMMON_Q_SELECT, 2),       # another BAR
    (0, C.VIRTIO_PCI_COMMON_Q_SELECT, 3),       # length not 1, 2 or 4
    (0, C.VIRTIO_PCI_COMMON_Q_SELECT, 0),
    (0, C.VIRTIO_PCI_COMMON_Q_SELECT - 1, 2),   # not aligned to the length
    (0, C.VIRTIO_PCI_COMMON_Q_SELECT, 4),
    (0, 0xFFFFFFFC, 4),                         # beyond the BAR
    (7, C.VIRTIO_PCI_COMMON_Q_SELECT, 2),       # reserved bar value
], ids=["bar1", "len3", "len0", "misaligned2", "misaligned4", "beyond", "bar7"])
def test_pci_cfg_window_invalid_access_is_inert(g, bar, off, length):
    """4.1.4.9: the driver MUST use an aligned access of 1, 2 or 4 bytes inside the BAR.
    Otherwise this device makes pci_cfg_data inert: reads give 0, writes change nothing."""
    d = g.drv
    w = _Window(d)
    gen = qread(d, C.VIRTIO_PCI_COMMON_CFGGENERATION, 1)
    select_queue(d, 1)
    w.select(bar, off, length)
    assert w.read() == 0
    w.write(0)
    assert qread(d, C.VIRTIO_PCI_COMMON_Q_SELECT) == 1
    assert qread(d, C.VIRTIO_PCI_COMMON_CFGGENERATION, 1) == gen
    assert d.num_queues() == 2
