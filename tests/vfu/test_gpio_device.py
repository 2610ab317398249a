"""virtio-gpio requestq through the real socket: what a guest driver and the host operator see.

Each test drives a real server process with the driver-side harness (GpioDriver: rings in a
memfd, MSI-X eventfds) and, where the host's view matters, the JSON-lines control socket.
Spec references are to virtio 1.3 section 5.17 ("GPIO Device").
"""
from __future__ import annotations

import struct

import pytest

from vfio_virtio.backends.control import ControlClient
from vfio_virtio.gpio import spec as G
from vfio_virtio_kit.gpio_driver import DEFAULT_FEATURES, GpioDriver
from vfio_virtio.virtio import spec as V

OK, ERR = bytes([G.VIRTIO_GPIO_STATUS_OK, 0]), bytes([G.VIRTIO_GPIO_STATUS_ERR, 0])
REQ = struct.Struct(G.VIRTIO_GPIO_REQUEST_FMT)
REQUESTQ = G.VIRTIO_GPIO_REQUESTQ
OUT, IN, NONE = (G.VIRTIO_GPIO_DIRECTION_OUT, G.VIRTIO_GPIO_DIRECTION_IN,
                 G.VIRTIO_GPIO_DIRECTION_NONE)
NAMES = ["l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7"]


def chain(d: GpioDriver, out: list[bytes], in_lens: list[int]) -> bytes:
    """Offer one raw requestq chain, kick, return what the device wrote (used length)."""
    head = d.add_chain(REQUESTQ, out, in_lens)
    d.drv.kick(REQUESTQ)
    return d.complete(1)[head]


# --- 5.17.4 device configuration and GET_LINE_NAMES ------------------------------------------

def test_config_and_line_names_exact_length(gpio):
    """5.17.4: ngpio; gpio_names_size is the size of the names block, each name
    zero-terminated (unnamed lines are empty strings). 5.17.6.1: the response is status +
    exactly gpio_names_size bytes (the Linux driver checks the used length exactly)."""
    d, _ = gpio
    ngpio, size = d.config()
    blob = b"".join(n.encode() + b"\0" for n in NAMES)
    assert (ngpio, size) == (8, len(blob))
    resp = d.request(G.VIRTIO_GPIO_MSG_GET_LINE_NAMES, 0, 0, 1 + size)
    assert resp == bytes([G.VIRTIO_GPIO_STATUS_OK]) + blob
    assert d.names() == NAMES
    # a response buffer of any other size is refused, not partially filled
    for cap in (size, size + 2, 2):
        assert d.request(G.VIRTIO_GPIO_MSG_GET_LINE_NAMES, 0, 0, cap)[:1] == ERR[:1]
    assert d.names() == NAMES                                # queue still works


def test_partial_names_and_no_names(server_factory):
    """5.17.6 device req.: gpio_names_size is 0 when the device has no names, and then
    GET_LINE_NAMES is answered ERR; with some lines named, the others are empty strings."""
    srv = server_factory("--lines", "4")
    with GpioDriver.open(srv.socket) as d:
        assert d.config() == (4, 0)
        for cap in (1, 2):
            assert d.request(G.VIRTIO_GPIO_MSG_GET_LINE_NAMES, 0, 0, cap) == ERR[:cap]
        assert d.get_direction(3) == IN                      # the queue keeps working
    srv2 = server_factory("--lines", "4", "--names", "a,,c")
    with GpioDriver.open(srv2.socket) as d:
        assert d.config() == (4, len(b"a\0\0c\0\0"))
        assert d.names() == ["a", "", "c", ""]


def test_config_space_is_read_only(gpio):
    """5.17.4: the configuration is the device's; a driver write changes nothing."""
    d, _ = gpio
    before = d.drv.read_config(0, 8)
    cap = d.drv.caps[V.VIRTIO_PCI_CAP_DEVICE_CFG]
    d.client.region_write(cap.bar, cap.offset, b"\xff" * 4)
    d.client.region_write(cap.bar, cap.offset + 4, b"\0" * 4)
    assert d.drv.read_config(0, 8) == before


# --- 5.17.6 message types and errors ---------------------------------------------------------

