"""pci/pm.py alone: register semantics (PCI PM 1.2 3.2), the one notifying path, and the
power facts the reset policy reads (``PowerManagement.power``)."""
from __future__ import annotations

import struct

from vfio_virtio.pci import spec as P
from vfio_virtio.pci.pm import Cause, PowerManagement
from vfio_virtio.power import Power

OFF = 0x40
CTRL = OFF + P.PCI_PM_CTRL


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def __call__(self, change) -> None:
        self.events.append(("power", change.old, change.new))
        self.causes.append(change.cause)

    causes: list = []


def make(nsr: bool = True, pme: int = 0):
    pm = PowerManagement(no_soft_reset=nsr, pme_support=pme)
    pm.offset = OFF
    cfg = memoryview(bytearray(256))
    cfg[OFF + 1] = 0x48                      # libvfio-user's next pointer must survive
    lst = Listener()
    lst.causes = []
    pm.listeners.append(lst)
    pm.cfg = cfg
    pm.sync(cfg)
    PM_OF[id(cfg)] = pm
    return pm, cfg, lst


PM_OF: dict = {}


def pmcsr(cfg) -> int:
    """PMCSR as a config read returns it (the capability's read path)."""
    return struct.unpack_from("<H", PM_OF[id(cfg)].read(CTRL, 2, cfg))[0]


def test_transitions_are_reported_with_old_and_new_state():
    pm, cfg, lst = make()
    pm.write(CTRL, struct.pack("<H", 3), cfg)
    pm.write(CTRL, struct.pack("<H", 0), cfg)
    assert lst.events == [("power", 0, 3), ("power", 3, 0)]
    assert cfg[OFF + 1] == 0x48 and cfg[OFF] == P.PCI_CAP_ID_PM


def test_every_change_of_state_goes_through_the_one_path():
    """Issue 12: a PMCSR write, a function reset and a snapshot restore all notify, with
    their cause, and config space always shows the new state."""
    pm, cfg, lst = make(nsr=False)
    pm.write(CTRL, b"\x03\x00", cfg)
    pm.reset()
    assert pmcsr(cfg) & 3 == 0
    pm.set_state({"state": 3})
    assert pmcsr(cfg) & 3 == 3
    assert lst.events == [("power", 0, 3), ("power", 3, 0), ("power", 0, 3)]
    assert lst.causes == [Cause.WRITE, Cause.RESET, Cause.RESTORE]


def test_pme_status_is_write_one_to_clear_when_pme_is_supported():
    pm, cfg, _ = make(pme=0x08)              # PME from D3hot
    pm.write(CTRL, struct.pack("<H", P.PCI_PM_CTRL_PME_ENABLE | 3), cfg)
    pm.set_state({"state": 3, "pme_enable": True, "pme_status": True})   # as a snapshot has it
    assert pmcsr(cfg) & P.PCI_PM_CTRL_PME_STATUS
    pm.write(CTRL, struct.pack("<H", P.PCI_PM_CTRL_PME_ENABLE | 3), cfg)   # writing 0: kept
    assert pmcsr(cfg) & P.PCI_PM_CTRL_PME_STATUS
    pm.write(CTRL, struct.pack("<H", P.PCI_PM_CTRL_PME_STATUS | P.PCI_PM_CTRL_PME_ENABLE | 3), cfg)
    assert not pmcsr(cfg) & P.PCI_PM_CTRL_PME_STATUS
    assert pmcsr(cfg) & P.PCI_PM_CTRL_PME_ENABLE


def test_pme_enable_is_hardwired_without_pme_support():
    pm, cfg, _ = make()
    pm.write(CTRL, struct.pack("<H", P.PCI_PM_CTRL_PME_ENABLE), cfg)
    assert pmcsr(cfg) == P.PCI_PM_CTRL_NO_SOFT_RESET
    pm.set_state({"state": 0, "pme_enable": True})
    assert pmcsr(cfg) == P.PCI_PM_CTRL_NO_SOFT_RESET


def test_high_byte_write_leaves_power_state_alone():
    pm, cfg, lst = make()
    pm.write(CTRL, b"\x03", cfg)             # low byte only: D3hot
    pm.write(CTRL + 1, b"\xff", cfg)         # high byte only: PME bits, reserved
    assert pmcsr(cfg) & 3 == 3 and lst.events == [("power", 0, 3)]


def test_power_facts_for_the_wake_reset_rule():
    """What the reset policy reads: D3hot, D0 just woken by a write (nothing in between),
    or plain D0 (after any activity, a reset, or a restore)."""
    pm, cfg, _ = make()
    assert pm.power is Power.D0
    pm.write(CTRL, b"\x03\x00", cfg)
    assert pm.power is Power.D3HOT
    pm.write(CTRL, b"\x00\x00", cfg)
    assert pm.power is Power.D0_WOKEN
    pm.note_activity()
    assert pm.power is Power.D0                          # the driver used it since
    pm.write(CTRL, b"\x03\x00", cfg)
    pm.reset()
    assert pm.power is Power.D0                          # a reset is not a wake


def test_snapshot_state_is_validated():
    pm, cfg, _ = make()
    pm.set_state({"state": 3})
    assert pm.state == 3
    import pytest
    with pytest.raises(ValueError):
        pm.set_state({"state": 1})
