"""virtio-gpio protocol controller: every per-line rule of virtio 1.3 section 5.17 in one place.

The controller knows no virtqueue and no PCI. The device glue feeds it request bytes and
eventq buffers (as opaque *tokens*, e.g. its Chain objects) and writes what it returns.

Requests (5.17.6): :meth:`GpioController.handle` takes the device-readable bytes of one
requestq chain and the size of its device-writable part and returns the exact bytes to write
(the used length is ``len(result)``). It never raises, whatever the input.

* A request that is not exactly 8 bytes, or whose response buffer is not exactly the size the
  message needs (2 bytes; ``1 + gpio_names_size`` for GET_LINE_NAMES), is not executed: the
  reply is status ERR truncated to what fits (``b"\\x01\\x00"[:capacity]``). The Linux driver
  checks the used length exactly, so it reports the error either way.
* Unknown type, ``gpio >= ngpio``, bad direction / value / irq type, SET_IRQ_TYPE without
  VIRTIO_GPIO_F_IRQ negotiated, or a backend failure: status ERR, value 0.
* Messages are handled synchronously in call order, so messages for one line are processed
  and answered in the order they were received (5.17.6 device requirement).

Line rules:

* Reset state of a line (device reset, power-on): direction IN (high impedance, what a real
  GPIO controller does on reset), pending output value 0, irq type NONE, nothing latched.
* SET_VALUE on a line that is not an output stores the value; it is driven when the line
  becomes an output (5.17.6.5). SET_DIRECTION OUT without an earlier SET_VALUE drives 0.
* GET_VALUE returns the driven value of an output and the sensed level of any other line.
* SET_DIRECTION NONE discards all state of the line (5.17.6 device requirement): pending
  value back to 0, irq disabled, latched edge dropped, a held eventq buffer returned INVALID.
* SET_IRQ_TYPE (5.17.6.6): only with VIRTIO_GPIO_F_IRQ; not on an output line (driver
  requirement; the device answers ERR); on an inactive (NONE) line it makes the line an
  input. Setting the type already set is a no-op (OK); changing one enabled type into another
  without passing through NONE is ERR. NONE disables: the latched edge is discarded and a
  held buffer is returned INVALID. SET_DIRECTION OUT while an irq is enabled is ERR.

Event queue (5.17.7):

* :meth:`queue_irq` holds one buffer per line (this unmasks the line). A buffer for a bad line,
  for a line whose interrupt is not enabled, or a second buffer for a line that already holds
  one is completed at once with VIRTIO_GPIO_IRQ_STATUS_INVALID (the held one is kept).
* Edge interrupts are latched while masked (no buffer, or delivery disabled) and delivered
  when unmasked; several edges while masked collapse into one (a pending bit). Level
  interrupts are never latched: whenever the line holds a buffer, delivery is enabled and the
  level is active, the buffer completes VALID at once (so an active level re-fires).
* Completions are ``(token, status)`` pairs; the glue writes ``status`` as the one-byte
  irq_response and pushes the chain. Completions caused by a request (NONE direction or irq
  type) are collected in an outbox: call :meth:`take_completions` after :meth:`handle`.
  The other event methods return the outbox contents too.
"""
from __future__ import annotations

import logging
import struct
from typing import Any, Callable

from ..backends.base import (Backend, DIR_IN, DIR_NONE, DIR_OUT, EDGE_BOTH, EDGE_FALLING,
                             EDGE_NONE, EDGE_RISING)
from . import spec as G
from .names import names_blob, sanitize_names, validate_names

log = logging.getLogger(__name__)

Completion = tuple[Any, int]