def test_each_message_type(gpio):
    """5.17.6.2-6: GET/SET_DIRECTION, GET/SET_VALUE, SET_IRQ_TYPE answer OK with the value
    the message defines (0 for the setters). Reset state of a line: input (our choice)."""
    d, c = gpio
    assert d.request(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 2) == bytes([0, IN])
    assert d.request(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 2, OUT) == OK
    assert d.request(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 2) == bytes([0, OUT])
    assert d.request(G.VIRTIO_GPIO_MSG_SET_VALUE, 2, 1) == OK
    assert d.request(G.VIRTIO_GPIO_MSG_GET_VALUE, 2) == bytes([0, 1])
    c.set(3, 1)
    assert d.request(G.VIRTIO_GPIO_MSG_GET_VALUE, 3) == bytes([0, 1])
    assert d.request(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 3,
                     G.VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH) == OK
    assert d.request(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 3, G.VIRTIO_GPIO_IRQ_TYPE_NONE) == OK
    assert d.request(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 3, NONE) == OK
    assert d.request(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 3) == bytes([0, NONE])


BAD_MESSAGES = [
    pytest.param(0, 0, 0, id="type-0"),
    pytest.param(7, 0, 0, id="type-7"),
    pytest.param(0xFFFF, 0, 0, id="type-ffff"),
    pytest.param(G.VIRTIO_GPIO_MSG_GET_VALUE, 8, 0, id="gpio-eq-ngpio"),
    pytest.param(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0xFFFF, OUT, id="gpio-ffff"),
    pytest.param(G.VIRTIO_GPIO_MSG_SET_VALUE, 1, 2, id="value-2"),
    pytest.param(G.VIRTIO_GPIO_MSG_SET_VALUE, 1, 0x80000001, id="value-wide"),
    pytest.param(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, 3, id="direction-3"),
    pytest.param(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, 0x101, id="direction-wide"),
    pytest.param(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 1, 5, id="irq-type-5"),
    pytest.param(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 1, 7, id="irq-type-7"),
    pytest.param(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 1, 0x10, id="irq-type-16"),
]


def test_bad_messages_are_err_and_queue_keeps_working(gpio):
    """5.17.6 message flow: status ERR on failure; the buffers still come back, the line is
    unchanged and the next request on the same queue is served."""
    d, c = gpio
    for p in BAD_MESSAGES:
        mtype, line, value = p.values
        before = c.list()
        assert d.request(mtype, line, value) == ERR, p.id
        assert c.list() == before, p.id                      # nothing changed on the host side
        assert d.get_direction(1) == IN, p.id


@pytest.mark.parametrize("out, in_lens, expect", [
    pytest.param([REQ.pack(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, OUT)[:7]], [2], ERR, id="req-7"),
    pytest.param([REQ.pack(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, OUT) + b"\0"], [2], ERR,
                 id="req-9"),
    pytest.param([b"\0" * 64], [2], ERR, id="req-64"),
    pytest.param([REQ.pack(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, OUT)], [1], ERR[:1], id="resp-1"),
    pytest.param([REQ.pack(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, OUT)], [3], ERR, id="resp-3"),
    pytest.param([REQ.pack(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, OUT)], [], b"", id="resp-none"),
    pytest.param([], [2], ERR, id="no-request"),
])
def test_wrong_request_or_response_size_is_err_and_not_executed(gpio, out, in_lens, expect):
    """5.17.6: a request is exactly struct virtio_gpio_request, the response exactly
    struct virtio_gpio_response. Anything else is completed with ERR (truncated to the
    writable space) and NOT executed; the queue keeps working."""
    d, c = gpio
    assert chain(d, out, in_lens) == expect
    assert c.get(1)["direction"] == "in"                     # SET_DIRECTION OUT not applied
    assert d.get_direction(1) == IN
    d.set_direction(1, OUT)
    assert c.get(1)["direction"] == "out"


def test_request_split_over_several_buffers(gpio):
    """2.6.4 message framing: the device must not depend on how the driver splits the
    request and response into descriptors."""
    d, c = gpio
    req = REQ.pack(G.VIRTIO_GPIO_MSG_SET_VALUE, 4, 1)
    assert chain(d, [req[:2], req[2:5], req[5:]], [1, 1]) == OK
    assert chain(d, [REQ.pack(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 4, OUT)], [1, 1]) == OK
    assert c.get(4)["value"] == 1
    assert chain(d, [REQ.pack(G.VIRTIO_GPIO_MSG_GET_VALUE, 4, 0)], [1, 1]) == bytes([0, 1])


