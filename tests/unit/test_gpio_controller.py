"""GpioController: the per-line rules of virtio 1.3 section 5.17, seen as a driver sees them.

Each test names the spec rule it guards. The backend is the real SimBackend; the host side
of the lines is driven through its thread-safe API.
"""
from __future__ import annotations

import json
import random
import struct

import pytest

from vfio_virtio.backends.sim import SimBackend
from vfio_virtio.gpio import spec as G
from vfio_virtio.gpio.controller import GpioController, decode_irq_request

OK, ERR = G.VIRTIO_GPIO_STATUS_OK, G.VIRTIO_GPIO_STATUS_ERR
VALID, INVALID = G.VIRTIO_GPIO_IRQ_STATUS_VALID, G.VIRTIO_GPIO_IRQ_STATUS_INVALID
OUT, IN, NONE = G.VIRTIO_GPIO_DIRECTION_OUT, G.VIRTIO_GPIO_DIRECTION_IN, \
    G.VIRTIO_GPIO_DIRECTION_NONE
RISING, FALLING, BOTH = (G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_FALLING,
                         G.VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH)
HIGH, LOW = G.VIRTIO_GPIO_IRQ_TYPE_LEVEL_HIGH, G.VIRTIO_GPIO_IRQ_TYPE_LEVEL_LOW


def req(mtype: int, gpio: int = 0, value: int = 0) -> bytes:
    return struct.pack(G.VIRTIO_GPIO_REQUEST_FMT, mtype, gpio, value)


class Dev:
    """A controller over a SimBackend, with driver-style helpers."""

    def __init__(self, lines: int = 8, names: list[str] | None = None, irq: bool = True):
        self.sim = SimBackend(lines, names)
        self.c = GpioController(self.sim)
        self.c.irq_feature = irq

    def msg(self, mtype: int, gpio: int = 0, value: int = 0) -> tuple[int, int]:
        out = self.c.handle(req(mtype, gpio, value), 2)
        assert len(out) == 2, "used length must be exactly 2 (Linux checks it)"
        return out[0], out[1]

    def ok(self, mtype: int, gpio: int = 0, value: int = 0) -> int:
        st, v = self.msg(mtype, gpio, value)
        assert st == OK, (mtype, gpio, value)
        return v

    def enable(self, gpio: int, irq_type: int) -> None:
        self.ok(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, gpio, irq_type)

    def events(self) -> list:
        return self.c.process_events()


@pytest.fixture
def dev():
    d = Dev()
    yield d
    d.sim.close()


# ---- configuration and names (5.17.4, 5.17.6.1) -----------------------------------------

def test_config_layout_ngpio_and_names_size():
    d = Dev(10, ["MMC-CD", "", "", "", "", "Red LED Vdd", "", "ethernet reset"])
    blob = b"MMC-CD\0\0\0\0\0Red LED Vdd\0\0ethernet reset\0\0\0"  # the spec's example
    assert d.c.names_blob == blob
    assert d.c.config_bytes() == struct.pack("<HxxI", 10, len(blob))
    out = d.c.handle(req(G.VIRTIO_GPIO_MSG_GET_LINE_NAMES), 1 + len(blob))
    assert out == bytes([OK]) + blob  # used length exactly 1 + gpio_names_size


def test_get_line_names_wrong_buffer_size_is_err():
    d = Dev(2, ["a", "b"])
    n = d.c.gpio_names_size
    assert d.c.handle(req(G.VIRTIO_GPIO_MSG_GET_LINE_NAMES), n) == bytes([ERR, 0])
    assert d.c.handle(req(G.VIRTIO_GPIO_MSG_GET_LINE_NAMES), n + 2) == bytes([ERR, 0])
    assert d.c.handle(req(G.VIRTIO_GPIO_MSG_GET_LINE_NAMES), 1) == bytes([ERR])
    assert d.c.handle(req(G.VIRTIO_GPIO_MSG_GET_LINE_NAMES), 0) == b""


def test_no_names_means_size_zero_and_get_names_err(dev):
    # 5.17.4: gpio_names_size is 0 if the device doesn't support names
    assert dev.c.gpio_names_size == 0
    assert dev.c.config_bytes() == struct.pack("<HxxI", 8, 0)
    assert dev.c.handle(req(G.VIRTIO_GPIO_MSG_GET_LINE_NAMES), 1) == bytes([ERR])
    assert dev.c.handle(req(G.VIRTIO_GPIO_MSG_GET_LINE_NAMES), 2) == bytes([ERR, 0])


