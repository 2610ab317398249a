"""A hostile guest driver, through the real socket (issue 8: hardening).

Random register writes everywhere, invalid queue sizes, rings outside mapped memory, DMA
unmapped under running queues, status written out of order, notify storms, an avail index
racing ahead, descriptor garbage. After each: the server process is alive and answers config
reads, it reports DEVICE_NEEDS_RESET where virtio 1.3 2.1.1 / 2.7 call for it, it recovers
after a reset (full 3.1.1 bring-up and a working request), and the host-side line state is
what the rules say (hostile register traffic never changes a line output).
"""
from __future__ import annotations

import random
import struct

import pytest

from vfio_virtio.backends.control import ControlClient
from vfio_virtio.gpio import spec as G
from vfio_virtio.pci import spec as P
from vfio_virtio_kit import vfio_user_spec as U
from vfio_virtio_kit.gpio_driver import DEFAULT_FEATURES, EVENTQ, REQUESTQ, GpioDriver
from vfio_virtio_kit.guestmem import GuestMemory
from vfio_virtio_kit.vfio_user import VfioUserError, build_header
from vfio_virtio.virtio import spec as V

OUT = G.VIRTIO_GPIO_DIRECTION_OUT
NEEDS_RESET = V.VIRTIO_CONFIG_S_NEEDS_RESET
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
REQ = struct.Struct(G.VIRTIO_GPIO_REQUEST_FMT)


# --- helpers --------------------------------------------------------------------------------

def settle(d: GpioDriver) -> None:
    """Two round trips: whatever the single server loop had queued has been processed."""
    d.client.cfg_read16(0)
    d.client.cfg_read16(0)


def lines(host: ControlClient) -> list[tuple[str, int]]:
    return [(ln["direction"], ln["value"]) for ln in host.list()]


def drive_lines(d: GpioDriver) -> None:
    """Known host-visible state: line 0 drives 1, line 2 drives 0, the rest are inputs."""
    d.set_value(0, 1)
    d.set_direction(0, OUT)
    d.set_direction(2, OUT)


def assert_alive(srv, d: GpioDriver) -> None:
    """The server runs and answers config reads with the virtio vendor id (PCI 6.2.1)."""
    assert srv.alive(), srv.log_tail()
    assert d.client.cfg_read16(P.PCI_VENDOR_ID) == V.VIRTIO_PCI_VENDOR_ID


def recover(d: GpioDriver) -> None:
    """What a driver does after DEVICE_NEEDS_RESET or any mess (2.1.1, 3.1.1): back to D0,
    memory decode and bus mastering on, virtio reset, full bring-up, a request that works."""
    d.drv.set_power_state(P.PCI_D0)
    d.client.cfg_write16(P.PCI_COMMAND, P.PCI_COMMAND_MEMORY | P.PCI_COMMAND_MASTER)
    d.restart()
    assert d.drv.read_status() & NEEDS_RESET == 0
    assert d.request(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 1) == bytes([G.VIRTIO_GPIO_STATUS_OK,
                                                                  G.VIRTIO_GPIO_DIRECTION_IN])


def setup_queue_at(d: GpioDriver, q: int, desc: int, avail: int, used: int,
                   vector: int) -> None:
    """4.1.5.1.3 done with addresses of our choosing (not a DriverRing's)."""
    drv = d.drv
    drv.common_write(V.VIRTIO_PCI_COMMON_Q_SELECT, q, 2)
    drv.common_write(V.VIRTIO_PCI_COMMON_Q_MSIX, vector, 2)
    for off, v in ((V.VIRTIO_PCI_COMMON_Q_DESCLO, desc), (V.VIRTIO_PCI_COMMON_Q_AVAILLO, avail),
                   (V.VIRTIO_PCI_COMMON_Q_USEDLO, used)):
        drv.common_write(off, v & 0xFFFFFFFF, 4)
        drv.common_write(off + 4, v >> 32, 4)
    drv.common_write(V.VIRTIO_PCI_COMMON_Q_ENABLE, 1, 2)


def assert_needs_reset_reported(d: GpioDriver) -> None:
    """2.1.1: DEVICE_NEEDS_RESET set and the driver notified (config change interrupt on
    config_msix_vector, 4.1.5.4 / 2.1.2)."""
    assert d.drv.read_status() & NEEDS_RESET
    assert d.drv.wait_irq(0, timeout=5) >= 1


