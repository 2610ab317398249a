"""virtio-gpio device: requestq and eventq glue between the virtio core and the controller.

Queue 0 is the requestq, queue 1 the eventq (virtio 1.3, 5.17.2). The per-line rules live in
:class:`~vfio_virtio.gpio.controller.GpioController`; this module only moves bytes between
descriptor chains and the controller, and completes eventq buffers the controller hands back.
Malformed chains (bad index, loop, bad indirect table, unmapped or wrongly-permitted buffer)
are completed with used length 0: the device writes nothing into the buffers of a chain it
could not validate, which the spec allows, and the driver sees a short response (the Linux
driver checks the used length exactly and reports an error). The rest of the batch carries on.
A well-formed chain with a bad request gets status ERR.
"""
from __future__ import annotations

import logging
from typing import Any

from ..virtio.core import VirtioCore
from ..virtio.queue import Chain
from . import spec as G
from .controller import GpioController, decode_irq_request

log = logging.getLogger(__name__)

REQUESTQ, EVENTQ = G.VIRTIO_GPIO_REQUESTQ, G.VIRTIO_GPIO_EVENTQ
MAX_REQUEST_READ = 64          # more than any valid request: an oversize one is seen as such
BATCH = 64


class VirtioGpioDevice:
    """The device side of virtio-gpio (VirtioDevice protocol of ``virtio.core``)."""

    device_id = G.VIRTIO_ID_GPIO
    num_queues = 2

    def __init__(self, controller: GpioController, queue_max_size: int = 256) -> None:
        self.ctl = controller
        self.queue_max_size = queue_max_size
        self.core: VirtioCore | None = None
        self.stats = {"requests": 0, "errors": 0, "events": 0, "malformed": 0}
        self._pend: list[tuple[int, int]] = []     # eventq used entries not yet pushed
        self._pending_held: dict[int, int] | None = None   # snapshot: line -> eventq head
        # Runs work after the current register access has been answered (the server sets it
        # to its loop's call_later(0, ...)); by default at once.
        self.defer = lambda fn: fn()

    # --- VirtioDevice ---------------------------------------------------------------------

    def attach(self, core: VirtioCore) -> None:
        self.core = core
        self.ctl.gate = lambda: core.running      # delivery follows the core's gating

    def device_features(self) -> int:
        return 1 << G.VIRTIO_GPIO_F_IRQ

    def config_read(self, offset: int, count: int) -> bytes:
        cfg = self.ctl.config_bytes()
        return (cfg[offset:offset + count] if offset < len(cfg) else b"").ljust(count, b"\0")

    def config_write(self, offset: int, data: bytes) -> None:
        log.debug("write to read-only gpio config at %#x ignored", offset)

    def start(self) -> None:
        self.ctl.irq_feature = self.core.has(G.VIRTIO_GPIO_F_IRQ)
        self._complete(self.ctl.deliver_pending())
        self.queue_notify(REQUESTQ)
        self.queue_notify(EVENTQ)

    def quiesce(self) -> None:
        """The core stopped running: nothing to do here, delivery reads the core's gating
        (edges are latched meanwhile); completions already produced still go out."""
        self._complete(self.ctl.take_completions())

    def resume(self) -> None:
        """Back from D3hot or SUSPEND. Delivery of latched events and a scan of both queues
        (buffers added meanwhile) run right after the register write that resumed us has been
        answered, as a real device resumes its engines asynchronously to the config write.
        When there is no such work (nothing deliverable, no queue's avail index moved) none
        is scheduled."""
        if self._resume_pending():
            self.defer(self._resume_work)

    def _resume_pending(self) -> bool:
        """Whether resuming has work: completions not pushed, a held line that may fire, or
        a queue whose avail index moved past what the device consumed (or unreadable)."""
        core = self.core
        if core is None:
            return False
        if self._pend or self.ctl.may_deliver():
            return True
        for q in core.queues:
            if q.avail_pending():
                return True
        return False

    def _resume_work(self) -> None:
        if self.core is None or not self.core.running:
            return                            # suspended again, or reset, before we ran
        self._complete(self.ctl.deliver_pending())
        for q in (REQUESTQ, EVENTQ):
            self.queue_notify(q)

    def reset(self, keep_lines: bool) -> None:
        """Virtio reset as the reset policy ordered: held event buffers are dropped, line
        state kept or reset."""
        dropped = self.ctl.reset(keep_lines=keep_lines)
        self._pend = []
        self._pending_held = None
        log.info("gpio reset: lines %s, %d event buffers dropped",
                 "kept" if keep_lines else "reset", len(dropped))

    def queue_reset(self, index: int) -> None:
        if index == EVENTQ:
            # Held buffers belong to the ring being reset; interrupt config stays.
            for g in self.ctl.held_lines():
                self.ctl.release_held(g)

    def on_dma_change(self) -> None:
        # Chains check the DMA generation themselves; a restored snapshot waits for memory.
        self._reattach_held()

    # --- queues ---------------------------------------------------------------------------

    def queue_notify(self, index: int) -> None:
        core = self.core
        if core is None or not core.running or not core.queue_ready(index):
            return
        q = core.queues[index]
        while True:
            chains = q.pop_batch(BATCH)
            if index == REQUESTQ:
                done = [self._request(c) for c in chains]
                q.push_batch(done)
            else:
                for c in chains:
                    self._complete(self._event_buffer(c), push=False)
                self._flush_events()
            if not core.check_queue(index):
                return
            if chains and index == REQUESTQ:
                core.interrupt_queue(REQUESTQ)
                self._complete(self.ctl.take_completions())
            if len(chains) < BATCH:
                return

    def _request(self, c: Chain) -> tuple[int, int]:
        self.stats["requests"] += 1
        if c.error:                           # nothing written into an unvalidated chain
            self.stats["malformed"] += 1
            self.stats["errors"] += 1
            return c.head, 0
        try:
            resp = self.ctl.handle(c.read(MAX_REQUEST_READ), c.writable_len)
            if resp[:1] != b"\x00":
                self.stats["errors"] += 1
            return c.head, c.write(resp)
        except OSError as e:                  # guest memory went away under us
            log.warning("requestq chain %d: %s", c.head, e)
            return c.head, 0

    def _event_buffer(self, c: Chain) -> list[tuple[Any, int]]:
        if c.error:
            self.stats["malformed"] += 1
            return [(c, G.VIRTIO_GPIO_IRQ_STATUS_INVALID)]
        try:
            gpio = decode_irq_request(c.read(MAX_REQUEST_READ), c.writable_len)
        except OSError:
            gpio = None
        return self.ctl.queue_irq(gpio, c)

    def _complete(self, completions: list[tuple[Any, int]], push: bool = True) -> None:
        """Write each eventq completion's status and queue its used entry."""
        if not completions:
            return
        pend = self._pend
        for chain, status in completions:
            try:
                n = chain.write(bytes([status])) if chain.writable_len >= 1 else 0
            except OSError as e:
                log.warning("eventq chain %d: %s", chain.head, e)
                n = 0
            if status == G.VIRTIO_GPIO_IRQ_STATUS_VALID:
                self.stats["events"] += 1
            pend.append((chain.head, n))
        if push:
            self._flush_events()

    def _flush_events(self) -> None:
        pend, core = self._pend, self.core
        if not pend or core is None:
            return
        self._pend = []
        if not core.queue_ready(EVENTQ) or core.queues[EVENTQ].broken:
            return
        core.queues[EVENTQ].push_batch(pend)
        core.interrupt_queue(EVENTQ)

    def on_backend_events(self) -> None:
        """The backend's fd is readable: input changes to latch or deliver."""
        self._complete(self.ctl.process_events())

    # --- snapshot -------------------------------------------------------------------------

    def get_state(self) -> dict:
        held = {}
        for g in self.ctl.held_lines():
            held[str(g)] = self.ctl.held_token(g).head
        return {"controller": self.ctl.snapshot(), "held_heads": held}

    def set_state(self, d: dict) -> None:
        """Restore line state now (outputs drive at once); held eventq buffers are re-attached
        once the client has mapped guest memory again (see :meth:`on_dma_change`)."""
        heads = {int(g): int(h) for g, h in d.get("held_heads", {}).items()}
        self._complete(self.ctl.restore(d["controller"], {}), push=False)
        self._pending_held = heads

    def _reattach_held(self) -> None:
        heads = self._pending_held
        if not heads or self.core is None or not self.core.queue_ready(EVENTQ):
            return
        q = self.core.queues[EVENTQ]
        try:
            tokens = {g: q.chain_at(h) for g, h in heads.items()}
        except (OSError, ValueError):
            return                              # not all of guest memory is mapped yet
        self._pending_held = None
        for g, chain in sorted(tokens.items()):
            self._complete(self.ctl.queue_irq(g, chain), push=False)
        self._flush_events()