# ---- malformed requests: ERR, never an exception (5.17.6 device requirements) ----------

@pytest.mark.parametrize("mtype", [0, 7, 8, 0x100, 0xFFFF])
def test_unknown_message_type_is_err(dev, mtype):
    assert dev.msg(mtype, 0, 0) == (ERR, 0)


@pytest.mark.parametrize("mtype", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("gpio", [8, 9, 0xFFFF])
def test_line_out_of_range_is_err(dev, mtype, gpio):
    assert dev.msg(mtype, gpio, 0) == (ERR, 0)


@pytest.mark.parametrize("size", [0, 1, 7, 9, 16])
def test_request_of_wrong_size_is_err(dev, size):
    assert dev.c.handle(b"\x05\x00\x00\x00\x01\x00\x00\x00\x00" * 2, 2)[:1] == bytes([ERR])
    assert dev.c.handle(bytes(size), 2) == bytes([ERR, 0])


@pytest.mark.parametrize("cap", [0, 1, 3, 64])
def test_response_buffer_of_wrong_size_is_err_and_not_executed(dev, cap):
    out = dev.c.handle(req(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, OUT), cap)
    assert out == bytes([ERR, 0])[:cap]
    assert dev.ok(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 0) == IN  # not executed


def test_fuzz_random_requests_never_raise():
    d = Dev(4, ["a"])
    rng = random.Random(1234)
    for _ in range(5000):
        n = rng.choice([0, 1, 2, 7, 8, 8, 8, 8, 9, 20])
        data = bytes(rng.randrange(256) for _ in range(n))
        if n == 8 and rng.random() < 0.7:  # bias towards plausible messages
            data = req(rng.randrange(0, 8), rng.randrange(0, 6), rng.choice([0, 1, 2, 3, 4, 8, 9]))
        cap = rng.choice([0, 1, 2, 2, 2, 3, 1 + d.c.gpio_names_size])
        out = d.c.handle(data, cap)
        assert len(out) <= cap and (not out or out[0] in (OK, ERR))
        d.c.queue_irq(rng.choice([None, 0, 1, 3, 4, 0xFFFF]), object())
        d.c.take_completions()


# ---- directions and values (5.17.6.2 - 5.17.6.5) ------------------------------------------

def test_reset_state_is_input_and_directions_round_trip(dev):
    assert [dev.ok(G.VIRTIO_GPIO_MSG_GET_DIRECTION, g) for g in range(8)] == [IN] * 8
    for d in (OUT, NONE, IN):
        assert dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 3, d) == 0
        assert dev.ok(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 3) == d


@pytest.mark.parametrize("bad", [3, 4, 0x100, 0xFFFFFFFF])
def test_bad_direction_is_err(dev, bad):
    assert dev.msg(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, bad) == (ERR, 0)
    assert dev.ok(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 0) == IN


@pytest.mark.parametrize("bad", [2, 0x100, 0xFFFFFFFF])
def test_bad_value_is_err(dev, bad):
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, OUT)
    assert dev.msg(G.VIRTIO_GPIO_MSG_SET_VALUE, 0, bad) == (ERR, 0)
    assert dev.sim.get_line(0)["value"] == 0


def test_value_set_before_output_is_driven_when_line_becomes_output(dev):
    # 5.17.6.5: "may get configured to output later, at which point this output value must
    # be used"
    dev.ok(G.VIRTIO_GPIO_MSG_SET_VALUE, 2, 1)
    assert dev.sim.get_line(2)["direction"] == "in"  # nothing driven yet
    assert dev.ok(G.VIRTIO_GPIO_MSG_GET_VALUE, 2) == 0  # input reads the (low) pin
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 2, OUT)
    assert (dev.sim.get_line(2)["direction"], dev.sim.get_line(2)["value"]) == ("out", 1)
    assert dev.ok(G.VIRTIO_GPIO_MSG_GET_VALUE, 2) == 1


def test_output_without_value_drives_low_and_set_value_drives(dev):
    dev.sim.set_input(1, 1)
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, OUT)
    assert dev.sim.get_line(1)["value"] == 0
    dev.ok(G.VIRTIO_GPIO_MSG_SET_VALUE, 1, 1)
    assert dev.sim.get_line(1)["value"] == 1 and dev.ok(G.VIRTIO_GPIO_MSG_GET_VALUE, 1) == 1
    dev.ok(G.VIRTIO_GPIO_MSG_SET_VALUE, 1, 0)
    assert dev.sim.get_line(1)["value"] == 0 and dev.ok(G.VIRTIO_GPIO_MSG_GET_VALUE, 1) == 0