@pytest.fixture
def rig(server_factory):
    srv = server_factory("--lines", "8")
    d = GpioDriver.open(srv.socket, mem_size=32 << 20)
    host = ControlClient(srv.control)
    drive_lines(d)
    yield srv, d, host
    host.close()
    d.close()


# --- random register writes -----------------------------------------------------------------

def _random_access(rng: random.Random, exp_cap: int):
    """(region, offset, data | read count) biased to where registers are."""
    width = rng.choice([1, 2, 4, 4, 8, rng.randrange(1, 17)])
    kind = rng.random()
    if kind < 0.55:          # BAR0: common cfg / ISR / device cfg / notify slots
        slot = rng.randrange(4) * 0x1000
        off = slot + (rng.randrange(0x40) if rng.random() < 0.8 else rng.randrange(0x1000))
        region = 0
    elif kind < 0.75:        # config space, mostly the standard header and capabilities
        off = rng.randrange(0x100) if rng.random() < 0.85 else rng.randrange(0x1000)
        # Initiate FLR (PCIe Device Control) is a legitimate function reset that releases
        # the lines; it is left out so that "lines unchanged" stays a strict rule here.
        if exp_cap and off < exp_cap + 10 and off + width > exp_cap + 8:
            off = exp_cap + 12
        region = U.VFIO_PCI_CONFIG_REGION_INDEX
    elif kind < 0.85:
        region, off = 1, rng.randrange(0x1000)        # MSI-X table BAR
    else:
        region, off = rng.randrange(2, 9), rng.randrange(0x10000)   # absent BARs, ROM, VGA
    if rng.random() < 0.2:
        return region, off, width
    return region, off, rng.randbytes(width)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_register_writes_keep_server_and_lines(rig, seed):
    """2000 seeded random writes (and some reads) over BAR0, config space, the MSI-X BAR and
    nonexistent regions. Register writes are never GPIO requests: every line keeps its
    direction and value (5.17.6: only requestq messages change lines); the server keeps
    answering; reset + bring-up gives a working device."""
    srv, d, host = rig
    rng = random.Random(seed)
    before = lines(host)
    exp_cap = d.drv.find_pci_cap(P.PCI_CAP_ID_EXP) or 0
    refused = 0
    for i in range(2000):
        region, off, what = _random_access(rng, exp_cap)
        try:
            if isinstance(what, int):
                d.client.region_read(region, off, what)
            else:
                d.client.region_write(region, off, what)
        except VfioUserError:
            refused += 1                       # out-of-range / absent region: an error reply
        if i % 500 == 0:
            assert_alive(srv, d)
    assert refused > 0                         # the absent regions were really tried
    settle(d)
    assert_alive(srv, d)
    assert lines(host) == before
    recover(d)
    assert lines(host) == before


# --- queue configuration --------------------------------------------------------------------

def test_invalid_queue_sizes_are_refused(rig):
    """2.7: a split queue size is a power of 2 no larger than the maximum the device reports;
    0, odd, non-power-of-2 and oversized writes leave a valid size in place."""
    srv, d, host = rig
    drv = d.drv
    drv.reset()
    drv.negotiate(DEFAULT_FEATURES)
    drv.common_write(V.VIRTIO_PCI_COMMON_Q_SELECT, REQUESTQ, 2)
    qmax = drv.common_read(V.VIRTIO_PCI_COMMON_Q_SIZE, 2)
    for bad in (0, 1 + qmax, 3, 255, qmax * 2, 0x8000, 0xFFFF):
        drv.common_write(V.VIRTIO_PCI_COMMON_Q_SIZE, bad, 2)
        got = drv.common_read(V.VIRTIO_PCI_COMMON_Q_SIZE, 2)
        assert got and got & (got - 1) == 0 and got <= qmax, (bad, got)
    drv.common_write(V.VIRTIO_PCI_COMMON_Q_SELECT, 0xFFFF, 2)    # no such queue: size 0
    drv.common_write(V.VIRTIO_PCI_COMMON_Q_SIZE, 16, 2)
    assert drv.common_read(V.VIRTIO_PCI_COMMON_Q_SIZE, 2) == 0
    assert_alive(srv, d)
    recover(d)
    d.restart(queue_size=2)                    # a tiny legal size works too
    assert d.get_value(0) == 1


