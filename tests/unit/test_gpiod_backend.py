"""GpiodBackend and the GPIO uAPI v2 definitions.

The real-chip tests need the kernel's gpio-sim (configfs); this machine's kernel has none,
so they run inside the gpio-sim guest (tests/hil/test_gpiod_sim.py runs this file there) and
skip here. The uAPI layout and the config builder are checked everywhere."""
from __future__ import annotations

import ctypes
import errno
import os
import select
import uuid

import pytest

from vfio_virtio.backends import gpio_uapi as U
from vfio_virtio.backends.base import DIR_IN, DIR_NONE, DIR_OUT, EDGE_BOTH, EDGE_RISING
from vfio_virtio.backends.base import BackendError
from vfio_virtio.backends.gpiod_backend import GpiodBackend, line_flags, parse_offsets

CONFIGFS = "/sys/kernel/config/gpio-sim"


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


# ---- uAPI layout (linux/gpio.h; checked against the host header with a C compiler) --------

def test_uapi_struct_sizes_and_ioctl_numbers():
    sizes = {U.gpiochip_info: 68, U.gpio_v2_line_info: 256, U.gpio_v2_line_request: 592,
             U.gpio_v2_line_config: 272, U.gpio_v2_line_values: 16,
             U.gpio_v2_line_event: 48, U.gpio_v2_line_attribute: 16,
             U.gpio_v2_line_config_attribute: 24, U.gpio_v2_line_info_changed: 288}
    assert {t.__name__: ctypes.sizeof(t) for t in sizes} == \
        {t.__name__: n for t, n in sizes.items()}
    assert U.gpio_v2_line_request.config.offset == 288
    assert U.gpio_v2_line_request.num_lines.offset == 560
    assert U.gpio_v2_line_request.fd.offset == 588
    assert (U.GPIO_GET_CHIPINFO_IOCTL, U.GPIO_V2_GET_LINEINFO_IOCTL, U.GPIO_V2_GET_LINE_IOCTL,
            U.GPIO_V2_LINE_SET_CONFIG_IOCTL, U.GPIO_V2_LINE_GET_VALUES_IOCTL,
            U.GPIO_V2_LINE_SET_VALUES_IOCTL, U.GPIO_V2_GET_LINEINFO_WATCH_IOCTL,
            U.GPIO_GET_LINEINFO_UNWATCH_IOCTL) == (0x8044B401, 0xC100B405, 0xC250B407,
                                                   0xC110B40D, 0xC010B40E, 0xC010B40F,
                                                   0xC100B406, 0xC004B40C)


def test_config_carries_every_line():
    """The kernel resets lines a SET_CONFIG leaves out: the config names each line."""
    flags = [line_flags(DIR_IN, "none"), line_flags(DIR_OUT, "none"),
             line_flags(DIR_IN, EDGE_BOTH), line_flags(DIR_IN, "none"),
             line_flags(DIR_OUT, "none")]
    cfg = U.build_config(flags, [0, 1, 0, 0, 0])
    assert cfg.flags == U.GPIO_V2_LINE_FLAG_INPUT           # the most common: default
    attrs = {(cfg.attrs[i].attr.id, cfg.attrs[i].attr.flags if cfg.attrs[i].attr.id == 1
              else cfg.attrs[i].attr.values, cfg.attrs[i].mask) for i in range(cfg.num_attrs)}
    both = U.GPIO_V2_LINE_FLAG_INPUT | U.GPIO_V2_LINE_FLAG_EDGE_RISING \
        | U.GPIO_V2_LINE_FLAG_EDGE_FALLING
    assert attrs == {(U.GPIO_V2_LINE_ATTR_ID_FLAGS, U.GPIO_V2_LINE_FLAG_OUTPUT, 0b10010),
                     (U.GPIO_V2_LINE_ATTR_ID_FLAGS, both, 0b00100),
                     (U.GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES, 0b00010, 0b10010)}
    assert line_flags(DIR_NONE, "none") == U.GPIO_V2_LINE_FLAG_INPUT


def test_not_a_gpiochip_is_a_clear_error():
    with pytest.raises(ValueError, match="not a GPIO character device"):
        GpiodBackend("/dev/null")
    with pytest.raises(ValueError, match="not a GPIO character device .no such file"):
        GpiodBackend("/dev/no-such-gpiochip")