def test_get_value_of_input_reads_host_level(dev):
    assert dev.ok(G.VIRTIO_GPIO_MSG_GET_VALUE, 5) == 0
    dev.sim.set_input(5, 1)
    assert dev.ok(G.VIRTIO_GPIO_MSG_GET_VALUE, 5) == 1
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 5, OUT)  # output: the driven value wins
    assert dev.ok(G.VIRTIO_GPIO_MSG_GET_VALUE, 5) == 0


def test_direction_none_discards_line_state(dev):
    # 5.17.6: "MUST discard all state information ... once ... direction NONE"
    dev.ok(G.VIRTIO_GPIO_MSG_SET_VALUE, 0, 1)
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, OUT)
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, NONE)
    assert dev.sim.get_line(0)["direction"] == "none"
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, OUT)
    assert dev.sim.get_line(0)["value"] == 0  # the remembered 1 is gone


def test_direction_none_disables_irq_and_returns_buffer_invalid(dev):
    dev.enable(4, BOTH)
    tok = object()
    assert dev.c.queue_irq(4, tok) == []
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 4, NONE)
    assert dev.c.take_completions() == [(tok, INVALID)]
    dev.sim.set_input(4, 1)
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 4, IN)
    assert dev.events() == []
    assert dev.c.queue_irq(4, object())[0][1] == INVALID  # irq type is NONE again


class FailingBackend(SimBackend):
    def set_direction(self, line, direction, value=0):
        raise OSError(5, "hardware says no")


def test_backend_failure_is_err_not_exception():
    c = GpioController(FailingBackend(2))
    assert c.handle(req(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, OUT), 2) == bytes([ERR, 0])
    assert c.handle(req(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 0), 2) == bytes([OK, IN])


# ---- SET_IRQ_TYPE rules (5.17.6.6) ------------------------------------------------------

def test_set_irq_type_requires_feature():
    d = Dev(irq=False)
    assert d.msg(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 0, RISING) == (ERR, 0)


@pytest.mark.parametrize("bad", [5, 6, 7, 9, 0x10, 0xFFFFFFFF])
def test_bad_irq_type_is_err(dev, bad):
    assert dev.msg(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 0, bad) == (ERR, 0)


def test_irq_type_changes_only_through_none(dev):
    dev.enable(0, RISING)
    assert dev.msg(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 0, FALLING) == (ERR, 0)
    assert dev.msg(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 0, RISING) == (OK, 0)  # same: no-op
    dev.enable(0, G.VIRTIO_GPIO_IRQ_TYPE_NONE)
    dev.enable(0, FALLING)
    assert dev.sim.get_line(0)["edge"] == "falling"


def test_no_irq_on_output_lines(dev):
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, OUT)
    assert dev.msg(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 0, RISING) == (ERR, 0)
    dev.enable(1, RISING)
    assert dev.msg(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, OUT) == (ERR, 0)
    assert dev.ok(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 1) == IN


def test_irq_on_inactive_line_makes_it_input(dev):
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, NONE)
    dev.enable(0, RISING)
    assert dev.ok(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 0) == IN


def test_irq_type_none_returns_buffer_invalid_and_drops_latch(dev):
    # 5.17.7 device req: on SET_IRQ_TYPE NONE return the buffers with status INVALID;
    # 5.17.6: discard any latched interrupt once it is disabled
    dev.enable(3, RISING)
    dev.sim.set_input(3, 1)
    assert dev.events() == []  # masked: latched
    tok = object()
    dev.enable(3, G.VIRTIO_GPIO_IRQ_TYPE_NONE)
    dev.enable(3, RISING)
    assert dev.c.queue_irq(3, tok) == []  # the latched edge was discarded
    dev.enable(3, G.VIRTIO_GPIO_IRQ_TYPE_NONE)
    assert dev.c.take_completions() == [(tok, INVALID)]


# ---- eventq (5.17.7) -------------------------------------------------------------------