def _ring_cases(mem_iova: int, mem_size: int):
    ok_desc, ok_avail, ok_used = mem_iova + 0x700000, mem_iova + 0x710000, mem_iova + 0x720000
    hole = 0xDEAD0000
    return {
        "desc_unmapped": (hole, ok_avail, ok_used),
        "avail_unmapped": (ok_desc, hole, ok_used),
        "used_unmapped": (ok_desc, ok_avail, hole),
        "desc_straddles_end": (mem_iova + mem_size - 16, ok_avail, ok_used),
        "desc_misaligned": (ok_desc + 8, ok_avail, ok_used),
        "used_misaligned": (ok_desc, ok_avail, ok_used + 2),
        "desc_near_2e64": ((1 << 64) - 16, ok_avail, ok_used),
        "used_read_only": (ok_desc, ok_avail, "ro"),
    }


@pytest.mark.parametrize("case", list(_ring_cases(0, 0)))
def test_ring_outside_mapped_memory_sets_needs_reset(rig, case):
    """A ring the device cannot use (not mapped, not writable, misaligned: 2.7 alignment
    table) is a driver error: DEVICE_NEEDS_RESET and a config interrupt (2.1.1), no access
    outside the client's DMA maps, lines untouched, and reset recovers."""
    srv, d, host = rig
    before = lines(host)
    ro = GuestMemory(0x10000, iova=0x40000000)
    try:
        d.client.dma_map(ro.iova, ro.size, ro.fd, 0, U.VFIO_USER_F_DMA_REGION_READ)
        desc, avail, used = _ring_cases(d.mem.iova, d.mem.size)[case]
        if used == "ro":
            used = ro.iova
        drv = d.drv
        drv.negotiate(DEFAULT_FEATURES)
        drv.enable_msix()
        drv.set_config_vector(0)
        setup_queue_at(d, REQUESTQ, desc, avail, used, vector=1)
        drv.setup_queue(EVENTQ, vector=2)
        drv.driver_ok()
        drv.kick(REQUESTQ)
        assert_needs_reset_reported(d)
        assert_alive(srv, d)
        assert lines(host) == before
        recover(d)
    finally:
        ro.close()


def test_dma_unmap_under_running_queues(rig):
    """The client unmaps guest memory while the queues run and an eventq buffer is held;
    then requests are kicked and an input edge arrives. The device must not touch the
    unmapped memory (it is gone from its address space: a stale access would crash it); it
    reports DEVICE_NEEDS_RESET (2.1.1), keeps the lines, and works again after remap+reset."""
    srv, d, host = rig
    d.set_irq_type(1, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)
    d.queue_irq(1)
    settle(d)
    d.add_request(G.VIRTIO_GPIO_MSG_SET_VALUE, 0, 0)          # would drive line 0 low
    before = lines(host)
    d.client.dma_unmap(d.mem.iova, d.mem.size)
    host.set(1, 1)                                             # edge for the held buffer
    d.drv.kick(REQUESTQ)
    d.drv.kick(EVENTQ)
    settle(d)
    assert_alive(srv, d)
    assert d.drv.read_status() & NEEDS_RESET
    assert lines(host)[0] == before[0] == ("out", 1)          # the request never ran
    d.client.dma_map(d.mem.iova, d.mem.size, d.mem.fd)
    recover(d)
    assert lines(host)[0] == ("out", 1)


# --- device status --------------------------------------------------------------------------

