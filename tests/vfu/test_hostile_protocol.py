"""Hostile vfio-user framing and interrupt messages (issue 13, hardening round 2).

The rule every test here checks: a message's announced bytes are consumed or the connection
is closed; they are never read as further commands. A smuggled message (a complete, valid
REGION_READ with a marker id hidden in the body of a bad one) must never be answered. And a
message never kills the server, leaks an fd, or freezes the loop.
Faults and where they were: docs/SECURITY.md ("Round 2").
"""
from __future__ import annotations

import time

import psutil
import pytest

from vfio_virtio.backends.control import ControlClient
from vfio_virtio_kit import vfio_user_spec as U
from vfio_virtio_kit.guestmem import GuestMemory
from vfio_virtio_kit.vfio_user import ServerDisconnected, VfioUserClient, build_header

from tests.vfu.test_hostile_client import fds_back_to, nfds, serves

SMUGGLED = 0x7777
SERVER_MAX_MSG_SIZE = (1 << 20) + 16 + U.REGION_ACCESS.size   # libvfio-user private.h


def _read_cfg(mid: int, offset: int = 0, count: int = 2) -> bytes:
    body = U.REGION_ACCESS.pack(offset, U.VFIO_PCI_CONFIG_REGION_INDEX, count)
    return build_header(mid, U.VFIO_USER_REGION_READ, 16 + len(body)) + body


INNER = _read_cfg(SMUGGLED)           # 32 bytes: a complete, valid command


def nothing_smuggled(c: VfioUserClient) -> str:
    """After a hostile message: 'closed' if the server closed the connection, else 'alive'
    after checking that a probe is answered and that the smuggled id never was."""
    probe = c.next_msg_id()
    try:
        c.send_raw(_read_cfg(probe))
        while True:
            m = c.recv_reply()
            assert m.msg_id != SMUGGLED, "bytes inside a message were executed as a command"
            if m.msg_id == probe:
                assert not m.is_error and m.payload[-2:] == b"\xf4\x1a", m
                return "alive"
    except (ServerDisconnected, ConnectionError):
        return "closed"


def warm_up(c: VfioUserClient) -> None:
    """A few whole messages first: after the first one the server serves its connection from
    the C loop (gpio/fastpath.py), so what follows meets the C side of the framing gate."""
    for _ in range(3):
        assert c.cfg_read16(0) == 0x1AF4


@pytest.fixture
def srv(server_factory):
    return server_factory("--lines", "8")


# --- SET_IRQS ranges (spec "VFIO_USER_DEVICE_SET_IRQS") ----------------------------------------

@pytest.mark.parametrize("index,start,count,dtype", [
    (U.VFIO_PCI_MSIX_IRQ_INDEX, 1, 0xFFFFFFFF, U.VFIO_IRQ_SET_DATA_EVENTFD),
    (U.VFIO_PCI_MSIX_IRQ_INDEX, 2, 0xFFFFFFFE, U.VFIO_IRQ_SET_DATA_EVENTFD),
    (U.VFIO_PCI_MSIX_IRQ_INDEX, 1, 0xFFFFFFFF, U.VFIO_IRQ_SET_DATA_NONE),
    (U.VFIO_PCI_MSIX_IRQ_INDEX, 0, 0xFFFFFFFF, U.VFIO_IRQ_SET_DATA_EVENTFD),
    (U.VFIO_PCI_INTX_IRQ_INDEX, 0, 0xFFFFFFFF, U.VFIO_IRQ_SET_DATA_EVENTFD),
    (U.VFIO_PCI_MSIX_IRQ_INDEX, 0xFFFFFFFF, 1, U.VFIO_IRQ_SET_DATA_EVENTFD),
], ids=["msix_1_max", "msix_2_max-1", "msix_none", "msix_0_max", "intx_0_max", "msix_max_1"])
def test_set_irqs_range_overflow(srv, index, start, count, dtype):
    """start + count wrapping past 2^32 (index 2 start 1 count 2^32-1 killed the server with
    SIGSEGV): refused with an error, the server lives and serves."""
    with VfioUserClient(srv.socket) as c:
        body = U.IRQ_SET.pack(U.IRQ_SET.size, dtype | U.VFIO_IRQ_SET_ACTION_TRIGGER,
                              index, start, count)
        m = None
        try:
            c.send_raw(build_header(c.next_msg_id(), U.VFIO_USER_DEVICE_SET_IRQS,
                                    16 + len(body)) + body)
            m = c.recv_reply()
        except (ServerDisconnected, ConnectionError):
            pass
        assert srv.alive(), srv.log_tail()
        assert m is not None and m.is_error, m
        assert c.cfg_read16(0) == 0x1AF4
    serves(srv)