_EDGE_FOR_IRQ = {
    G.VIRTIO_GPIO_IRQ_TYPE_NONE: EDGE_NONE,
    G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING: EDGE_RISING,
    G.VIRTIO_GPIO_IRQ_TYPE_EDGE_FALLING: EDGE_FALLING,
    G.VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH: EDGE_BOTH,
    G.VIRTIO_GPIO_IRQ_TYPE_LEVEL_HIGH: EDGE_RISING,
    G.VIRTIO_GPIO_IRQ_TYPE_LEVEL_LOW: EDGE_FALLING,
}
# virtio direction -> backend direction (numerically equal, kept explicit)
_BACKEND_DIR = {G.VIRTIO_GPIO_DIRECTION_NONE: DIR_NONE, G.VIRTIO_GPIO_DIRECTION_OUT: DIR_OUT,
                G.VIRTIO_GPIO_DIRECTION_IN: DIR_IN}

_REQ = struct.Struct(G.VIRTIO_GPIO_REQUEST_FMT)
_RESP = struct.Struct(G.VIRTIO_GPIO_RESPONSE_FMT)
_IRQ_REQ = struct.Struct(G.VIRTIO_GPIO_IRQ_REQUEST_FMT)
SNAPSHOT_VERSION = 1


class _Err(Exception):
    """Internal: answer the current request with VIRTIO_GPIO_STATUS_ERR; ``args[0]`` says why."""