def test_status_written_out_of_order(rig):
    """2.1.2 / 2.2.2 / 3.1.1: DRIVER_OK before FEATURES_OK is not accepted, FEATURES_OK with
    unacceptable features does not stick, the driver cannot set DEVICE_NEEDS_RESET nor clear
    bits without a reset; then 300 seeded random status/feature writes keep the invariant
    "DRIVER_OK implies FEATURES_OK" and never make the device ask for a reset."""
    srv, d, host = rig
    drv = d.drv
    before = lines(host)
    drv.reset()
    drv.write_status(V.VIRTIO_CONFIG_S_DRIVER_OK)
    assert not drv.read_status() & V.VIRTIO_CONFIG_S_DRIVER_OK
    drv.reset()
    drv.write_status(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER)
    drv.write_driver_features(1 << G.VIRTIO_GPIO_F_IRQ)                 # no VERSION_1
    drv.add_status(V.VIRTIO_CONFIG_S_FEATURES_OK)
    assert not drv.read_status() & V.VIRTIO_CONFIG_S_FEATURES_OK
    drv.reset()
    drv.write_status(V.VIRTIO_CONFIG_S_ACKNOWLEDGE | V.VIRTIO_CONFIG_S_DRIVER)
    drv.write_driver_features(DEFAULT_FEATURES | 1 << 50)                # never offered
    drv.add_status(V.VIRTIO_CONFIG_S_FEATURES_OK)
    assert not drv.read_status() & V.VIRTIO_CONFIG_S_FEATURES_OK
    drv.add_status(NEEDS_RESET)
    assert not drv.read_status() & NEEDS_RESET
    drv.negotiate(DEFAULT_FEATURES)
    drv.write_status(V.VIRTIO_CONFIG_S_ACKNOWLEDGE)                      # tries to clear bits
    assert drv.read_status() & V.VIRTIO_CONFIG_S_FEATURES_OK
    drv.write_driver_features(0)                                         # after FEATURES_OK
    drv.common_write(V.VIRTIO_PCI_COMMON_GFSELECT, 1, 4)
    assert drv.common_read(V.VIRTIO_PCI_COMMON_GF, 4) == DEFAULT_FEATURES >> 32
    rng = random.Random(8)
    for _ in range(300):
        if rng.random() < 0.3:
            drv.write_driver_features(rng.getrandbits(64) if rng.random() < 0.3
                                      else DEFAULT_FEATURES)
        drv.write_status(rng.choice([0, rng.randrange(1, 256), 0x0F, 0x0B, 0x04, 0x80, 0x40]))
        st = drv.read_status()
        assert not (st & V.VIRTIO_CONFIG_S_DRIVER_OK and not st & V.VIRTIO_CONFIG_S_FEATURES_OK)
        assert not st & NEEDS_RESET
    assert_alive(srv, d)
    assert lines(host) == before
    recover(d)


# --- notifications --------------------------------------------------------------------------

def test_notify_storm(rig):
    """Thousands of kicks (acked and posted, for real and nonexistent queues, empty rings):
    nothing is completed twice or invented (2.7.13.3: only available buffers are used); a
    request offered afterwards completes exactly once, and the server keeps answering."""
    srv, d, host = rig
    drv = d.drv
    bar, base = drv.notify_addr(REQUESTQ)
    used0 = drv.rings[REQUESTQ].used_idx
    for i in range(1500):
        d.client.region_write(bar, base + 4 * (i % 4), (i % 7).to_bytes(2, "little"))
    posted = bytearray()
    for i in range(3000):                                  # posted writes, as QEMU sends
        payload = U.REGION_ACCESS.pack(base + 4 * (i % 3), bar, 2) + (i % 3).to_bytes(2, "little")
        posted += build_header(d.client.next_msg_id(), U.VFIO_USER_REGION_WRITE,
                               U.HEADER_SIZE + len(payload), U.VFIO_USER_F_NO_REPLY) + payload
    d.client.send_raw(bytes(posted))
    settle(d)
    assert drv.rings[REQUESTQ].used_idx == used0
    assert drv.rings[REQUESTQ].used() == []
    head = d.add_request(G.VIRTIO_GPIO_MSG_GET_VALUE, 0)
    for _ in range(200):
        drv.kick(REQUESTQ)
    got = d.complete(1)
    settle(d)
    assert got == {head: bytes([G.VIRTIO_GPIO_STATUS_OK, 1])}
    assert drv.rings[REQUESTQ].used() == []
    assert_alive(srv, d)


# --- ring contents --------------------------------------------------------------------------

def test_avail_index_racing_ahead(rig):
    """avail idx more than queue size ahead of the device (2.7.13.3 driver rule broken):
    the ring is unusable; DEVICE_NEEDS_RESET (2.1.1), nothing executed, reset recovers."""
    srv, d, host = rig
    before = lines(host)
    ring = d.drv.rings[REQUESTQ]
    d.add_request(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, G.VIRTIO_GPIO_DIRECTION_IN)
    ring.set_avail_idx(ring.avail_idx + ring.size + 1)
    d.drv.kick(REQUESTQ)
    assert_needs_reset_reported(d)
    assert lines(host) == before
    assert_alive(srv, d)
    recover(d)


