"""Power management that honours No_Soft_Reset (issue: PM), through the real socket.

What survives D3hot -> D0 with and without No_Soft_Reset, QEMU's wake-reset sequence,
VIRTIO_F_SUSPEND, snapshots into a second process, and the lost-connection policy.
"""
from __future__ import annotations

import os

import pytest

from vfio_virtio.backends.control import ControlClient
from vfio_virtio.gpio import spec as G
from vfio_virtio.pci import spec as P
from vfio_virtio_kit import vfio_user_spec as U
from vfio_virtio_kit.gpio_driver import DEFAULT_FEATURES, EVENTQ, REQUESTQ, GpioDriver
from vfio_virtio.virtio import spec as V

OUT, IN = G.VIRTIO_GPIO_DIRECTION_OUT, G.VIRTIO_GPIO_DIRECTION_IN
RUNNING = (V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER
           | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK)


def settle(d: GpioDriver) -> None:
    """Two vfio-user round trips: everything the server had pending (e.g. a control-socket
    input change) has been processed by its single loop once the second one returns."""
    d.client.cfg_read16(0)
    d.client.cfg_read16(0)


def configure(d: GpioDriver) -> None:
    """Line 0 drives 1; line 1 is a rising-edge input with its event buffer queued."""
    d.set_value(0, 1)
    d.set_direction(0, OUT)
    d.set_irq_type(1, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)
    d.queue_irq(1)


