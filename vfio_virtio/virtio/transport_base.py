"""What the virtio-pci and virtio-mmio front ends share: queue and feature selectors, status,
RING_RESET, and the one place where resets and power changes are applied.

A front end maps its registers onto these methods and adds its own register state through
:meth:`TransportBase._reset_regs`. Every event that can reset anything arrives here as a
``power.Event`` (from the PCI function: device reset, FLR, lost connection, PMCSR D3hot -> D0;
from the registers: status 0), is decided by ``power.decide`` and applied in one order:
virtio level first, then the PCI part, then gating.

Gating (see :meth:`gating`) is derived, never stored: BAR decode and interrupts follow the
PM capability (``fn.pm.decodes_bars``), queue processing and event delivery follow
``core.running``, which reads the same PM state. A C fast path can mirror
:meth:`gating` into a flag from :meth:`on_gating_change` listeners.
"""
from __future__ import annotations

import logging
from typing import Callable

from ..pci import spec as P
from ..pci.function import PciFunction
from ..pci.pm import Cause, PowerChange
from ..power import NOTHING, Event, Lines, Outcome, Pm, decide
from . import spec as V
from .core import VirtioCore

log = logging.getLogger(__name__)
_WRITE = Cause.WRITE


class TransportBase:
    """Binds a :class:`VirtioCore` to a :class:`PciFunction` (shared half of a front end)."""

    def __init__(self, fn: PciFunction, core: VirtioCore,
                 reset_lines_on_disconnect: bool = False) -> None:
        self.fn, self.core = fn, core
        self.reset_lines_on_disconnect = reset_lines_on_disconnect
        self.driven = False            # the current client wrote a status since reset
        self.gating_listeners: list[Callable[[], None]] = []
        core.irq = self
        core.power_gate = lambda: fn.pm.decodes_bars
        core.on_gating_change = self._gating_changed
        fn.listener = self

    # --- shared registers -----------------------------------------------------------------

    def _reset_regs(self) -> None:
        """Registers a virtio reset returns to their initial values (front ends extend)."""
        self.dfselect = 0
        self.gfselect = 0
        self.queue_select = 0

    def _q(self):
        sel = self.queue_select
        return self.core.queues[sel] if sel < len(self.core.queues) else None

    def _set_dfselect(self, v: int) -> None:
        self.dfselect = v

    def _set_gfselect(self, v: int) -> None:
        self.gfselect = v

    def _get_df(self) -> int:
        return self.core.device_feature_window(self.dfselect)

    def _get_gf(self) -> int:
        return self.core.driver_feature_window(self.gfselect)

    def _set_gf(self, v: int) -> None:
        self.core.set_driver_feature_window(self.gfselect, v)

    def _set_qsel(self, v: int) -> None:
        self.queue_select = v                   # out of range: the queue's size reads 0

    def _configurable(self) -> bool:
        return self.core.queue_configurable(self.queue_select)

    def _set_qsize(self, v: int) -> None:
        self.core.set_queue_size(self.queue_select, v)

    def _get_qreset(self) -> int:
        """queue_reset / QueueReset: a queue reset completes before the write that asked for
        it is answered, so it always reads 0 -- "The device MUST present 0 in both
        queue_reset and queue_enable when queue reset has completed" (virtio 1.2+ 4.1.4.3.2,
        4.2.2.1); Linux's vp_modern_set_queue_reset() polls for that 0."""
        return 0

    def _set_qreset(self, v: int) -> None:
        """VIRTIO_F_RING_RESET: 1 resets the selected queue (queue_enable then reads 0)."""
        if not v & 1 or self._q() is None or not self.core.has(V.VIRTIO_F_RING_RESET):
            return
        self.core.reset_queue(self.queue_select)
        self._on_queue_reset(self.queue_select)

    def _on_queue_reset(self, index: int) -> None:
        """Front-end registers of a queue that was reset (e.g. its MSI-X vector)."""

    def _set_status(self, v: int) -> None:
        if v & 0xFF == 0:
            self.reset_event(Event.STATUS_ZERO)
            return
        self.driven = True
        self.core.write_status(v & 0xFF)
        self._gating_changed()

    # --- resets and power: the one place they are applied ---------------------------------

    def on_reset_event(self, event: Event) -> None:
        """FunctionListener: a reset reported by the PCI function."""
        self.reset_event(event)

    def on_power_change(self, change: PowerChange) -> None:
        """FunctionListener: the PM capability changed state (every cause comes here)."""
        old, new, cause = change
        if cause is _WRITE and old == P.PCI_D3hot and new == P.PCI_D0:
            self.reset_event(Event.PMCSR_D3HOT_TO_D0)
        # One gating notification per change: update_gating tells the listeners itself
        # when running changed; otherwise decode alone may have (D0 <-> D3hot).
        if not self.core.update_gating():
            self._gating_changed()

    def reset_event(self, event: Event) -> Outcome:
        """Decide what ``event`` keeps and apply it: virtio level, then PCI, then gating.
        (Events whose row resets nothing -- D0 -> D3hot, SUSPEND, RESUME, a snapshot
        restore -- only change gating, which on_power_change / the status write re-derive.)"""
        pm = self.fn.pm
        outcome = decide(event, pm.power, pm.no_soft_reset,
                         suspended=bool(self.core.status & V.VIRTIO_CONFIG_S_SUSPEND),
                         driven=self.driven,
                         reset_lines_on_disconnect=self.reset_lines_on_disconnect)
        if outcome is NOTHING or outcome == NOTHING:
            if event is Event.PMCSR_D3HOT_TO_D0:
                # the PM capability's own INFO line ("PM: D3hot -> D0 (No_Soft_Reset=1)")
                # already says it: one record per transition on the hot path
                log.debug("%s: state kept", event.value)
            else:
                log.info("%s: state kept", event.value)
            if event is Event.DEVICE_RESET:
                pm.note_activity()               # the wake reset happened: window closed
            return outcome                       # nothing was reset: gating is unchanged
        log.info("%s: virtio %s, lines %s, PM %s, event buffers %s", event.value,
                 "reset" if outcome.virtio_reset else "kept", outcome.lines.value,
                 outcome.pm.value, outcome.event_buffers.value)
        if outcome.virtio_reset:
            self.core.reset(keep_lines=outcome.lines is Lines.KEEP)
            self._reset_regs()
        if outcome.pm is Pm.RESET:
            self.driven = False
            self._function_reset()
        self.fn.apply_pm(outcome.pm)             # notifies on_power_change (gating)
        if event is Event.DEVICE_RESET:
            pm.note_activity()                   # the wake reset happened: window closed
        self.core.update_gating()
        self._gating_changed()
        return outcome

    def _function_reset(self) -> None:
        """Front-end state that only a function reset clears (config-space registers)."""

    # --- gating ---------------------------------------------------------------------------

    def gating(self) -> dict[str, bool]:
        """The derived gating facts: BARs decode, queues run, events are delivered."""
        running = self.core.running
        return {"decode": self.fn.pm.decodes_bars, "running": running, "delivery": running}

    def _gating_changed(self) -> None:
        for cb in list(self.gating_listeners):
            cb()

    def on_dma_change(self) -> None:
        self.core.device.on_dma_change()
