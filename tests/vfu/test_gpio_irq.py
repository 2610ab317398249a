"""virtio-gpio interrupts through the real socket: eventq buffers, MSI-X, latching, reset.

The host toggles inputs through the control socket; the guest side (GpioDriver) sees eventq
buffers come back VALID / INVALID on the eventq's MSI-X vector. Spec references are to
virtio 1.3 section 5.17.6.6 (Set IRQ Type) and 5.17.7 (eventq).

"Nothing arrives" is proven without sleeping: line SENTINEL has an EDGE_BOTH interrupt; the
host toggles it *after* the change under test, and the sentinel's VALID buffer is waited for.
The server drains host changes in order, so by the time the sentinel's buffer is used, any
buffer the earlier change would have completed is in the used ring too.
"""
from __future__ import annotations

import struct

import pytest

from vfio_virtio.backends.control import ControlClient
from vfio_virtio.gpio import spec as G
from vfio_virtio_kit.gpio_driver import DEFAULT_FEATURES, GpioDriver
from vfio_virtio.virtio import spec as V

VALID, INVALID = G.VIRTIO_GPIO_IRQ_STATUS_VALID, G.VIRTIO_GPIO_IRQ_STATUS_INVALID
OK, ERR = bytes([G.VIRTIO_GPIO_STATUS_OK, 0]), bytes([G.VIRTIO_GPIO_STATUS_ERR, 0])
EVENTQ = G.VIRTIO_GPIO_EVENTQ
SENTINEL = 7
RISING, FALLING, BOTH = (G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_FALLING,
                         G.VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH)
HIGH, LOW, NONE = (G.VIRTIO_GPIO_IRQ_TYPE_LEVEL_HIGH, G.VIRTIO_GPIO_IRQ_TYPE_LEVEL_LOW,
                   G.VIRTIO_GPIO_IRQ_TYPE_NONE)


class Bench:
    """A driver, the host's control client, and the sentinel line."""

    def __init__(self, d: GpioDriver, c: ControlClient):
        self.d, self.c = d, c
        self.sentinel_armed = False

    def irq(self, line: int, irq_type: int) -> bytes:
        return self.d.request(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, line, irq_type)

    def events(self) -> list[tuple[int, int]]:
        """Wait for the next eventq completions (on the eventq's MSI-X vector)."""
        return self.d.events(timeout=5)

    def settle(self) -> list[tuple[int, int]]:
        """Every eventq completion caused by what happened so far, sentinel excluded."""
        d, c = self.d, self.c
        if not self.sentinel_armed:
            assert self.irq(SENTINEL, BOTH) == OK
            self.sentinel_armed = True
        d.queue_irq(SENTINEL)
        c.set(SENTINEL, 1 - c.get(SENTINEL)["input"])
        got: list[tuple[int, int]] = []
        while (SENTINEL, VALID) not in got:
            got += self.events()
        got.remove((SENTINEL, VALID))
        # The server publishes a used entry, then writes the eventfd, in one loop iteration
        # that runs apart from the vfio-user channel (it was caused by the control socket), so
        # the entry can be seen before its interrupt lands. One vfio-user round trip is served
        # after that iteration: from then on no interrupt of what happened so far is in flight,
        # and a test that consumes pending interrupts consumes them all.
        d.client.cfg_read16(0)
        return got


# What the Linux driver negotiates (event idx, indirect descriptors) and the bare minimum.
LINUX_FEATURES = (DEFAULT_FEATURES | (1 << V.VIRTIO_F_EVENT_IDX)
                  | (1 << V.VIRTIO_F_INDIRECT_DESC))


@pytest.fixture(params=[DEFAULT_FEATURES, LINUX_FEATURES], ids=["base", "event-idx"])
def bench(server, request):
    d = GpioDriver.open(server.socket, features=request.param)
    assert d.drv.features == request.param
    c = ControlClient(server.control)
    yield Bench(d, c)
    c.close()
    d.close()


