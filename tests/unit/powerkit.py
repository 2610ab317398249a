"""The reference model of the survival table and the in-process rig for
``test_power_model.py``: a :class:`Model` written from the README table (independently of
``vfio_virtio.power.decide``), a :class:`Rig` (real stack in process, independent driver), the
steps (each applied to both), and :func:`observe`, which compares what a driver or the host
can see with the model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from vfio_virtio.gpio import spec as G
from vfio_virtio.pci import spec as P
from vfio_virtio_kit.gpio_driver import DEFAULT_FEATURES, EVENTQ, REQUESTQ, GpioDriver
from vfio_virtio_kit.guestmem import GuestMemory
from vfio_virtio_kit.inproc import InProcessServer, LocalClient
from vfio_virtio_kit.virtio_mmio import VirtioMmioDriver
from vfio_virtio_kit.virtio_pci import VirtioPciDriver
from vfio_virtio.virtio import mmio_spec as M
from vfio_virtio.virtio import spec as V

QSIZE = 16
RUNNING = (V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER
           | V.VIRTIO_CONFIG_S_FEATURES_OK | V.VIRTIO_CONFIG_S_DRIVER_OK)
SUSPEND = 1 << V.VIRTIO_F_SUSPEND
RING_RESET = 1 << V.VIRTIO_F_RING_RESET
D0, D3, D0_WOKEN = "D0", "D3hot", "D0 woken"
OUT_ = G.VIRTIO_GPIO_DIRECTION_OUT
OK = G.VIRTIO_GPIO_STATUS_OK


# --- the reference model ------------------------------------------------------------------

@dataclass
class Model:
    nsr: bool
    reset_lines: bool
    suspend: bool                      # VIRTIO_F_SUSPEND negotiated at bring-ups
    mmio: bool = False                 # the virtio-mmio front end instead of virtio-pci
    power: str = D0
    status: int = 0                    # 0, RUNNING, or SUSPENDed (reads SUSPEND, no DRIVER_OK)
    driven: bool = False
    line0: tuple[str, int] = ("in", 0)
    irq1: bool = False                 # line 1 has a rising-edge interrupt
    held: bool = False                 # line 1 holds an eventq buffer
    latched: bool = False
    delivered: int = 0                 # VALID completions expected in the current eventq
    log: list[str] = field(default_factory=list)

    @property
    def d0(self) -> bool:
        return self.power != D3

    @property
    def running(self) -> bool:
        return self.d0 and bool(self.status & V.VIRTIO_CONFIG_S_DRIVER_OK)

    def bar_access(self) -> None:
        """A BAR access in D0 ends the "just woken" window."""
        if self.power == D0_WOKEN:
            self.power = D0

    def virtio_reset(self, keep_lines: bool) -> None:
        self.status = 0
        self.held = self.irq1 = self.latched = False
        if not keep_lines:
            self.line0 = ("in", 0)

    def function_reset(self) -> None:
        self.power = D0
        self.driven = False

    # the survival table, row by row
    def d3hot_to_d0(self) -> None:
        if not self.nsr:
            self.virtio_reset(keep_lines=False)          # soft reset, PM state kept
        self.power = D0_WOKEN

    def device_reset(self) -> None:
        if self.nsr and self.power in (D3, D0_WOKEN):
            if self.power == D0_WOKEN:
                self.power = D0                          # one wake, one wake reset
            return                                       # the platform's wake reset
        self.virtio_reset(keep_lines=not self.driven)
        self.function_reset()

    def flr(self) -> None:
        self.virtio_reset(keep_lines=False)
        self.function_reset()

    def lost_connection(self) -> None:
        self.virtio_reset(keep_lines=not self.reset_lines)
        self.function_reset()

    def status_zero(self) -> None:
        self.virtio_reset(keep_lines=True)

    def settle(self) -> None:
        """Gating open, a buffer held and an edge latched: it is delivered."""
        if self.running and self.held and self.latched:
            self.held = self.latched = False
            self.delivered += 1


# --- the real stack -----------------------------------------------------------------------

class Rig:
    def __init__(self, m: Model, tmp: str) -> None:
        self.m, self.tmp = m, tmp
        self.srv = self._server()
        self.mem = GuestMemory(1 << 20, iova=0x100000)
        self._connect()
        self.snaps = 0

    def _server(self, **kw) -> InProcessServer:
        return InProcessServer(control=None, no_soft_reset=self.m.nsr,
                               keep_lines_on_disconnect=not self.m.reset_lines,
                               transport="mmio" if self.m.mmio else "pci", **kw)

    def _driver(self, check: bool = True):
        if self.m.mmio:
            return VirtioMmioDriver(self.client, self.mem, irq="msix", check=check)
        return VirtioPciDriver(self.client, self.mem)

    def _connect(self) -> None:
        self.client = LocalClient(self.srv)
        self.drv = self._driver()
        self.g = GpioDriver(self.client, self.mem, self.drv)
        self.seen = 0                                   # eventq used entries read so far

    def pm_cap(self) -> int:
        return self.drv.pm_cap if self.m.mmio else self.drv.find_pci_cap(P.PCI_CAP_ID_PM)

    def close(self) -> None:
        self.drv.close()
        self.client.close()
        self.srv.close()
        self.mem.close()

    def features(self) -> int:
        return DEFAULT_FEATURES | RING_RESET | (SUSPEND if self.m.suspend else 0)

    def bring_up(self) -> None:
        self.drv.bring_up([REQUESTQ, EVENTQ], wanted=self.features(), queue_size=QSIZE)
        self.seen = 0

    def request(self, mtype: int, gpio: int, value: int = 0) -> bytes | None:
        head = self.g.add_request(mtype, gpio, value)
        self.drv.kick(REQUESTQ)
        used = dict(self.drv.rings[REQUESTQ].used())
        return self.g.response(REQUESTQ, head, used[head]) if head in used else None

    def events(self) -> list[int]:
        ring = self.drv.rings.get(EVENTQ)
        if ring is None:
            return []
        out = []
        for head, length in ring.used():
            out.append(self.g.response(EVENTQ, head, length)[:1])
        return out


def s_d3(r: Rig, m: Model) -> None:
    r.drv.set_power_state(P.PCI_D3hot)
    if m.power != D3:
        m.power = D3


def s_d0(r: Rig, m: Model) -> None:
    r.drv.set_power_state(P.PCI_D0)
    if m.power == D3:
        m.d3hot_to_d0()


def s_device_reset(r: Rig, m: Model) -> None:
    r.client.device_reset()
    m.device_reset()


def s_qemu_wake(r: Rig, m: Model) -> None:
    """QEMU's system-reset sequence: PMCSR back to D0, then VFIO_USER_DEVICE_RESET."""
    s_d0(r, m)
    s_device_reset(r, m)


