"""The function served without MSI-X (``--no-msix``, docs/HANDOVER.md "Re-plugging the
device"), and INTx as a level on the virtio-pci transport.

QEMU 11.1 aborts when it unplugs a vfio-user device that has an MSI-X capability, so a
device meant to be re-plugged is served with INTx only: no MSI-X capability in config
space, no BAR1, no MSI-X interrupts in GET_IRQ_INFO; the virtio-pci transport falls back
to INTx and the ISR status (virtio 1.3 4.1.4.5, 4.1.5.4).

INTx is a level (PCI 3.0 2.2.6) carried as an eventfd edge; a vfio client (QEMU's
vfio_intx_eoi) deasserts it after every BAR access, so the function signals it again after
each access while the ISR status is still non-zero (as tests/vfu/test_mmio_transport.py
checks for the mmio front end).
"""
from __future__ import annotations

import os

import pytest

from tests.vfu.transport_kit import (BASE, EVENTQ, NO_VECTOR, OK_LOW, REQUESTQ, fired,
                                     open_gpio, ping, server,
                                     shared_server, start_shared)
from vfio_virtio.pci import spec as P
from vfio_virtio_kit import vfio_user_spec as U
from vfio_virtio.virtio import spec as V


SERVER_ARGS = ("--no-msix",)           # for transport_kit's shared_server (INTx only)


@pytest.fixture(scope="module")
def msix_server(tmp_path_factory):
    srv = start_shared(tmp_path_factory)
    yield srv
    srv.stop()


def _caps(client) -> list[int]:
    """The capability IDs on config space's list (PCI 3.0 6.7)."""
    ids, pos = [], client.cfg_read8(P.PCI_CAPABILITY_LIST) & ~3
    while pos and len(ids) < 48:
        ids.append(client.cfg_read8(pos))
        pos = client.cfg_read8(pos + 1) & ~3
    return ids


def _intx_up(g) -> int:
    """MSI-X off (if the function has it), INTx wired to an eventfd, queues on no vector,
    DRIVER_OK; returns the eventfd."""
    d = g.drv
    if d.msix is not None:
        pos = d.msix.cap_offset + P.PCI_MSIX_FLAGS
        g.client.cfg_write16(pos, g.client.cfg_read16(pos) & ~P.PCI_MSIX_FLAGS_ENABLE)
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    g.client.set_irqs(U.VFIO_PCI_INTX_IRQ_INDEX, 0, [fd])
    d.negotiate(BASE)
    for q in (REQUESTQ, EVENTQ):
        d.setup_queue(q, 16, None)
    d.driver_ok()
    return fd


def test_no_msix_function_has_intx_only(server):
    """No MSI-X capability (PM, Express and virtio's vendor caps stay), BAR1 absent,
    zero MSI-X interrupts, one INTx; INTA# in Interrupt Pin."""
    g = open_gpio(server, bring_up=False)
    try:
        caps = _caps(g.client)
        assert P.PCI_CAP_ID_MSIX not in caps, caps
        assert P.PCI_CAP_ID_PM in caps and P.PCI_CAP_ID_EXP in caps
        assert P.PCI_CAP_ID_VNDR in caps
        assert g.drv.msix is None
        assert g.client.region_info(U.VFIO_PCI_BAR0_REGION_INDEX + 1).size == 0
        assert g.client.region_info(U.VFIO_PCI_BAR0_REGION_INDEX).size > 0
        assert g.client.irq_info(U.VFIO_PCI_MSIX_IRQ_INDEX).count == 0
        assert g.client.irq_info(U.VFIO_PCI_INTX_IRQ_INDEX).count == 1
        assert g.client.cfg_read8(P.PCI_INTERRUPT_PIN) == 1
    finally:
        g.close()


