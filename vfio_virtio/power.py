"""What a reset or power transition keeps: ONE pure function, :func:`decide`.

Every event that can reset something (a PMCSR write, VFIO_USER_DEVICE_RESET, FLR, a lost
connection, the driver writing status 0, SUSPEND, a snapshot restore) is an :class:`Event`.
:func:`decide` maps (event, power state, No_Soft_Reset, SUSPEND, whether the client drove the
device, the disconnect option) to an :class:`Outcome`; the shared transport half
(``virtio/transport_base.py``) applies it, and nothing else decides. The README's
"what survives what" table is :func:`survival_table` (a test compares the two).

The rules (docs/PM.md has the evidence):

* D3hot -> D0 with No_Soft_Reset = 0 is a soft reset (PCI PM 1.2, 5.4.1 D0uninitialized);
  with No_Soft_Reset = 1 nothing is lost.
* VFIO_USER_DEVICE_RESET: QEMU sends it on every system reset, including the S3 wake reset,
  after writing PMCSR back to D0 itself. QEMU's own virtio-pci skips that reset for a
  No_Soft_Reset function in D3hot (the function stays in D3hot, DRIVER_OK kept, its queues
  work after D0); here "in D3hot, or woken from it with nothing in between"
  (:attr:`Power.D0_WOKEN`, QEMU's vfio-user client writes D0 first) keeps everything; that
  reset closes the window, so a second one is a real reset. Any other
  device reset resets the function; one from a client that never drove the device (QEMU's
  reset at machine start) keeps the lines, so outputs survive a host reboot until the new
  driver takes over.
* FLR resets everything. A lost connection resets the function and the virtio level; lines
  are kept unless ``--reset-lines-on-disconnect``.
* Status 0 is a virtio reset only: lines and PCI state are kept.
* D0 -> D3hot, SUSPEND, DRIVER_OK after SUSPEND and a snapshot restore reset nothing: they
  only change gating, which every layer derives from the PM capability and the status.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Event(enum.Enum):
    """What happened, as the layer that saw it reports it."""

    PMCSR_D0_TO_D3HOT = "D0 -> D3hot"
    PMCSR_D3HOT_TO_D0 = "D3hot -> D0"
    DEVICE_RESET = "`VFIO_USER_DEVICE_RESET`"
    FLR = "FLR"
    LOST_CONNECTION = "client disconnects"
    STATUS_ZERO = "driver writes status 0"
    SUSPEND = "SUSPEND (VIRTIO_F_SUSPEND)"
    RESUME = "DRIVER_OK while SUSPENDed"
    SNAPSHOT_RESTORE = "`--restore` of a snapshot"


class Power(enum.Enum):
    """The function's power state as the PM capability reports it (``PowerManagement.power``)."""

    D0 = "D0"
    D3HOT = "D3hot"
    D0_WOKEN = "D0, woken from D3hot with nothing in between"


class Lines(enum.Enum):
    KEEP = "kept"
    RESET = "reset"


class Pm(enum.Enum):
    KEEP = "kept"
    RESET = "reset"                # function reset: D0, PME off, MSI-X/INTx disable cleared


class Buffers(enum.Enum):
    KEEP = "kept"
    DROP = "dropped"


@dataclass(frozen=True)
class Outcome:
    """What survives one event. ``virtio_reset``: status, features and queues reset."""

    virtio_reset: bool
    lines: Lines
    pm: Pm
    event_buffers: Buffers


NOTHING = Outcome(False, Lines.KEEP, Pm.KEEP, Buffers.KEEP)
FULL_RESET = Outcome(True, Lines.RESET, Pm.RESET, Buffers.DROP)


