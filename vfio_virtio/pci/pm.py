"""PCI power management: the ONLY place that decides what a power transition or reset does.

Emulates the PM capability (PCI PM 1.2, section 3.2) through the config-space callback, so the
device sees every PMCSR write, and decides between state retention and soft reset:

* D0 -> D3hot: the device quiesces (no BAR decode, no interrupts, no queue processing).
* D3hot -> D0 with No_Soft_Reset = 1: nothing is lost; the device resumes.
* D3hot -> D0 with No_Soft_Reset = 0: internal soft reset (PCI PM 1.2, 5.4.1: "D0uninitialized").
* VFIO_USER_DEVICE_RESET: QEMU's vfio-user client sends it on every system reset, including the
  wake reset of S3, after writing PMCSR back to D0 itself (``vfio_pci_pre_reset``). QEMU's own
  virtio-pci skips that reset for a No_Soft_Reset function that is in D3hot. Our equivalent:
  a reset that arrives while the function is in D3hot, or right after the platform moved it
  D3hot -> D0 with nothing else in between (no BAR access, no other PM write), is the platform
  waking a No_Soft_Reset function and keeps state. Every other reset (guest reboot, FLR, lost
  connection) resets.

Register semantics (byte-enable granular, like real hardware: any access size at any offset
inside the capability is accepted; reads return the current bytes, writes merge per byte):

* PMC: read-only. Version 3, D1/D2 not supported, PME_Support as configured (default none).
* PMCSR PowerState (1:0): RW; writes of unsupported states (D1, D2) are discarded with no state
  change (PCI PM 1.2, 3.2.4). No_Soft_Reset (3): read-only. PME_En (8): RW when PME is
  supported, else hardwired 0. PME_Status (15): write-1-to-clear. Data_Select/Data_Scale and
  reserved bits: read-only 0.
* PMCSR_BSE, Data: read-only 0.
"""
from __future__ import annotations

import logging
import struct
from typing import Protocol

from . import spec as S

log = logging.getLogger(__name__)


class PowerListener(Protocol):
    """What the PM code tells the layer above (the virtio transport)."""

    def on_power_state(self, old: int, new: int) -> None: ...
    def soft_reset(self, reason: str) -> None: ...