# --- framing (spec "Header") ----------------------------------------------------------------

@pytest.mark.parametrize("ftype", [1, 2, 0xF], ids=["reply", "type2", "typeF"])
def test_reply_typed_header_body_not_executed(srv, ftype):
    """A header whose type is not 'command': its body is not parsed as further messages."""
    with VfioUserClient(srv.socket) as c:
        c.send_raw(build_header(c.next_msg_id(), U.VFIO_USER_DEVICE_GET_INFO,
                                16 + len(INNER), ftype) + INNER)
        nothing_smuggled(c)
    serves(srv)


@pytest.mark.parametrize("size", [SERVER_MAX_MSG_SIZE + 1, 0xFFFFFFFF, 8], ids=str)
def test_size_refused_message_body_not_executed(srv, size):
    """A message refused for its size: the bytes after its header are not commands."""
    with VfioUserClient(srv.socket) as c:
        c.send_raw(build_header(c.next_msg_id(), U.VFIO_USER_REGION_WRITE, size) + INNER)
        assert nothing_smuggled(c) == "closed"
    serves(srv)


def test_region_write_data_arrives_late(srv):
    """REGION_WRITE header + access now, its data 50 ms later: the data is written (it is
    the write's payload, here a valid-looking message), never executed as a command."""
    with VfioUserClient(srv.socket) as c:
        mid = c.next_msg_id()
        access = U.REGION_ACCESS.pack(0, 1, len(INNER))         # BAR1: MSI-X, writes ignored
        c.send_raw(build_header(mid, U.VFIO_USER_REGION_WRITE, 16 + len(access) + len(INNER))
                   + access)
        time.sleep(0.05)              # the scenario: the data comes 50 ms later
        c.send_raw(INNER)
        m = c.recv_reply()
        assert m.msg_id == mid and not m.is_error, m
        assert nothing_smuggled(c) == "alive"
    serves(srv)


@pytest.mark.parametrize("warm", [False, True], ids=["first", "after-traffic"])
@pytest.mark.parametrize("cut", [1, 7, 15, 16, 20, 31], ids=str)
def test_request_split_in_two_writes(srv, cut, warm):
    """A valid request written in two parts 50 ms apart (inside the header or the body) is
    answered like an unsplit one, and the connection goes on."""
    with VfioUserClient(srv.socket) as c:
        if warm:
            warm_up(c)
        mid = c.next_msg_id()
        msg = _read_cfg(mid)
        c.send_raw(msg[:cut])
        time.sleep(0.05)              # the scenario: the rest comes 50 ms later
        c.send_raw(msg[cut:])
        m = c.recv_reply()
        assert m.msg_id == mid and not m.is_error and m.payload[-2:] == b"\xf4\x1a", m
        assert c.cfg_read16(2) == 0x1069
    serves(srv)


def test_two_requests_in_one_write_and_one_across_writes(srv):
    """Message boundaries independent of write boundaries: 1.5 messages, then the rest."""
    with VfioUserClient(srv.socket) as c:
        a, b = c.next_msg_id(), c.next_msg_id()
        blob = _read_cfg(a) + _read_cfg(b, 2)
        c.send_raw(blob[:48])
        time.sleep(0.05)
        c.send_raw(blob[48:])
        got = [c.recv_reply(), c.recv_reply()]
        assert [m.msg_id for m in got] == [a, b]
        assert got[1].payload[-2:] == b"\x69\x10"
    serves(srv)


# --- fds (spec "VFIO_USER_DMA_MAP") -----------------------------------------------------------