def test_queue_buffer_invalid_cases_never_hold_two(dev):
    t = [object() for _ in range(5)]
    assert dev.c.queue_irq(None, t[0]) == [(t[0], INVALID)]       # malformed chain
    assert dev.c.queue_irq(8, t[1]) == [(t[1], INVALID)]          # gpio >= ngpio
    assert dev.c.queue_irq(0, t[2]) == [(t[2], INVALID)]          # irq not enabled
    dev.enable(0, RISING)
    assert dev.c.queue_irq(0, t[3]) == []
    assert dev.c.queue_irq(0, t[4]) == [(t[4], INVALID)]          # second buffer
    dev.sim.set_input(0, 1)
    assert dev.events() == [(t[3], VALID)]                        # the first one is kept
    assert dev.c.held_lines() == []


def test_decode_irq_request_checks_sizes():
    assert decode_irq_request(b"\x05\x00", 1) == 5
    assert decode_irq_request(b"\x05\x00", 2) is None
    assert decode_irq_request(b"\x05", 1) is None
    assert decode_irq_request(b"\x05\x00\x00", 1) is None


@pytest.mark.parametrize("irq_type,fires", [
    (RISING, [True, False]), (FALLING, [False, True]), (BOTH, [True, True])])
def test_edge_types(dev, irq_type, fires):
    dev.enable(6, irq_type)
    tok = object()
    dev.c.queue_irq(6, tok)
    for level, fire in zip((1, 0), fires):
        dev.sim.set_input(6, level)
        assert dev.events() == ([(tok, VALID)] if fire else [])
        if fire:
            tok = object()
            dev.c.queue_irq(6, tok)


def test_edge_latched_while_masked_is_delivered_on_unmask(dev):
    # 5.17.6 device req: MUST latch an edge interrupt if enabled but still masked
    dev.enable(1, RISING)
    dev.sim.set_input(1, 1)
    dev.sim.set_input(1, 0)
    dev.sim.set_input(1, 1)
    assert dev.events() == []
    tok = object()
    assert dev.c.queue_irq(1, tok) == [(tok, VALID)]
    # the edges collapsed into one latch: re-unmasking does not fire again
    assert dev.c.queue_irq(1, object()) == []


def test_edge_before_enable_is_not_latched(dev):
    dev.sim.set_input(1, 1)
    dev.events()
    dev.sim.set_input(1, 0)
    dev.enable(1, FALLING)
    assert dev.events() == []  # the edge happened before the interrupt was enabled
    assert dev.c.queue_irq(1, object()) == []


def test_two_edges_in_one_batch_with_buffer_held(dev):
    dev.enable(2, BOTH)
    t1, t2 = object(), object()
    dev.c.queue_irq(2, t1)
    dev.sim.set_input(2, 1)
    dev.sim.set_input(2, 0)
    assert dev.events() == [(t1, VALID)]     # first edge delivered, second latched
    assert dev.c.queue_irq(2, t2) == [(t2, VALID)]


@pytest.mark.parametrize("irq_type,active", [(HIGH, 1), (LOW, 0)])
def test_level_fires_while_active_and_refires(dev, irq_type, active):
    dev.sim.set_input(7, 1 - active)
    dev.events()
    dev.enable(7, irq_type)
    tok = object()
    assert dev.c.queue_irq(7, tok) == []
    dev.sim.set_input(7, active)
    assert dev.events() == [(tok, VALID)]
    tok2 = object()  # level still active: unmasking fires again at once (5.17.7 flow)
    assert dev.c.queue_irq(7, tok2) == [(tok2, VALID)]
    dev.sim.set_input(7, 1 - active)
    dev.events()
    tok3 = object()
    assert dev.c.queue_irq(7, tok3) == []


@pytest.mark.parametrize("irq_type,active", [(HIGH, 1), (LOW, 0)])
def test_level_is_not_latched_while_masked(dev, irq_type, active):
    # 5.17.6 device req: MUST NOT latch a level interrupt while masked
    dev.sim.set_input(0, 1 - active)
    dev.enable(0, irq_type)
    dev.sim.set_input(0, active)
    dev.sim.set_input(0, 1 - active)
    assert dev.events() == []
    assert dev.c.queue_irq(0, object()) == []


def test_enabling_level_irq_with_buffer_held_and_level_active_fires(dev):
    dev.sim.set_input(0, 1)
    dev.enable(0, HIGH)
    tok = object()
    assert dev.c.queue_irq(0, tok) == [(tok, VALID)]


def open_gate(c, on: bool = True) -> list:
    """The layer above's gating (the virtio core's ``running``) as the controller reads
    it; opening it delivers what waited, as the device's resume does."""
    c.gate = lambda: on
    return c.deliver_pending()