# --- delivery of each trigger type ----------------------------------------------------------

@pytest.mark.parametrize("irq_type, fires, quiet", [
    pytest.param(RISING, [(0, 1)], [(1, 0)], id="edge-rising"),
    pytest.param(FALLING, [(1, 0)], [(0, 1)], id="edge-falling"),
    pytest.param(BOTH, [(0, 1), (1, 0)], [], id="edge-both"),
])
def test_edge_interrupt_types(bench, irq_type, fires, quiet):
    """5.17.6.6 / 5.17.7: an enabled and unmasked edge interrupt returns the line's buffer
    VALID on a matching edge (MSI-X on the eventq vector); the other edge does not."""
    d, c = bench.d, bench.c
    for old, new in quiet:
        c.set(0, old)
        assert bench.irq(0, irq_type) == OK
        d.queue_irq(0)
        c.set(0, new)
        assert bench.settle() == []
        assert bench.irq(0, NONE) == OK
        assert bench.events() == [(0, INVALID)]
    for old, new in fires:
        c.set(0, old)
        assert bench.irq(0, irq_type) == OK
        d.queue_irq(0)
        assert bench.settle() == []                  # enabling does not fire by itself
        vec = d.drv.queue_vectors[EVENTQ]
        d.arm_interrupt(EVENTQ)
        d.drv.irq_pending(vec)                       # consume interrupts already seen
        c.set(0, new)
        assert d.drv.wait_irq(vec, 5) >= 1           # MSI-X of the eventq
        assert d.poll_events() == [(0, VALID)]
        assert bench.irq(0, NONE) == OK
        assert bench.settle() == []                  # nothing held any more: nothing returned


@pytest.mark.parametrize("irq_type, active", [
    pytest.param(HIGH, 1, id="level-high"),
    pytest.param(LOW, 0, id="level-low"),
])
def test_level_interrupt_types(bench, irq_type, active):
    """5.17.7: a level interrupt fires while the line is active and the buffer is queued;
    'Once the interrupt is unmasked again and the interrupt on the line is still active,
    the device shall notify the driver again.' Inactive: nothing."""
    d, c = bench.d, bench.c
    c.set(1, 1 - active)
    assert bench.irq(1, irq_type) == OK
    d.queue_irq(1)
    assert bench.settle() == []
    c.set(1, active)
    assert bench.events() == [(1, VALID)]
    d.queue_irq(1)                                   # still held active: re-fires at once
    assert bench.events() == [(1, VALID)]
    c.set(1, 1 - active)
    d.queue_irq(1)
    assert bench.settle() == []
    assert bench.irq(1, NONE) == OK
    assert bench.events() == [(1, INVALID)]


def test_irq_on_line_enabled_while_already_active_level(bench):
    """5.17.6.6: for level type 'the device should notify the driver once the interrupt
    signal on a line is sensed and the interrupt is unmasked' - including a level that was
    already active when the interrupt was enabled."""
    d, c = bench.d, bench.c
    c.set(2, 1)
    d.queue_irq(2)                                   # unmasked before enabled: returned INVALID
    assert bench.events() == [(2, INVALID)]
    assert bench.irq(2, HIGH) == OK
    d.queue_irq(2)
    assert bench.events() == [(2, VALID)]


# --- latching (5.17.6 device requirements) ---------------------------------------------------

def test_edge_is_latched_while_masked(bench):
    """'The device MUST latch an edge interrupt if the interrupt is enabled but still
    masked': an edge with no buffer queued is delivered when the buffer is queued; several
    edges while masked are one pending interrupt."""
    d, c = bench.d, bench.c
    assert bench.irq(3, BOTH) == OK
    for level in (1, 0, 1):                          # three edges, no buffer
        c.set(3, level)
    assert bench.settle() == []
    d.queue_irq(3)
    assert bench.events() == [(3, VALID)]
    d.queue_irq(3)
    assert bench.settle() == []                      # collapsed: only one was pending
    assert bench.irq(3, NONE) == OK
    assert bench.events() == [(3, INVALID)]