def test_identical_dma_map_repeated_leaks_no_fd(srv):
    """The same DMA map (same memfd, range, offset, prot) sent again and again: the server
    keeps no extra fd for the repeats, and none after the client leaves."""
    base = nfds(srv)
    mem = GuestMemory(1 << 20, iova=0x100000)
    try:
        with VfioUserClient(srv.socket) as c:
            c.dma_map(0x10000000, 1 << 20, mem.fd)
            once = nfds(srv)
            for _ in range(5):
                try:
                    c.dma_map(0x10000000, 1 << 20, mem.fd)
                except Exception:           # refused or accepted: both fine, no fd kept
                    pass
            assert c.cfg_read16(0) == 0x1AF4
            assert nfds(srv) == once, (nfds(srv), once)
        assert fds_back_to(srv, base), (nfds(srv), base)
        assert "Traceback" not in srv.log_tail(200)
    finally:
        mem.close()
    serves(srv)


def test_fds_on_a_header_split_across_writes_are_closed(srv):
    """The first bytes of a DMA_MAP header carry two fds, the rest follows in a second
    write: whether the server serves or refuses it, it keeps none of those fds."""
    base = nfds(srv)
    mem = GuestMemory(1 << 20, iova=0x100000)
    try:
        for cut in (3, 7, 15):
            c = VfioUserClient(srv.socket)
            body = U.DMA_MAP.pack(U.DMA_MAP.size, 3, 0, 0x10000000, 1 << 20)
            msg = build_header(c.next_msg_id(), U.VFIO_USER_DMA_MAP, 16 + len(body)) + body
            c.send_raw(msg[:cut], (mem.fd, mem.fd))
            time.sleep(0.05)          # the scenario: the rest comes 50 ms later
            c.send_raw(msg[cut:])
            nothing_smuggled(c)
            c.close()
            assert fds_back_to(srv, base), (cut, nfds(srv), base)
    finally:
        mem.close()
    serves(srv)


# --- a stalled client (the one loop stays responsive) -----------------------------------------

STALL_DEADLINE = 5.0        # vfio_virtio/server.py CLIENT_IO_TIMEOUT


@pytest.mark.parametrize("warm", [False, True], ids=["first", "after-traffic"])
@pytest.mark.parametrize("part", ["header", "half_header", "half_body"])
def test_stalled_client_does_not_freeze_the_loop(srv, part, warm):
    """A client sends part of a message and stops: the control socket is answered promptly
    (well before the stall deadline), and the stalled connection is closed at the deadline."""
    c = VfioUserClient(srv.socket)
    try:
        if warm:
            warm_up(c)
        body = U.REGION_ACCESS.pack(0, 1, 64)
        msg = build_header(c.next_msg_id(), U.VFIO_USER_REGION_WRITE,
                           16 + len(body) + 64) + body + bytes(64)
        c.send_raw(msg[:{"header": 16, "half_header": 8, "half_body": 60}[part]])
        t0 = time.monotonic()
        with ControlClient(srv.control, timeout=STALL_DEADLINE) as host:
            assert host.get(0)["line"] == 0
        took = time.monotonic() - t0
        assert took < STALL_DEADLINE / 4, f"control answer took {took:.2f} s"
        assert c.wait_closed(STALL_DEADLINE + 3)
    finally:
        c.close()
    serves(srv)


def test_control_answers_while_a_client_stalls_repeatedly(srv):
    """Ten control requests in a row while a client sits on half a header: each is prompt."""
    c = VfioUserClient(srv.socket)
    try:
        c.send_raw(b"\x01\x00\x09")
        with ControlClient(srv.control, timeout=STALL_DEADLINE) as host:
            for _ in range(10):
                t0 = time.monotonic()
                assert host.get(1)["line"] == 1
                assert time.monotonic() - t0 < 1.0
    finally:
        c.close()
    serves(srv)


def test_a_stalled_client_costs_no_cpu(srv):
    """While a client sits on half a message the server waits for bytes (epoll), it does not
    spin: over a 1 s window it uses well under half a CPU second."""
    proc = psutil.Process(srv.proc.pid)
    c = VfioUserClient(srv.socket)
    try:
        c.send_raw(_read_cfg(c.next_msg_id())[:20])
        with ControlClient(srv.control, timeout=STALL_DEADLINE) as host:
            assert host.get(0)["line"] == 0          # the server has seen the partial message
        t0 = sum(proc.cpu_times()[:2])
        time.sleep(1.0)               # the observation window (CPU time is the measurement)
        used = sum(proc.cpu_times()[:2]) - t0
        assert used < 0.3, f"server used {used:.2f} CPU s while waiting"
    finally:
        c.close()
    serves(srv)