def _refused(err: bytes, why: str, *args: object) -> bytes:
    """Log why a request gets ERR (debug level, formatted only when enabled); return ``err``."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("requestq ERR: " + why, *args)
    return err


class _Line:
    __slots__ = ("direction", "value", "irq_type", "latched")

    def __init__(self) -> None:
        self.direction = G.VIRTIO_GPIO_DIRECTION_IN
        self.value = 0
        self.irq_type = G.VIRTIO_GPIO_IRQ_TYPE_NONE
        self.latched = False

    def is_reset(self) -> bool:
        return (self.direction == G.VIRTIO_GPIO_DIRECTION_IN and self.value == 0
                and self.irq_type == G.VIRTIO_GPIO_IRQ_TYPE_NONE and not self.latched)


def _clear(line) -> None:
    """Back to the reset state, in place (the line may be a view into the C table)."""
    line.direction = G.VIRTIO_GPIO_DIRECTION_IN
    line.value = 0
    line.irq_type = G.VIRTIO_GPIO_IRQ_TYPE_NONE
    line.latched = False


def decode_irq_request(data: bytes, resp_capacity: int) -> int | None:
    """The gpio of an eventq request, or None when the chain is malformed.

    Malformed: request not exactly 2 bytes or response buffer not exactly 1 byte. Pass the
    result to :meth:`GpioController.queue_irq`, which completes None with INVALID.
    """
    if len(data) != _IRQ_REQ.size or resp_capacity != G.VIRTIO_GPIO_IRQ_RESPONSE_SIZE:
        return None
    return _IRQ_REQ.unpack(data)[0]


class GpioController:
    """Protocol state of all lines of one virtio-gpio device over a :class:`Backend`.

    ``names`` (validated, ValueError if invalid) overrides ``backend.names`` (sanitized:
    invalid or duplicate names are blanked). ``irq_feature`` must be set by the glue once
    features are negotiated (True iff VIRTIO_GPIO_F_IRQ was accepted); it starts False and
    :meth:`reset` does not touch it.
    """

    def __init__(self, backend: Backend, names: list[str] | None = None) -> None:
        n = backend.nlines
        if not 1 <= n <= G.VIRTIO_GPIO_MAX_LINES:
            raise ValueError(f"ngpio must be 1..{G.VIRTIO_GPIO_MAX_LINES}, got {n}")
        self.backend = backend
        self.ngpio = n
        if names is not None:
            self.names: list[str] | None = validate_names(names, n) if names else None
        else:  # names a host chip reports: never refuse to start over them
            self.names = sanitize_names(backend.names, n) if backend.names else None
        self.names_blob: bytes = names_blob(self.names)
        self.irq_feature = False
        # Whether interrupts may be delivered now: read from the layer above (the device
        # sets it to the virtio core's ``running``, which follows the PM capability), never
        # kept here. Alone, the controller always delivers.
        self.gate: Callable[[], bool] = lambda: True
        # A backend with a C line table (the sim) shares it: the C request path and this
        # controller then read and write the same line state (gpio/lines_c.py).
        table = getattr(backend, "line_table", None)
        self._lines = list(table.views) if table is not None else [_Line() for _ in range(n)]
        if table is not None:
            table.g.names_size = len(self.names_blob)     # names are answered by Python
        self._held: dict[int, Any] = {}
        self._outbox: list[Completion] = []
        backend.reset_lines()

    # ---- configuration space ------------------------------------------------------------
    @property
    def gpio_names_size(self) -> int:
        """Size of the names blob; 0 when no line is named (GET_LINE_NAMES unsupported)."""
        return len(self.names_blob)

    def config_bytes(self) -> bytes:
        """struct virtio_gpio_config (5.17.4), 8 bytes."""
        return struct.pack(G.VIRTIO_GPIO_CONFIG_FMT, self.ngpio, self.gpio_names_size)

    @property
    def delivery(self) -> bool:
        """Whether interrupts may be delivered now (:attr:`gate`)."""
        return self.gate()

    # ---- requestq ---------------------------------------------------------------------
    def handle(self, request: bytes, resp_capacity: int) -> bytes:
        """Execute one requestq message; return the exact response bytes to write.

        Every ERR answer is logged at debug level with its reason, so that a guest's ERR can
        be explained (``--log-level debug``); nothing is formatted unless debug is enabled.
        """
        err = _RESP.pack(G.VIRTIO_GPIO_STATUS_ERR, 0)[:max(0, min(resp_capacity, 2))]
        if len(request) != _REQ.size:
            return _refused(err, "request of %d bytes, not %d", len(request), _REQ.size)
        mtype, gpio, value = _REQ.unpack(request)
        if mtype == G.VIRTIO_GPIO_MSG_GET_LINE_NAMES:
            if not self.names_blob:
                return _refused(err, "GET_LINE_NAMES: no line is named (gpio_names_size 0)")
            if resp_capacity != 1 + len(self.names_blob):
                return _refused(err, "GET_LINE_NAMES: response buffer of %d bytes, not %d",
                                resp_capacity, 1 + len(self.names_blob))
            return bytes([G.VIRTIO_GPIO_STATUS_OK]) + self.names_blob
        if resp_capacity != _RESP.size:
            return _refused(err, "message type %d gpio %d: response buffer of %d bytes, not %d",
                            mtype, gpio, resp_capacity, _RESP.size)
        if gpio >= self.ngpio:
            return _refused(err, "message type %d: gpio %d out of range (ngpio %d)", mtype,
                            gpio, self.ngpio)
        handler = self._HANDLERS.get(mtype)
        if handler is None:
            return _refused(err, "unknown message type %d (gpio %d)", mtype, gpio)
        try:
            out = handler(self, gpio, value)
        except _Err as e:
            return _refused(err, "message type %d gpio %d value %d: %s", mtype, gpio, value,
                            e.args[0])
        except Exception:  # a backend failure must not take the device down
            log.exception("gpio %d: message %d failed in the backend", gpio, mtype)
            return err
        return _RESP.pack(G.VIRTIO_GPIO_STATUS_OK, out)

    def _get_direction(self, gpio: int, value: int) -> int:
        return self._lines[gpio].direction

    def _set_direction(self, gpio: int, value: int) -> int:
        line = self._lines[gpio]
        if value not in G.DIRECTIONS:
            raise _Err("not a direction (NONE 0, OUT 1, IN 2)")
        if value == G.VIRTIO_GPIO_DIRECTION_NONE:
            self._disable_irq(gpio)
            self.backend.set_direction(gpio, DIR_NONE)
            line.direction = value
            line.value = 0
            return 0
        if value == G.VIRTIO_GPIO_DIRECTION_OUT and line.irq_type != G.VIRTIO_GPIO_IRQ_TYPE_NONE:
            # an output cannot interrupt; the driver must disable the irq first
            raise _Err("SET_DIRECTION OUT while an irq type is set")
        self.backend.set_direction(gpio, _BACKEND_DIR[value], line.value)
        line.direction = value
        return 0

    def _get_value(self, gpio: int, value: int) -> int:
        return 1 if self.backend.get_value(gpio) else 0

    def _set_value(self, gpio: int, value: int) -> int:
        line = self._lines[gpio]
        if value not in (0, 1):
            raise _Err("a value is 0 or 1")
        if line.direction == G.VIRTIO_GPIO_DIRECTION_OUT:
            self.backend.set_value(gpio, value)
        line.value = value  # remembered for a later SET_DIRECTION OUT (5.17.6.5)
        return 0

    def _set_irq_type(self, gpio: int, value: int) -> int:
        line = self._lines[gpio]
        if not self.irq_feature:
            raise _Err("SET_IRQ_TYPE without VIRTIO_GPIO_F_IRQ negotiated")
        if value not in G.IRQ_TYPES:
            raise _Err("not an irq type")
        if value == G.VIRTIO_GPIO_IRQ_TYPE_NONE:
            self._disable_irq(gpio)
            return 0
        if line.direction == G.VIRTIO_GPIO_DIRECTION_OUT:
            raise _Err("an output line cannot have an irq type")
        if line.irq_type == value:
            return 0
        if line.irq_type != G.VIRTIO_GPIO_IRQ_TYPE_NONE:
            raise _Err("an enabled irq type changes only through NONE (5.17.6.6)")
        # changes that happened before this point must not be latched: consume them first
        self._drain_backend(self._outbox)
        if line.direction == G.VIRTIO_GPIO_DIRECTION_NONE:
            self.backend.set_direction(gpio, DIR_IN)
            line.direction = G.VIRTIO_GPIO_DIRECTION_IN
        self.backend.set_edge(gpio, _EDGE_FOR_IRQ[value])
        line.irq_type = value
        line.latched = False  # latch edges "from this point onward"
        self._try_deliver(gpio, self._outbox)
        return 0

    _HANDLERS = {
        G.VIRTIO_GPIO_MSG_GET_DIRECTION: _get_direction,
        G.VIRTIO_GPIO_MSG_SET_DIRECTION: _set_direction,
        G.VIRTIO_GPIO_MSG_GET_VALUE: _get_value,
        G.VIRTIO_GPIO_MSG_SET_VALUE: _set_value,
        G.VIRTIO_GPIO_MSG_SET_IRQ_TYPE: _set_irq_type,
    }

    def _disable_irq(self, gpio: int) -> None:
        """Irq type NONE: drop the latch, return a held buffer INVALID (5.17.7 device req.)."""
        line = self._lines[gpio]
        if line.irq_type != G.VIRTIO_GPIO_IRQ_TYPE_NONE:
            self.backend.set_edge(gpio, EDGE_NONE)
        line.irq_type = G.VIRTIO_GPIO_IRQ_TYPE_NONE
        line.latched = False
        if gpio in self._held:
            self._outbox.append((self._held.pop(gpio), G.VIRTIO_GPIO_IRQ_STATUS_INVALID))

    # ---- eventq -----------------------------------------------------------------------
    def take_completions(self) -> list[Completion]:
        """Drain eventq completions produced by :meth:`handle` (call after each batch)."""
        out, self._outbox = self._outbox, []
        return out

    def queue_irq(self, gpio: int | None, token: Any) -> list[Completion]:
        """The driver queued an (irq_request, irq_response) pair for ``gpio``: unmask it.

        ``gpio`` None means a malformed chain (see :func:`decode_irq_request`). Returns the
        completions to write and push, possibly including ``token`` itself.
        """
        out = self.take_completions()
        if gpio is None or not 0 <= gpio < self.ngpio or gpio in self._held \
                or self._lines[gpio].irq_type == G.VIRTIO_GPIO_IRQ_TYPE_NONE:
            out.append((token, G.VIRTIO_GPIO_IRQ_STATUS_INVALID))
            return out
        self._held[gpio] = token
        self._try_deliver(gpio, out)
        return out

    def process_events(self) -> list[Completion]:
        """Drain the backend's input changes; latch edges and deliver what is unmasked."""
        out = self.take_completions()
        self._drain_backend(out)
        return out

    def _drain_backend(self, out: list[Completion]) -> None:
        for gpio, level in self.backend.read_events():
            if not isinstance(gpio, int) or not 0 <= gpio < self.ngpio:
                continue
            line = self._lines[gpio]
            t = line.irq_type
            if t in G.EDGE_IRQ_TYPES:
                if (t == G.VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH
                        or (t == G.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING and level)
                        or (t == G.VIRTIO_GPIO_IRQ_TYPE_EDGE_FALLING and not level)):
                    line.latched = True
                    self._try_deliver(gpio, out)
            elif t in G.LEVEL_IRQ_TYPES:
                self._try_deliver(gpio, out)

    def deliver_pending(self) -> list[Completion]:
        """The gate opened: deliver latched edges and active levels of lines holding a
        buffer. (While the gate is closed nothing completes VALID and edges are latched.)"""
        out = self.take_completions()
        if self.delivery:
            for gpio in sorted(self._held):
                self._try_deliver(gpio, out)
        return out

    def may_deliver(self) -> bool:
        """Whether :meth:`deliver_pending` could complete anything: completions queued, or a
        held line with a latched edge or a level type (cheap: no backend read)."""
        if self._outbox:
            return True
        lines = self._lines
        for gpio in self._held:
            line = lines[gpio]
            if line.latched or line.irq_type in G.LEVEL_IRQ_TYPES:
                return True
        return False

    def _try_deliver(self, gpio: int, out: list[Completion]) -> None:
        if gpio not in self._held or not self.gate():
            return
        line = self._lines[gpio]
        t = line.irq_type
        if t in G.EDGE_IRQ_TYPES:
            fire = line.latched
        elif t in G.LEVEL_IRQ_TYPES:
            level = 1 if self.backend.get_value(gpio) else 0
            fire = level == (1 if t == G.VIRTIO_GPIO_IRQ_TYPE_LEVEL_HIGH else 0)
        else:
            fire = False
        if fire:
            line.latched = False
            out.append((self._held.pop(gpio), G.VIRTIO_GPIO_IRQ_STATUS_VALID))

    def held_lines(self) -> list[int]:
        """Lines currently holding an eventq buffer (i.e. unmasked), ascending."""
        return sorted(self._held)

    def held_token(self, gpio: int) -> Any:
        """The token of the buffer ``gpio`` holds; KeyError if it holds none."""
        return self._held[gpio]

    def release_held(self, gpio: int) -> Any | None:
        """Forget ``gpio``'s held buffer without completing it (its ring was reset); return
        its token or None. The line becomes masked; its irq type and latch stay."""
        return self._held.pop(gpio, None)

    # ---- reset and state ----------------------------------------------------------------
    def reset(self, keep_lines: bool = False) -> list[Any]:
        """Virtio device reset: drop every held eventq buffer and return their tokens.

        Without ``keep_lines`` every line returns to the reset state (input, value 0, irq
        NONE) and the backend is reset. With it, directions and output values stay as they
        are (outputs keep driving) and only the interrupt configuration, which belongs to the
        driver instance that is gone, is cleared. Delivery and ``irq_feature`` are unchanged.
        """
        tokens = [t for t, _ in self._outbox] + [self._held[g] for g in sorted(self._held)]
        self._outbox.clear()
        self._held.clear()
        if keep_lines:
            for gpio, line in enumerate(self._lines):
                if line.irq_type != G.VIRTIO_GPIO_IRQ_TYPE_NONE:
                    self._disable_irq(gpio)
        else:
            self.backend.reset_lines()
            for line in self._lines:
                _clear(line)
        return tokens

    def snapshot(self) -> dict:
        """JSON-able state: lines that differ from the reset state, held lines, delivery."""
        lines = {str(g): {"direction": ln.direction, "value": ln.value,
                          "irq_type": ln.irq_type, "latched": bool(ln.latched)}
                 for g, ln in enumerate(self._lines) if not _Line.is_reset(ln)}
        return {"version": SNAPSHOT_VERSION, "ngpio": self.ngpio, "lines": lines,
                "held": sorted(self._held), "delivery": self.delivery,
                "irq_feature": self.irq_feature}

    def restore(self, state: dict, tokens_by_line: dict[int, Any]) -> list[Completion]:
        """Load a :meth:`snapshot` and re-attach held buffers by line.

        ``tokens_by_line`` maps each line listed in ``state["held"]`` to its buffer's token.
        Tokens for lines the snapshot does not hold are returned INVALID. Raises ValueError
        (changing nothing) if ``state`` is malformed or for another line count.
        """
        new_lines, held, _delivery, irq_feature = self._parse_state(state)  # gate is derived
        out = self.take_completions()
        self._held = {}
        self.irq_feature = irq_feature
        self.backend.reset_lines()
        for dst in self._lines:
            _clear(dst)
        for gpio, line in enumerate(new_lines):
            if line.is_reset():
                continue
            self.backend.set_direction(gpio, _BACKEND_DIR[line.direction], line.value)
            if line.irq_type != G.VIRTIO_GPIO_IRQ_TYPE_NONE:
                self.backend.set_edge(gpio, _EDGE_FOR_IRQ[line.irq_type])
            dst = self._lines[gpio]
            dst.direction, dst.value = line.direction, line.value
            dst.irq_type, dst.latched = line.irq_type, line.latched
        for gpio, token in sorted(tokens_by_line.items(), key=lambda kv: kv[0]):
            if gpio in held and gpio not in self._held:
                self._held[gpio] = token
            else:
                out.append((token, G.VIRTIO_GPIO_IRQ_STATUS_INVALID))
        for gpio in sorted(self._held):
            self._try_deliver(gpio, out)
        return out

    def _parse_state(self, state: dict) -> tuple[list[_Line], set[int], bool, bool]:
        try:
            if state["version"] != SNAPSHOT_VERSION or state["ngpio"] != self.ngpio:
                raise ValueError("snapshot version or line count does not match")
            lines = [_Line() for _ in range(self.ngpio)]
            for key, d in state["lines"].items():
                gpio = int(key)
                if not 0 <= gpio < self.ngpio:
                    raise ValueError(f"line {gpio} out of range")
                ln = lines[gpio]
                ln.direction, ln.value = int(d["direction"]), int(d["value"])
                ln.irq_type, ln.latched = int(d["irq_type"]), bool(d["latched"])
                if (ln.direction not in G.DIRECTIONS or ln.value not in (0, 1)
                        or ln.irq_type not in G.IRQ_TYPES
                        or (ln.irq_type and ln.direction != G.VIRTIO_GPIO_DIRECTION_IN)):
                    raise ValueError(f"line {gpio}: inconsistent state {d!r}")
            held = {int(g) for g in state["held"]}
            if any(lines[g].irq_type == G.VIRTIO_GPIO_IRQ_TYPE_NONE for g in held
                   if 0 <= g < self.ngpio) or any(not 0 <= g < self.ngpio for g in held):
                raise ValueError("held buffer on a line without an enabled interrupt")
            return lines, held, bool(state["delivery"]), bool(state["irq_feature"])
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed gpio snapshot: {e!r}") from e
