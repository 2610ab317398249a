"""Fuzz the virtio-gpio protocol controller: GpioController + decode_irq_request.

Each input is a program of operations a hostile driver (and the host side) can cause:
requestq messages of any length and response capacity, eventq buffers for any line,
input changes, delivery on/off (D3hot, SUSPEND), device resets with and without keeping lines,
snapshot round trips. After every step the rules of virtio 1.3 section 5.17 and of
``vfio_virtio/gpio/controller.py`` are checked:

* ``handle`` never raises; its reply never exceeds the response capacity; a request that is
  not exactly 8 bytes, or a response buffer of the wrong size, is answered ``ERR`` truncated
  to the capacity (5.17.6); a well-formed request gets exactly 2 bytes (names: 1 + size).
* ``decode_irq_request`` returns None exactly when the chain is malformed (5.17.7).
* every eventq buffer is completed at most once, with status VALID or INVALID, and each one
  ends up completed, held, or handed back by reset: none is lost or duplicated.
* a held buffer belongs to a line with an interrupt enabled; every output line drives the
  value the controller holds for it (host-side line state).

Runs under atheris when it is installed (``--atheris``), else a seeded random loop that
mixes structured and raw programs. Prints executions and distinct outcomes; exits 1 on the
first failure, after printing the reproducer (seed and program bytes in hex).

usage: python fuzz/fuzz_requests.py [--seconds N] [--seed S] [--atheris]
"""
from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import time
import traceback

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)

from vfio_virtio.backends.sim import SimBackend  # noqa: E402
from vfio_virtio.gpio import spec as G  # noqa: E402
from vfio_virtio.gpio.controller import GpioController, decode_irq_request  # noqa: E402

NLINES = 8
NAMES = ["a", "bb", "", "ddd", "e", "", "g", "h7"]
ERR = bytes([G.VIRTIO_GPIO_STATUS_ERR, 0])
OUTCOMES: set[tuple] = set()
HANG_SECONDS = 5.0


class FuzzFailure(AssertionError):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise FuzzFailure(what)


class Reader:
    """Consumes a program's bytes; returns zeros once exhausted."""

    def __init__(self, data: bytes) -> None:
        self.d, self.i = data, 0

    def left(self) -> int:
        return len(self.d) - self.i

    def take(self, n: int) -> bytes:
        b = self.d[self.i:self.i + n]
        self.i += n
        return b.ljust(n, b"\0")

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]


