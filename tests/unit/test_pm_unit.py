"""pci/pm.py alone: register semantics (PCI PM 1.2 3.2) and the reset decisions."""
from __future__ import annotations

import struct

from vfio_virtio.pci import spec as S
from vfio_virtio.pci.pm import PowerManagement

OFF = 0x40
CTRL = OFF + S.PCI_PM_CTRL


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_power_state(self, old: int, new: int) -> None:
        self.events.append(("power", old, new))

    def soft_reset(self, reason: str) -> None:
        self.events.append(("reset", reason))


def make(nsr: bool = True, pme: int = 0):
    pm = PowerManagement(no_soft_reset=nsr, pme_support=pme)
    pm.offset = OFF
    cfg = memoryview(bytearray(256))
    cfg[OFF + 1] = 0x48                      # libvfio-user's next pointer must survive
    pm.listener = lst = Listener()
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
    assert cfg[OFF + 1] == 0x48 and cfg[OFF] == S.PCI_CAP_ID_PM


def test_soft_reset_comes_before_the_d0_report_without_nsr():
    pm, cfg, lst = make(nsr=False)
    pm.write(CTRL, b"\x03\x00", cfg)
    pm.write(CTRL, b"\x00\x00", cfg)
    assert lst.events[1:] == [("reset", "pm-d3hot-d0"), ("power", 3, 0)]


def test_pme_status_is_write_one_to_clear_when_pme_is_supported():
    pm, cfg, _ = make(pme=0x08)              # PME from D3hot
    pm.write(CTRL, struct.pack("<H", S.PCI_PM_CTRL_PME_ENABLE | 3), cfg)
    assert pm.signal_pme()
    assert pmcsr(cfg) & S.PCI_PM_CTRL_PME_STATUS
    pm.write(CTRL, struct.pack("<H", S.PCI_PM_CTRL_PME_ENABLE | 3), cfg)   # writing 0: kept
    assert pmcsr(cfg) & S.PCI_PM_CTRL_PME_STATUS
    pm.write(CTRL, struct.pack("<H", S.PCI_PM_CTRL_PME_STATUS | S.PCI_PM_CTRL_PME_ENABLE | 3), cfg)
    assert not pmcsr(cfg) & S.PCI_PM_CTRL_PME_STATUS
    assert pmcsr(cfg) & S.PCI_PM_CTRL_PME_ENABLE


def test_pme_enable_is_hardwired_without_pme_support():
    pm, cfg, _ = make()
    pm.write(CTRL, struct.pack("<H", S.PCI_PM_CTRL_PME_ENABLE), cfg)
    assert pmcsr(cfg) == S.PCI_PM_CTRL_NO_SOFT_RESET
    assert not pm.signal_pme()


def test_high_byte_write_leaves_power_state_alone():
    pm, cfg, lst = make()
    pm.write(CTRL, b"\x03", cfg)             # low byte only: D3hot
    pm.write(CTRL + 1, b"\xff", cfg)         # high byte only: PME bits, reserved
    assert pmcsr(cfg) & 3 == 3 and lst.events == [("power", 0, 3)]


def test_wake_reset_rule():
    pm, cfg, _ = make()
    assert not pm.keeps_state_on_device_reset()          # D0, nothing pending: real reset
    pm.write(CTRL, b"\x03\x00", cfg)
    assert pm.keeps_state_on_device_reset()              # in D3hot
    pm.write(CTRL, b"\x00\x00", cfg)
    assert pm.keeps_state_on_device_reset()              # just woken, nothing in between
    pm.note_activity()
    assert not pm.keeps_state_on_device_reset()          # the driver used it since
    pm2, cfg2, _ = make(nsr=False)
    pm2.write(CTRL, b"\x03\x00", cfg2)
    assert not pm2.keeps_state_on_device_reset()         # no No_Soft_Reset: always reset


def test_snapshot_state_is_validated():
    pm, cfg, _ = make()
    pm.set_state({"state": 3})
    assert pm.state == 3
    import pytest
    with pytest.raises(ValueError):
        pm.set_state({"state": 1})
