"""``vfio-virtio-gpio-ctl``: drive and watch the server's GPIO lines from a host shell.

The host-side face of :mod:`vfio_virtio.client`, shaped like libgpiod v2's tools::

    vfio-virtio-gpio-ctl --control PATH get [--numeric] LINE...      # like gpioget
    vfio-virtio-gpio-ctl --control PATH set LINE=VALUE...           # like gpioset
    vfio-virtio-gpio-ctl --control PATH monitor [-n N] [-F FMT] [LINE...]   # like gpiomon
    vfio-virtio-gpio-ctl --control PATH info [LINE...]              # like gpioinfo

Lines are given by offset or by name; an argument that parses as an offset in range is an
offset unless ``--by-name`` is given (gpiod's rule). ``set`` drives the level the host puts on
a line (the control socket's ``set``, docs/CONTROL.md); ``get`` and ``monitor`` report the
value the guest sees (an output's driven value, otherwise the input level).

Exit status: 0 success, 1 an error reported by or about the device (unknown line, socket not
reachable, server refused), 2 a usage error found before contacting the server.
"""
from __future__ import annotations

import argparse
import datetime
import re
import signal
import sys
import time
from typing import Any, Callable, TextIO

from .client import ControlClient, ControlError

PROG = "vfio-virtio-gpio-ctl"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

_ACTIVE = {"1": 1, "active": 1, "on": 1, "true": 1,
           "0": 0, "inactive": 0, "off": 0, "false": 0}
_DIRECTION_WORDS = {"out": "output", "in": "input", "none": "none"}
_PERIOD = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)?$")
RISING, FALLING = 1, 2          # %e values, as gpiomon prints them


class CtlError(Exception):
    """A failure to report on stderr with exit status 1."""


class UsageError(Exception):
    """A bad argument, found before the server is contacted: exit status 2."""


class _Stop(Exception):
    """SIGTERM while monitoring: stop like on SIGINT."""


# ---- argument parsing ---------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description="Drive and watch the GPIO lines of a "
                                 "vfio-virtio-gpio server through its control socket.")
    ap.add_argument("--control", required=True, metavar="PATH",
                    help="the server's control socket (its --control)")
    ap.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                    help="wait at most this long for each server reply (default 5)")
    ap.add_argument("--by-name", action="store_true",
                    help="treat every LINE as a name even if it parses as an offset")
    ap.add_argument("--unquoted", action="store_true", help="do not quote line names")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    g = sub.add_parser("get", help="print line values (like gpioget)")
    g.add_argument("-N", "--numeric", action="store_true",
                   help="print values as 0/1 instead of inactive/active")
    g.add_argument("lines", nargs="+", metavar="LINE")
    s = sub.add_parser("set", help="drive the host-side level of lines (like gpioset)")
    s.add_argument("assignments", nargs="+", metavar="LINE=VALUE",
                   help="VALUE: 1/0, active/inactive, on/off, true/false")
    m = sub.add_parser("monitor", help="print value edges as they happen (like gpiomon)")
    m.add_argument("-n", "--num-events", type=_non_negative, default=0, metavar="N",
                   help="exit after N events (default: run until SIGINT/SIGTERM)")
    m.add_argument("-e", "--edges", choices=("rising", "falling", "both"), default="both")
    m.add_argument("-F", "--format", metavar="FMT", help="custom event line: %%o offset, "
                   "%%l name, %%e 1 rising/2 falling, %%E rising/falling, %%S seconds "
                   "(monotonic), %%U UTC time, %%L local time, %%s source "
                   "(guest/host/reset), %%%% a percent sign")
    m.add_argument("--idle-timeout", type=_period, metavar="PERIOD",
                   help="exit after PERIOD without events (ms unless suffixed us/ms/s)")
    m.add_argument("--banner", action="store_true",
                   help="print 'Monitoring ...' once events are being watched")
    m.add_argument("-q", "--quiet", action="store_true", help="print no events")
    m.add_argument("lines", nargs="*", metavar="LINE", help="default: every line")
    i = sub.add_parser("info", help="print every line's state (like gpioinfo)")
    i.add_argument("lines", nargs="*", metavar="LINE")
    return ap


def _non_negative(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}")
    return int(text)


def _period(text: str) -> float:
    """A gpiod-style period in seconds: milliseconds unless suffixed ``us``, ``ms`` or ``s``."""
    m = _PERIOD.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid period: {text!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1e-3}[m.group(2)]
    return float(m.group(1)) * scale


def parse_value(text: str) -> int:
    """0 or 1 from the words gpioset accepts; UsageError otherwise."""
    try:
        return _ACTIVE[text.lower()]
    except KeyError:
        raise UsageError(f"invalid line value: {text!r} (use 0/1, inactive/active, off/on, "
                         "false/true)") from None