class PowerManagement:
    """The PM capability of one function and its retention/reset decisions."""

    def __init__(self, no_soft_reset: bool = True, pme_support: int = 0) -> None:
        self.no_soft_reset = bool(no_soft_reset)
        self.pme_support = pme_support & 0x1F      # PMC bits 15:11
        self.offset = 0                            # set by the PCI function once placed
        self.state = S.PCI_D0
        self.pme_enable = False
        self.pme_status = False
        self.wake_pending = False
        self.listener: PowerListener | None = None
        self.transitions: list[tuple[int, int]] = []   # (old, new), newest last, bounded

    # --- register image -----------------------------------------------------------------

    @property
    def pmc(self) -> int:
        return 3 | (self.pme_support << S.PCI_PM_CAP_PME_SHIFT)

    @property
    def pmcsr(self) -> int:
        v = self.state
        if self.no_soft_reset:
            v |= S.PCI_PM_CTRL_NO_SOFT_RESET
        if self.pme_enable:
            v |= S.PCI_PM_CTRL_PME_ENABLE
        if self.pme_status:
            v |= S.PCI_PM_CTRL_PME_STATUS
        return v

    def cap_bytes(self) -> bytes:
        """The capability as it stands (header's next pointer left 0 for libvfio-user)."""
        return struct.pack("<BBHHBB", S.PCI_CAP_ID_PM, 0, self.pmc, self.pmcsr, 0, 0)

    def read(self, offset: int, count: int, cfg: memoryview) -> bytes:
        """Config read at absolute ``offset`` inside the capability."""
        self.sync(cfg)
        return bytes(cfg[offset:offset + count])

    def write(self, offset: int, data: bytes, cfg: memoryview) -> None:
        """Config write at absolute ``offset``; only the bytes written are affected."""
        rel = offset - self.offset
        image = bytearray(self.cap_bytes())
        old = struct.unpack_from("<H", image, S.PCI_PM_CTRL)[0]
        touched = 0
        for i, b in enumerate(data):
            pos = rel + i
            if S.PCI_PM_CTRL <= pos < S.PCI_PM_CTRL + 2:
                shift = 8 * (pos - S.PCI_PM_CTRL)
                touched |= 0xFF << shift
                image[pos] = b
            else:
                log.debug("PM: write to read-only byte %#x ignored", self.offset + pos)
        if touched:
            self._write_pmcsr(struct.unpack_from("<H", image, S.PCI_PM_CTRL)[0], old, touched)
        self.sync(cfg)

    def _write_pmcsr(self, new: int, old: int, touched: int) -> None:
        if touched & S.PCI_PM_CTRL_PME_STATUS and new & S.PCI_PM_CTRL_PME_STATUS:
            self.pme_status = False                       # RW1C
        if touched & S.PCI_PM_CTRL_PME_ENABLE and self.pme_support:
            self.pme_enable = bool(new & S.PCI_PM_CTRL_PME_ENABLE)
        if touched & S.PCI_PM_CTRL_STATE_MASK:
            target = new & S.PCI_PM_CTRL_STATE_MASK
            if target in (S.PCI_D1, S.PCI_D2):
                log.info("PM: write of unsupported %s discarded", S.D_STATE_NAMES[target])
            elif target != self.state:
                self._transition(target)

    def _transition(self, new: int) -> None:
        old, self.state = self.state, new
        self.wake_pending = False
        self.transitions = (self.transitions + [(old, new)])[-64:]
        log.info("PM: %s -> %s (No_Soft_Reset=%d)", S.D_STATE_NAMES[old],
                 S.D_STATE_NAMES[new], self.no_soft_reset)
        if old == S.PCI_D3hot and new == S.PCI_D0:
            if self.no_soft_reset:
                self.wake_pending = True
            elif self.listener is not None:
                # D0uninitialized: reset first, so nothing runs on the old state meanwhile.
                self.listener.soft_reset("pm-d3hot-d0")
        if self.listener is not None:
            self.listener.on_power_state(old, new)

    def sync(self, cfg: memoryview) -> None:
        """Mirror the registers into config space, keeping libvfio-user's next pointer."""
        img = bytearray(self.cap_bytes())
        img[1] = cfg[self.offset + 1]
        cfg[self.offset:self.offset + S.PCI_PM_SIZEOF] = img

    # --- decisions ------------------------------------------------------------------------

    @property
    def decodes_bars(self) -> bool:
        """PCI PM 1.2, 5.3: in D3hot only configuration accesses are honoured."""
        return self.state == S.PCI_D0

    def note_activity(self) -> None:
        """A BAR access or other driver activity: a later reset is no longer a wake reset."""
        self.wake_pending = False

    def keeps_state_on_device_reset(self) -> bool:
        """Decide for VFIO_USER_DEVICE_RESET: True when it is the platform's wake reset of a
        No_Soft_Reset function (in D3hot, or just woken from it), False for a real reset."""
        return self.no_soft_reset and (self.state == S.PCI_D3hot or self.wake_pending)

    def reset(self, cfg: memoryview | None = None) -> None:
        """Power-on state of the capability: D0, PME disabled (No_Soft_Reset is hardwired)."""
        self.state = S.PCI_D0
        self.pme_enable = False
        self.pme_status = False
        self.wake_pending = False
        if cfg is not None:
            self.sync(cfg)

    def wake_to_d0(self, cfg: memoryview | None = None) -> None:
        """The platform's wake reset of a No_Soft_Reset function: back in D0, state kept."""
        if self.state != S.PCI_D0:
            self._transition(S.PCI_D0)
        self.wake_pending = False
        if cfg is not None:
            self.sync(cfg)

    def signal_pme(self) -> bool:
        """The device wants to wake the system: sets PME_Status when PME is enabled."""
        if self.pme_enable and self.pme_support & (1 << 3) and self.state == S.PCI_D3hot:
            self.pme_status = True
            return True
        return False

    def get_state(self) -> dict:
        return {"state": self.state, "pme_enable": self.pme_enable,
                "pme_status": self.pme_status, "no_soft_reset": self.no_soft_reset}

    def set_state(self, d: dict) -> None:
        self.state = int(d["state"]) & 3
        if self.state not in (S.PCI_D0, S.PCI_D3hot):
            raise ValueError(f"invalid power state {self.state} in snapshot")
        self.pme_enable = bool(d.get("pme_enable")) and bool(self.pme_support)
        self.pme_status = bool(d.get("pme_status"))
        self.wake_pending = False
