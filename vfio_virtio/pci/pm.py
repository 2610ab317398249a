"""PCI power management: the PM capability, sole owner of the function's power state.

Emulates the PM capability (PCI PM 1.2, section 3.2) through the config-space callback. Every
change of power state -- a PMCSR write, a function reset, a snapshot restore -- goes through
one method (``_set_state``) that tells every listener a
:class:`PowerChange` (old, new, cause). Nothing above keeps a copy: the function gates BARs
and interrupts on :attr:`decodes_bars`, the virtio core's ``running`` reads it, the gpio
controller's delivery follows the core. What a transition or reset *keeps* is decided by
``vfio_virtio.power.decide``; this module only reports the facts it needs (:attr:`power`).

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

import enum
import logging
import struct
from typing import Callable, NamedTuple

from ..power import Power
from . import spec as P

log = logging.getLogger(__name__)


class Cause(enum.Enum):
    """Why the power state changed."""

    WRITE = "PMCSR write"          # the driver (or QEMU's pre-reset) wrote PowerState
    RESET = "function reset"
    RESTORE = "snapshot restore"


_WRITE = Cause.WRITE
_CAUSE_TEXT = {c: c.value for c in Cause}


class PowerChange(NamedTuple):
    """One change of power state (immutable; a tuple: cheap to make on every transition)."""

    old: int
    new: int
    cause: Cause


PowerListener = Callable[[PowerChange], None]


class PowerManagement:
    """The PM capability of one function: registers, power state, listeners."""

    def __init__(self, no_soft_reset: bool = True, pme_support: int = 0) -> None:
        self.no_soft_reset = bool(no_soft_reset)
        self.pme_support = pme_support & 0x1F      # PMC bits 15:11
        self.offset = 0                            # set by the PCI function once placed
        self.cfg: memoryview | None = None         # config space, set by the PCI function
        self.state = P.PCI_D0
        self.pme_enable = False
        self.pme_status = False
        self.wake_pending = False
        self.listeners: list[PowerListener] = []

    # --- register image -----------------------------------------------------------------

    @property
    def pmc(self) -> int:
        return 3 | (self.pme_support << P.PCI_PM_CAP_PME_SHIFT)

    @property
    def pmcsr(self) -> int:
        v = self.state
        if self.no_soft_reset:
            v |= P.PCI_PM_CTRL_NO_SOFT_RESET
        if self.pme_enable:
            v |= P.PCI_PM_CTRL_PME_ENABLE
        if self.pme_status:
            v |= P.PCI_PM_CTRL_PME_STATUS
        return v

    def cap_bytes(self) -> bytes:
        """The capability as it stands (header's next pointer left 0 for libvfio-user)."""
        return struct.pack("<BBHHBB", P.PCI_CAP_ID_PM, 0, self.pmc, self.pmcsr, 0, 0)

    def read(self, offset: int, count: int, cfg: memoryview) -> bytes:
        """Config read at absolute ``offset`` inside the capability."""
        self.sync(cfg)
        return bytes(cfg[offset:offset + count])

    def write(self, offset: int, data: bytes, cfg: memoryview) -> None:
        """Config write at absolute ``offset``; only the bytes written are affected."""
        rel = offset - self.offset
        old = new = self.pmcsr
        touched = 0
        for i, b in enumerate(data):
            pos = rel + i
            if P.PCI_PM_CTRL <= pos < P.PCI_PM_CTRL + 2:
                shift = 8 * (pos - P.PCI_PM_CTRL)
                touched |= 0xFF << shift
                new = new & ~(0xFF << shift) | b << shift
            else:
                log.debug("PM: write to read-only byte %#x ignored", self.offset + pos)
        if touched:
            self._write_pmcsr(new, old, touched)
        self._sync_pmcsr(cfg)

    def _write_pmcsr(self, new: int, old: int, touched: int) -> None:
        if touched & P.PCI_PM_CTRL_PME_STATUS and new & P.PCI_PM_CTRL_PME_STATUS:
            self.pme_status = False                       # RW1C
        if touched & P.PCI_PM_CTRL_PME_ENABLE and self.pme_support:
            self.pme_enable = bool(new & P.PCI_PM_CTRL_PME_ENABLE)
        if touched & P.PCI_PM_CTRL_STATE_MASK:
            target = new & P.PCI_PM_CTRL_STATE_MASK
            if target in (P.PCI_D1, P.PCI_D2):
                log.info("PM: write of unsupported %s discarded", P.D_STATE_NAMES[target])
            elif target != self.state:
                self._set_state(target, Cause.WRITE)

    def _set_state(self, new: int, cause: Cause) -> None:
        """The one path every power-state change takes: set, mirror, tell the listeners."""
        old, self.state = self.state, new
        # A D3hot -> D0 write leaves a wake mark until anything else happens (see power).
        self.wake_pending = cause is _WRITE and old == P.PCI_D3hot and new == P.PCI_D0
        if self.cfg is not None:
            self._sync_pmcsr(self.cfg)
        if old != new:
            log.info("PM: %s -> %s (No_Soft_Reset=%d): %s", P.D_STATE_NAMES[old],
                     P.D_STATE_NAMES[new], self.no_soft_reset, _CAUSE_TEXT[cause])
        change = PowerChange(old, new, cause)
        for cb in tuple(self.listeners):
            cb(change)

    def sync(self, cfg: memoryview) -> None:
        """Mirror the registers into config space, keeping libvfio-user's next pointer."""
        img = bytearray(self.cap_bytes())
        img[1] = cfg[self.offset + 1]
        cfg[self.offset:self.offset + P.PCI_PM_SIZEOF] = img

    def _sync_pmcsr(self, cfg: memoryview) -> None:
        """Mirror PMCSR alone: the only register of the capability that ever changes (the
        rest is written once by :meth:`sync` / when the capability is placed)."""
        struct.pack_into("<H", cfg, self.offset + P.PCI_PM_CTRL, self.pmcsr)

    # --- facts for the layers above -----------------------------------------------------

    @property
    def decodes_bars(self) -> bool:
        """PCI PM 1.2, 5.3: in D3hot only configuration accesses are honoured."""
        return self.state == P.PCI_D0

    @property
    def power(self) -> Power:
        """The power state as the reset policy sees it (``power.Power``)."""
        if self.state == P.PCI_D3hot:
            return Power.D3HOT
        return Power.D0_WOKEN if self.wake_pending else Power.D0

    def note_activity(self) -> None:
        """A BAR access or other driver activity: a later reset is no longer a wake reset."""
        self.wake_pending = False

    def reset(self) -> None:
        """Function reset: D0, PME disabled (No_Soft_Reset is hardwired)."""
        self.pme_enable = False
        self.pme_status = False
        self._set_state(P.PCI_D0, Cause.RESET)

    def get_state(self) -> dict:
        return {"state": self.state, "pme_enable": self.pme_enable,
                "pme_status": self.pme_status, "no_soft_reset": self.no_soft_reset}

    def set_state(self, d: dict) -> None:
        """Restore a :meth:`get_state`; ValueError (nothing changed) if it is invalid."""
        state = int(d["state"]) & 3
        if state not in (P.PCI_D0, P.PCI_D3hot):
            raise ValueError(f"invalid power state {state} in snapshot")
        self.pme_enable = bool(d.get("pme_enable")) and bool(self.pme_support)
        self.pme_status = bool(d.get("pme_status"))
        self._set_state(state, Cause.RESTORE)
