"""Device snapshot files (``--snapshot`` / ``--restore``): reading and the schema.

A snapshot comes from outside the process, so it is hostile input like a client message.
:func:`read_snapshot` takes only a regular file of bounded size (never a FIFO or a device
such as /dev/zero), parses it as JSON with every failure mode turned into
:class:`SnapshotError` (deep nesting, huge numbers, bad text), and :func:`validate` checks the
whole document against the schema below (types, ranges, cross-field consistency) before
anything is applied: the server's ``load_snapshot`` calls both first, so a bad file changes
no device state and gets one line of error.

The keys are those written by ``GpioServer.snapshot`` and the ``get_state`` methods of the
PCI PM capability, the transports, the virtio core, its queues and the gpio device. Old files
may carry ``msix_enabled`` (written before issue 16, never read): accepted and ignored.
"""
from __future__ import annotations

import json
import os
import stat
from typing import Any, Callable

SNAPSHOT_FORMAT = "vfio-virtio-gpio-snapshot"
SNAPSHOT_VERSION = 1
CONTROLLER_VERSION = 1                  # vfio_virtio/gpio/controller.py SNAPSHOT_VERSION
MAX_SNAPSHOT_BYTES = 1 << 20            # a 1024-line device with every line set is ~100 KiB

# PCI PM 1.2 PowerState values a function can be left in here (D0, D3hot).
PM_STATES = (0, 3)
# virtio 1.3 5.17: directions NONE/OUT/IN; IRQ types NONE, EDGE_*, LEVEL_HIGH, LEVEL_LOW.
GPIO_DIRECTIONS = (0, 1, 2)
GPIO_IRQ_TYPES = (0, 1, 2, 3, 4, 8)
GPIO_DIRECTION_IN = 2
VIRTIO_MSI_NO_VECTOR = 0xFFFF


class SnapshotError(ValueError):
    """A snapshot file that cannot be used; the message is one line for the operator."""


# --- reading --------------------------------------------------------------------------------

