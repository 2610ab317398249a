"""Transport-agnostic virtio device core: features, status, queues, config, reset, suspend.

A front end (virtio-pci modern in ``pci_transport.py``) maps registers onto these methods and
supplies interrupt delivery through :class:`Interrupts`. The device (e.g. virtio-gpio) plugs in
through :class:`VirtioDevice`. Knows no PCI and no GPIO.
"""
from __future__ import annotations

import logging
from typing import Protocol

from ..dma import DmaTable
from . import spec as V
from .queue import Virtqueue

log = logging.getLogger(__name__)

TRANSPORT_FEATURES = (V.bit(V.VIRTIO_F_VERSION_1) | V.bit(V.VIRTIO_F_EVENT_IDX)
                      | V.bit(V.VIRTIO_F_INDIRECT_DESC) | V.bit(V.VIRTIO_F_RING_RESET)
                      | V.bit(V.VIRTIO_F_ACCESS_PLATFORM) | V.bit(V.VIRTIO_F_SUSPEND))


class VirtioDevice(Protocol):
    """What a device type provides to the core."""

    device_id: int
    num_queues: int
    queue_max_size: int

    def device_features(self) -> int: ...
    def config_read(self, offset: int, count: int) -> bytes: ...
    def config_write(self, offset: int, data: bytes) -> None: ...
    def attach(self, core: "VirtioCore") -> None: ...
    def start(self) -> None: ...                     # DRIVER_OK: queues are live
    def queue_notify(self, index: int) -> None: ...  # the driver kicked queue ``index``
    def quiesce(self) -> None: ...                   # core.running became False
    def resume(self) -> None: ...                    # core.running became True again
    def reset(self, keep_lines: bool) -> None: ...   # virtio reset: drop held buffers
    def queue_reset(self, index: int) -> None: ...   # one queue reset (RING_RESET)
    def on_dma_change(self) -> None: ...             # guest memory was mapped or unmapped
    def get_state(self) -> dict: ...
    def set_state(self, d: dict) -> None: ...


class Interrupts(Protocol):
    """Interrupt delivery, supplied by the front end."""

    def queue_interrupt(self, index: int) -> None: ...
    def config_interrupt(self) -> None: ...


