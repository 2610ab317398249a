"""A hostile vfio-user client: raw messages on the real socket (issue 8: hardening).

Wrong sizes, unknown commands, bad fds, out-of-range region accesses, disconnects in the
middle of a message, a client that stops reading, silent connections, connection floods,
a client process killed under load. After each: the server process keeps running, answers
the host control socket, leaks no fds, and serves the next client (a fresh GpioDriver works).
Section names refer to the vfio-user protocol specification (QEMU docs/interop/vfio-user.rst).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from vfio_virtio.backends.control import ControlClient
from vfio_virtio.gpio import spec as G
from vfio_virtio_kit import vfio_user_spec as U
from vfio_virtio_kit.gpio_driver import GpioDriver
from vfio_virtio_kit.guestmem import GuestMemory
from vfio_virtio_kit.vfio_user import (ServerDisconnected, VfioUserClient, VfioUserError,
                                           build_header)

ATTACH_TIMEOUT = 2.0        # vfio_virtio/server.py: a silent new connection is dropped after it
CLIENT_IO_TIMEOUT = 5.0     # vfio_virtio/server.py: a client that stops reading is dropped


def open_driver(srv, deadline: float = 10.0) -> GpioDriver:
    """GpioDriver.open, retrying while the listen backlog is full (libvfio-user listens with
    backlog 0: while it drains dead connections a non-blocking connect gets EAGAIN, where a
    blocking one, like QEMU's, would wait)."""
    end = time.monotonic() + deadline
    while True:
        try:
            return GpioDriver.open(srv.socket, timeout=5)
        except (BlockingIOError, ConnectionRefusedError):
            if time.monotonic() > end:
                raise
            time.sleep(0.01)          # pacing of the retry, not synchronisation


def serves(srv) -> None:
    """The server is alive and a fresh driver gets a working device (3.1.1 + a request)."""
    assert srv.alive(), srv.log_tail()
    with open_driver(srv) as d:
        assert d.request(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 1) == bytes(
            [G.VIRTIO_GPIO_STATUS_OK, G.VIRTIO_GPIO_DIRECTION_IN])


def nfds(srv) -> int:
    return psutil.Process(srv.proc.pid).num_fds()


def fds_back_to(srv, base: int, timeout: float = 5.0) -> bool:
    """Wait until the server holds at most ``base`` fds (it closes a departed client's fds
    when its loop gets to the disconnect; there is no event to wait on from outside)."""
    end = time.monotonic() + timeout
    while nfds(srv) > base:
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def error_or_closed(c: VfioUserClient) -> str:
    """What the server did with the last message: an error reply, or closed the socket."""
    try:
        m = c.recv_reply()
    except (ServerDisconnected, ConnectionError):
        return "closed"
    assert m.flags & U.VFIO_USER_F_ERROR, m
    assert m.error_no != 0
    return "error"


@pytest.fixture
def srv(server_factory):
    return server_factory("--lines", "8")


# --- malformed messages (spec "Header") ------------------------------------------------------

@pytest.mark.parametrize("size", [0, 8, 15, 16, 0xFFFFFFFF, 1 << 30], ids=str)
def test_bad_header_size(srv, size):
    """msg_size smaller than the header, a header-only REGION_READ, or far beyond the
    server's maximum: an error reply or a closed connection, never a hang or a crash."""
    with VfioUserClient(srv.socket) as c:
        c.send_raw(build_header(c.next_msg_id(), U.VFIO_USER_REGION_READ, size))
        assert error_or_closed(c) in ("error", "closed")
    serves(srv)


def test_size_larger_than_sent_then_disconnect(srv):
    """A header promising 4 KiB followed by 20 bytes, then the client goes away: the server
    drops the half message and the connection, and serves the next client."""
    c = VfioUserClient(srv.socket)
    c.send_raw(build_header(c.next_msg_id(), U.VFIO_USER_REGION_WRITE, 4096) + bytes(20))
    c.close()
    serves(srv)


@pytest.mark.parametrize("cut", [3, 15, 16 + 7], ids=["in_header", "header_end", "in_body"])
def test_disconnect_in_the_middle_of_a_message(srv, cut):
    payload = U.REGION_ACCESS.pack(0, U.VFIO_PCI_CONFIG_REGION_INDEX, 4)
    c = VfioUserClient(srv.socket)
    msg = build_header(c.next_msg_id(), U.VFIO_USER_REGION_READ, 16 + len(payload)) + payload
    c.send_raw(msg[:cut])
    c.close()
    serves(srv)


@pytest.mark.parametrize("cmd", [0, U.VFIO_USER_DIRTY_PAGES, 19, 99, 0xFFFF], ids=str)
def test_unknown_commands_get_an_error_and_the_connection_lives(srv, cmd):
    """Spec "Header": the server replies with the Error flag to a command it does not know;
    the connection stays usable."""
    with VfioUserClient(srv.socket) as c:
        with pytest.raises(VfioUserError):
            c.request(cmd, bytes(32))
        assert c.cfg_read16(0) == 0x1AF4
    serves(srv)


def test_reply_typed_message_from_client(srv):
    """A message flagged as a reply (the client never sends those) is refused."""
    with VfioUserClient(srv.socket) as c:
        c.send_raw(build_header(c.next_msg_id(), U.VFIO_USER_DEVICE_GET_INFO, 32,
                                U.VFIO_USER_F_TYPE_REPLY) + bytes(16))
        assert error_or_closed(c) in ("error", "closed")
    serves(srv)


def test_second_version_negotiation_and_bad_version(srv):
    """VERSION again on a negotiated connection, then a client whose first message is not
    VERSION, then a major version the server does not speak: refused, server unharmed."""
    with VfioUserClient(srv.socket) as c:
        with pytest.raises((VfioUserError, ServerDisconnected, ConnectionError)):
            c.negotiate()
    with VfioUserClient(srv.socket, negotiate=False) as c:
        c.send_raw(build_header(1, U.VFIO_USER_DEVICE_GET_INFO, 32) + bytes(16))
        assert error_or_closed(c) in ("error", "closed")
    with VfioUserClient(srv.socket, negotiate=False) as c:
        with pytest.raises((VfioUserError, ServerDisconnected, ConnectionError)):
            c.negotiate(major=7)
    serves(srv)


# --- region accesses (spec "VFIO_USER_REGION_READ / WRITE") ----------------------------------

@pytest.mark.parametrize("region,offset,count", [
    (U.VFIO_PCI_CONFIG_REGION_INDEX, 4096, 4),          # just past config space
    (U.VFIO_PCI_CONFIG_REGION_INDEX, 4094, 4),          # straddles the end
    (0, 0x4000, 4),                                     # past BAR0
    (0, (1 << 64) - 2, 4),                              # offset + count wraps
    (3, 0, 4),                                          # BAR3 does not exist
    (99, 0, 4),                                         # no such region at all
    (0, 0, 0),                                          # zero count
    (0, 0, 2 << 20),                                    # beyond max_data_xfer_size
], ids=["cfg_end", "cfg_straddle", "bar0_end", "wrap", "bar3", "region99", "count0", "huge"])
def test_region_access_out_of_range(srv, region, offset, count):
    """Accesses outside a region, to absent regions, of zero or oversized length: an error
    reply (or a dropped connection), nothing read or written out of bounds."""
    if count == 0:                  # zero-length: any well-formed reply, connection usable
        with VfioUserClient(srv.socket) as c:
            for cmd in (U.VFIO_USER_REGION_READ, U.VFIO_USER_REGION_WRITE):
                try:
                    c.request(cmd, U.REGION_ACCESS.pack(offset, region, 0))
                except VfioUserError:
                    pass
            assert c.cfg_read16(0) == 0x1AF4
        serves(srv)
        return
    with VfioUserClient(srv.socket) as c:
        with pytest.raises((VfioUserError, ServerDisconnected, ConnectionError)):
            c.region_read(region, offset, count)
    with VfioUserClient(srv.socket) as c:
        with pytest.raises((VfioUserError, ServerDisconnected, ConnectionError)):
            if count > 4096:
                c.request(U.VFIO_USER_REGION_WRITE, U.REGION_ACCESS.pack(offset, region, count)
                          + bytes(16))           # count says more than is sent
            else:
                c.region_write(region, offset, bytes(count))
    serves(srv)


# --- file descriptors (spec "VFIO_USER_DMA_MAP") ---------------------------------------------

def _dma_map_payload(iova: int, size: int, offset: int = 0) -> bytes:
    prot = U.VFIO_USER_F_DMA_REGION_READ | U.VFIO_USER_F_DMA_REGION_WRITE
    return U.DMA_MAP.pack(U.DMA_MAP.size, prot, offset, iova, size)


def test_dma_map_with_bad_fds_leaks_nothing(srv):
    """DMA maps backed by a pipe, by /dev/null, with two fds where one is declared, with an
    fd on a message that takes none, with size 0, overlapping an existing map, or with an
    offset far past the file: each refused or harmless; the server holds no extra fds after
    the client is gone, and serves the next one."""
    base = nfds(srv)                              # idle server, before any client
    mem = GuestMemory(1 << 20, iova=0x100000)
    r, w = os.pipe()
    null = os.open("/dev/null", os.O_RDWR)
    try:
        for _ in range(3):
            with VfioUserClient(srv.socket) as c:
                for fds, payload, cmd in [
                    ((r,), _dma_map_payload(0x10000000, 1 << 20), U.VFIO_USER_DMA_MAP),
                    ((null,), _dma_map_payload(0x20000000, 1 << 20), U.VFIO_USER_DMA_MAP),
                    ((mem.fd, r), _dma_map_payload(0x30000000, 1 << 20), U.VFIO_USER_DMA_MAP),
                    ((mem.fd,), _dma_map_payload(0x40000000, 0), U.VFIO_USER_DMA_MAP),
                    ((mem.fd,), _dma_map_payload(0x50000000, 4096, 1 << 40), U.VFIO_USER_DMA_MAP),
                    ((mem.fd,), U.REGION_ACCESS.pack(0, U.VFIO_PCI_CONFIG_REGION_INDEX, 2),
                     U.VFIO_USER_REGION_READ),
                    ((r, w, null), bytes(U.DEVICE_INFO.pack(U.DEVICE_INFO.size, 0, 0, 0)),
                     U.VFIO_USER_DEVICE_GET_INFO),
                ]:
                    try:
                        c.request(cmd, payload, fds)
                    except VfioUserError:
                        pass
                c.dma_map(0x60000000, 1 << 20, mem.fd)
                with pytest.raises(VfioUserError):            # overlaps the map above
                    c.request(U.VFIO_USER_DMA_MAP, _dma_map_payload(0x60080000, 1 << 20),
                              (mem.fd,))
                assert c.cfg_read16(0) == 0x1AF4
            serves(srv)
        assert fds_back_to(srv, base), (nfds(srv), base)
    finally:
        for fd in (r, w, null):
            os.close(fd)
        mem.close()


def test_dma_map_of_a_file_smaller_than_the_map(srv):
    """A DMA map larger than its backing file: the pages past the end of the file do not
    exist (an access would raise SIGBUS). The device must never touch them: a descriptor
    pointing there makes a malformed chain or a refused map, not a dead server."""
    small = GuestMemory(1 << 20, iova=0x100000)
    try:
        with GpioDriver.open(srv.socket, mem_size=1 << 20) as d:
            d.client.dma_map(0x80000000, 16 << 20, small.fd)   # 1 MiB file, 16 MiB map
            ring = d.drv.rings[0]
            n = ring.size                  # descriptors add() has not handed out
            head = ring.add_raw({n - 2: (0x80000000 + (8 << 20), 8, 1, n - 1),
                                 n - 1: (0x80000000 + (9 << 20), 2, 2, 0)}, n - 2)
            d.drv.kick(0)
            d.client.cfg_read16(0)
            assert srv.alive(), srv.log_tail()
            assert d.drv.wait_used(0, 5) == [(head, 0)]      # completed as malformed
            assert d.get_value(0) == 0                        # and the device goes on
    finally:
        small.close()
    serves(srv)


# --- misbehaving peers -----------------------------------------------------------------------

def test_silent_connection_does_not_freeze_the_server(srv):
    """A process connects and sends nothing. The server must not wait for it forever: the
    host control socket answers, and after the silent client is dropped a real one is served."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(srv.socket)
    try:
        with ControlClient(srv.control, timeout=ATTACH_TIMEOUT + 3) as host:
            assert host.get(0)["direction"] == "in"
        r = s.recv(1)                       # the server closed it (after ATTACH_TIMEOUT)
        assert r == b""
    finally:
        s.close()
    serves(srv)


def test_client_that_stops_reading(srv):
    """Thousands of requests and no reply read: the server's replies back up. It drops the
    client after CLIENT_IO_TIMEOUT instead of blocking on it, keeps the control socket
    served, and the next client works."""
    c = VfioUserClient(srv.socket)
    one = U.REGION_ACCESS.pack(0, U.VFIO_PCI_CONFIG_REGION_INDEX, 256)
    blob = b"".join(build_header(i, U.VFIO_USER_REGION_READ, 16 + len(one)) + one
                    for i in range(1, 20001))
    c._sock.setblocking(False)
    sent, start = 0, time.monotonic()
    try:
        while sent < len(blob) and time.monotonic() - start < 2:
            try:
                sent += c._sock.send(blob[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)            # our send buffer is full too: pacing, not sync
            except (BrokenPipeError, ConnectionResetError):
                break
        with ControlClient(srv.control, timeout=CLIENT_IO_TIMEOUT + 3) as host:
            assert host.get(0)["line"] == 0
        c._sock.setblocking(True)
        c._sock.settimeout(CLIENT_IO_TIMEOUT + 5)
        try:                                # drain: the server closes its end
            while c._sock.recv(1 << 20):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
    finally:
        c.close()
    serves(srv)


def test_connection_flood_while_attached(srv):
    """200 connection attempts (non-blocking, loopback UNIX socket) while a driver is
    attached: the attached driver keeps working; after it leaves, the dead connections that
    queued are dropped and a fresh driver is served."""
    with GpioDriver.open(srv.socket) as d:
        d.set_value(3, 1)
        d.set_direction(3, G.VIRTIO_GPIO_DIRECTION_OUT)
        refused = 0
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(srv.socket)
            except (BlockingIOError, ConnectionRefusedError):
                refused += 1
            s.close()
            if _ % 50 == 0:
                assert d.get_value(3) == 1
        assert d.get_value(3) == 1
    serves(srv)
    with ControlClient(srv.control) as host:
        assert host.get(3)["direction"] == "out" and host.get(3)["value"] == 1


_LOAD = r"""
import sys
from vfio_virtio_kit.gpio_driver import GpioDriver
from vfio_virtio.gpio import spec as G
d = GpioDriver.open(sys.argv[1])
d.set_value(5, 1)
d.set_direction(5, G.VIRTIO_GPIO_DIRECTION_OUT)
print("running", flush=True)
while True:
    for g in range(8):
        d.add_request(G.VIRTIO_GPIO_MSG_GET_VALUE, g)
    d.drv.kick(0)
    d.complete(8)
"""


def test_sigkill_of_a_client_under_load(srv):
    """A client process killed with SIGKILL in the middle of a request stream (the kernel
    closes its socket, perhaps mid-message): the server resets the function for the lost
    connection, keeps the lines (lost-connection policy: keep), and serves the next client."""
    p = subprocess.Popen([sys.executable, "-c", _LOAD, srv.socket], stdout=subprocess.PIPE,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert p.stdout.readline().strip() == b"running"
        with ControlClient(srv.control) as host:
            assert host.get(5)["value"] == 1
        p.kill()
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        p.stdout.close()
    serves(srv)
    with ControlClient(srv.control) as host:
        assert host.get(5)["direction"] == "out" and host.get(5)["value"] == 1


def test_many_short_lived_clients(srv):
    """50 clients in a row that connect, negotiate, map memory, wire interrupts and vanish
    without any clean-up: no fd is left behind."""
    base = nfds(srv)                              # idle server, before any client
    mem = GuestMemory(1 << 20, iova=0x100000)
    try:
        for i in range(50):
            c = VfioUserClient(srv.socket)
            c.dma_map(mem.iova, mem.size, mem.fd)
            efd = os.eventfd(0)
            c.set_irqs(U.VFIO_PCI_MSIX_IRQ_INDEX, 0, [efd])
            os.close(efd)
            c.close()
        serves(srv)
        assert fds_back_to(srv, base), (nfds(srv), base)
    finally:
        mem.close()