def _open_regular(path: str, what: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise SnapshotError(f"cannot open {what} {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SnapshotError(f"{what} {path} is not a regular file")
    return fd


def read_snapshot(path: str) -> dict:
    """The parsed snapshot document at ``path`` (not yet validated)."""
    fd = _open_regular(path, "snapshot")
    try:
        data = b""
        while len(data) <= MAX_SNAPSHOT_BYTES:
            chunk = os.read(fd, MAX_SNAPSHOT_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"snapshot {path} is larger than {MAX_SNAPSHOT_BYTES} bytes")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise SnapshotError(f"snapshot {path}: JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise SnapshotError(f"snapshot {path} is not valid JSON: {_one_line(e)}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _one_line(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


# --- the schema -----------------------------------------------------------------------------

Check = Callable[[Any, str], None]


def _fail(where: str, msg: str) -> None:
    raise SnapshotError(f"snapshot {where}: {msg}" if where else f"snapshot {msg}")


def uint(bits: int) -> Check:
    def check(v: Any, where: str) -> None:
        if type(v) is not int or not 0 <= v < 1 << bits:
            _fail(where, f"must be an integer in [0, 2^{bits}), got {_show(v)}")
    return check


def one_of(*allowed: int) -> Check:
    def check(v: Any, where: str) -> None:
        if type(v) is not int or v not in allowed:
            _fail(where, f"must be one of {list(allowed)}, got {_show(v)}")
    return check


def boolean(v: Any, where: str) -> None:
    if type(v) is not bool:
        _fail(where, f"must be true or false, got {_show(v)}")


def const(value: Any) -> Check:
    def check(v: Any, where: str) -> None:
        if type(v) is not type(value) or v != value:
            _fail(where, f"must be {value!r}, got {_show(v)}")
    return check


def array(item: Check, length: int | None = None) -> Check:
    def check(v: Any, where: str) -> None:
        if type(v) is not list:
            _fail(where, f"must be a list, got {_show(v)}")
        if length is not None and len(v) != length:
            _fail(where, f"must have {length} entries, has {len(v)}")
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")
    return check


def record(required: dict[str, Check], optional: dict[str, Check] | None = None) -> Check:
    """An object with exactly these keys (the optional ones may be absent)."""
    optional = optional or {}

    def check(v: Any, where: str) -> None:
        if type(v) is not dict:
            _fail(where, f"must be an object, got {_show(v)}")
        missing = [k for k in required if k not in v]
        if missing:
            _fail(where, f"lacks {', '.join(missing)}")
        extra = [k for k in v if k not in required and k not in optional]
        if extra:
            _fail(where, f"has unknown keys {', '.join(sorted(map(str, extra)))[:200]}")
        for k, c in {**required, **optional}.items():
            if k in v:
                c(v[k], f"{where}.{k}" if where else k)
    return check


def line_map(value: Check, ngpio: int) -> Check:
    """An object keyed by line numbers (decimal strings) below ``ngpio``."""
    def check(v: Any, where: str) -> None:
        if type(v) is not dict:
            _fail(where, f"must be an object, got {_show(v)}")
        for k, x in v.items():
            if not (k.isdigit() and k == str(int(k)) and int(k) < ngpio):
                _fail(where, f"key {k[:20]!r} is not a line number below {ngpio}")
            value(x, f"{where}.{k}")
    return check


def _show(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return f"an {'object' if isinstance(v, dict) else 'array'} of {len(v)} entries"
    try:
        r = json.dumps(v) if not isinstance(v, float) else repr(v)
    except (ValueError, RecursionError):
        r = type(v).__name__
    return r if len(r) <= 40 else r[:37] + "..."


def validate(d: Any, *, ngpio: int, transport: str, nqueues: int, max_queue_size: int,
             msix_vectors: int) -> dict:
    """Check a whole snapshot document for this device; returns it. Raises SnapshotError."""
    if type(d) is not dict:
        _fail("top level", f"must be an object, got {_show(d)}")
    if d.get("format") != SNAPSHOT_FORMAT or d.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError("not a vfio-virtio-gpio snapshot of a known version")
    if d.get("lines") != ngpio or type(d.get("lines")) is not int:
        raise SnapshotError(f"snapshot has {_show(d.get('lines'))} lines, this device {ngpio}")
    queue = record({"size": uint(16), "desc_addr": uint(64), "driver_addr": uint(64),
                    "device_addr": uint(64), "enabled": boolean, "event_idx": boolean,
                    "indirect": boolean, "last_avail_idx": uint(16), "used_idx": uint(16),
                    "signalled_used": uint(16), "signalled_used_valid": boolean,
                    "broken": uint(8)})
    line = record({"direction": one_of(*GPIO_DIRECTIONS), "value": one_of(0, 1),
                   "irq_type": one_of(*GPIO_IRQ_TYPES), "latched": boolean})
    controller = record({"version": const(CONTROLLER_VERSION), "ngpio": const(ngpio),
                         "lines": line_map(line, ngpio), "held": array(uint(16)),
                         "delivery": boolean, "irq_feature": boolean})
    device = record({"controller": controller},
                    {"held_heads": line_map(uint(16), ngpio)})
    core = record({"status": uint(8), "driver_features": uint(64),
                   "config_generation": uint(8), "queues": array(queue, nqueues),
                   "device": device})
    pm = record({"state": one_of(*PM_STATES), "pme_enable": boolean, "pme_status": boolean,
                 "no_soft_reset": boolean})
    if transport == "mmio":
        front = record({"kind": const("mmio"), "dfselect": uint(32), "gfselect": uint(32),
                        "queue_select": uint(32), "shm_select": uint(32),
                        "interrupt_status": uint(2),
                        "queue_reset_pending": array(boolean, nqueues), "touched": boolean})
    else:
        front = record({"dfselect": uint(32), "gfselect": uint(32), "queue_select": uint(16),
                        "config_vector": uint(16), "queue_vectors": array(uint(16), nqueues),
                        "isr": uint(2)}, {"touched": boolean})
    record({"format": const(SNAPSHOT_FORMAT), "version": const(SNAPSHOT_VERSION),
            "lines": const(ngpio), "pm": pm, "transport": front, "core": core},
           {"msix_enabled": boolean})(d, "")
    _consistent(d, ngpio, max_queue_size, msix_vectors)
    return d


def _consistent(d: dict, ngpio: int, max_queue_size: int, msix_vectors: int) -> None:
    """Rules between fields that the per-field types cannot express."""
    for i, q in enumerate(d["core"]["queues"]):
        size = q["size"]
        if size and (size & (size - 1) or size > max_queue_size):
            _fail(f"core.queues[{i}].size", f"must be a power of two up to {max_queue_size}, "
                  f"got {size}")
        if q["enabled"] and not size:
            _fail(f"core.queues[{i}]", "is enabled with size 0")
    ctl = d["core"]["device"]["controller"]
    lines = ctl["lines"]
    for k, ln in lines.items():
        if ln["irq_type"] and ln["direction"] != GPIO_DIRECTION_IN:
            _fail(f"core.device.controller.lines.{k}", "has an interrupt but is not an input")
    held = ctl["held"]
    for g in held:
        if g >= ngpio or not lines.get(str(g), {}).get("irq_type"):
            _fail("core.device.controller.held", f"line {g} has no enabled interrupt")
    if len(set(held)) != len(held):
        _fail("core.device.controller.held", "lists a line twice")
    heads = d["core"]["device"].get("held_heads", {})
    eventq = d["core"]["queues"][-1] if d["core"]["queues"] else None
    for k, h in heads.items():
        if int(k) not in held:
            _fail(f"core.device.held_heads.{k}", "is for a line the controller does not hold")
        if eventq is None or h >= eventq["size"]:
            _fail(f"core.device.held_heads.{k}", f"head {h} is outside the event queue")
    vectors = d["transport"].get("queue_vectors", [])
    for v in vectors + [d["transport"].get("config_vector", VIRTIO_MSI_NO_VECTOR)]:
        if v != VIRTIO_MSI_NO_VECTOR and v >= msix_vectors:
            _fail("transport", f"MSI-X vector {v} is beyond the function's {msix_vectors} "
                  "vectors")