def parse_assignments(items: list[str]) -> list[tuple[str, int]]:
    out = []
    for item in items:
        ident, eq, value = item.rpartition("=")
        if not eq or not ident:
            raise UsageError(f"invalid line value assignment: {item!r} (want LINE=VALUE)")
        out.append((ident, parse_value(value)))
    return out


# ---- line resolution ----------------------------------------------------------------------
class Lines:
    """The device's line table as the server reports it (``info``): ids -> offsets, names."""

    def __init__(self, nlines: int, names: list[str], by_name: bool = False,
                 unquoted: bool = False) -> None:
        self.nlines = nlines
        self.names = list(names) + [""] * (nlines - len(names))
        self.by_name = by_name
        self.unquoted = unquoted

    def resolve(self, idents: list[str]) -> list[int]:
        """Offsets of ``idents``; CtlError naming every one that is unknown or repeated."""
        offsets, problems = [], []
        for ident in idents:
            off = self._one(ident)
            if off is None:
                problems.append(f"cannot find line {ident!r}")
            elif off in offsets:
                other = idents[offsets.index(off)]
                problems.append(f"lines {other!r} and {ident!r} are the same line")
            offsets.append(off)
        if problems:
            raise CtlError("; ".join(problems))
        return offsets

    def _one(self, ident: str) -> int | None:
        if not self.by_name and ident.isascii() and ident.isdigit() and int(ident) < self.nlines:
            return int(ident)
        if ident in self.names and ident:
            return self.names.index(ident)
        return None

    def label(self, offset: int) -> str:
        """How gpiod names a line in its output: the quoted name, else the offset."""
        name = self.names[offset]
        if not name:
            return str(offset)
        return name if self.unquoted else f'"{name}"'


def _connect(args: argparse.Namespace) -> tuple[ControlClient, Lines]:
    try:
        c = ControlClient(args.control, timeout=args.timeout)
    except OSError as e:                   # incl. TimeoutError
        reason = e.strerror or str(e)
        raise CtlError(f"cannot connect to control socket {args.control}: {reason}") from None
    try:
        info = c.info()
        n, names = info.get("lines"), info.get("names") or []
        if type(n) is not int or n < 0 or not isinstance(names, list) or \
                not all(isinstance(x, str) for x in names):
            raise CtlError(f"unexpected reply from {args.control}: {info}"[:200])
        lines = Lines(n, names[:n], args.by_name, args.unquoted)
    except BaseException:
        c.close()
        raise
    return c, lines


def line_state(c: ControlClient, offset: int) -> dict:
    """``get`` of one line, checked: the reply names the line and a value of 0 or 1."""
    st = c.get(offset)
    if st.get("line") != offset or st.get("value") not in (0, 1):
        raise CtlError(f"unexpected reply for line {offset}: {st}"[:200])
    return st


# ---- commands -----------------------------------------------------------------------------
def cmd_get(args: argparse.Namespace, out: TextIO) -> int:
    c, lines = _connect(args)
    with c:
        offsets = lines.resolve(args.lines)
        values = [line_state(c, off)["value"] for off in offsets]
    if args.numeric:
        print(" ".join(str(v) for v in values), file=out)
    else:
        ids = args.lines if args.unquoted else [f'"{i}"' for i in args.lines]
        print(" ".join(f"{i}={'active' if v else 'inactive'}" for i, v in zip(ids, values)),
              file=out)
    return EXIT_OK


def cmd_set(args: argparse.Namespace, out: TextIO) -> int:
    wanted = parse_assignments(args.assignments)
    c, lines = _connect(args)
    with c:
        offsets = lines.resolve([ident for ident, _ in wanted])
        for off, (_, value) in zip(offsets, wanted):
            c.set(off, value)
    return EXIT_OK


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    c, lines = _connect(args)
    with c:
        offsets = lines.resolve(args.lines) if args.lines else range(lines.nlines)
        states = [line_state(c, off) for off in offsets]
    print(f"{args.control} - {lines.nlines} lines:", file=out)
    for st in states:
        print(format_info_line(st, args.unquoted), file=out)
    return EXIT_OK


def format_info_line(st: dict, unquoted: bool = False) -> str:
    """One gpioinfo-style line: offset, name, direction and attributes."""
    name = st.get("name") or ""
    shown = (name if unquoted else f'"{name}"') if name else "unnamed"
    attrs = [_DIRECTION_WORDS.get(st.get("direction"), str(st.get("direction"))),
             f"value={st.get('value')}"]
    if "input" in st:
        attrs.append(f"host-input={st['input']}")
    if st.get("edge") not in (None, "none"):
        attrs.append(f"edges={st['edge']}")
    return f"\tline {st['line']:>3}:\t{shown:<16}\t{' '.join(attrs)}"