def decide(event: Event, power: Power, no_soft_reset: bool, suspended: bool = False,
           driven: bool = True, reset_lines_on_disconnect: bool = False) -> Outcome:
    """The survival table as a function (see the module docstring for the rules).

    ``power`` is the state at the time of the event (for PMCSR_D3HOT_TO_D0: the state the
    write left, D0). ``suspended``: SUSPEND negotiated and set; no rule depends on it today
    (a SUSPENDed device is reset like a running one, and SUSPEND itself resets nothing) but
    it is part of the situation so a rule that needs it lands here. ``driven``: the current
    client wrote a non-zero status since the last function reset.
    """
    if event is Event.PMCSR_D3HOT_TO_D0:
        if no_soft_reset:
            return NOTHING
        return Outcome(True, Lines.RESET, Pm.KEEP, Buffers.DROP)
    if event is Event.DEVICE_RESET:
        if no_soft_reset and power in (Power.D3HOT, Power.D0_WOKEN):
            return NOTHING                       # the platform's wake reset
        if not driven:
            return Outcome(True, Lines.KEEP, Pm.RESET, Buffers.DROP)
        return FULL_RESET
    if event is Event.FLR:
        return FULL_RESET
    if event is Event.LOST_CONNECTION:
        return Outcome(True, Lines.RESET if reset_lines_on_disconnect else Lines.KEEP,
                       Pm.RESET, Buffers.DROP)
    if event is Event.STATUS_ZERO:
        return Outcome(True, Lines.KEEP, Pm.KEEP, Buffers.DROP)
    return NOTHING          # D0 -> D3hot, SUSPEND, RESUME, SNAPSHOT_RESTORE: gating only


# --- the README table ---------------------------------------------------------------------

# (event, condition shown, arguments to decide)
ROWS: list[tuple[Event, str, dict]] = [
    (Event.PMCSR_D0_TO_D3HOT, "gating only: no BAR decode (reads all ones), no interrupts, "
     "no queue work; input edges latched", dict(power=Power.D0, no_soft_reset=True)),
    (Event.PMCSR_D3HOT_TO_D0, "No_Soft_Reset = 1", dict(power=Power.D0, no_soft_reset=True)),
    (Event.PMCSR_D3HOT_TO_D0, "No_Soft_Reset = 0 (PCI PM 1.2 5.4.1 soft reset)", dict(power=Power.D0, no_soft_reset=False)),
    (Event.DEVICE_RESET, "No_Soft_Reset = 1, in D3hot or just woken (QEMU's S3 wake reset)",
     dict(power=Power.D3HOT, no_soft_reset=True)),
    (Event.DEVICE_RESET, "otherwise (guest reboot; `--soft-reset` in D3hot)",
     dict(power=Power.D0, no_soft_reset=True)),
    (Event.DEVICE_RESET, "from a client that never drove the device (QEMU machine start)",
     dict(power=Power.D0, no_soft_reset=True, driven=False)),
    (Event.FLR, "any", dict(power=Power.D3HOT, no_soft_reset=True)),
    (Event.LOST_CONNECTION, "any power state", dict(power=Power.D3HOT, no_soft_reset=True)),
    (Event.LOST_CONNECTION, "`--reset-lines-on-disconnect`",
     dict(power=Power.D0, no_soft_reset=True, reset_lines_on_disconnect=True)),
    (Event.STATUS_ZERO, "any", dict(power=Power.D0, no_soft_reset=True)),
    (Event.SUSPEND, "then DRIVER_OK; gating only, reads back SUSPEND with DRIVER_OK clear",
     dict(power=Power.D0, no_soft_reset=True)),
    (Event.SNAPSHOT_RESTORE, "as saved; gating follows the restored power state", dict(power=Power.D3HOT, no_soft_reset=True)),
]

HEADER = ("| event | when | virtio status, features, queues | lines (direction, driven value) "
          "| IRQ config, queued event buffers | PCI PM state, MSI-X enable |")


def _cells(o: Outcome) -> list[str]:
    irq = "dropped" if o.event_buffers is Buffers.DROP else "kept"
    return ["reset" if o.virtio_reset else "kept", o.lines.value, irq, o.pm.value]


def survival_table() -> str:
    """The "what survives what" table in Markdown, generated from :func:`decide`."""
    out = [HEADER, "|" + "---|" * 6]
    for event, when, kw in ROWS:
        out.append("| " + " | ".join([event.value, when] + _cells(decide(event, **kw))) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print(survival_table())