def test_no_msix_requests_complete_on_intx(server):
    """Without MSI-X the driver's queues run on INTx: a used buffer sets ISR bit 0 and
    signals INTx; a queue vector written reads back NO_VECTOR (4.1.4.3: no MSI-X vector
    can be mapped)."""
    g = open_gpio(server, bring_up=False)
    try:
        fd = _intx_up(g)
        d = g.drv
        d.common_write(V.VIRTIO_PCI_COMMON_Q_SELECT, REQUESTQ, 2)
        d.common_write(V.VIRTIO_PCI_COMMON_Q_MSIX, 0, 2)
        assert d.common_read(V.VIRTIO_PCI_COMMON_Q_MSIX, 2) == NO_VECTOR
        for _ in range(3):
            assert ping(d) == OK_LOW
            assert fired(fd)
            assert d.read_isr() == V.VIRTIO_PCI_ISR_QUEUE
        os.close(fd)
    finally:
        g.close()


@pytest.mark.parametrize("which", ["no-msix", "msix-disabled"])
def test_intx_is_reasserted_while_isr_is_pending(which, request):
    """A BAR access that leaves the ISR status non-zero signals INTx again (the client
    dropped the level at that access); reading the ISR clears it and the signalling stops.
    Same with MSI-X present but disabled by the driver."""
    srv = request.getfixturevalue("server" if which == "no-msix" else "msix_server")
    g = open_gpio(srv, bring_up=False)
    try:
        fd = _intx_up(g)
        d = g.drv
        assert ping(d) == OK_LOW
        assert fired(fd)
        d.common_read(V.VIRTIO_PCI_COMMON_DFSELECT, 4)        # an unrelated access
        assert fired(fd), "INTx not re-signalled while ISR is pending"
        d.common_read(V.VIRTIO_PCI_COMMON_STATUS, 1)
        assert fired(fd)
        assert d.read_isr() == V.VIRTIO_PCI_ISR_QUEUE
        d.common_read(V.VIRTIO_PCI_COMMON_DFSELECT, 4)
        assert not fired(fd)                                  # nothing pending: quiet
        os.close(fd)
    finally:
        g.close()


def test_handover_to_a_server_without_msix(tmp_path):
    """A successor started with ``--no-msix`` cannot take a device whose driver programmed
    MSI-X vectors (the snapshot does not fit: the old server keeps serving, same
    connection); once the driver reset the device (an unplug does) it takes it over."""
    from vfio_virtio.gpio import spec as G
    from vfio_virtio_kit.gpio_driver import GpioDriver
    from vfio_virtio_kit.server_proc import ServerProcess

    wd = str(tmp_path)
    h = os.path.join(wd, "handover.sock")
    old = ServerProcess("--lines", "8", "--handover", h, workdir=wd).start()
    new = None
    try:
        d = GpioDriver.open(old.socket)                    # MSI-X vectors programmed
        d.set_value(0, 1)
        d.set_direction(0, G.VIRTIO_GPIO_DIRECTION_OUT)
        bad = ServerProcess("--lines", "8", "--no-msix", "--take-over", h, workdir=wd)
        bad.log_path = os.path.join(wd, "bad.log")
        with pytest.raises(RuntimeError):
            bad.start()
        assert "MSI-X vector" in bad.log_tail() and "handover aborted" in bad.log_tail()
        assert old.alive() and d.get_value(0) == 1        # still served
        d.drv.reset()                                      # the guest driver's remove
        d.close()
        new = ServerProcess("--lines", "8", "--no-msix", "--take-over", h, workdir=wd)
        new.log_path = os.path.join(wd, "new.log")
        new.start()
        assert old.proc.wait(10) == 0, old.log_tail()
        g = open_gpio(new, bring_up=False)
        try:
            assert g.drv.msix is None
            fd = _intx_up(g)
            assert ping(g.drv) == bytes([G.VIRTIO_GPIO_STATUS_OK, 1])   # line 0 kept 1
            assert fired(fd)
            os.close(fd)
        finally:
            g.close()
    finally:
        old.stop()
        if new is not None:
            new.stop()
