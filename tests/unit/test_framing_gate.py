"""The whole-message gate (vfio_virtio/vfu/framing.py) on a real socketpair and the real
loop: it admits only whole messages, waits without spinning, consumes nothing, times out."""
from __future__ import annotations

import socket
import struct

import pytest

from vfio_virtio.loop import Loop
from vfio_virtio.vfu import framing as F


def hdr(size: int, flags: int = 0) -> bytes:
    return struct.pack("<HHIII", 1, 9, size, flags, 0)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_whole_message_admitted_partial_waits_then_resumes(pair):
    a, b = pair
    loop = Loop()
    gate = F.ConnectionGate(loop, timeout=5.0)
    calls = []

    def reader():
        calls.append(gate.admit(a.fileno(), reader))

    loop.add_reader(a.fileno(), reader)
    msg = hdr(32) + bytes(16)
    b.sendall(msg[:20])
    for _ in range(20):
        loop.run_once(0.005)
    assert calls and not any(calls)            # partial: waiting, fd off the loop
    assert len(calls) <= 2                     # (one re-check after arming) no busy loop
    b.sendall(msg[20:])
    loop.run_once(1.0)
    assert calls[-1] is True                   # the rest came: admitted
    assert a.recv(64, socket.MSG_DONTWAIT) == msg   # nothing was consumed
    gate.close()


@pytest.mark.parametrize("header", [hdr(16 + 100, flags=1), hdr(8), hdr(F.SERVER_MAX_MSG_SIZE + 1)],
                         ids=["reply_type", "below_header", "above_max"])
def test_headers_the_library_refuses_are_admitted_at_once(pair, header):
    a, b = pair
    b.sendall(header)
    gate = F.ConnectionGate(Loop(), timeout=5.0)
    assert gate.admit(a.fileno(), lambda: None)
    gate.close()


def test_deadline_shuts_the_connection_and_admits(pair):
    a, b = pair
    loop = Loop()
    gate = F.ConnectionGate(loop, timeout=0.05)
    calls = []

    def reader():
        calls.append(gate.admit(a.fileno(), reader))

    loop.add_reader(a.fileno(), reader)
    b.sendall(hdr(64)[:10])
    while True not in calls:
        loop.run_once(1.0)                     # waits, then the deadline timer
    assert calls.count(True) == 1 and len(calls) <= 3 and gate.stalls == 1
    assert b.recv(1) == b""                    # the peer sees the connection shut
    gate.close()


def test_eof_is_admitted(pair):
    a, b = pair
    b.sendall(hdr(64)[:10])
    b.close()
    gate = F.ConnectionGate(Loop(), timeout=5.0)
    assert gate.admit(a.fileno(), lambda: None)   # the library reads the EOF and drops it
    gate.close()