# --- outputs and inputs: guest <-> host --------------------------------------------------

def test_guest_output_is_seen_by_host(gpio, server):
    """5.17.6.5: SET_VALUE on an output drives the line: the operator sees it at once."""
    d, c = gpio
    with ControlClient(server.control) as wc, wc.watch() as w:
        d.set_direction(5, OUT)
        assert c.get(5)["direction"] == "out" and c.get(5)["value"] == 0
        d.set_value(5, 1)
        ev = w.wait_for(lambda e: e["line"] == 5 and e["value"] == 1, timeout=5)
        assert ev["source"] == "guest" and ev["direction"] == "out"
        assert c.get(5)["value"] == 1
        assert d.get_value(5) == 1                           # GET_VALUE of an output: driven
        d.set_value(5, 0)
        w.wait_for(lambda e: e["line"] == 5 and e["value"] == 0, timeout=5)
        assert c.get(5)["value"] == 0


def test_value_before_output_is_applied_when_it_becomes_output(gpio):
    """5.17.6.5: 'The line may ... get configured to output later, at which point this
    output value must be used by the device for the line.'"""
    d, c = gpio
    d.set_value(6, 1)
    st = c.get(6)
    assert st["direction"] == "in" and st["value"] == 0      # not driven while an input
    d.set_direction(6, OUT)
    st = c.get(6)
    assert st["direction"] == "out" and st["value"] == 1
    # without an earlier SET_VALUE an output drives 0, whatever the pin sensed before
    c.set(7, 1)
    d.set_direction(7, OUT)
    assert c.get(7)["value"] == 0 and d.get_value(7) == 0


def test_direction_none_discards_line_state(gpio):
    """5.17.6 device req.: 'The device MUST discard all state information corresponding to
    a GPIO line, once the driver has requested to set its direction to NONE.'"""
    d, c = gpio
    d.set_value(2, 1)
    d.set_direction(2, OUT)
    assert c.get(2)["value"] == 1
    d.set_direction(2, NONE)
    assert c.get(2)["direction"] == "none"
    assert d.get_direction(2) == NONE
    d.set_direction(2, OUT)                                  # the stored value 1 is gone
    assert c.get(2)["value"] == 0
    # 5.17.6.6 on an inactive line: enabling an interrupt makes it an input
    d.set_direction(2, NONE)
    d.set_irq_type(2, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)
    st = c.get(2)
    assert (st["direction"], st["edge"]) == ("in", "rising") and d.get_direction(2) == IN


def test_host_input_is_read_by_guest(gpio):
    """5.17.6.4: GET_VALUE returns the value sensed on the line; the host drives it."""
    d, c = gpio
    assert d.get_value(0) == 0
    c.set(0, 1)
    assert d.get_value(0) == 1
    c.set(0, 0)
    assert d.get_value(0) == 0
    # an output keeps its driven value; the host level shows once it is an input again
    d.set_direction(1, OUT)
    c.set(1, 1)
    assert d.get_value(1) == 0
    d.set_direction(1, IN)
    assert d.get_value(1) == 1


# --- scale ---------------------------------------------------------------------------------

def test_1024_lines(server_factory, tmp_path):
    """5.17.4: ngpio is a le16: a large chip works to its last line; names for every line
    come back in one GET_LINE_NAMES of exactly 1 + gpio_names_size bytes."""
    names = [f"line-{i}" for i in range(1024)]
    f = tmp_path / "names.txt"
    f.write_text("\n".join(names) + "\n")
    srv = server_factory("--lines", "1024", "--names-file", str(f))
    with GpioDriver.open(srv.socket) as d, ControlClient(srv.control) as c:
        ngpio, size = d.config()
        assert ngpio == 1024 and size == sum(len(n) + 1 for n in names)
        assert d.names() == names
        d.set_value(1023, 1)
        d.set_direction(1023, OUT)
        assert c.get(1023)["value"] == 1 and d.get_value(1023) == 1
        c.set(1022, 1)
        assert d.get_value(1022) == 1
        assert d.request(G.VIRTIO_GPIO_MSG_GET_VALUE, 1024) == ERR


