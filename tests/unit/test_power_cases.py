"""Issue 12: the device always comes back after a reset or power transition.

In-process, the real stack wired together (libvfio-user context, PM capability, PCI function,
virtio transport, core, gpio device, sim backend), no fake listener; an independent driver
(``VirtioPciDriver`` / ``VirtioMmioDriver``) on a :class:`LocalClient`. Each test is one of
the four cases the issue found broken.
"""
from __future__ import annotations

import json

import pytest

from vfio_virtio.gpio import spec as G
from vfio_virtio.pci import spec as P
from vfio_virtio_kit.gpio_driver import DEFAULT_FEATURES, EVENTQ, REQUESTQ, GpioDriver
from vfio_virtio_kit.guestmem import GuestMemory
from vfio_virtio_kit.inproc import InProcessServer, LocalClient
from vfio_virtio_kit.virtio_mmio import VirtioMmioDriver
from vfio_virtio_kit.virtio_pci import VirtioPciDriver
from vfio_virtio.virtio import mmio_spec as M
from vfio_virtio.virtio import spec as V

OUT = G.VIRTIO_GPIO_DIRECTION_OUT
RING_RESET = 1 << V.VIRTIO_F_RING_RESET
IN_OK = bytes([G.VIRTIO_GPIO_STATUS_OK, G.VIRTIO_GPIO_DIRECTION_IN])   # GET_DIRECTION of an input


class Guest:
    """A driver on a fresh in-process connection (what a new QEMU and guest would be)."""

    def __init__(self, srv: InProcessServer, mmio: bool = False) -> None:
        self.client = LocalClient(srv)
        self.mem = GuestMemory(1 << 20, iova=0x100000)
        drv = (VirtioMmioDriver(self.client, self.mem, irq="msix") if mmio
               else VirtioPciDriver(self.client, self.mem))
        self.gpio = GpioDriver(self.client, self.mem, drv)
        self.drv = drv

    def bring_up(self, features: int = DEFAULT_FEATURES) -> None:
        self.drv.bring_up([REQUESTQ, EVENTQ], wanted=features)

    def request_completes(self, mtype: int = G.VIRTIO_GPIO_MSG_GET_DIRECTION,
                          gpio: int = 0, value: int = 0) -> bytes | None:
        """One request, kicked; its response if the device used it, else None."""
        head = self.gpio.add_request(mtype, gpio, value)
        self.drv.kick(REQUESTQ)
        used = dict(self.drv.rings[REQUESTQ].used())
        return self.gpio.response(REQUESTQ, head, used[head]) if head in used else None

    def close(self) -> None:
        self.client.close()
        self.mem.close()


@pytest.fixture
def make():
    made = []

    def factory(**cfg):
        srv = InProcessServer(control=None, **cfg)
        made.append(srv)
        return srv
    yield factory
    for s in made:
        s.close()


@pytest.mark.parametrize("mmio", [False, True], ids=["pci", "mmio"])
@pytest.mark.parametrize("nsr", [True, False], ids=["no_soft_reset", "soft_reset"])
def test_client_lost_in_d3hot_next_client_works(make, nsr, mmio):
    """Case 1: a suspended guest's QEMU is killed; the next client's bring-up must give a
    working device (PMCSR D0, requests processed)."""
    srv = make(no_soft_reset=nsr, transport="mmio" if mmio else "pci")
    g = Guest(srv, mmio)
    g.bring_up()
    assert g.request_completes(G.VIRTIO_GPIO_MSG_SET_VALUE, 0, 1)[0] == 0
    g.drv.set_power_state(P.PCI_D3hot)
    g.client.disconnect()
    g2 = Guest(srv, mmio)
    assert g2.drv.power_state() == P.PCI_D0
    g2.bring_up()
    assert g2.request_completes() == IN_OK
    g2.close()


@pytest.mark.parametrize("mmio", [False, True], ids=["pci", "mmio"])
@pytest.mark.parametrize("how", ["device_reset", "flr"])
def test_soft_reset_function_reset_in_d3hot_then_reinit_works(make, how, mmio):
    """Case 2: --soft-reset, VFIO_USER_DEVICE_RESET (or FLR) while in D3hot: the function
    resets (D0, status 0, as QEMU's own virtio-pci) and a re-init processes requests."""
    srv = make(no_soft_reset=False, transport="mmio" if mmio else "pci")
    g = Guest(srv, mmio)
    g.bring_up()
    g.drv.set_power_state(P.PCI_D3hot)
    getattr(g.client, how)()
    assert g.drv.power_state() == P.PCI_D0
    assert g.drv.read_status() == 0
    g.bring_up()
    assert g.request_completes() == IN_OK
    g.close()