def format_event(fmt: str, offset: int, name: str, edge: int, source: str,
                 mono: float, wall: float) -> str:
    """Expand gpiomon's % specifiers (plus %s, the change's source) for one edge."""
    def spec(m: re.Match) -> str:
        ch = m.group(1)
        if ch in ("", "%"):                  # "%%", or a lone "%" at the end
            return "%"
        if ch == "o":
            return str(offset)
        if ch == "l":
            return name or "unnamed"
        if ch == "e":
            return str(edge)
        if ch == "E":
            return "rising" if edge == RISING else "falling"
        if ch == "S":
            return f"{mono:.9f}"
        if ch in ("U", "L"):
            tz = datetime.timezone.utc if ch == "U" else None
            t = datetime.datetime.fromtimestamp(wall, tz).astimezone(tz)
            return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{t.microsecond:06d}000" + \
                ("Z" if ch == "U" else "")
        if ch == "s":
            return source
        return "%" + ch                      # unknown specifier: printed as it is (gpiomon)
    return re.sub(r"%(.?)", spec, fmt, flags=re.S)


def cmd_monitor(args: argparse.Namespace, out: TextIO) -> int:
    c, lines = _connect(args)
    with c:
        offsets = set(lines.resolve(args.lines) if args.lines else range(lines.nlines))
        try:
            w = c.watch()
        except (OSError, TimeoutError) as e:
            raise CtlError(f"cannot watch {args.control}: {e}") from None
    with w:
        last = initial_values(w, lines.nlines, args.control)
        if args.banner:
            ids = args.lines or ["all lines"]
            print("Monitoring " + ", ".join(repr(i) for i in ids) + "...", file=out, flush=True)
        return _watch_edges(w, args, lines, offsets, last, out)


def initial_values(w: Any, nlines: int, control: str) -> dict[int, int]:
    """Every line's value from one ``list`` (the baseline edges are measured against)."""
    states = w.request("list").get("lines")
    if not isinstance(states, list):
        raise CtlError(f"unexpected reply from {control}: no line list")
    return {st["line"]: st["value"] for st in states if isinstance(st, dict)
            and type(st.get("line")) is int and 0 <= st["line"] < nlines
            and st.get("value") in (0, 1)}


def _watch_edges(w: Any, args: argparse.Namespace, lines: Lines, offsets: set[int],
                 last: dict[int, int], out: TextIO) -> int:
    want = {"rising": {RISING}, "falling": {FALLING}, "both": {RISING, FALLING}}[args.edges]
    done = 0
    idle_until = None if args.idle_timeout is None else time.monotonic() + args.idle_timeout
    while not args.num_events or done < args.num_events:
        wait = 0.5 if idle_until is None else max(0.0, idle_until - time.monotonic())
        ev = w.next_event(wait)
        if ev is None:
            if idle_until is not None and time.monotonic() >= idle_until:
                return EXIT_OK
            continue
        off, value = ev.get("line"), ev.get("value")
        if off not in last or value == last[off]:
            continue
        last[off] = value
        edge = RISING if value else FALLING
        if off not in offsets or edge not in want:
            continue
        done += 1
        if idle_until is not None:
            idle_until = time.monotonic() + args.idle_timeout
        if not args.quiet:
            print(_event_line(args, lines, off, edge, ev.get("source", "")), file=out,
                  flush=True)
    return EXIT_OK


def _event_line(args: argparse.Namespace, lines: Lines, off: int, edge: int,
                source: str) -> str:
    mono, wall = time.monotonic(), time.time()
    if args.format is not None:
        return format_event(args.format, off, lines.names[off], edge, source, mono, wall)
    return f"{mono:.9f}\t{'rising' if edge == RISING else 'falling'}\t{lines.label(off)}"


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "get": cmd_get, "set": cmd_set, "monitor": cmd_monitor, "info": cmd_info}


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the tool; returns the exit status (0 ok, 1 error, 2 usage)."""
    out = out or sys.stdout
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:           # argparse: --help is 0, a usage error 2
        return int(e.code or 0)
    catch_term = args.command == "monitor" and _main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_stop) if catch_term else None
    try:
        return COMMANDS[args.command](args, out)
    except (KeyboardInterrupt, _Stop):
        return EXIT_OK                 # SIGINT/SIGTERM end a monitor cleanly
    except (UsageError, CtlError, ControlError, OSError) as e:
        code, message = _failure(e, args.control)
        print(f"{PROG}: {message}", file=sys.stderr)
        return code
    finally:
        if catch_term:
            signal.signal(signal.SIGTERM, old_term)
        try:
            out.flush()
        except (OSError, ValueError):
            pass


def _failure(e: Exception, control: str) -> tuple[int, str]:
    """Exit status and one-line message for a failure of a command."""
    if isinstance(e, UsageError):
        return EXIT_USAGE, str(e)
    if isinstance(e, (CtlError, ControlError)):
        return EXIT_ERROR, str(e)
    if isinstance(e, TimeoutError):
        return EXIT_ERROR, f"no reply from {control}: {e}"
    return EXIT_ERROR, f"lost the control socket {control}: {e}"    # ConnectionError etc.


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
