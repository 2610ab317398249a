"""Linux GPIO character device uAPI v2 (``include/uapi/linux/gpio.h``): structs, ioctls, flags.

The one place these definitions live (the C request path of issue 15 follows the same
names). Names are the kernel's. Sizes are checked against the host's ``linux/gpio.h`` in
``tests/unit/test_gpiod_backend.py``.

A *line request* (``GPIO_V2_GET_LINE_IOCTL`` on the chip fd) returns an anonymous fd that
owns up to ``GPIO_V2_LINES_MAX`` lines until its last reference is closed; values and
configuration are changed with ioctls on that fd, edge events are read from it. An fd
received over SCM_RIGHTS refers to the same request: whoever holds it drives the lines.
In ``gpio_v2_line_values`` bit *i* is the *i*-th line of the request (its index in
``offsets``), not the chip offset.

After the chip is removed the request fd stays open but ioctls fail with ENODEV and poll
reports POLLHUP | POLLERR.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os

GPIO_MAX_NAME_SIZE = 32
GPIO_V2_LINES_MAX = 64
GPIO_V2_LINE_NUM_ATTRS_MAX = 10

# enum gpio_v2_line_flag
GPIO_V2_LINE_FLAG_USED = 1 << 0
GPIO_V2_LINE_FLAG_ACTIVE_LOW = 1 << 1
GPIO_V2_LINE_FLAG_INPUT = 1 << 2
GPIO_V2_LINE_FLAG_OUTPUT = 1 << 3
GPIO_V2_LINE_FLAG_EDGE_RISING = 1 << 4
GPIO_V2_LINE_FLAG_EDGE_FALLING = 1 << 5
GPIO_V2_LINE_FLAG_OPEN_DRAIN = 1 << 6
GPIO_V2_LINE_FLAG_OPEN_SOURCE = 1 << 7
GPIO_V2_LINE_FLAG_BIAS_PULL_UP = 1 << 8
GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN = 1 << 9
GPIO_V2_LINE_FLAG_BIAS_DISABLED = 1 << 10
GPIO_V2_LINE_FLAG_EVENT_CLOCK_REALTIME = 1 << 11
GPIO_V2_LINE_FLAG_EVENT_CLOCK_HTE = 1 << 12

# enum gpio_v2_line_attr_id
GPIO_V2_LINE_ATTR_ID_FLAGS = 1
GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES = 2
GPIO_V2_LINE_ATTR_ID_DEBOUNCE = 3

# enum gpio_v2_line_changed_type
GPIO_V2_LINE_CHANGED_REQUESTED = 1
GPIO_V2_LINE_CHANGED_RELEASED = 2
GPIO_V2_LINE_CHANGED_CONFIG = 3

# enum gpio_v2_line_event_id
GPIO_V2_LINE_EVENT_RISING_EDGE = 1
GPIO_V2_LINE_EVENT_FALLING_EDGE = 2

u32, u64, s32 = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32


class gpiochip_info(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * GPIO_MAX_NAME_SIZE),
                ("label", ctypes.c_char * GPIO_MAX_NAME_SIZE), ("lines", u32)]


class gpio_v2_line_values(ctypes.Structure):
    _fields_ = [("bits", u64), ("mask", u64)]


class _attr_u(ctypes.Union):
    _fields_ = [("flags", u64), ("values", u64), ("debounce_period_us", u32)]


class gpio_v2_line_attribute(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [("id", u32), ("padding", u32), ("u", _attr_u)]


class gpio_v2_line_config_attribute(ctypes.Structure):
    _fields_ = [("attr", gpio_v2_line_attribute), ("mask", u64)]


class gpio_v2_line_config(ctypes.Structure):
    _fields_ = [("flags", u64), ("num_attrs", u32), ("padding", u32 * 5),
                ("attrs", gpio_v2_line_config_attribute * GPIO_V2_LINE_NUM_ATTRS_MAX)]


class gpio_v2_line_request(ctypes.Structure):
    _fields_ = [("offsets", u32 * GPIO_V2_LINES_MAX),
                ("consumer", ctypes.c_char * GPIO_MAX_NAME_SIZE),
                ("config", gpio_v2_line_config), ("num_lines", u32),
                ("event_buffer_size", u32), ("padding", u32 * 5), ("fd", s32)]


class gpio_v2_line_info(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * GPIO_MAX_NAME_SIZE),
                ("consumer", ctypes.c_char * GPIO_MAX_NAME_SIZE), ("offset", u32),
                ("num_attrs", u32), ("flags", u64),
                ("attrs", gpio_v2_line_attribute * GPIO_V2_LINE_NUM_ATTRS_MAX),
                ("padding", u32 * 4)]


class gpio_v2_line_info_changed(ctypes.Structure):
    _fields_ = [("info", gpio_v2_line_info), ("timestamp_ns", u64), ("event_type", u32),
                ("padding", u32 * 5)]


class gpio_v2_line_event(ctypes.Structure):
    _fields_ = [("timestamp_ns", u64), ("id", u32), ("offset", u32), ("seqno", u32),
                ("line_seqno", u32), ("padding", u32 * 6)]


# <asm-generic/ioctl.h>
_IOC_WRITE, _IOC_READ = 1, 2


def _IOC(d: int, t: int, nr: int, size: int) -> int:
    return (d << 30) | (size << 16) | (t << 8) | nr


def _IOR(t: int, nr: int, st) -> int:
    return _IOC(_IOC_READ, t, nr, ctypes.sizeof(st))


def _IOWR(t: int, nr: int, st) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, t, nr, ctypes.sizeof(st))


GPIO_GET_CHIPINFO_IOCTL = _IOR(0xB4, 0x01, gpiochip_info)
GPIO_V2_GET_LINEINFO_IOCTL = _IOWR(0xB4, 0x05, gpio_v2_line_info)
GPIO_V2_GET_LINEINFO_WATCH_IOCTL = _IOWR(0xB4, 0x06, gpio_v2_line_info)
GPIO_GET_LINEINFO_UNWATCH_IOCTL = _IOWR(0xB4, 0x0C, u32)
GPIO_V2_GET_LINE_IOCTL = _IOWR(0xB4, 0x07, gpio_v2_line_request)
GPIO_V2_LINE_SET_CONFIG_IOCTL = _IOWR(0xB4, 0x0D, gpio_v2_line_config)
GPIO_V2_LINE_GET_VALUES_IOCTL = _IOWR(0xB4, 0x0E, gpio_v2_line_values)
GPIO_V2_LINE_SET_VALUES_IOCTL = _IOWR(0xB4, 0x0F, gpio_v2_line_values)


def _ioctl(fd: int, req: int, arg: ctypes.Structure) -> None:
    fcntl.ioctl(fd, req, arg, True)      # raises OSError with the kernel's errno


# ---- chip ---------------------------------------------------------------------------------

def chip_info(chip_fd: int) -> gpiochip_info:
    """GPIO_GET_CHIPINFO_IOCTL. ENOTTY on a file that is not a gpiochip."""
    info = gpiochip_info()
    _ioctl(chip_fd, GPIO_GET_CHIPINFO_IOCTL, info)
    return info


def line_info(chip_fd: int, offset: int) -> gpio_v2_line_info:
    """GPIO_V2_GET_LINEINFO_IOCTL for one line (name, consumer, flags incl. USED)."""
    info = gpio_v2_line_info(offset=offset)
    _ioctl(chip_fd, GPIO_V2_GET_LINEINFO_IOCTL, info)
    return info


def watch_line_info(chip_fd: int, offset: int) -> gpio_v2_line_info:
    """GPIO_V2_GET_LINEINFO_WATCH_IOCTL: from now on the chip fd reports every request,
    release and reconfiguration of line ``offset`` (:func:`read_info_changes`)."""
    info = gpio_v2_line_info(offset=offset)
    _ioctl(chip_fd, GPIO_V2_GET_LINEINFO_WATCH_IOCTL, info)
    return info


INFO_CHANGED_SIZE = ctypes.sizeof(gpio_v2_line_info_changed)


def read_info_changes(chip_fd: int) -> list[gpio_v2_line_info_changed]:
    """Pending gpio_v2_line_info_changed records of a watching chip fd (non-blocking fd)."""
    out = []
    while True:
        try:
            data = os.read(chip_fd, INFO_CHANGED_SIZE * 16)
        except BlockingIOError:
            return out
        if not data:
            return out
        for i in range(0, len(data) - INFO_CHANGED_SIZE + 1, INFO_CHANGED_SIZE):
            out.append(gpio_v2_line_info_changed.from_buffer_copy(data, i))


def build_config(flags: list[int], outputs: list[int]) -> gpio_v2_line_config:
    """A gpio_v2_line_config giving line *i* of a request ``flags[i]`` and, for outputs,
    the value ``outputs[i]``. The most common flags become the default; every other
    distinct flags value takes one attribute (at most 5 distinct values exist for the
    line states this project uses, well under GPIO_V2_LINE_NUM_ATTRS_MAX)."""
    cfg = gpio_v2_line_config()
    counts: dict[int, int] = {}
    for f in flags:
        counts[f] = counts.get(f, 0) + 1
    default = max(counts, key=lambda f: (counts[f], -f))
    cfg.flags = default
    n = 0
    for f in sorted(counts):
        if f == default:
            continue
        mask = sum(1 << i for i, x in enumerate(flags) if x == f)
        _add_attr(cfg, n, GPIO_V2_LINE_ATTR_ID_FLAGS, f, mask)
        n += 1
    out_mask = sum(1 << i for i, f in enumerate(flags) if f & GPIO_V2_LINE_FLAG_OUTPUT)
    if out_mask:
        bits = sum(1 << i for i, v in enumerate(outputs) if v and out_mask >> i & 1)
        _add_attr(cfg, n, GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES, bits, out_mask)
        n += 1
    cfg.num_attrs = n
    return cfg


def _add_attr(cfg: gpio_v2_line_config, n: int, attr_id: int, value: int, mask: int) -> None:
    if n >= GPIO_V2_LINE_NUM_ATTRS_MAX:
        raise ValueError("too many distinct line configurations for one request")
    a = cfg.attrs[n]
    a.attr.id = attr_id
    if attr_id == GPIO_V2_LINE_ATTR_ID_FLAGS:
        a.attr.flags = value
    else:
        a.attr.values = value
    a.mask = mask


def request_lines(chip_fd: int, offsets: list[int], consumer: str,
                  config: gpio_v2_line_config) -> int:
    """GPIO_V2_GET_LINE_IOCTL: request ``offsets`` (<= GPIO_V2_LINES_MAX) with ``config``;
    returns the line request fd (O_CLOEXEC, set non-blocking here). EBUSY: a line is in use."""
    if not 1 <= len(offsets) <= GPIO_V2_LINES_MAX:
        raise ValueError(f"a line request holds 1..{GPIO_V2_LINES_MAX} lines")
    req = gpio_v2_line_request()
    for i, o in enumerate(offsets):
        req.offsets[i] = o
    req.consumer = consumer.encode()[:GPIO_MAX_NAME_SIZE - 1]
    req.config = config
    req.num_lines = len(offsets)
    _ioctl(chip_fd, GPIO_V2_GET_LINE_IOCTL, req)
    set_nonblocking(req.fd)
    return req.fd


def set_nonblocking(fd: int) -> None:
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)


# ---- a line request fd ----------------------------------------------------------------------

def set_config(req_fd: int, config: gpio_v2_line_config) -> None:
    """GPIO_V2_LINE_SET_CONFIG_IOCTL: reconfigure every line of the request at once."""
    _ioctl(req_fd, GPIO_V2_LINE_SET_CONFIG_IOCTL, config)


def get_values(req_fd: int, mask: int) -> int:
    """GPIO_V2_LINE_GET_VALUES_IOCTL: bits of the lines in ``mask`` (request indices)."""
    v = gpio_v2_line_values(bits=0, mask=mask)
    _ioctl(req_fd, GPIO_V2_LINE_GET_VALUES_IOCTL, v)
    return v.bits & mask


def set_values(req_fd: int, bits: int, mask: int) -> None:
    """GPIO_V2_LINE_SET_VALUES_IOCTL: drive the output lines in ``mask`` to ``bits``."""
    _ioctl(req_fd, GPIO_V2_LINE_SET_VALUES_IOCTL, gpio_v2_line_values(bits=bits, mask=mask))


EVENT_SIZE = ctypes.sizeof(gpio_v2_line_event)


def read_events(req_fd: int, max_events: int = 64) -> list[gpio_v2_line_event]:
    """Read pending gpio_v2_line_event records without blocking ([] when none).

    OSError(ENODEV) once the chip is gone."""
    out: list[gpio_v2_line_event] = []
    while True:
        try:
            data = os.read(req_fd, EVENT_SIZE * max_events)
        except BlockingIOError:
            return out
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            raise
        if not data:
            return out
        for i in range(0, len(data) - EVENT_SIZE + 1, EVENT_SIZE):
            out.append(gpio_v2_line_event.from_buffer_copy(data, i))
        if len(data) < EVENT_SIZE * max_events:
            return out
