"""One set of rules (issue 15): the C request rules (cffi_build/csrc/gpio_lines.c) against the
Python reference (GpioController over a pure-Python SimBackend), over seeded random request
streams, malformed and hostile ones included. Both must give identical responses, identical
line states (protocol and host view) and identical eventq completions.

The C arm runs as the server runs it: a request goes to C first, and to the Python controller
(on the same, shared C line table) only when C hands it over (names, SET_IRQ_TYPE, ...).
Host input changes, eventq buffers and backend events are interleaved, so state made by one
side is used by the other.
"""
from __future__ import annotations

import random
import struct

import pytest

from vfio_virtio.backends.sim import SimBackend
from vfio_virtio.gpio import spec as G
from vfio_virtio.gpio.controller import GpioController, _Err

REQ = struct.Struct(G.VIRTIO_GPIO_REQUEST_FMT)
SEEDS = range(40)
STEPS = 400


class Arm:
    def __init__(self, store: str, n: int, names, irq: bool) -> None:
        self.backend = SimBackend(n, names, store=store)
        self.ctl = GpioController(self.backend, names)
        self.ctl.irq_feature = irq
        self.table = self.backend.line_table
        self.in_c = self.to_py = 0

    def handle(self, req: bytes, cap: int) -> bytes:
        if self.table is not None:
            r = self.table.handle(req, cap)
            if r is not None:
                self.in_c += 1
                return r
            self.to_py += 1
        return self.ctl.handle(req, cap)

    def state(self) -> tuple:
        lines = tuple((ln.direction, ln.value, ln.irq_type, bool(ln.latched))
                      for ln in self.ctl._lines)
        host = tuple((d["direction"], d["value"], d["input"], d["edge"])
                     for d in self.backend.lines())
        return lines, host, tuple(self.ctl.held_lines())

    def close(self) -> None:
        self.backend.close()


def random_request(rng: random.Random, n: int, names_size: int) -> tuple[bytes, int]:
    r = rng.random()
    mtype = rng.choice([2, 3, 4, 5, 6] * 4 + [1, 0, 7, 0xFFFF])
    gpio = rng.randrange(n) if rng.random() < 0.9 else rng.choice([n, n + 1, 0xFFFF])
    value = rng.choice([0, 1, 2, 0, 1, 3, 4, 8, 0xFFFFFFFF, 0x100])
    req = REQ.pack(mtype, gpio, value)
    cap = 2
    if mtype == 1:
        cap = 1 + names_size if rng.random() < 0.7 else rng.choice([0, 1, 2, 64])
    if r < 0.08:                                   # malformed: wrong request length
        req = rng.randbytes(rng.choice([0, 1, 4, 7, 9, 12, 64]))
    elif r < 0.14:                                 # wrong response buffer size
        cap = rng.choice([0, 1, 3, 4, 100])
    return req, cap


def run_stream(seed: int, steps: int = STEPS) -> dict:
    """Drive both arms with one seeded stream; raise AssertionError at the first mismatch."""
    rng = random.Random(seed)
    n = rng.choice([1, 2, 3, 8, 17])
    names = [f"n{i}" for i in range(n)] if rng.random() < 0.5 else None
    irq = rng.random() < 0.8
    ref, fast = Arm("py", n, names, irq), Arm("c", n, names, irq)
    names_size = ref.ctl.gpio_names_size
    token = 0
    try:
        for step in range(steps):
            k = rng.random()
            if k < 0.75:
                req, cap = random_request(rng, n, names_size)
                a, b = ref.handle(req, cap), fast.handle(req, cap)
                ca, cb = ref.ctl.take_completions(), fast.ctl.take_completions()
                what = f"seed {seed} step {step}: request {req.hex()} cap {cap}"
                assert a == b, f"{what}: response py {a.hex()} != c {b.hex()}"
                assert ca == cb, f"{what}: completions {ca} != {cb}"
            elif k < 0.87:
                line, level = rng.randrange(n), rng.randrange(2)
                ref.backend.set_input(line, level)
                fast.backend.set_input(line, level)
                ca, cb = ref.ctl.process_events(), fast.ctl.process_events()
                what = f"seed {seed} step {step}: input {line}={level}"
                assert ca == cb, f"{what}: completions {ca} != {cb}"
            elif k < 0.97:
                token += 1
                g = rng.randrange(n + 1)
                ca, cb = ref.ctl.queue_irq(g, token), fast.ctl.queue_irq(g, token)
                what = f"seed {seed} step {step}: eventq buffer for {g}"
                assert ca == cb, f"{what}: completions {ca} != {cb}"
            else:
                keep = rng.random() < 0.5
                ra, rb = ref.ctl.reset(keep_lines=keep), fast.ctl.reset(keep_lines=keep)
                what = f"seed {seed} step {step}: reset keep={keep}"
                assert ra == rb, f"{what}: dropped {ra} != {rb}"
            assert ref.state() == fast.state(), f"{what}: line state differs"
        return {"in_c": fast.in_c, "to_py": fast.to_py}
    finally:
        ref.close()
        fast.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_c_rules_match_the_python_reference(seed):
    stats = run_stream(seed)
    assert stats["in_c"] > stats["to_py"]        # the stream mostly exercises the C rules


def test_snapshot_restore_round_trips_through_the_c_table():
    """A snapshot taken from the C-backed controller restores into a Python one identically."""
    fast = Arm("c", 8, None, True)
    for req in (REQ.pack(5, 1, 1), REQ.pack(3, 1, 1), REQ.pack(6, 2, 3), REQ.pack(5, 4, 1)):
        fast.handle(req, 2)
    ref = Arm("py", 8, None, True)
    ref.ctl.restore(fast.ctl.snapshot(), {})
    back = Arm("c", 8, None, True)
    back.ctl.restore(ref.ctl.snapshot(), {})
    assert fast.state() == ref.state() == back.state()
    for a in (fast, ref, back):
        a.close()


def test_differential_catches_a_planted_bug(monkeypatch):
    """Plant a bug in the reference (SET_VALUE on an input forgets the pending value,
    5.17.6.5): the same seeded streams must report a mismatch."""
    def planted(self, gpio, value):
        line = self._lines[gpio]
        if value not in (0, 1):
            raise _Err("planted: value not 0 or 1")
        if line.direction == G.VIRTIO_GPIO_DIRECTION_OUT:
            self.backend.set_value(gpio, value)
            line.value = value
        return 0
    monkeypatch.setitem(GpioController._HANDLERS, G.VIRTIO_GPIO_MSG_SET_VALUE, planted)
    caught = 0
    for seed in SEEDS:
        try:
            run_stream(seed)
        except AssertionError:
            caught += 1
    assert caught > len(SEEDS) // 2, f"planted bug caught by only {caught} streams"