def _garbage_chains(ring, mem_iova: int) -> tuple[dict[str, dict], int]:
    """Malformed chains with a valid head (2.7.5 / 2.7.5.3 / 2.7.4.2): each must be completed
    as an error, and must not stop the good requests around it."""
    buf = ring.buf(16, REQ.pack(G.VIRTIO_GPIO_MSG_SET_VALUE, 0, 0))   # would drive line 0 low
    resp = ring.buf(16)
    n = ring.size
    return {
        "loop": {0: (buf, 8, F_NEXT, 1), 1: (resp, 2, F_WRITE | F_NEXT, 0)},
        "next_out_of_range": {0: (buf, 8, F_NEXT, n + 5)},
        "zero_len": {0: (buf, 0, F_NEXT, 1), 1: (resp, 2, F_WRITE, 0)},
        "unmapped_buffer": {0: (0xDEAD0000, 8, F_NEXT, 1), 1: (resp, 2, F_WRITE, 0)},
        "read_after_write": {0: (resp, 2, F_WRITE | F_NEXT, 1), 1: (buf, 8, 0, 0)},
        "indirect_not_negotiated": {0: (buf, 16, F_INDIRECT, 0)},
        "indirect_with_next": {0: (buf, 16, F_INDIRECT | F_NEXT, 1), 1: (resp, 2, F_WRITE, 0)},
        "len_overflow": {0: (mem_iova, 0xFFFFFFF0, F_NEXT, 1), 1: (resp, 2, F_WRITE, 0)},
        "no_response_buffer": {0: (buf, 8, 0, 0)},
        "wrapping_address": {0: ((1 << 64) - 4, 8, F_NEXT, 1), 1: (resp, 2, F_WRITE, 0)},
    }, resp


def test_descriptor_garbage_completes_as_errors(rig):
    """Each malformed chain is returned to the driver (used, ERR status or length 0) and the
    good request queued right after it in the same batch is served; the lines change only by
    the good requests; the device never asks for a reset over a bad chain."""
    srv, d, host = rig
    ring = d.drv.rings[REQUESTQ]
    cases, resp = _garbage_chains(ring, d.mem.iova)
    base = ring.size - 4                       # descriptors no add() uses while we run
    for name, descs in cases.items():
        moved = {base + i: (a, ln, fl, (base + nx) if fl & F_NEXT and nx < ring.size else nx)
                 for i, (a, ln, fl, nx) in descs.items()}
        d.mem.write(resp, b"\xee\xee")
        bad = ring.add_raw(moved, base, publish=False)
        good = d.add_request(G.VIRTIO_GPIO_MSG_GET_VALUE, 0)
        d.drv.kick(REQUESTQ)
        got = {}
        while len(got) < 2:
            for h, n in d.drv.wait_used(REQUESTQ, 5):
                got.setdefault(h, []).append(n)
                if h == good:
                    d.response(REQUESTQ, h, n)
        assert set(got) == {bad, good} and len(got[bad]) == 1, (name, got)
        # used length 0 (nothing written), or the ERR status in what was written
        assert got[bad][0] == 0 or d.mem.read(resp, 1) == bytes([G.VIRTIO_GPIO_STATUS_ERR]), \
            (name, got[bad])
        assert got[good] == [2], name
        assert d.drv.read_status() & NEEDS_RESET == 0, name
        assert host.get(0)["value"] == 1, name           # SET_VALUE 0 inside never ran
    assert_alive(srv, d)


def test_random_descriptor_tables(rig):
    """50 rounds of random bytes in the descriptor table and avail ring entries, kicked: each
    round either completes chains or makes the device ask for a reset; it never hangs or
    dies, and a reset always brings it back."""
    srv, d, host = rig
    rng = random.Random(50)
    needs_reset = completed = 0
    for rnd in range(50):
        ring = d.drv.rings[REQUESTQ]
        raw = bytearray(rng.randbytes(16 * ring.size))
        for i in range(ring.size):             # mostly addresses inside guest memory
            if rng.random() < 0.7:
                struct.pack_into("<Q", raw, 16 * i, d.mem.iova + rng.randrange(d.mem.size))
                struct.pack_into("<I", raw, 16 * i + 8, rng.choice([2, 8, 16, rng.randrange(64)]))
        d.mem.write(ring.desc_addr, bytes(raw))
        for _ in range(rng.randrange(1, 8)):
            ring.put_avail(rng.randrange(ring.size + 2))
        ring.publish()
        d.drv.kick(REQUESTQ)
        settle(d)
        assert_alive(srv, d)
        if d.drv.read_status() & NEEDS_RESET:
            needs_reset += 1
            recover(d)
        else:
            completed += len(ring.used())
        if rnd % 10 == 9:
            recover(d)
    assert needs_reset + completed > 0
    recover(d)
