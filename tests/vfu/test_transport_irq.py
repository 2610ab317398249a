"""Interrupts of the virtio-pci transport over the real socket: MSI-X vectors per queue and
for configuration changes (4.1.5.1.2, 4.1.5.3, 4.1.5.4), VIRTIO_MSI_NO_VECTOR, and the INTx
fallback with the ISR status (4.1.4.5). Helpers: tests/vfu/transport_kit.py.

The client wires MSI-X vector i to an eventfd with SET_IRQS on VFIO_PCI_MSIX_IRQ_INDEX and
INTx with SET_IRQS on VFIO_PCI_INTX_IRQ_INDEX (index 0, one subindex), as QEMU does.
"""
from __future__ import annotations

import os

import pytest

from tests.vfu.transport_kit import (BASE, EVENTQ, NEEDS_RESET, NO_VECTOR, OK_LOW,
                                          REQUESTQ, drain, fired, open_gpio, ping, qread,
                                          select_queue, server, shared_server, wait_fd)
from vfio_virtio.backends.control import ControlClient
from vfio_virtio.gpio import spec as G
from vfio_virtio.pci import spec as P
from vfio_virtio_kit import vfio_user_spec as U
from vfio_virtio.virtio import spec as V

C = V
__all__ = ["server", "shared_server"]      # fixtures: one server process for the module
IRQ = V.bit(G.VIRTIO_GPIO_F_IRQ)


def _setup(g, config_vec: int, vecs: dict[int, int | None], msix: bool = True) -> None:
    """3.1.1 with chosen vectors: config vector and a vector (or None) per queue."""
    d = g.drv
    d.negotiate(BASE | IRQ)
    if msix:
        d.enable_msix()
        d.common_write(C.VIRTIO_PCI_COMMON_MSIX, config_vec, 2)
    for q, vec in vecs.items():
        d.setup_queue(q, 16, vec)
    d.driver_ok()


def _arm_line(g, ctl: ControlClient, line: int = 3) -> None:
    ctl.set(line, 0)
    g.set_direction(line, G.VIRTIO_GPIO_DIRECTION_IN)
    g.set_irq_type(line, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)
    g.queue_irq(line)


def _break_requestq(d) -> None:
    ring = d.rings[REQUESTQ]
    ring.set_avail_idx(ring.avail_idx + ring.size + 1)
    d.kick(REQUESTQ)
    assert d.read_status() & NEEDS_RESET


@pytest.fixture
def g(server):
    gd = open_gpio(server, features=BASE | IRQ, bring_up=False)
    yield gd
    gd.close()


@pytest.mark.parametrize("cfg, q0, q1", [(0, 1, 2), (2, 0, 1), (1, 2, 2)])
def test_msix_vector_per_queue(g, server, cfg, q0, q1):
    """4.1.5.1.2 / 4.1.5.4: a used buffer interrupts on its queue's queue_msix_vector and on
    no other vector (two queues may share one)."""
    _setup(g, cfg, {REQUESTQ: q0, EVENTQ: q1})
    d = g.drv
    fds = d.eventfds
    assert ping(d) == OK_LOW
    assert [fired(fd) for fd in fds] == [v == q0 for v in range(3)]
    with ControlClient(server.control) as ctl:
        _arm_line(g, ctl)
        drain(d)
        ctl.set(3, 1)
        assert wait_fd(fds[q1])
        assert g.drv.rings[EVENTQ].used()
        assert [fired(fd) for fd in fds] == [False] * 3


def test_no_vector_means_no_interrupt(g):
    """4.1.5.1.2: VIRTIO_MSI_NO_VECTOR for a queue: used buffers are added, no MSI-X
    message is sent (and, MSI-X being enabled, no INTx either)."""
    _setup(g, 0, {REQUESTQ: None, EVENTQ: 2})
    d = g.drv
    select_queue(d, REQUESTQ)
    assert qread(d, C.VIRTIO_PCI_COMMON_Q_MSIX) == NO_VECTOR
    for _ in range(3):
        assert ping(d) == OK_LOW
    assert [fired(fd) for fd in d.eventfds] == [False] * 3
    assert d.read_isr() & V.VIRTIO_PCI_ISR_QUEUE == 0


def test_config_change_on_config_vector(g):
    """4.1.5.3: a configuration change (here DEVICE_NEEDS_RESET, 2.1.2) is signalled on
    config_msix_vector only."""
    _setup(g, 2, {REQUESTQ: 0, EVENTQ: 1})
    d = g.drv
    drain(d)
    _break_requestq(d)
    assert [fired(fd) for fd in d.eventfds] == [False, False, True]


def test_config_change_with_no_vector_is_silent(g):
    """4.1.5.1.2: config_msix_vector = NO_VECTOR: no configuration change interrupt; the
    driver still sees DEVICE_NEEDS_RESET in device_status."""
    _setup(g, NO_VECTOR, {REQUESTQ: 1, EVENTQ: 2})
    d = g.drv
    assert qread(d, C.VIRTIO_PCI_COMMON_MSIX) == NO_VECTOR
    drain(d)
    _break_requestq(d)
    assert [fired(fd) for fd in d.eventfds] == [False] * 3