def test_edge_before_enable_is_not_latched(bench):
    """5.17.6.6: 'the device should latch the interrupt events from this point onward':
    an edge before SET_IRQ_TYPE is not delivered."""
    d, c = bench.d, bench.c
    c.set(3, 1)
    assert bench.irq(3, RISING) == OK
    d.queue_irq(3)
    assert bench.settle() == []


def test_level_is_not_latched_while_masked(bench):
    """'The device MUST NOT latch an level interrupt if the interrupt is enabled but still
    masked': a pulse while no buffer is queued is lost once the level is gone."""
    d, c = bench.d, bench.c
    assert bench.irq(4, HIGH) == OK
    c.set(4, 1)
    c.set(4, 0)
    assert bench.settle() == []
    d.queue_irq(4)
    assert bench.settle() == []
    c.set(4, 1)                                      # a live level still works
    assert bench.events() == [(4, VALID)]


def test_disable_discards_latched_edge(bench):
    """'The device MUST discard any latched interrupt for a GPIO line, once interrupt is
    disabled for the same.'"""
    d, c = bench.d, bench.c
    assert bench.irq(5, RISING) == OK
    c.set(5, 1)                                      # latched, masked
    assert bench.irq(5, NONE) == OK
    assert bench.irq(5, RISING) == OK
    d.queue_irq(5)
    assert bench.settle() == []


# --- returning buffers INVALID and the type rules ---------------------------------------------

def test_irq_type_none_returns_queued_buffer_invalid(bench):
    """5.17.7 device req.: on SET_IRQ_TYPE NONE 'the device MUST return the buffers, if they
    were received earlier, after setting the status field to INVALID'."""
    d, c = bench.d, bench.c
    assert bench.irq(0, RISING) == OK
    assert bench.irq(1, RISING) == OK
    d.queue_irq(0)
    d.queue_irq(1)
    assert bench.irq(0, NONE) == OK
    assert bench.events() == [(0, INVALID)]
    c.set(0, 1)
    c.set(1, 1)                                      # line 1 still unmasked and enabled
    assert bench.events() == [(1, VALID)]
    assert bench.settle() == []


def test_direction_none_returns_queued_buffer_invalid(bench):
    """5.17.6: direction NONE discards all line state, which includes the interrupt: the
    held buffer comes back INVALID and the line's interrupt is off afterwards."""
    d, c = bench.d, bench.c
    assert bench.irq(2, BOTH) == OK
    d.queue_irq(2)
    d.set_direction(2, G.VIRTIO_GPIO_DIRECTION_NONE)
    assert bench.events() == [(2, INVALID)]
    assert c.get(2)["edge"] == "none"
    d.queue_irq(2)                                   # not enabled any more
    assert bench.events() == [(2, INVALID)]


def test_buffer_for_line_without_irq_or_bad_line_is_invalid(bench):
    """5.17.6.6: 'or the interrupt is unmasked without being enabled first, the device should
    return any unused pair of buffers ... INVALID'. Also a line >= ngpio, a second pair for
    a line (driver MUST NOT; the first one stays), and malformed pairs."""
    d, c = bench.d, bench.c
    d.queue_irq(0)
    assert bench.events() == [(0, INVALID)]
    d.queue_irq(8)
    assert bench.events() == [(8, INVALID)]
    assert bench.irq(1, RISING) == OK
    first = d.queue_irq(1)
    d.queue_irq(1)
    assert bench.events() == [(1, INVALID)]
    assert first in d.irq_heads                      # the first pair is still held
    for out, in_lens, n in (([b"\x01"], [1], 1), ([struct.pack("<HH", 1, 0)], [1], 1),
                            ([struct.pack("<H", 1)], [2], 1), ([struct.pack("<H", 1)], [], 0)):
        d.add_chain(EVENTQ, out, in_lens)
        d.drv.kick(EVENTQ)
        got = bench.events()
        assert got == [(-1, INVALID if n else -1)], (out, in_lens)
    c.set(1, 1)
    assert bench.events() == [(1, VALID)]


