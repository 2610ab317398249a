"""The GPIO line backend interface: what the virtio-gpio controller needs from a bank of lines.

A backend knows nothing of virtio. It owns ``nlines`` lines numbered ``0 .. nlines-1``.
All device-side methods are called on the server's loop thread. Backends report input
changes through a file descriptor (:meth:`Backend.fileno`) that the server adds to its single
poll loop (``Loop.add_reader(fd, cb)``), and :meth:`Backend.read_events` drains them: no thread
per line.

Line model:

* direction ``DIR_NONE`` (inactive, high impedance), ``DIR_OUT`` (driven) or ``DIR_IN``
  (sensed). The numeric values equal the virtio ones for convenience but are defined here.
* ``get_value`` returns the driven value of an output and the sensed level of anything else.
* ``set_value`` drives an output line; callers only call it for outputs.
* ``set_edge`` arms input-change detection (``EDGE_*``); a backend MAY report more changes
  than asked for (the controller filters), but MUST report every change that was asked for.
* Reset state (``reset_lines``): every line an input (high impedance), edge detection off.
"""
from __future__ import annotations

import abc

DIR_NONE = 0
DIR_OUT = 1
DIR_IN = 2
DIRECTION_NAMES = {DIR_NONE: "none", DIR_OUT: "out", DIR_IN: "in"}

EDGE_NONE = "none"
EDGE_RISING = "rising"
EDGE_FALLING = "falling"
EDGE_BOTH = "both"
EDGES = (EDGE_NONE, EDGE_RISING, EDGE_FALLING, EDGE_BOTH)


class BackendError(OSError):
    """A backend operation failed (the line exists but the hardware refused)."""


class Backend(abc.ABC):
    """A bank of GPIO lines. See the module docstring for the line model."""

    #: short kind name shown by the control socket's ``info`` ("sim", "gpiod")
    kind: str = "abstract"

    @property
    @abc.abstractmethod
    def nlines(self) -> int:
        """Number of lines (1 .. 65535)."""

    @property
    @abc.abstractmethod
    def names(self) -> list[str] | None:
        """Line names in line order ('' = unnamed), or None when no line has a name."""

    @abc.abstractmethod
    def get_direction(self, line: int) -> int:
        """Current direction of ``line``: DIR_NONE, DIR_OUT or DIR_IN."""

    @abc.abstractmethod
    def set_direction(self, line: int, direction: int, value: int = 0) -> None:
        """Set the direction; for DIR_OUT, ``value`` (0/1) is driven from the first instant."""

    @abc.abstractmethod
    def get_value(self, line: int) -> int:
        """Driven value of an output, sensed level (0/1) of an input or inactive line."""

    @abc.abstractmethod
    def set_value(self, line: int, value: int) -> None:
        """Drive ``value`` (0/1) on an output line."""

    @abc.abstractmethod
    def set_edge(self, line: int, edge: str) -> None:
        """Arm change detection on ``line``: one of EDGE_NONE/RISING/FALLING/BOTH."""

    def fileno(self) -> int | None:
        """An fd that polls readable while events are pending, or None (no events)."""
        return None

    def read_events(self) -> list[tuple[int, int]]:
        """Drain pending input changes, oldest first: ``(line, level_after_change)``.

        Each entry is one transition (a rising edge has level 1, a falling edge level 0).
        Never blocks; returns [] when nothing is pending.
        """
        return []

    @abc.abstractmethod
    def reset_lines(self) -> None:
        """Return every line to the reset state: input, edge detection off."""

    def line_info(self, line: int) -> dict:
        """JSON-able view of one line for the control socket and logs."""
        names = self.names
        d = self.get_direction(line)
        return {"line": line, "name": names[line] if names else "",
                "direction": DIRECTION_NAMES.get(d, str(d)), "value": self.get_value(line)}

    def close(self) -> None:
        """Release host resources (fds, line requests). Idempotent."""

    def check_line(self, line: int) -> None:
        """Raise ValueError unless ``line`` is an int in ``0 .. nlines-1``."""
        if not isinstance(line, int) or isinstance(line, bool) or not 0 <= line < self.nlines:
            raise ValueError(f"line {line!r} out of range 0..{self.nlines - 1}")

    def check_direction(self, line: int, direction: int) -> None:
        """Raise ValueError unless ``line`` is valid and ``direction`` is NONE, OUT or IN."""
        self.check_line(line)
        if direction not in (DIR_NONE, DIR_OUT, DIR_IN):
            raise ValueError(f"bad direction {direction!r}")