class VirtioCore:
    """Status state machine and feature negotiation (virtio 1.3, 2.1-2.2, 3.1), queues."""

    def __init__(self, device: VirtioDevice, dma: DmaTable, ring_impl: str | None = None,
                 offer_suspend: bool = True) -> None:
        self.device = device
        self.dma = dma
        self.irq: Interrupts | None = None
        feats = TRANSPORT_FEATURES | device.device_features()
        if not offer_suspend:
            feats &= ~V.bit(V.VIRTIO_F_SUSPEND)
        self.device_features = feats
        self.queues = [Virtqueue(i, dma, max_size=device.queue_max_size, impl=ring_impl)
                       for i in range(device.num_queues)]
        self.status = 0
        self.driver_features = 0
        self.config_generation = 0
        # Whether the function is powered (D0): read from the PM capability, never copied.
        # The front end sets it; alone (tests of the core) the device is always powered.
        self.power_gate = lambda: True
        self._engines = False        # what the device was last told: running or not
        self.on_gating_change = lambda: None   # the front end's hook (e.g. NEEDS_RESET)
        device.attach(self)

    # --- features -------------------------------------------------------------------------

    def has(self, feature_bit: int) -> bool:
        return bool(self.driver_features >> feature_bit & 1)

    def set_driver_features(self, value: int) -> None:
        """Driver feature writes count only before FEATURES_OK (3.1.1 step 5)."""
        if self.status & V.VIRTIO_CONFIG_S_FEATURES_OK:
            log.warning("driver features written after FEATURES_OK: ignored")
            return
        self.driver_features = value & ((1 << 64) - 1)

    @staticmethod
    def _window(bits: int, select: int) -> int:
        """32-bit feature window ``select`` (features are 64 bits here: 2+ read 0)."""
        return (bits >> (32 * select)) & 0xFFFFFFFF if select < 2 else 0

    def device_feature_window(self, select: int) -> int:
        return self._window(self.device_features, select)

    def driver_feature_window(self, select: int) -> int:
        return self._window(self.driver_features, select)

    def set_driver_feature_window(self, select: int, value: int) -> None:
        """A 32-bit driver feature write through window ``select`` (2+: ignored)."""
        if select >= 2:
            return
        shift = 32 * select
        self.set_driver_features(self.driver_features & ~(0xFFFFFFFF << shift)
                                 | (value & 0xFFFFFFFF) << shift)

    def _features_acceptable(self) -> bool:
        f = self.driver_features
        if f & ~self.device_features:
            log.warning("driver accepted features the device did not offer: %#x",
                        f & ~self.device_features)
            return False
        if not f >> V.VIRTIO_F_VERSION_1 & 1:
            log.warning("driver did not accept VIRTIO_F_VERSION_1 (legacy is not offered)")
            return False
        return True

    # --- status ---------------------------------------------------------------------------

    @property
    def powered(self) -> bool:
        """False while the function is in D3hot (derived from the PM capability)."""
        return self.power_gate()

    @property
    def running(self) -> bool:
        """Queues are processed and interrupts raised only in this state."""
        s = self.status
        return (bool(s & V.VIRTIO_CONFIG_S_DRIVER_OK) and self.powered
                and not s & (V.VIRTIO_CONFIG_S_SUSPEND | V.VIRTIO_CONFIG_S_FAILED
                             | V.VIRTIO_CONFIG_S_NEEDS_RESET))

    def write_status(self, value: int) -> None:
        """The driver wrote the device status field."""
        value &= 0xFF
        old = self.status
        if value == 0:
            # A reset: the front end turns it into power.Event.STATUS_ZERO and the policy
            # decides what it keeps, then calls reset().
            raise ValueError("status 0 is a device reset: apply it through the transport")
        if value & V.VIRTIO_CONFIG_S_FAILED and not old & V.VIRTIO_CONFIG_S_FAILED:
            log.warning("driver set FAILED")
            self.status |= V.VIRTIO_CONFIG_S_FAILED
            self.update_gating()
            return
        if not self.has(V.VIRTIO_F_SUSPEND):
            value &= ~V.VIRTIO_CONFIG_S_SUSPEND        # reserved unless negotiated
        elif self._suspend_transition(old, value):
            return
        # The driver MUST NOT clear a status bit (2.1.2); a write that tries is ignored for
        # those bits. NEEDS_RESET is the device's bit: the driver cannot set it.
        value &= ~V.VIRTIO_CONFIG_S_NEEDS_RESET
        cleared = old & ~value & ~V.VIRTIO_CONFIG_S_NEEDS_RESET & ~V.VIRTIO_CONFIG_S_SUSPEND
        if cleared:
            log.warning("driver tried to clear status bits %#x: ignored", cleared)
        new = old | value
        if new & V.VIRTIO_CONFIG_S_FEATURES_OK and not old & V.VIRTIO_CONFIG_S_FEATURES_OK:
            if not self._features_acceptable():
                new &= ~V.VIRTIO_CONFIG_S_FEATURES_OK     # 2.2.2: FEATURES_OK not set
        if new & V.VIRTIO_CONFIG_S_DRIVER_OK and not old & V.VIRTIO_CONFIG_S_DRIVER_OK:
            if not new & V.VIRTIO_CONFIG_S_FEATURES_OK:
                log.warning("DRIVER_OK without FEATURES_OK: ignored")
                new &= ~V.VIRTIO_CONFIG_S_DRIVER_OK
        self.status = new | (old & V.VIRTIO_CONFIG_S_NEEDS_RESET)
        if self.status & V.VIRTIO_CONFIG_S_DRIVER_OK and not old & V.VIRTIO_CONFIG_S_DRIVER_OK:
            self._start()

    def _suspend_transition(self, old: int, value: int) -> bool:
        """VIRTIO_F_SUSPEND (virtio 1.4): SUSPEND quiesces and reads back with DRIVER_OK
        clear; DRIVER_OK clears SUSPEND and resumes. Returns True when handled."""
        if not self.has(V.VIRTIO_F_SUSPEND):
            return False
        suspended = bool(old & V.VIRTIO_CONFIG_S_SUSPEND)
        if not suspended and value & V.VIRTIO_CONFIG_S_SUSPEND:
            if not old & V.VIRTIO_CONFIG_S_DRIVER_OK:
                log.warning("SUSPEND before DRIVER_OK: ignored")
                return True
            self.status = (old | V.VIRTIO_CONFIG_S_SUSPEND) & ~V.VIRTIO_CONFIG_S_DRIVER_OK
            log.info("suspended (VIRTIO_F_SUSPEND)")
            self.update_gating()
            return True
        if suspended and value & V.VIRTIO_CONFIG_S_DRIVER_OK:
            self.status = (old | V.VIRTIO_CONFIG_S_DRIVER_OK) & ~V.VIRTIO_CONFIG_S_SUSPEND
            log.info("resumed from SUSPEND")
            self.update_gating()
            return True
        if suspended:
            return True            # nothing else changes while suspended
        return False

    def queue_configurable(self, index: int) -> bool:
        """Queue configuration writes count only for an existing queue that is not enabled
        (the driver configures a queue before enabling it, 4.1.4.3.2 / 4.2.3.2)."""
        if not 0 <= index < len(self.queues) or self.queues[index].enabled:
            log.debug("queue %d: configuration write ignored (absent or enabled)", index)
            return False
        return True

    def set_queue_size(self, index: int, size: int) -> None:
        """The driver's queue size: a split ring's size is a power of 2 no larger than the
        maximum (2.7); anything else is ignored and the previous size reads back."""
        if not self.queue_configurable(index):
            return
        q = self.queues[index]
        if size == 0 or size & (size - 1) or size > q.max_size:
            log.warning("queue %d: invalid size %d ignored", index, size)
            return
        q.size = size

    def enable_queue(self, index: int) -> None:
        """queue_enable: the ring features are fixed now (the driver enables queues after
        FEATURES_OK and before DRIVER_OK, 3.1.1). A bad ring marks the queue broken; the
        device reports DEVICE_NEEDS_RESET when it first uses it."""
        q = self.queues[index]
        q.event_idx = self.has(V.VIRTIO_F_EVENT_IDX)
        q.indirect = self.has(V.VIRTIO_F_INDIRECT_DESC)
        q.enable()

    def _start(self) -> None:
        log.info("DRIVER_OK: features %#x", self.driver_features)
        if self.running:
            self._engines = True
            self.device.start()

    def needs_reset(self, reason: str) -> None:
        """Unrecoverable driver error: set DEVICE_NEEDS_RESET and tell the driver (2.1.1)."""
        if self.status & V.VIRTIO_CONFIG_S_NEEDS_RESET:
            return
        log.warning("DEVICE_NEEDS_RESET: %s", reason)
        self.status |= V.VIRTIO_CONFIG_S_NEEDS_RESET
        self.update_gating()
        self.config_generation = (self.config_generation + 1) & 0xFF
        if self.irq is not None and self.status & V.VIRTIO_CONFIG_S_DRIVER_OK:
            self.irq.config_interrupt()

    def reset(self, keep_lines: bool) -> None:
        """Virtio device reset, as ``power.decide`` ordered it (``keep_lines``: the device's
        line state survives). Synchronous: status reads back 0 as soon as this returns
        (4.1.4.3.1)."""
        self.device.reset(keep_lines)
        for q in self.queues:
            q.reset()
        self.status = 0
        self.driver_features = 0
        self._engines = False

    # --- queues ---------------------------------------------------------------------------

    def queue_ready(self, index: int) -> bool:
        return 0 <= index < len(self.queues) and self.queues[index].enabled

    def kick(self, index: int) -> None:
        """A driver notification for queue ``index`` (ignored unless running)."""
        if not 0 <= index < len(self.queues):
            log.debug("notify for nonexistent queue %d ignored", index)
            return
        if self.running and self.queues[index].enabled:
            self.device.queue_notify(index)

    def interrupt_queue(self, index: int) -> None:
        """Used buffers were added: raise the queue's interrupt if the ring asks for it."""
        q = self.queues[index]
        if self.running and q.needs_notify() and self.irq is not None:
            self.irq.queue_interrupt(index)

    def check_queue(self, index: int) -> bool:
        """After ring work: a broken ring puts the device in DEVICE_NEEDS_RESET."""
        q = self.queues[index]
        if q.broken:
            self.needs_reset(f"queue {index} broken (reason {q.broken})")
            return False
        return True

    def reset_queue(self, index: int) -> None:
        """VIRTIO_F_RING_RESET: reset one queue (4.1.4.3.2)."""
        self.device.queue_reset(index)
        self.queues[index].reset()

    # --- power ----------------------------------------------------------------------------

    def update_gating(self) -> bool:
        """The one path that tells the device when :attr:`running` changed (power state,
        SUSPEND, FAILED, NEEDS_RESET): quiesce on the way down, resume on the way up.
        Returns True when it changed (the front end's ``on_gating_change`` was called)."""
        now = self.running
        if now == self._engines:
            return False
        self._engines = now
        if now:
            self.device.resume()
        else:
            self.device.quiesce()
        self.on_gating_change()
        return True

    def get_state(self) -> dict:
        return {"status": self.status, "driver_features": self.driver_features,
                "config_generation": self.config_generation,
                "queues": [q.get_state() for q in self.queues],
                "device": self.device.get_state()}

    def set_state(self, d: dict) -> None:
        self.status = int(d["status"]) & 0xFF
        self.driver_features = int(d["driver_features"]) & self.device_features
        self.config_generation = int(d["config_generation"]) & 0xFF
        qs = d["queues"]
        if len(qs) != len(self.queues):
            raise ValueError(f"snapshot has {len(qs)} queues, device has {len(self.queues)}")
        for q, qd in zip(self.queues, qs):
            q.set_state(qd)
        self.device.set_state(d["device"])
        # The engines are as the snapshot left them; gating follows the restored power
        # state from here on (a restore in D3hot resumes at the D0 write).
        self._engines = self.running