def s_flr(r: Rig, m: Model) -> None:
    r.client.flr()
    m.flr()


def s_status0(r: Rig, m: Model) -> None:
    r.drv.write_status(0)
    if m.d0:
        m.bar_access()
        m.status_zero()


def s_bring_up(r: Rig, m: Model) -> None:
    if not m.d0:
        return
    r.bring_up()
    m.bar_access()
    m.status_zero()
    m.status, m.driven, m.delivered = RUNNING, True, 0


def s_suspend(r: Rig, m: Model) -> None:
    if not (m.suspend and m.running):
        return
    r.drv.write_status(RUNNING | V.VIRTIO_CONFIG_S_SUSPEND)
    m.bar_access()
    m.status = (RUNNING | V.VIRTIO_CONFIG_S_SUSPEND) & ~V.VIRTIO_CONFIG_S_DRIVER_OK


def s_resume(r: Rig, m: Model) -> None:
    if not (m.d0 and m.status & V.VIRTIO_CONFIG_S_SUSPEND):
        return
    r.drv.write_status(RUNNING)
    m.bar_access()
    m.status = RUNNING


def s_ring_reset(r: Rig, m: Model) -> None:
    if not m.running:
        return
    d = r.drv
    if m.mmio:
        d.select_queue(EVENTQ)
        d.write32(M.QueueReset, 1)
        assert d.read32(M.QueueReset) == 0, "QueueReset must read 0"
        assert d.read32(M.QueueReady) == 0
        d.setup_queue(EVENTQ, QSIZE)
    else:
        d.common_write(V.VIRTIO_PCI_COMMON_Q_SELECT, EVENTQ, 2)
        d.common_write(V.VIRTIO_PCI_COMMON_Q_RESET, 1, 2)
        assert d.common_read(V.VIRTIO_PCI_COMMON_Q_RESET, 2) == 0, "queue_reset must read 0"
        assert d.common_read(V.VIRTIO_PCI_COMMON_Q_ENABLE, 2) == 0
        d.setup_queue(EVENTQ, QSIZE, d.queue_vectors.get(EVENTQ))
    r.seen = 0
    m.bar_access()
    m.held, m.delivered = False, 0