def test_parse_offsets():
    assert parse_offsets("0-3,8") == [0, 1, 2, 3, 8]
    for bad in ("", "a", "3-1", "1,1", "1-", "-1"):
        with pytest.raises(ValueError):
            parse_offsets(bad)


# ---- a real chip: gpio-sim --------------------------------------------------------------

@pytest.fixture
def gpio_sim():
    """A live gpio-sim chip with 8 lines: yields (chip_path, sim_line_dir(line), set_live)."""
    if not os.path.isdir(CONFIGFS):
        pytest.skip("no gpio-sim: /sys/kernel/config/gpio-sim missing (runs in the gpio-sim "
                    "guest: tests/hil/test_gpiod_sim.py)")
    dev = os.path.join(CONFIGFS, f"vv-{uuid.uuid4().hex[:8]}")
    bank = os.path.join(dev, "bank0")
    os.mkdir(dev)
    os.mkdir(bank)
    _write(os.path.join(bank, "num_lines"), "8")
    _write(os.path.join(dev, "live"), "1")
    chip = _read(os.path.join(bank, "chip_name"))
    base = f"/sys/devices/platform/{_read(os.path.join(dev, 'dev_name'))}/{chip}"
    yield (f"/dev/{chip}", lambda line: f"{base}/sim_gpio{line}",
           lambda on: _write(os.path.join(dev, "live"), "1" if on else "0"))
    if _read(os.path.join(dev, "live")) == "1":
        _write(os.path.join(dev, "live"), "0")
    os.rmdir(bank)
    os.rmdir(dev)


def test_real_chip_inputs_outputs_and_edges(gpio_sim):
    path, sim_line, _ = gpio_sim
    be = GpiodBackend(path)
    try:
        assert be.nlines == 8 and be.get_direction(0) == DIR_IN
        be.set_direction(1, DIR_OUT, 1)
        assert _read(sim_line(1) + "/value") == "1"
        be.set_value(1, 0)
        assert _read(sim_line(1) + "/value") == "0"
        be.set_edge(2, EDGE_BOTH)
        _write(sim_line(2) + "/pull", "pull-up")
        assert select.select([be.fileno()], [], [], 5.0)[0], "no edge event within 5 s"
        assert be.read_events() == [(2, 1)]
        assert be.get_value(2) == 1
        be.reset_lines()
        assert be.get_direction(1) == DIR_IN
    finally:
        be.close()


def test_busy_line_names_line_and_consumer(gpio_sim):
    path, _, _ = gpio_sim
    cfd = os.open(path, os.O_RDWR)
    fd = U.request_lines(cfd, [5], "someone", U.build_config([U.GPIO_V2_LINE_FLAG_INPUT], []))
    try:
        with pytest.raises(BackendError, match="line 5 is in use by 'someone'") as ei:
            GpiodBackend(path)
        assert ei.value.errno == errno.EBUSY
        GpiodBackend(path, offsets=[0, 1]).close()           # other lines are fine
    finally:
        os.close(fd)
        os.close(cfd)


def test_adopt_drives_the_same_lines_without_touching_them(gpio_sim):
    path, sim_line, _ = gpio_sim
    a = GpiodBackend(path)
    a.set_direction(3, DIR_OUT, 1)
    a.set_edge(4, EDGE_RISING)
    st, fds = a.handover_state(), [os.dup(fd) for fd, _ in a.requests]
    b = GpiodBackend.adopt(st, fds)
    # what a controller does while restoring: reset, then the restored state (held)
    b.reset_lines()
    b.set_direction(3, DIR_OUT, 1)
    b.set_edge(4, EDGE_RISING)
    assert _read(sim_line(3) + "/value") == "1"
    b.commit()                                   # same state: nothing is reconfigured
    a.disown()
    a.reset_lines()                              # a no-op now
    a.close()                                    # b still holds the request
    assert _read(sim_line(3) + "/value") == "1"
    b.set_value(3, 0)
    assert _read(sim_line(3) + "/value") == "0"
    _write(sim_line(4) + "/pull", "pull-up")
    assert select.select([b.fileno()], [], [], 5.0)[0]
    assert b.read_events() == [(4, 1)]
    b.close()


