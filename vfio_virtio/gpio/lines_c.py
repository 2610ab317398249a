"""The C line table (cffi_build/csrc/gpio_lines.h) from Python.

One table holds each line once: the protocol state the controller keeps (direction, value,
irq type, latched) and the sim backend's (host input level, armed edge). The C request path
reads and writes it without Python; the sim backend and the controller read and write it
through the cdata views returned by :meth:`LineTable.line`. :class:`PyLine` has the same
attributes in pure Python (the reference twin's storage).
"""
from __future__ import annotations

import os

from .._buildid import CFFI_BUILD, check_build_id

try:
    from .. import _fast
except ImportError as e:  # pragma: no cover - depends on the build
    raise ImportError(f"vfio_virtio._fast is not built ({e}): run `make setup`") from e

ffi, lib = _fast.ffi, _fast.lib

FAST_SOURCES = [os.path.join(CFFI_BUILD, n) for n in (
    "build_fast.py", "csrc/vv_dma.h", "csrc/virtq.h", "csrc/virtq.c", "csrc/gpio_lines.h",
    "csrc/gpio_lines.c", "csrc/fastpath.h", "csrc/fastpath.c")]
check_build_id("vfio_virtio._fast", ffi.string(lib.VV_FAST_BUILD_ID).decode(), FAST_SOURCES)

DIRECTION_IN = 2          # VIRTIO_GPIO_DIRECTION_IN (gpio/spec.py); the reset direction


class PyLine:
    """A line's state in Python, with the C struct's field names."""

    __slots__ = ("direction", "value", "irq_type", "latched", "input", "edge", "changed")

    def __init__(self) -> None:
        self.direction, self.value, self.irq_type, self.latched = DIRECTION_IN, 0, 0, 0
        self.input, self.edge, self.changed = 0, 0, 0


class LineTable:
    """``struct vv_gpio`` with ``n`` lines, all in the reset state (input, value 0)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.g = ffi.new("struct vv_gpio *")
        self._lines = ffi.new("struct vv_gpio_line[]", n)
        self._changed = ffi.new("uint32_t[]", n)
        self.g.ngpio = n
        self.g.lines = self._lines
        self.g.changed_list = self._changed
        self.g.notify_fd = -1
        self.views = [self._lines[i] for i in range(n)]
        for v in self.views:
            v.direction = DIRECTION_IN

    def line(self, i: int):
        """The cdata view of line ``i`` (attributes as :class:`PyLine`)."""
        return self.views[i]

    def take_changed(self) -> list[int]:
        """Lines whose visible state C changed since the last call (each once), in order."""
        g = self.g
        n = g.nchanged
        if not n:
            return []
        out = list(ffi.unpack(self._changed, n))
        for i in out:
            self._lines[i].changed = 0
        g.nchanged = 0
        return out

    def set_chip(self, where: list[tuple[int, int]]) -> None:
        """Chip mode: line ``i`` is bit ``where[i][1]`` of the line request fd ``where[i][0]``;
        C then serves GET_VALUE / SET_VALUE with uAPI v2 ioctls on that fd (gpio_lines.h)."""
        if len(where) != self.n:
            raise ValueError(f"{len(where)} chip lines for a table of {self.n}")
        chip = ffi.new("struct vv_gpio_chipline[]", self.n)
        for i, (fd, bit) in enumerate(where):
            chip[i].fd, chip[i].bit = fd, bit
        self._chip = chip
        self.g.chip = chip
        self.g.mode = lib.VV_GPIO_MODE_CHIP

    def set_python_only(self, on: bool) -> None:
        """Send every request to Python (on), or back to the table's own mode."""
        if on:
            self.g.mode = lib.VV_GPIO_MODE_PYTHON
        else:
            self.g.mode = lib.VV_GPIO_MODE_CHIP if self.g.chip != ffi.NULL \
                else lib.VV_GPIO_MODE_SIM

    def set_notify_fd(self, fd: int) -> None:
        """The eventfd C writes when a line first changes (-1: none)."""
        self.g.notify_fd = fd

    def handle(self, request: bytes, resp_capacity: int) -> bytes | None:
        """Run the C request rules on one message (tests, the differential test): the
        response bytes, or None when the request needs the Python path."""
        resp = ffi.new("uint8_t[2]")
        r = lib.vv_gpio_handle(self.g, request, len(request), resp_capacity, resp)
        if r == lib.VV_GPIO_PYTHON:
            return None
        return bytes(ffi.buffer(resp, r))