def test_delivery_disabled_latches_edges_and_enabling_delivers(dev):
    dev.enable(0, RISING)
    dev.enable(1, HIGH)
    t0, t1 = object(), object()
    dev.c.queue_irq(0, t0)
    dev.c.queue_irq(1, t1)
    assert open_gate(dev.c, False) == []
    dev.sim.set_input(0, 1)
    dev.sim.set_input(1, 1)
    assert dev.events() == []  # D3hot/suspended: nothing delivered
    assert dev.c.held_lines() == [0, 1]
    assert sorted(open_gate(dev.c), key=lambda x: x[0] is t1) == [(t0, VALID),
                                                                          (t1, VALID)]


def test_queue_while_delivery_disabled_waits(dev):
    dev.enable(0, RISING)
    dev.sim.set_input(0, 1)
    dev.events()
    open_gate(dev.c, False)
    tok = object()
    assert dev.c.queue_irq(0, tok) == []
    assert open_gate(dev.c) == [(tok, VALID)]


# ---- reset, many lines, snapshots ------------------------------------------------------

def test_reset_with_events_pending_drops_buffers_and_returns_lines_to_reset_state(dev):
    dev.ok(G.VIRTIO_GPIO_MSG_SET_VALUE, 0, 1)
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, OUT)
    dev.enable(1, BOTH)
    dev.enable(2, RISING)
    t1, t2 = object(), object()
    dev.c.queue_irq(1, t1)
    dev.c.queue_irq(2, t2)
    dev.enable(2, G.VIRTIO_GPIO_IRQ_TYPE_NONE)  # t2 now waits in the outbox
    dev.sim.set_input(1, 1)                     # event pending in the backend
    tokens = dev.c.reset()
    assert set(map(id, tokens)) == {id(t1), id(t2)}
    assert dev.c.take_completions() == [] and dev.events() == []
    assert dev.sim.get_line(0)["direction"] == "in"  # outputs released
    assert [dev.ok(G.VIRTIO_GPIO_MSG_GET_DIRECTION, g) for g in range(3)] == [IN] * 3
    assert dev.c.queue_irq(1, object())[0][1] == INVALID  # irq types back to NONE


def test_reset_keep_lines_keeps_outputs_and_clears_irqs(dev):
    dev.ok(G.VIRTIO_GPIO_MSG_SET_VALUE, 0, 1)
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, OUT)
    dev.enable(1, RISING)
    tok = object()
    dev.c.queue_irq(1, tok)
    assert dev.c.reset(keep_lines=True) == [tok]
    assert (dev.sim.get_line(0)["direction"], dev.sim.get_line(0)["value"]) == ("out", 1)
    assert dev.sim.get_line(1)["edge"] == "none"
    assert dev.c.take_completions() == []


def test_1024_lines():
    names = [f"L{i}" for i in range(1024)]
    d = Dev(1024, names)
    assert d.c.config_bytes()[:2] == struct.pack("<H", 1024)
    out = d.c.handle(req(G.VIRTIO_GPIO_MSG_GET_LINE_NAMES), 1 + d.c.gpio_names_size)
    assert out[1:].split(b"\0")[:-1] == [n.encode() for n in names]
    d.ok(G.VIRTIO_GPIO_MSG_SET_VALUE, 1023, 1)
    d.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1023, OUT)
    assert d.sim.get_line(1023)["value"] == 1
    assert d.msg(G.VIRTIO_GPIO_MSG_GET_VALUE, 1024) == (ERR, 0)
    d.enable(1000, RISING)
    tok = object()
    d.c.queue_irq(1000, tok)
    d.sim.set_input(1000, 1)
    assert d.events() == [(tok, VALID)]


def test_snapshot_restore_round_trip():
    a = Dev(16)
    a.ok(G.VIRTIO_GPIO_MSG_SET_VALUE, 0, 1)
    a.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, OUT)
    a.ok(G.VIRTIO_GPIO_MSG_SET_VALUE, 1, 1)         # pending value on an input
    a.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 2, NONE)
    a.enable(3, RISING)
    a.enable(4, BOTH)
    a.c.queue_irq(4, "chain-head-7")
    a.sim.set_input(3, 1)
    a.events()                                      # line 3 latched, no buffer
    open_gate(a.c, False)
    snap = json.loads(json.dumps(a.c.snapshot()))
    b = Dev(16, irq=False)
    b.c.gate = lambda: False                        # gating is the owner's, not restored
    assert b.c.restore(snap, {4: "head7", 9: "stray"}) == [("stray", INVALID)]
    assert b.c.snapshot() == snap
    assert b.c.irq_feature and not b.c.delivery
    assert b.sim.get_line(0)["direction"] == "out" and b.sim.get_line(0)["value"] == 1
    assert b.sim.get_line(2)["direction"] == "none"
    assert b.sim.get_line(4)["edge"] == "both"
    b.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, OUT)
    assert b.sim.get_line(1)["value"] == 1           # pending value survived
    assert open_gate(b.c) == []
    tok = object()
    assert b.c.queue_irq(3, tok) == [(tok, VALID)]   # latched edge survived
    b.sim.set_input(4, 1)
    assert b.events() == [("head7", VALID)]