def test_nsr_device_reset_in_d3hot_keeps_driver_ok_and_queue_works(make):
    """QEMU's virtio-pci with No_Soft_Reset: a DEVICE_RESET in D3hot leaves the function in
    D3hot with DRIVER_OK kept; after D0 its queue works (docs/FACTS.md)."""
    srv = make(no_soft_reset=True)
    g = Guest(srv)
    g.bring_up()
    g.drv.set_power_state(P.PCI_D3hot)
    g.client.device_reset()
    g.drv.set_power_state(P.PCI_D0)
    assert g.drv.read_status() & V.VIRTIO_CONFIG_S_DRIVER_OK
    assert g.request_completes() == IN_OK
    g.close()


def test_snapshot_in_d3hot_restored_then_d0_delivers_events(make, tmp_path):
    """Case 3: a snapshot taken in D3hot, restored into a new server with --restore; after
    the D0 write the held eventq buffer gets its latched edge."""
    srv = make(no_soft_reset=True)
    g = Guest(srv)
    g.bring_up()
    g.gpio.set_irq_type(1, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)
    g.gpio.queue_irq(1)
    g.drv.set_power_state(P.PCI_D3hot)
    srv.backend.set_input(1, 1)                   # an edge while in D3hot: latched
    srv.drain()
    assert g.drv.rings[EVENTQ].used() == []
    path = tmp_path / "snap.json"
    srv.save_snapshot(str(path))
    assert json.loads(path.read_text())["pm"]["state"] == P.PCI_D3hot
    srv2 = make(no_soft_reset=True, restore=str(path))
    srv2.backend.set_input(1, 1)
    client2 = LocalClient(srv2)
    drv2 = VirtioPciDriver(client2, g.mem)         # same guest memory, rings and state
    drv2.rings, drv2.notify_offs, drv2.features = g.drv.rings, g.drv.notify_offs, g.drv.features
    drv2.queue_vectors = g.drv.queue_vectors
    drv2.set_power_state(P.PCI_D0)
    srv2.drain()
    assert [h for h, _ in drv2.rings[EVENTQ].used()] != []
    client2.close()


@pytest.mark.parametrize("mmio", [False, True], ids=["pci", "mmio"])
def test_ring_reset_completes_with_queue_reset_reading_0(make, mmio):
    """Case 4: virtio 1.2+ 4.1.4.3.2 / 4.2.2.1: "The device MUST present 0 in both
    queue_reset and queue_enable when queue reset has completed" (Linux polls for it)."""
    srv = make(transport="mmio" if mmio else "pci")
    g = Guest(srv, mmio=mmio)
    g.bring_up(DEFAULT_FEATURES | RING_RESET)
    if mmio:
        g.drv.select_queue(EVENTQ)
        g.drv.write32(M.QueueReset, 1)
        assert g.drv.read32(M.QueueReset) == 0
        assert g.drv.read32(M.QueueReady) == 0
    else:
        g.drv.common_write(V.VIRTIO_PCI_COMMON_Q_SELECT, EVENTQ, 2)
        g.drv.common_write(V.VIRTIO_PCI_COMMON_Q_RESET, 1, 2)
        assert g.drv.common_read(V.VIRTIO_PCI_COMMON_Q_RESET, 2) == 0
        assert g.drv.common_read(V.VIRTIO_PCI_COMMON_Q_ENABLE, 2) == 0
    g.drv.setup_queue(EVENTQ)                          # re-enable (vp_modern_set_queue_enable)
    assert g.request_completes() == IN_OK
    g.close()


def test_gating_is_derived_and_announced(make):
    """One place to read gating (what a C fast path mirrors): transport.gating() follows the
    PM capability and the status, and every change is announced to gating_listeners."""
    srv = make()
    g = Guest(srv)
    g.bring_up()
    seen = []
    srv.transport.gating_listeners.append(lambda: seen.append(srv.transport.gating()))
    g.drv.set_power_state(P.PCI_D3hot)
    assert seen[-1] == {"decode": False, "running": False, "delivery": False}
    assert not srv.core.running and not srv.controller.delivery
    g.drv.set_power_state(P.PCI_D0)
    assert seen[-1] == {"decode": True, "running": True, "delivery": True}
    srv.core.needs_reset("test")                       # from inside the device
    assert seen[-1]["running"] is False
    g.close()
