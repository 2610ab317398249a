"""Driver-side virtio-gpio over the vfio-user client: what the Linux gpio-virtio driver does,
in Python, for tests, benchmarks and the demo.

``GpioDriver.open(socket)`` connects, maps guest memory, brings the device up (requestq 0,
eventq 1, MSI-X) and offers ``request()``, ``get_value()``/``set_value()``, names, IRQ buffers.
"""
from __future__ import annotations

import struct

from vfio_virtio.gpio import spec as G
from vfio_virtio.virtio import spec as V
from .guestmem import GuestMemory
from .vfio_user import VfioUserClient
from .virtio_pci import VirtioPciDriver

REQ = struct.Struct(G.VIRTIO_GPIO_REQUEST_FMT)
REQUESTQ, EVENTQ = G.VIRTIO_GPIO_REQUESTQ, G.VIRTIO_GPIO_EVENTQ
DEFAULT_FEATURES = (1 << V.VIRTIO_F_VERSION_1) | (1 << G.VIRTIO_GPIO_F_IRQ)


class GpioDriver:
    """The driver half of virtio-gpio on top of :class:`VirtioPciDriver`."""

    def __init__(self, client: VfioUserClient, mem: GuestMemory, drv: VirtioPciDriver):
        self.client, self.mem, self.drv = client, mem, drv
        self._inbufs: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self.irq_heads: dict[int, int] = {}      # eventq head -> gpio

    @classmethod
    def open(cls, socket: str, features: int | None = DEFAULT_FEATURES,
             mem_size: int = 8 << 20, queue_size: int | None = None,
             bring_up: bool = True, timeout: float = 5.0) -> "GpioDriver":
        client = VfioUserClient(socket, timeout=timeout)
        mem = GuestMemory(mem_size, iova=0x100000)
        drv = VirtioPciDriver(client, mem)
        self = cls(client, mem, drv)
        if bring_up:
            drv.bring_up([REQUESTQ, EVENTQ], wanted=features, queue_size=queue_size)
        return self

    def reattach(self, socket: str, timeout: float = 5.0) -> None:
        """Connect to another server (e.g. one restored from a snapshot) keeping this driver's
        guest memory, rings and negotiated state: map memory, wire MSI-X, no virtio reset."""
        old = self.drv
        old.close()
        self.client.close()
        self.client = VfioUserClient(socket, timeout=timeout)
        drv = VirtioPciDriver(self.client, self.mem)
        drv.rings, drv.notify_offs, drv.notify_data = old.rings, old.notify_offs, old.notify_data
        drv.queue_vectors, drv.features = old.queue_vectors, old.features
        drv.enable_msix()
        self.drv = drv

    def close(self) -> None:
        self.drv.close()
        self.client.close()
        self.mem.close()

    def __enter__(self) -> "GpioDriver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- config ---------------------------------------------------------------------------

    def config(self) -> tuple[int, int]:
        """(ngpio, gpio_names_size) from the device configuration."""
        ngpio, names_size = struct.unpack(G.VIRTIO_GPIO_CONFIG_FMT, self.drv.read_config(0, 8))
        return ngpio, names_size

    # --- requestq -------------------------------------------------------------------------

    def add_request(self, mtype: int, gpio: int, value: int = 0, resp_len: int = 2,
                    indirect: bool = False) -> int:
        ring = self.drv.rings[REQUESTQ]
        head = ring.add(out=[REQ.pack(mtype, gpio, value)], in_lens=[resp_len],
                        indirect=indirect)
        self._inbufs[(REQUESTQ, head)] = list(ring.in_buffers(head))
        return head

    def add_chain(self, queue: int, out: list[bytes], in_lens: list[int],
                  indirect: bool = False) -> int:
        """Offer any chain on ``queue`` (a malformed request, or one split over several
        buffers); not kicked. Its written bytes come back through :meth:`complete` /
        :meth:`events` like any other."""
        ring = self.drv.rings[queue]
        head = ring.add(out=list(out), in_lens=list(in_lens), indirect=indirect)
        self._inbufs[(queue, head)] = ring.in_buffers(head)
        return head

    def restart(self, features: int | None = DEFAULT_FEATURES,
                queue_size: int | None = None) -> None:
        """Re-probe on the same connection: device reset (status 0), new rings, bring-up.
        Buffers still in flight are forgotten, as a driver's are when it resets."""
        self._inbufs.clear()
        self.irq_heads.clear()
        self.drv.bring_up([REQUESTQ, EVENTQ], wanted=features, queue_size=queue_size)

    def response(self, queue: int, head: int, length: int) -> bytes:
        bufs = self._inbufs.pop((queue, head), [])
        out = b"".join(self.mem.read(a, n) for a, n in bufs)
        return out[:length]

    def arm_interrupt(self, queue: int) -> None:
        """With VIRTIO_F_EVENT_IDX, ask for an interrupt at the next used entry
        (used_event = the next entry we will read, 2.7.10), as Linux's virtqueue_enable_cb
        does; without it a device that honours event idx rightly stays silent."""
        ring = self.drv.rings[queue]
        if ring.event_idx:
            ring.used_event = ring.last_used

    def wait_used(self, queue: int, timeout: float = 5.0) -> list[tuple[int, int]]:
        """New used elements of ``queue``, waiting for its interrupt (re-armed first)."""
        self.arm_interrupt(queue)
        return self.drv.wait_used(queue, timeout)

    def complete(self, n: int, timeout: float = 5.0) -> dict[int, bytes]:
        """Wait for ``n`` requestq completions; {head: response bytes (used length)}."""
        got: dict[int, bytes] = {}
        while len(got) < n:
            for head, length in self.wait_used(REQUESTQ, timeout):
                got[head] = self.response(REQUESTQ, head, length)
        return got

    def request(self, mtype: int, gpio: int, value: int = 0, resp_len: int = 2,
                timeout: float = 5.0) -> bytes:
        """One request, kicked and waited for; returns the response bytes."""
        head = self.add_request(mtype, gpio, value, resp_len)
        self.drv.kick(REQUESTQ)
        return self.complete(1, timeout)[head]

    def ok(self, mtype: int, gpio: int, value: int = 0) -> int:
        """A request that must succeed; returns its value byte."""
        resp = self.request(mtype, gpio, value)
        if resp[:1] != bytes([G.VIRTIO_GPIO_STATUS_OK]):
            raise AssertionError(f"request {mtype} gpio {gpio} value {value}: {resp!r}")
        return resp[1]

    def names(self) -> list[str]:
        ngpio, size = self.config()
        resp = self.request(G.VIRTIO_GPIO_MSG_GET_LINE_NAMES, 0, 0, 1 + size)
        assert resp[0] == G.VIRTIO_GPIO_STATUS_OK, resp
        return [n.decode() for n in resp[1:].split(b"\0")[:ngpio]]

    def set_direction(self, gpio: int, direction: int) -> None:
        self.ok(G.VIRTIO_GPIO_MSG_SET_DIRECTION, gpio, direction)

    def set_value(self, gpio: int, value: int) -> None:
        self.ok(G.VIRTIO_GPIO_MSG_SET_VALUE, gpio, value)

    def get_value(self, gpio: int) -> int:
        return self.ok(G.VIRTIO_GPIO_MSG_GET_VALUE, gpio)

    def get_direction(self, gpio: int) -> int:
        return self.ok(G.VIRTIO_GPIO_MSG_GET_DIRECTION, gpio)

    def set_irq_type(self, gpio: int, irq_type: int) -> None:
        self.ok(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, gpio, irq_type)

    # --- eventq ---------------------------------------------------------------------------

    def queue_irq(self, gpio: int, kick: bool = True, indirect: bool = False) -> int:
        """Queue an (irq_request, irq_response) pair for ``gpio`` (unmasks it)."""
        ring = self.drv.rings[EVENTQ]
        head = ring.add(out=[struct.pack(G.VIRTIO_GPIO_IRQ_REQUEST_FMT, gpio)], in_lens=[1],
                        indirect=indirect)
        self._inbufs[(EVENTQ, head)] = list(ring.in_buffers(head))
        self.irq_heads[head] = gpio
        if kick:
            self.drv.kick(EVENTQ)
        return head

    def events(self, timeout: float = 5.0) -> list[tuple[int, int]]:
        """Wait for eventq completions: [(gpio, status)] (status VALID=1 / INVALID=0)."""
        out = []
        for head, length in self.wait_used(EVENTQ, timeout):
            resp = self.response(EVENTQ, head, length)
            out.append((self.irq_heads.pop(head, -1), resp[0] if resp else -1))
        return out

    def poll_events(self) -> list[tuple[int, int]]:
        """Eventq completions already in the used ring, without waiting."""
        out = []
        for head, length in self.drv.rings[EVENTQ].used():
            resp = self.response(EVENTQ, head, length)
            out.append((self.irq_heads.pop(head, -1), resp[0] if resp else -1))
        return out