@pytest.mark.parametrize("nsr", [True, False], ids=["no_soft_reset", "soft_reset"])
def test_d3hot_round_trip_in_the_middle_of_traffic(server_factory, nsr):
    """PCI PM 1.2 5.4.1 and the virtio-pci No_Soft_Reset rule: with NSR=1 nothing is lost,
    with NSR=0 D3hot -> D0 is a soft reset. In D3hot: no decode, no interrupts, no queue work;
    an input edge meanwhile is latched and delivered after D0 (NSR=1)."""
    srv = server_factory("--no-soft-reset" if nsr else "--soft-reset")
    with GpioDriver.open(srv.socket) as d, ControlClient(srv.control) as host:
        configure(d)
        head = d.add_request(G.VIRTIO_GPIO_MSG_GET_VALUE, 2)     # in flight, not kicked
        d.drv.set_power_state(P.PCI_D3hot)
        assert d.drv.power_state() == P.PCI_D3hot
        d.drv.kick(REQUESTQ)                                      # not decoded in D3hot
        host.set(1, 1)                                            # rising edge in D3hot
        settle(d)
        assert d.drv.rings[REQUESTQ].used() == [] and d.drv.rings[EVENTQ].used() == []
        assert not d.drv.irq_pending(d.drv.queue_vectors[EVENTQ])
        assert host.get(0)["direction"] == "out" and host.get(0)["value"] == 1  # still driving
        d.drv.set_power_state(P.PCI_D0)
        if nsr:
            assert d.drv.read_status() == RUNNING
            assert d.events(timeout=5) == [(1, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]
            assert d.complete(1)[head] == bytes([G.VIRTIO_GPIO_STATUS_OK, 0])
            assert host.get(0)["direction"] == "out" and host.get(0)["value"] == 1
            assert d.get_direction(0) == OUT
        else:
            assert d.drv.read_status() == 0                        # the driver must re-init
            assert host.get(0)["direction"] == "in"                # outputs released on reset
            settle(d)
            assert d.drv.rings[REQUESTQ].used() == [] and d.drv.rings[EVENTQ].used() == []


def qemu_wake_reset(d: GpioDriver) -> None:
    """The message sequence a real QEMU 11 vfio-user client sends on S3 wake (and on every
    system reset), as captured from our server's log (docs/PM.md): MSI-X off, INTx on and off,
    Command cleared, PMCSR -> D0 (read back), VFIO_USER_DEVICE_RESET, INTx on; the guest's
    PCI resume then restores Command and MSI-X."""
    c = d.client
    c.disable_irqs(U.VFIO_PCI_MSIX_IRQ_INDEX)
    intx = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        c.set_irqs(U.VFIO_PCI_INTX_IRQ_INDEX, 0, [intx])
        c.disable_irqs(U.VFIO_PCI_INTX_IRQ_INDEX)
        cmd = c.cfg_read16(P.PCI_COMMAND)
        c.cfg_write16(P.PCI_COMMAND, cmd & ~0x7)
        d.drv.set_power_state(P.PCI_D0)
        assert d.drv.power_state() == P.PCI_D0
        c.device_reset()
        c.set_irqs(U.VFIO_PCI_INTX_IRQ_INDEX, 0, [intx])
        c.disable_irqs(U.VFIO_PCI_INTX_IRQ_INDEX)
        c.cfg_write16(P.PCI_COMMAND, cmd)
        d.drv.enable_msix()
    finally:
        os.close(intx)


@pytest.mark.parametrize("nsr", [True, False], ids=["no_soft_reset", "soft_reset"])
def test_platform_wake_reset_from_d3hot(server_factory, nsr):
    """A reset that is the platform waking a No_Soft_Reset function from D3hot keeps state
    (QEMU's own virtio-pci with x-pcie-pm-no-soft-reset skips it the same way)."""
    srv = server_factory("--no-soft-reset" if nsr else "--soft-reset")
    with GpioDriver.open(srv.socket) as d, ControlClient(srv.control) as host:
        configure(d)
        d.drv.set_power_state(P.PCI_D3hot)
        qemu_wake_reset(d)
        assert d.drv.power_state() == P.PCI_D0
        if nsr:
            assert d.drv.read_status() == RUNNING
            assert d.get_value(0) == 1 and host.get(0)["direction"] == "out"
            host.set(1, 1)
            assert d.events(timeout=5) == [(1, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]
        else:
            assert d.drv.read_status() == 0
            assert host.get(0)["direction"] == "in"


def test_real_reset_in_d0_resets_even_with_no_soft_reset(server_factory):
    """Guest reboot: QEMU resets a function that is in D0: that is a real reset."""
    srv = server_factory("--no-soft-reset")
    with GpioDriver.open(srv.socket) as d, ControlClient(srv.control) as host:
        configure(d)
        qemu_wake_reset(d)
        assert d.drv.read_status() == 0
        assert host.get(0)["direction"] == "in"


def test_suspend_feature_quiesces_and_resumes_with_state(server_factory):
    """virtio 1.4 VIRTIO_F_SUSPEND: SUSPEND reads back with DRIVER_OK clear; nothing is
    processed or signalled meanwhile; DRIVER_OK resumes with all state."""
    srv = server_factory()
    with GpioDriver.open(srv.socket, features=DEFAULT_FEATURES | 1 << V.VIRTIO_F_SUSPEND) as d, \
            ControlClient(srv.control) as host:
        assert d.drv.has(V.VIRTIO_F_SUSPEND)
        configure(d)
        d.drv.write_status(RUNNING | V.VIRTIO_CONFIG_S_SUSPEND)
        st = d.drv.read_status()
        assert st & V.VIRTIO_CONFIG_S_SUSPEND and not st & V.VIRTIO_CONFIG_S_DRIVER_OK
        head = d.add_request(G.VIRTIO_GPIO_MSG_GET_VALUE, 0)
        d.drv.kick(REQUESTQ)
        host.set(1, 1)
        settle(d)
        assert d.drv.rings[REQUESTQ].used() == [] and d.drv.rings[EVENTQ].used() == []
        assert host.get(0)["value"] == 1                        # outputs keep driving
        d.drv.write_status(RUNNING)
        assert d.drv.read_status() == RUNNING
        assert d.complete(1)[head] == bytes([G.VIRTIO_GPIO_STATUS_OK, 1])
        assert d.events(timeout=5) == [(1, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]


def test_suspend_not_negotiated_is_an_ordinary_status_write(server_factory):
    srv = server_factory()
    with GpioDriver.open(srv.socket) as d:
        d.drv.write_status(RUNNING | V.VIRTIO_CONFIG_S_SUSPEND)
        assert d.drv.read_status() & V.VIRTIO_CONFIG_S_DRIVER_OK
        assert d.get_value(0) == 0                                # still running


def test_snapshot_round_trip_into_a_second_process(server_factory, tmp_path):
    """Export the complete device state, import it into a new server process, attach the same
    driver state: it continues without a reset (ring indices, lines, held event buffers)."""
    snap = str(tmp_path / "state.json")
    a = server_factory("--snapshot", snap)
    d = GpioDriver.open(a.socket)
    try:
        configure(d)
        for _ in range(5):
            assert d.get_value(0) == 1
        assert a.stop() == 0                                      # saves at exit
        b = server_factory("--restore", snap)
        with ControlClient(b.control) as host:
            assert host.get(0)["direction"] == "out" and host.get(0)["value"] == 1
            d.reattach(b.socket)
            assert d.drv.read_status() == RUNNING
            assert d.get_value(0) == 1 and d.get_direction(0) == OUT
            host.set(1, 1)
            assert d.events(timeout=5) == [(1, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]
    finally:
        d.close()


def test_restore_rejects_a_bad_snapshot(server_factory, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(RuntimeError, match="cannot restore snapshot"):
        server_factory("--restore", str(bad))


@pytest.mark.parametrize("reset_lines", [False, True], ids=["keep_lines", "reset_lines"])
def test_lost_connection_policy(server_factory, reset_lines):
    """The client goes away: by default outputs keep driving (a powered board whose host
    rebooted) and the next client finds the device reset at the virtio level."""
    srv = server_factory(*(["--reset-lines-on-disconnect"] if reset_lines else []))
    with GpioDriver.open(srv.socket) as d:
        configure(d)
    with GpioDriver.open(srv.socket, bring_up=False) as d2, ControlClient(srv.control) as host:
        assert d2.drv.read_status() == 0
        line0 = host.get(0)
        if reset_lines:
            assert line0["direction"] == "in"
        else:
            assert line0["direction"] == "out" and line0["value"] == 1