def test_interrupts_on_many_lines(server_factory):
    """5.17.7: one eventq pair per line, for hundreds of lines at once (more than one
    device batch): each line's buffer is held until its own edge; disabling the rest
    returns every remaining buffer INVALID."""
    srv = server_factory("--lines", "1024")
    lines = list(range(800, 1024))
    feats = DEFAULT_FEATURES | (1 << V.VIRTIO_F_INDIRECT_DESC)
    with GpioDriver.open(srv.socket, features=feats) as d, ControlClient(srv.control) as c:
        for g in lines:
            d.add_request(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, g,
                          G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING, indirect=True)
        d.drv.kick(REQUESTQ)
        assert set(d.complete(len(lines)).values()) == {OK}
        for g in lines:
            d.queue_irq(g, kick=False, indirect=True)
        d.drv.kick(G.VIRTIO_GPIO_EVENTQ)
        c.set(1023, 1)
        assert d.events(5) == [(1023, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]
        c.set(800, 1)
        assert d.events(5) == [(800, G.VIRTIO_GPIO_IRQ_STATUS_VALID)]
        for g in lines:
            d.add_request(G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, g, G.VIRTIO_GPIO_IRQ_TYPE_NONE,
                          indirect=True)
        d.drv.kick(REQUESTQ)
        assert set(d.complete(len(lines)).values()) == {OK}
        got: list[tuple[int, int]] = []
        while len(got) < len(lines) - 2:
            got += d.events(5)
        assert sorted(got) == [(g, G.VIRTIO_GPIO_IRQ_STATUS_INVALID) for g in lines[1:-1]]


def test_many_requests_in_flight(server_factory):
    """2.7.13 / 5.17.6: 200 requests offered before one notification all complete with the
    right responses; messages for one line are answered in the order received (5.17.6
    device req.)."""
    srv = server_factory("--lines", "8", "--queue-size", "256")
    feats = DEFAULT_FEATURES | (1 << V.VIRTIO_F_INDIRECT_DESC)
    with GpioDriver.open(srv.socket, features=feats, queue_size=256) as d, \
            ControlClient(srv.control) as c:
        for line in range(4):
            d.set_direction(line, OUT)
        expect: dict[int, tuple[int, bytes]] = {}            # head -> (line, response)
        order: dict[int, list[int]] = {line: [] for line in range(4)}
        for i in range(200):
            line, step = i % 4, i // 4
            if step % 2 == 0:
                head = d.add_request(G.VIRTIO_GPIO_MSG_SET_VALUE, line, (step // 2) & 1,
                                     indirect=True)
                expect[head] = (line, OK)
            else:                                            # reads back the value just set
                head = d.add_request(G.VIRTIO_GPIO_MSG_GET_VALUE, line, indirect=True)
                expect[head] = (line, bytes([0, (step // 2) & 1]))
            order[line].append(head)
        d.drv.kick(REQUESTQ)
        used: list[int] = []
        got: dict[int, bytes] = {}
        while len(used) < 200:
            for head, length in d.drv.wait_used(REQUESTQ, 5):
                used.append(head)
                got[head] = d.response(REQUESTQ, head, length)
        assert {h: r for h, (_, r) in expect.items()} == got
        for line, heads in order.items():
            assert [h for h in used if expect[h][0] == line] == heads
        assert [c.get(line)["value"] for line in range(4)] == [0] * 4   # step 48 set 0


def test_unreadable_chain_completes_and_queue_keeps_working(gpio):
    """gpio/device.py (unlike a whole-batch failure) / 2.7.4: a chain whose request lies
    outside the driver's DMA maps is completed (nothing written) without DEVICE_NEEDS_RESET,
    and the requests after it in the same batch are served."""
    d, c = gpio
    ring = d.drv.rings[REQUESTQ]
    a, b = ring.size - 1, ring.size - 2                     # descriptors add() will not use soon
    resp = ring.buf(2)
    ring.add_raw({a: (0x10, 8, 1, b), b: (resp, 2, 2, 0)}, a, publish=False)   # NEXT / WRITE
    ok = d.add_request(G.VIRTIO_GPIO_MSG_SET_DIRECTION, 3, OUT)
    d.drv.kick(REQUESTQ)
    got: dict[int, int] = {}
    while len(got) < 2:
        got.update(d.drv.wait_used(REQUESTQ, 5))
    assert got[a] == 0 and got[ok] == 2
    assert not d.drv.read_status() & V.VIRTIO_CONFIG_S_NEEDS_RESET
    assert c.get(3)["direction"] == "out"