def s_set_out(r: Rig, m: Model) -> None:
    if not m.running:
        return
    v = len(m.log) & 1
    assert r.request(G.VIRTIO_GPIO_MSG_SET_VALUE, 0, v)[0] == OK
    assert r.request(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, OUT_)[0] == OK
    m.bar_access()
    m.line0 = ("out", v)


def s_arm_irq(r: Rig, m: Model) -> None:
    if not m.running or m.held:
        return
    assert r.request(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 1, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)[0] == OK
    if not m.irq1:
        m.latched = False                               # latch from this point onward
    r.g.queue_irq(1)
    m.bar_access()
    m.irq1 = m.held = True


def s_edge(r: Rig, m: Model) -> None:
    r.srv.backend.set_input(1, 0)
    r.srv.drain()
    r.srv.backend.set_input(1, 1)
    r.srv.drain()
    if m.irq1:
        m.latched = True


def s_reconnect(r: Rig, m: Model) -> None:
    """The client is lost (QEMU killed) and a new one connects and maps memory."""
    r.client.disconnect()
    r.drv.close()
    m.lost_connection()
    r._connect()
    m.delivered = 0                                     # the new driver has no eventq yet


def s_snapshot_restore(r: Rig, m: Model) -> None:
    """Save a snapshot, stop this server, start another with --restore, attach the same
    driver state (memory, rings, negotiated features) as GpioDriver.reattach does."""
    r.snaps += 1
    path = os.path.join(r.tmp, f"snap{r.snaps}.json")
    r.srv.save_snapshot(path)
    old = r.drv
    old.close()
    r.client.close()                                    # the old process goes away...
    r.srv.close()
    r.srv = r._server(restore=path)
    r.client = LocalClient(r.srv)                       # ...the new one keeps everything
    r.drv = r._driver(check=False)                      # (BARs may not decode: D3hot)
    r.drv.rings, r.drv.features = old.rings, old.features
    if not m.mmio:
        r.drv.notify_offs, r.drv.notify_data = old.notify_offs, old.notify_data
        r.drv.queue_vectors = old.queue_vectors
        r.drv.enable_msix()
    r.g.client, r.g.drv = r.client, r.drv
    if m.power == D0_WOKEN:
        m.power = D0                                    # a restore is not a wake
    # the new process's sim backend starts with every input low (host-side state)


STEPS = {
    "d3hot": s_d3, "d0": s_d0, "device_reset": s_device_reset, "qemu_wake": s_qemu_wake,
    "flr": s_flr, "status0": s_status0, "bring_up": s_bring_up, "suspend": s_suspend,
    "resume": s_resume, "ring_reset": s_ring_reset, "set_out": s_set_out,
    "arm_irq": s_arm_irq, "edge": s_edge, "reconnect": s_reconnect,
    "snapshot_restore": s_snapshot_restore,
}
WEIGHTS = {"d3hot": 4, "d0": 4, "device_reset": 2, "qemu_wake": 2, "flr": 1, "status0": 1,
           "bring_up": 2, "suspend": 2, "resume": 2, "ring_reset": 1, "set_out": 3,
           "arm_irq": 3, "edge": 3, "reconnect": 1, "snapshot_restore": 1}


def observe(r: Rig, m: Model) -> None:
    """The observable state against the model (reads that do not disturb the device)."""
    where = " -> ".join(m.log)
    pmcsr = r.client.cfg_read16(r.pm_cap() + P.PCI_PM_CTRL)
    assert pmcsr & 3 == (P.PCI_D3hot if m.power == D3 else P.PCI_D0), where
    assert bool(pmcsr & P.PCI_PM_CTRL_NO_SOFT_RESET) == m.nsr, where
    assert r.srv.core.status == m.status, f"{where}: status {r.srv.core.status:#x}"
    gating = r.srv.transport.gating()
    assert gating == {"decode": m.d0, "running": m.running, "delivery": m.running}, where
    l0, l1 = r.srv.backend.get_line(0), r.srv.backend.get_line(1)
    assert (l0["direction"], l0["value"]) == m.line0, f"{where}: line 0 {l0}"
    assert l1["direction"] == "in", where
    assert r.srv.controller.held_lines() == ([1] if m.held else []), where
    got = r.events()
    assert got == [bytes([G.VIRTIO_GPIO_IRQ_STATUS_VALID])] * (m.delivered - r.seen), \
        f"{where}: eventq {got}, model expects {m.delivered - r.seen} VALID"
    r.seen = m.delivered