def test_irq_type_change_only_through_none(bench):
    """5.17.6.6: 'In order to change the trigger type of an already enabled interrupt, the
    driver MUST first disable the interrupt': a direct change is ERR and the old type stays
    in force; through NONE it works. Setting the same type again is harmless."""
    d, c = bench.d, bench.c
    assert bench.irq(6, RISING) == OK
    assert bench.irq(6, RISING) == OK
    assert bench.irq(6, FALLING) == ERR
    assert c.get(6)["edge"] == "rising"
    d.queue_irq(6)
    c.set(6, 1)
    assert bench.events() == [(6, VALID)]
    assert bench.irq(6, NONE) == OK
    assert bench.irq(6, FALLING) == OK
    assert c.get(6)["edge"] == "falling"
    d.queue_irq(6)
    c.set(6, 0)
    assert bench.events() == [(6, VALID)]


def test_irq_and_output_exclude_each_other(bench):
    """5.17.6 driver req.: 'MUST NOT send IRQ messages for a GPIO line configured for
    output': the device answers ERR; an output cannot be made while an interrupt is on."""
    d, _ = bench.d, bench.c
    d.set_direction(0, G.VIRTIO_GPIO_DIRECTION_OUT)
    assert bench.irq(0, RISING) == ERR
    assert bench.irq(1, RISING) == OK
    assert d.request(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, G.VIRTIO_GPIO_DIRECTION_OUT) == ERR
    assert d.get_direction(1) == G.VIRTIO_GPIO_DIRECTION_IN


def test_without_irq_feature_set_irq_type_is_err(server):
    """5.17.6.6: SET_IRQ_TYPE 'is allowed only if the VIRTIO_GPIO_F_IRQ feature has been
    negotiated': without it every SET_IRQ_TYPE is ERR and eventq buffers come back INVALID."""
    with GpioDriver.open(server.socket, features=1 << V.VIRTIO_F_VERSION_1) as d:
        assert not d.drv.has(G.VIRTIO_GPIO_F_IRQ)
        for t in (RISING, FALLING, BOTH, HIGH, LOW, NONE):
            assert d.request(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 0, t) == ERR, t
        d.queue_irq(0)
        assert d.events(5) == [(0, INVALID)]
        assert d.get_value(0) == 0


# --- reset with events pending ---------------------------------------------------------------

def test_driver_reset_with_events_pending(bench, server):
    """3.1.1 / 2.4: after a driver reset (status 0) with eventq buffers held and edges
    latched, nothing stale reaches the new rings or the old ones. Line policy (device.py):
    a driver reset keeps directions and driven values; interrupt configuration is cleared."""
    d, c = bench.d, bench.c
    d.set_value(0, 1)
    d.set_direction(0, G.VIRTIO_GPIO_DIRECTION_OUT)
    assert bench.irq(2, RISING) == OK
    d.queue_irq(2)                                   # held
    assert bench.irq(3, BOTH) == OK
    c.set(3, 1)                                      # latched (masked)
    assert bench.irq(4, HIGH) == OK
    d.queue_irq(4)                                   # held, level low
    assert bench.settle() == []
    old_eventq = d.drv.rings[EVENTQ]
    used_before = old_eventq.used_idx

    d.drv.reset()
    c.set(2, 1)                                      # would fire line 2 and 4 if still armed
    c.set(4, 1)
    c.set(3, 0)
    d.restart(features=d.drv.features)
    bench.sentinel_armed = False
    assert old_eventq.used_idx == used_before        # old ring never written after reset

    assert d.get_direction(0) == G.VIRTIO_GPIO_DIRECTION_OUT
    assert d.get_value(0) == 1 and c.get(0)["value"] == 1
    assert [c.get(g)["edge"] for g in (2, 3, 4)] == ["none"] * 3
    d.queue_irq(2)                                   # irq type is NONE again
    assert bench.events() == [(2, INVALID)]
    assert bench.irq(3, BOTH) == OK                  # the latch did not survive
    d.queue_irq(3)
    assert bench.settle() == []
    c.set(3, 1)
    assert bench.events() == [(3, VALID)]