class Token:
    """An eventq buffer as the glue would pass it (identity matters, not content)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


class Model:
    """The controller under test plus the bookkeeping the invariants need."""

    def __init__(self, named: bool) -> None:
        self.backend = SimBackend(NLINES, NAMES if named else None)
        self.ctl = GpioController(self.backend)
        self.issued: list[Token] = []
        self.completed: dict[int, int] = {}       # token.n -> status
        self.dropped: set[int] = set()

    def close(self) -> None:
        self.backend.close()

    def completions(self, comps) -> None:
        for tok, status in comps:
            check(isinstance(tok, Token), f"completion of a foreign token {tok!r}")
            check(status in (G.VIRTIO_GPIO_IRQ_STATUS_VALID, G.VIRTIO_GPIO_IRQ_STATUS_INVALID),
                  f"irq status {status}")
            check(tok.n not in self.completed and tok.n not in self.dropped,
                  f"token {tok.n} completed twice")
            self.completed[tok.n] = status
            OUTCOMES.add(("irq", status))

    def handle(self, req: bytes, cap: int) -> None:
        ctl = self.ctl
        resp = ctl.handle(req, cap)
        check(isinstance(resp, bytes), "handle returned non-bytes")
        check(len(resp) <= max(cap, 0), f"reply {len(resp)} bytes > capacity {cap}")
        self.completions(ctl.take_completions())
        if len(req) != 8:
            check(resp == ERR[:max(0, min(cap, 2))], f"short/long request answered {resp!r}")
            OUTCOMES.add(("badlen", len(resp)))
            return
        mtype, gpio, value = struct.unpack(G.VIRTIO_GPIO_REQUEST_FMT, req)
        if mtype == G.VIRTIO_GPIO_MSG_GET_LINE_NAMES:
            blob = ctl.names_blob
            if blob and cap == 1 + len(blob):
                check(resp == b"\0" + blob, "names reply")
            else:
                check(resp == ERR[:max(0, min(cap, 2))], "names with a bad buffer not ERR")
            OUTCOMES.add(("names", len(resp)))
            return
        if cap != 2:
            check(resp == ERR[:max(0, min(cap, 2))], f"capacity {cap} not answered ERR")
            OUTCOMES.add(("badcap", min(mtype, 8), len(resp)))
            return
        check(len(resp) == 2 and resp[0] in (0, 1), f"reply {resp!r}")
        if resp[0] == G.VIRTIO_GPIO_STATUS_ERR:
            check(resp[1] == 0, "ERR with a value")
        else:
            check(gpio < ctl.ngpio, "OK for a line that does not exist")
            check(mtype in (2, 3, 4, 5, 6), f"OK for unknown type {mtype}")
            if mtype == G.VIRTIO_GPIO_MSG_GET_DIRECTION:
                check(resp[1] in G.DIRECTIONS, "direction value")
            elif mtype == G.VIRTIO_GPIO_MSG_GET_VALUE:
                check(resp[1] in (0, 1), "line value")
            else:
                check(resp[1] == 0, "SET_* reply value not 0")
        OUTCOMES.add(("req", mtype if mtype < 8 else 8, gpio < ctl.ngpio, resp[0]))

    def invariants(self) -> None:
        snap = self.ctl.snapshot()
        lines = snap["lines"]
        for g in self.ctl.held_lines():
            check(str(g) in lines and lines[str(g)]["irq_type"] != 0,
                  f"line {g} holds a buffer without an interrupt enabled")
        for key, ln in lines.items():
            host = self.backend.get_line(int(key))
            if ln["direction"] == G.VIRTIO_GPIO_DIRECTION_OUT:
                check(host["direction"] == "out" and host["value"] == ln["value"],
                      f"line {key}: controller {ln} host {host}")
        held = {self.ctl.held_token(g).n for g in self.ctl.held_lines()}
        done = set(self.completed) | self.dropped
        check(not held & done, "a held buffer was also completed/dropped")
        check(held | done == {t.n for t in self.issued}, "an eventq buffer was lost")


def request_bytes(r: Reader) -> tuple[bytes, int]:
    """A requestq message: mostly well-formed, sometimes any length; any capacity."""
    shape = r.u8()
    mtype = r.u8() % 9 if shape & 1 else r.u16()
    gpio = r.u8() % (NLINES + 2) if shape & 2 else r.u16()
    value = r.u8() % 10 if shape & 4 else struct.unpack("<I", r.take(4))[0]
    req = struct.pack(G.VIRTIO_GPIO_REQUEST_FMT, mtype, gpio, value)
    if shape & 0x30 == 0x30:
        req = r.take(r.u8() % 24)
    caps = (2, 2, 2, 0, 1, 3, 1 + len(NAMES_BLOB_HINT), 0xFFFFFFFF)
    cap = caps[(shape >> 6) & 3] if not shape & 8 else caps[4 + ((shape >> 6) & 3)]
    return req, cap


NAMES_BLOB_HINT = b"\0".join(n.encode() for n in NAMES) + b"\0"


def run_program(data: bytes) -> None:
    r = Reader(data)
    m = Model(named=bool(r.u8() & 1))
    try:
        m.ctl.irq_feature = bool(r.u8() & 1)
        steps = 0
        while r.left() > 0 and steps < 64:
            steps += 1
            op = r.u8() % 10
            if op <= 3:
                m.handle(*request_bytes(r))
            elif op == 4:
                sel = r.u8()
                if sel & 3:                          # well-formed, mostly existing lines
                    raw, cap = struct.pack("<H", r.u8() % (NLINES + 1)), 1
                else:
                    raw, cap = r.take(r.u8() % 5), r.u8() % 4
                gpio = decode_irq_request(raw, cap)
                check((gpio is None) == (len(raw) != 2 or cap != 1), "decode_irq_request")
                check(gpio is None or 0 <= gpio <= 0xFFFF, "decoded gpio range")
                tok = Token(len(m.issued))
                m.issued.append(tok)
                m.completions(m.ctl.queue_irq(gpio, tok))
                OUTCOMES.add(("queue", gpio is None, gpio in m.ctl.held_lines()))
            elif op == 5:
                line, level = r.u8() % NLINES, r.u8() & 1
                m.backend.set_input(line, level)
                m.completions(m.ctl.process_events())
            elif op == 6:
                on = bool(r.u8() & 1)
                m.ctl.gate = lambda on=on: on
                m.completions(m.ctl.deliver_pending())
            elif op == 7:
                dropped = m.ctl.reset(keep_lines=bool(r.u8() & 1))
                for t in dropped:
                    check(t.n not in m.completed and t.n not in m.dropped, "reset dropped twice")
                    m.dropped.add(t.n)
                check(m.ctl.held_lines() == [], "reset kept held buffers")
            elif op == 8:
                m.ctl.irq_feature = bool(r.u8() & 1)
            else:
                held = {g: m.ctl.held_token(g) for g in m.ctl.held_lines()}
                snap = m.ctl.snapshot()
                m.completions(m.ctl.restore(snap, held))
                check(m.ctl.snapshot() == snap, "snapshot round trip changed the state")
            m.invariants()
    finally:
        m.close()


def random_program(rng: random.Random) -> bytes:
    if rng.random() < 0.2:
        return rng.randbytes(rng.randrange(1, 200))
    out = bytearray([rng.randrange(256), rng.randrange(256)])
    for _ in range(rng.randrange(1, 40)):
        op = rng.choice([0, 1, 2, 3, 4, 4, 5, 5, 6, 7, 8, 9])
        out.append(op)
        out += rng.randbytes(12)
    return bytes(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 30)))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--atheris", action="store_true", help="coverage-guided (needs atheris)")
    args, rest = ap.parse_known_args()
    if args.atheris:
        import atheris  # noqa: PLC0415 - optional dependency

        def one(data: bytes) -> None:
            run_program(data)
        atheris.Setup([sys.argv[0], f"-max_total_time={int(args.seconds)}"] + rest, one)
        atheris.Fuzz()
        return 0
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    deadline = time.monotonic() + args.seconds
    n = 0
    slowest = 0.0
    while time.monotonic() < deadline:
        prog = random_program(rng)
        t0 = time.monotonic()
        try:
            run_program(prog)
        except Exception:
            traceback.print_exc()
            print(f"fuzz_requests: CRASH after {n} executions (seed {seed})\n"
                  f"reproducer: {prog.hex()}")
            return 1
        took = time.monotonic() - t0
        slowest = max(slowest, took)
        n += 1
        if took > HANG_SECONDS:
            print(f"fuzz_requests: HANG ({took:.1f} s for one program, seed {seed})\n"
                  f"reproducer: {prog.hex()}")
            return 1
    print(f"fuzz_requests: seed {seed} executions {n} outcomes {len(OUTCOMES)} "
          f"slowest {slowest * 1000:.1f} ms crashes 0 hangs 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