def test_chip_removed_while_serving(gpio_sim):
    path, _, set_live = gpio_sim
    be = GpiodBackend(path)
    be.set_edge(2, EDGE_BOTH)
    set_live(False)
    with pytest.raises(BackendError) as ei:
        be.get_value(2)
    assert ei.value.errno == errno.ENODEV
    be.read_events()
    # gone: the poll fd no longer wakes the loop (no busy loop), resets do not raise
    assert not select.select([be.fileno()], [], [], 0.2)[0]
    be.reset_lines()
    with pytest.raises(BackendError, match="removed"):
        be.set_direction(1, DIR_OUT, 1)
    be.close()


# ---- the C request path's chip mode (cffi_build/csrc/gpio_lines.c) --------------------------

def _req(mtype: int, gpio: int, value: int = 0) -> bytes:
    return (mtype.to_bytes(2, "little") + gpio.to_bytes(2, "little")
            + value.to_bytes(4, "little"))


GET, SET, SETDIR = 4, 5, 3          # VIRTIO_GPIO_MSG_GET_VALUE, SET_VALUE, SET_DIRECTION


def test_chip_mode_hands_over_what_it_cannot_do():
    """Chip mode without a chip (fds on which the uAPI ioctls fail, as on a removed chip):
    GET_VALUE of an input and SET_VALUE of an output go to Python and change nothing;
    SET_DIRECTION always does; an output's value and a stored value are C's."""
    from vfio_virtio.gpio.lines_c import LineTable
    r, w = os.pipe()
    try:
        t = LineTable(3)
        t.set_chip([(r, 0), (r, 1), (w, 0)])
        t.line(1).direction, t.line(1).value = 1, 1           # an output driving 1
        assert t.handle(_req(GET, 0), 2) is None               # ENOTTY: to Python
        assert t.handle(_req(SET, 1, 0), 2) is None
        assert (t.line(1).value, t.take_changed()) == (1, [])  # nothing changed
        assert t.handle(_req(GET, 1), 2) == b"\x00\x01"        # an output: its value
        assert t.handle(_req(SET, 0, 1), 2) == b"\x00\x00"     # stored (5.17.6.5)
        assert t.line(0).value == 1
        assert t.handle(_req(SETDIR, 2, 1), 2) is None         # reconfigures: Python
        assert t.handle(_req(GET, 7), 2) == b"\x01\x00"        # malformed: C answers ERR
        t.set_python_only(True)
        assert t.handle(_req(GET, 1), 2) is None and t.handle(_req(GET, 7), 2) is None
        t.set_python_only(False)
        assert t.handle(_req(GET, 1), 2) == b"\x00\x01"
    finally:
        os.close(r)
        os.close(w)


def test_c_path_drives_the_real_chip(gpio_sim):
    """The table's rules on a real chip, as the C request path runs them: SET_VALUE drives
    the sim line, GET_VALUE reads the pull, the backend takes over C's output values (a
    reconfiguration re-applies them, handover_state carries them) and a removed chip hands
    the request to Python, which answers ERR."""
    from vfio_virtio.gpio.controller import GpioController
    path, sim_line, set_live = gpio_sim
    be = GpiodBackend(path)
    try:
        ctl, t = GpioController(be), be.line_table
        assert t is not None
        assert ctl.handle(_req(SETDIR, 1, 1), 2) == b"\x00\x00"      # Python: reconfigure
        assert t.handle(_req(SET, 1, 1), 2) == b"\x00\x00"           # C: the ioctl
        assert _read(sim_line(1) + "/value") == "1"
        _write(sim_line(0) + "/pull", "pull-up")
        assert t.handle(_req(GET, 0), 2) == b"\x00\x01"
        _write(sim_line(0) + "/pull", "pull-down")
        assert t.handle(_req(GET, 0), 2) == b"\x00\x00"
        assert ctl.handle(_req(SETDIR, 2, 1), 2) == b"\x00\x00"      # another line's config
        assert _read(sim_line(1) + "/value") == "1"                   # keeps C's value
        assert be.handover_state()["lines"][1] == [DIR_OUT, 1, "none"]
        set_live(False)
        for req in (_req(GET, 0), _req(SET, 1, 0)):
            assert t.handle(req, 2) is None                           # ENODEV: to Python
            assert ctl.handle(req, 2) == b"\x01\x00"                  # ERR, as before
        assert t.handle(_req(GET, 1), 2) is None                      # gone: all Python
    finally:
        be.close()