def _msix_ctrl(g) -> int:
    return g.drv.msix.cap_offset + P.PCI_MSIX_FLAGS


@pytest.fixture
def intx(g):
    """MSI-X disabled (written explicitly, as Linux's PCI core does at probe: a previous
    client may have left it on, see test_function_reset_clears_msix_enable); INTx (VFIO irq
    index 0) wired to an eventfd."""
    pos = _msix_ctrl(g)
    g.client.cfg_write16(pos, g.client.cfg_read16(pos) & ~P.PCI_MSIX_FLAGS_ENABLE)
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    g.client.set_irqs(U.VFIO_PCI_INTX_IRQ_INDEX, 0, [fd])
    _setup(g, NO_VECTOR, {REQUESTQ: None, EVENTQ: None}, msix=False)
    yield fd
    os.close(fd)


def test_intx_fallback_and_isr_read_to_clear(g, intx):
    """4.1.5.4 without MSI-X: a used buffer sets ISR bit 0 and asserts INTx; 4.1.4.5:
    reading the ISR status returns and clears it."""
    d = g.drv
    assert d.read_isr() == 0
    assert ping(d) == OK_LOW
    assert fired(intx)
    assert d.read_isr() == V.VIRTIO_PCI_ISR_QUEUE
    assert d.read_isr() == 0
    assert not fired(intx)


def test_isr_read_outside_the_byte_does_not_clear(g, intx):
    """4.1.4.5: the ISR status is one byte, cleared by reading it; an access to the rest of
    its slot (outside the structure) reads 0 and must not swallow a pending status."""
    d = g.drv
    isr = d.caps[C.VIRTIO_PCI_CAP_ISR_CFG]
    assert isr.length == 1
    assert ping(d) == OK_LOW
    for off in (1, 2, 4):
        assert g.client.region_read(isr.bar, isr.offset + off, 1) == b"\0"
    assert g.client.region_read(isr.bar, isr.offset, 4) == bytes([V.VIRTIO_PCI_ISR_QUEUE, 0, 0, 0])
    assert d.read_isr() == 0


def test_intx_config_change_sets_isr_bit1(g, intx):
    """4.1.5.3 without MSI-X: a configuration change sets ISR bit 1 and asserts INTx."""
    d = g.drv
    _break_requestq(d)
    assert fired(intx)
    assert d.read_isr() & V.VIRTIO_PCI_ISR_CONFIG
    assert d.read_isr() == 0


def test_intx_disable_bit_suppresses_the_line(g, intx):
    """PCI 3.0 6.2.2 Command bit 10 Interrupt Disable: the function does not assert INTx;
    the ISR status still records the used buffer (4.1.4.5)."""
    d = g.drv
    cmd = g.client.cfg_read16(P.PCI_COMMAND)
    g.client.cfg_write16(P.PCI_COMMAND, cmd | P.PCI_COMMAND_INTX_DISABLE)
    assert g.client.cfg_read16(P.PCI_COMMAND) & P.PCI_COMMAND_INTX_DISABLE
    assert ping(d) == OK_LOW
    assert not fired(intx)
    assert d.read_isr() == V.VIRTIO_PCI_ISR_QUEUE
    g.client.cfg_write16(P.PCI_COMMAND, cmd)
    assert ping(d) == OK_LOW
    assert fired(intx)


def test_msix_enabled_stops_intx(g):
    """4.1.5.1.2 / PCI MSI-X: with MSI-X enabled the function uses MSI-X vectors only; ISR
    bit 0 is not needed by the driver (4.1.4.5) and INTx is not asserted."""
    _setup(g, 0, {REQUESTQ: 1, EVENTQ: 2})
    d = g.drv
    pos = _msix_ctrl(g)
    assert g.client.cfg_read16(pos) & P.PCI_MSIX_FLAGS_ENABLE
    assert ping(d) == OK_LOW
    assert fired(d.eventfds[1]) and not fired(d.eventfds[0])


def test_function_reset_clears_msix_enable(server):
    """PCI 3.0 6.8.2.3 / PCIe 6.6.2 (FLR): MSI-X Enable resets to 0. After a device reset,
    or for the next client after a disconnect, a driver that does not enable MSI-X must get
    INTx with the ISR bit set (4.1.5.4), not a message on a vector nobody programmed."""
    states = []
    g = open_gpio(server, features=BASE | IRQ)
    try:
        pos = _msix_ctrl(g)
        assert g.client.cfg_read16(pos) & P.PCI_MSIX_FLAGS_ENABLE
        g.client.device_reset()
        states.append(g.client.cfg_read16(pos) & P.PCI_MSIX_FLAGS_ENABLE)
        g.drv.enable_msix()
    finally:
        g.close()
    g = open_gpio(server, bring_up=False)
    try:
        states.append(g.client.cfg_read16(pos) & P.PCI_MSIX_FLAGS_ENABLE)
    finally:
        g.close()
    assert states == [0, 0]