@pytest.mark.parametrize("mutate", [
    lambda s: s.update(ngpio=7),
    lambda s: s.update(version=99),
    lambda s: s.__delitem__("held"),
    lambda s: s["lines"].update({"3": {"direction": 9, "value": 0, "irq_type": 0,
                                       "latched": False}}),
    lambda s: s["lines"].update({"99": {"direction": 1, "value": 0, "irq_type": 0,
                                        "latched": False}}),
    lambda s: s.update(held=[5]),
    lambda s: s.update(lines=[]),
])
def test_restore_rejects_malformed_snapshot_and_changes_nothing(dev, mutate):
    dev.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, OUT)
    snap = dev.c.snapshot()
    mutate(snap)
    before = dev.c.snapshot()
    with pytest.raises(ValueError):
        dev.c.restore(snap, {})
    assert dev.c.snapshot() == before


def test_release_held_masks_without_completing_and_keeps_latch(dev):
    # eventq ring reset: the buffer is gone, the interrupt stays enabled and edges latch
    dev.enable(2, RISING)
    tok = object()
    dev.c.queue_irq(2, tok)
    assert dev.c.held_token(2) is tok
    assert dev.c.release_held(2) is tok and dev.c.release_held(2) is None
    with pytest.raises(KeyError):
        dev.c.held_token(2)
    dev.sim.set_input(2, 1)
    assert dev.events() == []
    tok2 = object()
    assert dev.c.queue_irq(2, tok2) == [(tok2, VALID)]


# ---- names (5.17.6.1: zero-terminated, unique, 7-bit ASCII) ------------------------------

from vfio_virtio.gpio.names import (MAX_NAME_LEN, names_blob, parse_names_arg,  # noqa: E402
                                    parse_names_file, sanitize_names)


def test_names_arg_fewer_than_lines_pads_unnamed():
    assert parse_names_arg("a,,c", 5) == ["a", "", "c", "", ""]
    assert names_blob(parse_names_arg("a,,c", 4)) == b"a\0\0c\0\0"
    assert names_blob(parse_names_arg(",,", 4)) == b""  # no names at all: size 0


@pytest.mark.parametrize("arg,lines,msg", [
    ("a,b,c", 2, "3 names given for 2 lines"),
    ("a,\u00e9", 2, "7-bit ASCII"),
    ("a,b\x00c", 2, "7-bit ASCII"),
    ("a,b\tc", 2, "7-bit ASCII"),
    ("x" * (MAX_NAME_LEN + 1), 1, "characters long"),
    ("led,led", 2, "unique"),
    ("a", 0, "positive"),
])
def test_names_arg_errors(arg, lines, msg):
    with pytest.raises(ValueError, match=msg):
        parse_names_arg(arg, lines)


def test_names_file(tmp_path):
    p = tmp_path / "names"
    p.write_bytes(b"reset\n\n  led  \n")
    assert parse_names_file(p, 4) == ["reset", "", "led", ""]
    p.write_bytes("caf\u00e9\n".encode())
    with pytest.raises(ValueError, match="not 7-bit ASCII"):
        parse_names_file(p, 4)
    with pytest.raises(ValueError, match="cannot read"):
        parse_names_file(tmp_path / "missing", 4)


def test_chip_names_are_sanitized_not_refused():
    assert sanitize_names(["a", "a", "\u00e9", "x" * 40, "b", "extra"], 5) == \
        ["a", "", "", "x" * MAX_NAME_LEN, "b"]
    sim = SimBackend(3, ["dup", "dup"])      # a backend reporting bad names
    c = GpioController(sim)
    assert c.names_blob == b"dup\0\0\0"
    with pytest.raises(ValueError):
        GpioController(sim, ["dup", "dup"])  # operator-given names are validated
