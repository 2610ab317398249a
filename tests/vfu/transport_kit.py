"""Shared helpers for the virtio-pci transport tests (tests/vfu/test_transport*.py).

No tests live here. Every BAR write of the vfio-user client waits for the server's reply,
and the server handles a notification inside that write: when ``drv.kick()`` returns, the
used ring and any interrupt eventfd already show everything the kick caused. That makes
"no interrupt" and "not completed" checks deterministic without sleeping.
"""
from __future__ import annotations

import os
import select
import struct

import pytest

from vfio_virtio.gpio import spec as G
from vfio_virtio_kit.driver_ring import DriverRing
from vfio_virtio_kit.gpio_driver import GpioDriver
from vfio_virtio_kit.server_proc import ServerProcess
from vfio_virtio_kit.virtio_pci import VirtioPciDriver
from vfio_virtio.virtio import ring_spec as R
from vfio_virtio.virtio import spec as V

REQUESTQ, EVENTQ = G.VIRTIO_GPIO_REQUESTQ, G.VIRTIO_GPIO_EVENTQ
REQ = struct.Struct(G.VIRTIO_GPIO_REQUEST_FMT)
PING = REQ.pack(G.VIRTIO_GPIO_MSG_GET_VALUE, 0, 0)        # GET_VALUE line 0
OK_LOW = bytes([G.VIRTIO_GPIO_STATUS_OK, 0])
NEXT, WRITE, INDIRECT = R.VRING_DESC_F_NEXT, R.VRING_DESC_F_WRITE, R.VRING_DESC_F_INDIRECT

# What the device offers (virtio 1.3 section 6 bits + VIRTIO_GPIO_F_IRQ, 5.17.3).
OFFERED = (V.bit(V.VIRTIO_F_VERSION_1) | V.bit(V.VIRTIO_F_EVENT_IDX)
           | V.bit(V.VIRTIO_F_INDIRECT_DESC) | V.bit(V.VIRTIO_F_RING_RESET)
           | V.bit(V.VIRTIO_F_ACCESS_PLATFORM) | V.bit(V.VIRTIO_F_SUSPEND)
           | V.bit(G.VIRTIO_GPIO_F_IRQ))
BASE = V.bit(V.VIRTIO_F_VERSION_1)

ACK, DRIVER = V.VIRTIO_CONFIG_S_ACKNOWLEDGE, V.VIRTIO_CONFIG_S_DRIVER
FEATURES_OK, DRIVER_OK = V.VIRTIO_CONFIG_S_FEATURES_OK, V.VIRTIO_CONFIG_S_DRIVER_OK
NEEDS_RESET, FAILED = V.VIRTIO_CONFIG_S_NEEDS_RESET, V.VIRTIO_CONFIG_S_FAILED
NO_VECTOR = V.VIRTIO_MSI_NO_VECTOR
CONFIG_VEC = 0                       # bring_up(): config vector 0, queue i on vector i + 1


LINES_ARGS = ("--lines", "8", "--names", "l0,l1,l2,l3,l4,l5,l6,l7")


def start_shared(tmp_path_factory, *args: str) -> ServerProcess:
    """One server for a whole module: each test is a new client, and a client's departure
    resets the device (lost connection), so tests stay independent at a fraction of the
    start-up cost."""
    return ServerProcess(*LINES_ARGS, *args,
                         workdir=str(tmp_path_factory.mktemp("srv"))).start()


def shared_fixture(srv: ServerProcess, request):
    """Per-test view of a shared server: prints its log when the test failed and checks
    it survived the test."""
    yield srv
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"--- server log {srv.log_path} ---\n{srv.log_tail()}")
    assert srv.alive(), srv.log_tail()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, request):
    """One server for the whole module, started with the module's ``SERVER_ARGS`` (if any)."""
    srv = start_shared(tmp_path_factory, *getattr(request.module, "SERVER_ARGS", ()))
    yield srv
    srv.stop()


@pytest.fixture
def server(shared_server, request):
    """Overrides tests/conftest.py's per-test server in modules that import it."""
    yield from shared_fixture(shared_server, request)


@pytest.fixture
def g(server):
    """A GpioDriver connected and DMA-mapped but not initialised."""
    gd = open_gpio(server, bring_up=False)
    yield gd
    gd.close()


@pytest.fixture
def up(server):
    """A driver brought up per 3.1.1 (VERSION_1 only), requestq and eventq of 16."""
    gd = open_gpio(server)
    yield gd
    gd.close()


def open_gpio(server, features: int | None = BASE, queue_size: int | None = 16,
              bring_up: bool = True, msix: bool = True) -> GpioDriver:
    """A GpioDriver on ``server``; brought up (both queues) unless ``bring_up`` is False."""
    g = GpioDriver.open(server.socket, features=features, bring_up=False)
    if bring_up:
        g.drv.bring_up([REQUESTQ, EVENTQ], wanted=features, queue_size=queue_size, msix=msix)
    return g


def add_ping(ring: DriverRing, gpio: int = 0, publish: bool = True) -> int:
    """Offer one GET_VALUE request with a 2-byte response buffer; returns the head."""
    return ring.add(out=[REQ.pack(G.VIRTIO_GPIO_MSG_GET_VALUE, gpio, 0)], in_lens=[2],
                    publish=publish)


def ping(drv: VirtioPciDriver, gpio: int = 0) -> bytes:
    """One request through the requestq, read from the used ring right after the kick."""
    ring = drv.rings[REQUESTQ]
    head = add_ping(ring, gpio)
    drv.kick(REQUESTQ)
    resp = ring.written(head, 2)
    used = ring.used()
    assert used == [(head, 2)], used
    return resp


def take_descs(ring: DriverRing, n: int) -> list[int]:
    """Reserve ``n`` descriptor indices for raw chains (the ring's add() won't use them)."""
    return [ring._free.pop() for _ in range(n)]


def fired(fd: int) -> bool:
    """Whether an eventfd was signalled (consumes it). Non-blocking: see the module doc."""
    try:
        return os.eventfd_read(fd) > 0
    except BlockingIOError:
        return False


def wait_fd(fd: int, timeout: float = 5.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0]) and fired(fd)


def drain(drv: VirtioPciDriver) -> None:
    """Forget interrupts that already fired on every vector."""
    for fd in drv.eventfds:
        fired(fd)


def select_queue(drv: VirtioPciDriver, q: int) -> None:
    drv.common_write(V.VIRTIO_PCI_COMMON_Q_SELECT, q, 2)


def qread(drv: VirtioPciDriver, field: int, size: int = 2) -> int:
    return drv.common_read(field, size)