def test_device_reset_returns_lines_to_reset_state(bench, server):
    """Line policy: a function-level reset (VFIO_USER_DEVICE_RESET after the driver used
    the device) returns every line to its reset state: input, value 0, no interrupt."""
    d, c = bench.d, bench.c
    d.set_value(0, 1)
    d.set_direction(0, G.VIRTIO_GPIO_DIRECTION_OUT)
    assert bench.irq(1, RISING) == OK
    d.queue_irq(1)
    d.client.device_reset()
    assert d.drv.read_status() == 0
    st = c.get(0)
    assert st["direction"] == "in" and st["value"] == 0
    assert c.get(1)["edge"] == "none"
    d.restart(features=d.drv.features)
    bench.sentinel_armed = False
    assert d.get_direction(0) == G.VIRTIO_GPIO_DIRECTION_IN
    assert bench.settle() == []


# --- no delivery while the function sleeps or the device is suspended -------------------------

def _two_round_trips(d: GpioDriver) -> None:
    """The server runs one poll loop over all its fds: after two vfio-user round trips, a
    host change made before them has been processed (config space answers even in D3hot)."""
    d.client.cfg_read16(0)
    d.client.cfg_read16(0)


def test_edge_in_d3hot_is_delivered_after_d0(bench):
    """PCI PM 1.2 (a function in D3hot raises no MSI) + 5.17.6 latching: an edge while the
    function is in D3hot (No_Soft_Reset: state kept) completes nothing until D0, then the
    held buffer comes back VALID once."""
    d, c = bench.d, bench.c
    assert bench.irq(0, RISING) == OK
    d.queue_irq(0)
    d.drv.irq_pending(d.drv.queue_vectors[EVENTQ])   # consume interrupts already seen
    d.drv.set_power_state(3)
    c.set(0, 1)
    _two_round_trips(d)
    assert d.drv.rings[EVENTQ].used_idx == 0
    assert not d.drv.irq_pending(d.drv.queue_vectors[EVENTQ])
    d.drv.set_power_state(0)
    assert bench.events() == [(0, VALID)]
    d.queue_irq(0)
    assert bench.settle() == []


def test_level_during_suspend_is_delivered_on_resume(server):
    """virtio 1.4 VIRTIO_F_SUSPEND: a suspended device uses no buffers; on resume an active
    level on an unmasked line fires (5.17.7: 'Once the interrupt is unmasked again and the
    interrupt on the line is still active, the device shall notify the driver')."""
    feats = DEFAULT_FEATURES | (1 << V.VIRTIO_F_SUSPEND)
    with GpioDriver.open(server.socket, features=feats) as d, \
            ControlClient(server.control) as c:
        assert d.drv.has(V.VIRTIO_F_SUSPEND)
        assert d.request(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 1, HIGH) == OK
        d.queue_irq(1)
        st = d.drv.read_status()
        d.drv.write_status(st | V.VIRTIO_CONFIG_S_SUSPEND)
        st = d.drv.read_status()
        assert st & V.VIRTIO_CONFIG_S_SUSPEND and not st & V.VIRTIO_CONFIG_S_DRIVER_OK
        c.set(1, 1)
        _two_round_trips(d)
        assert d.drv.rings[EVENTQ].used_idx == 0
        d.drv.write_status((st & ~V.VIRTIO_CONFIG_S_SUSPEND) | V.VIRTIO_CONFIG_S_DRIVER_OK)
        assert d.events(5) == [(1, VALID)]
