"""GpiodBackend: lines of a host gpiochip through the kernel's GPIO uAPI v2 (``gpio_uapi``).

The selected lines are requested once, as inputs, in line requests of up to
``GPIO_V2_LINES_MAX`` lines (:attr:`GpiodBackend.requests` gives each request's fd and chip
offsets, for a request path outside Python). Direction, output value and edge detection are
changed with ioctls on those fds; a reconfiguration always carries every line of a request
(the kernel resets lines missing from it) and is skipped when nothing changes, so
re-applying the state the lines already have never touches them. Edge events of every
request fd are gathered in one epoll fd that joins the server's poll loop
(:meth:`fileno` / :meth:`read_events`).

The C request path (``gpio/fastpath.py``) serves GET_VALUE and SET_VALUE itself: the
protocol state lives in :attr:`line_table` (chip mode, ``cffi_build/csrc/gpio_lines.h``),
and C calls GPIO_V2_LINE_GET_VALUES_IOCTL / GPIO_V2_LINE_SET_VALUES_IOCTL on the request
fds. An output value C changed is taken over here (:meth:`_pull`) before anything reads or
re-applies the lines' state, and watchers hear of it through an eventfd in the epoll set.
While the lines are held (:meth:`adopt`), disowned, closed or the chip is gone, C sends
every request to Python.

The libgpiod Python binding is not used: it cannot adopt an existing line-request fd (its
``LineRequest`` is only made by ``Chip.request_lines``), and a handover passes the fds to a
new process (:meth:`adopt`), which must drive them as they are.

Model notes:

* The chardev has no "inactive" state for a requested line: DIR_NONE is an input with edge
  detection off (high impedance), reported as DIR_NONE by :meth:`get_direction`.
* Busy lines are decided at start: a line already requested by another consumer fails the
  start with a message naming the line and its consumer (BackendError, EBUSY).
* Chip removed while serving (ENODEV, POLLHUP on the request fds): every request-driven call
  raises BackendError (the guest sees ERR), resets are ignored, the fds leave the poll set.
  The lines are not re-acquired if the chip comes back: restart the server.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import stat
import threading
from typing import Callable

from . import gpio_uapi as U
from .base import (DIR_IN, DIR_NONE, DIR_OUT, DIRECTION_NAMES, EDGE_BOTH, EDGE_FALLING,
                   EDGE_NONE, EDGE_RISING, EDGES, Backend, BackendError)

log = logging.getLogger(__name__)

CONSUMER = "vfio-virtio-gpio"
_EDGE_FLAGS = {EDGE_NONE: 0, EDGE_RISING: U.GPIO_V2_LINE_FLAG_EDGE_RISING,
               EDGE_FALLING: U.GPIO_V2_LINE_FLAG_EDGE_FALLING,
               EDGE_BOTH: U.GPIO_V2_LINE_FLAG_EDGE_RISING | U.GPIO_V2_LINE_FLAG_EDGE_FALLING}


def parse_offsets(text: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8]; ValueError on junk, duplicates or reversed ranges."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad line offset list {text!r}: expected e.g. '0-3,8'")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"bad line range {part!r}")
        out.extend(range(a, b + 1))
    if len(set(out)) != len(out):
        raise ValueError(f"line offset list {text!r} repeats a line")
    return out


def line_flags(direction: int, edge: str) -> int:
    """uAPI flags of one line in our line model."""
    if direction == DIR_OUT:
        return U.GPIO_V2_LINE_FLAG_OUTPUT
    return U.GPIO_V2_LINE_FLAG_INPUT | _EDGE_FLAGS[edge]


def _open_chip(path: str) -> tuple[int, U.gpiochip_info]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError(f"{path!r} is not a GPIO character device (no such file)") from None
    except OSError as e:
        raise ValueError(f"cannot open gpiochip {path!r}: {e.strerror or e}") from e
    try:
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            raise ValueError(f"{path!r} is not a GPIO character device")
        try:
            return fd, U.chip_info(fd)
        except OSError:
            raise ValueError(f"{path!r} is not a GPIO character device") from None
    except BaseException:
        os.close(fd)
        raise


class GpiodBackend(Backend):
    """Lines ``offsets`` (default: all) of the gpiochip at ``path``.

    ``lines``, if given, keeps only the first ``lines`` selected lines (ValueError if the
    selection is smaller). ``names`` overrides the chip's line names. See :meth:`adopt` for
    taking over the line requests of another process.
    """

    kind = "gpiod"

    def __init__(self, path: str, offsets: list[int] | None = None, lines: int | None = None,
                 names: list[str] | None = None, *, _adopt: dict | None = None) -> None:
        self.path = path
        self.line_table = None
        self._efd = -1
        self._reqs: list[tuple[int, list[int]]] = []
        self._epoll: select.epoll | None = None
        self._gone = False
        self._disowned = False
        self._hold = False
        self._watchers: list[Callable[[dict], None]] = []
        self._wlock = threading.Lock()
        cfd, info = _open_chip(path)
        try:
            count = info.lines
            sel = list(range(count)) if offsets is None else list(offsets)
            if any(not 0 <= o < count for o in sel):
                raise ValueError(f"{path} has lines 0..{count - 1}; asked for {sel}")
            if lines is not None:
                if lines > len(sel):
                    raise ValueError(f"{path}: {lines} lines asked, {len(sel)} available")
                sel = sel[:lines]
            if not sel:
                raise ValueError(f"{path}: no lines selected")
            if names is not None and len(names) > len(sel):
                raise ValueError(f"{len(names)} names for {len(sel)} lines")
            infos = [U.line_info(cfd, o) for o in sel]
            self._offsets = sel
            self._names = (list(names) + [""] * (len(sel) - len(names)) if names is not None
                           else [i.name.decode(errors="replace") for i in infos])
            n = len(sel)
            self._dir, self._out, self._edge = [DIR_IN] * n, [0] * n, [EDGE_NONE] * n
            groups = [sel[i:i + U.GPIO_V2_LINES_MAX] for i in range(0, n, U.GPIO_V2_LINES_MAX)]
            if _adopt is None:
                self._request(cfd, groups, infos)
            else:
                self._take(groups, _adopt)
        except BackendError:
            self.close()
            raise
        except OSError as e:
            self.close()
            raise ValueError(f"gpiochip {path}: {e.strerror or e}") from e
        except BaseException:
            self.close()
            raise
        finally:
            os.close(cfd)
        self._epoll = select.epoll()
        for fd, _ in self._reqs:
            self._epoll.register(fd, select.EPOLLIN)
        try:
            from ..gpio.lines_c import LineTable
        except ImportError:              # no C build: every request in Python
            return
        self.line_table = LineTable(len(self._offsets))
        self.line_table.set_chip([(fd, j) for fd, g in self._reqs for j in range(len(g))])
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._efd, select.EPOLLIN)
        self._c_mode()

    def _request(self, cfd: int, groups: list[list[int]], infos: list) -> None:
        used = [(o, i) for o, i in zip(self._offsets, infos) if i.flags & U.GPIO_V2_LINE_FLAG_USED]
        for g in groups:
            try:
                fd = U.request_lines(cfd, g, CONSUMER,
                                     U.build_config([U.GPIO_V2_LINE_FLAG_INPUT] * len(g), []))
            except OSError as e:
                if e.errno == errno.EBUSY:
                    busy = used or [(o, U.line_info(cfd, o)) for o in g]
                    what = ", ".join(
                        f"line {o}" + (f" ({i.name.decode(errors='replace')!r})" if i.name else "")
                        + f" is in use by {i.consumer.decode(errors='replace')!r}"
                        for o, i in busy if i.flags & U.GPIO_V2_LINE_FLAG_USED)
                    err = BackendError(f"gpiochip {self.path}: {what or 'a line is busy'}; "
                                       "the backend requests all its lines at start")
                    err.errno = errno.EBUSY
                    raise err from None
                raise
            self._reqs.append((fd, g))
        self._hw = [self._group_config(k) for k in range(len(self._reqs))]

    def _take(self, groups: list[list[int]], st: dict) -> None:
        fds, lines = st["fds"], st["lines"]
        if [list(g) for g in st["groups"]] != groups or len(fds) != len(groups) \
                or len(lines) != len(self._offsets):
            raise ValueError(f"handed-over line requests {st['groups']} do not match the "
                             f"lines selected here {groups}")
        for i, (d, v, e) in enumerate(lines):
            if d not in (DIR_NONE, DIR_OUT, DIR_IN) or v not in (0, 1) or e not in EDGES:
                raise ValueError(f"handed-over line {i}: bad state {(d, v, e)!r}")
            self._dir[i], self._out[i], self._edge[i] = d, v, e
        for fd, g in zip(fds, groups):
            U.get_values(fd, (1 << len(g)) - 1)        # a live line request (reads only)
            U.set_nonblocking(fd)
            self._reqs.append((fd, g))
        self._hw = [self._group_config(k) for k in range(len(self._reqs))]
        self._hold = True

    @classmethod
    def adopt(cls, state: dict, fds: list[int], names: list[str] | None = None) -> "GpiodBackend":
        """Take over the line requests ``fds`` of :meth:`handover_state` ``state`` (from
        another process, over SCM_RIGHTS) without touching the lines: nothing is
        reconfigured until :meth:`commit`, which applies only what differs."""
        return cls(state["path"], offsets=state["offsets"], names=names,
                   _adopt={"fds": fds, "groups": state["groups"], "lines": state["lines"]})

    # ---- handover ----------------------------------------------------------------------
    @property
    def requests(self) -> list[tuple[int, list[int]]]:
        """``[(request fd, chip offsets)]``; bit *i* of a request's values is offsets[i]."""
        return [(fd, list(g)) for fd, g in self._reqs]

    def handover_state(self) -> dict:
        """JSON-able description of the line requests (send with their fds, in order)."""
        self._pull()
        return {"path": self.path, "offsets": list(self._offsets),
                "groups": [list(g) for _, g in self._reqs],
                "lines": [[self._dir[i], self._out[i], self._edge[i]]
                          for i in range(len(self._offsets))]}

    def commit(self) -> None:
        """End the hold of :meth:`adopt`: apply the state the device restored, if it differs."""
        self._hold = False
        self._c_mode()
        self._apply()

    def disown(self) -> None:
        """The lines belong to another process now: make every later call a no-op."""
        self._pull()
        self._disowned = True
        self._c_mode()

    # ---- the C request path's share ------------------------------------------------------
    def _c_mode(self) -> None:
        """C drives the lines only while this backend would (not held, disowned, closed
        or gone)."""
        if self.line_table is not None:
            self.line_table.set_python_only(self._hold or self._disowned or self._gone
                                            or not self._reqs)

    def _pull(self) -> None:
        """Take over the output values C drove (SET_VALUE served in C) and tell watchers."""
        t = self.line_table
        if t is None:
            return
        for i in t.take_changed():
            if self._dir[i] != DIR_OUT:
                continue
            v = 1 if t.views[i].value else 0
            self._out[i] = v
            self._hw[i // U.GPIO_V2_LINES_MAX][1][i % U.GPIO_V2_LINES_MAX] = v
            self._notify(i, "guest")

    # ---- helpers ----------------------------------------------------------------------
    def _group_config(self, k: int) -> tuple[list[int], list[int]]:
        base = sum(len(g) for _, g in self._reqs[:k])
        n = len(self._reqs[k][1])
        idx = range(base, base + n)
        return ([line_flags(self._dir[i], self._edge[i]) for i in idx],
                [self._out[i] if self._dir[i] == DIR_OUT else 0 for i in idx])

    def _where(self, line: int) -> tuple[int, int]:
        return self._reqs[line // U.GPIO_V2_LINES_MAX][0], line % U.GPIO_V2_LINES_MAX

    def _fail(self, what: str, e: OSError) -> BackendError:
        if e.errno == errno.ENODEV and not self._gone:
            self._gone = True
            self._c_mode()
            log.error("gpiochip %s went away: requests answer ERR until restart", self.path)
            self._drop_from_poll()
        return BackendError(e.errno, f"gpiochip {self.path}: {what} failed: "
                            f"{os.strerror(e.errno) if e.errno else e}")

    def _check_usable(self) -> None:
        if self._gone:
            raise BackendError(errno.ENODEV, f"gpiochip {self.path} was removed")

    def _apply(self) -> None:
        self._pull()
        if self._hold or self._disowned:
            return
        self._check_usable()
        for k, (fd, _) in enumerate(self._reqs):
            want = self._group_config(k)
            if want == self._hw[k]:
                continue
            try:
                U.set_config(fd, U.build_config(*want))
            except OSError as e:
                raise self._fail("reconfigure", e) from e
            self._hw[k] = want

    def _drop_from_poll(self) -> None:
        if self._epoll is not None:
            for fd, _ in self._reqs:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass

    def _notify(self, line: int, source: str, level: int | None = None) -> None:
        """Tell watchers about ``line``; ``level`` is an input level the chip reported."""
        with self._wlock:
            ws = list(self._watchers)
        if not ws:
            return
        info = {"line": line, "name": self._names[line] if self._names else "",
                "direction": DIRECTION_NAMES[self._dir[line]], "edge": self._edge[line],
                "source": source}
        if level is not None or self._dir[line] == DIR_OUT:
            info["value"] = self._out[line] if level is None else level
        for cb in ws:
            try:
                cb(dict(info))
            except Exception:
                log.exception("gpiod watcher failed")

    # ---- Backend interface --------------------------------------------------------------
    @property
    def nlines(self) -> int:
        return len(self._offsets)

    @property
    def names(self) -> list[str] | None:
        return list(self._names) if self._names and any(self._names) else None

    def get_direction(self, line: int) -> int:
        self.check_line(line)
        return self._dir[line]

    def set_direction(self, line: int, direction: int, value: int = 0) -> None:
        self.check_direction(line, direction)
        if self._disowned:
            return
        self._pull()
        old = (self._dir[line], self._out[line], self._edge[line])
        self._dir[line] = direction
        if direction == DIR_OUT:
            self._out[line] = 1 if value else 0
            self._edge[line] = EDGE_NONE
        try:
            self._apply()
        except BackendError:
            self._dir[line], self._out[line], self._edge[line] = old
            raise
        self._notify(line, "guest")

    def get_value(self, line: int) -> int:
        self.check_line(line)
        self._check_usable()
        self._pull()
        if self._dir[line] == DIR_OUT:
            return self._out[line]
        fd, bit = self._where(line)
        try:
            return U.get_values(fd, 1 << bit) >> bit & 1
        except OSError as e:
            raise self._fail("get value", e) from e

    def set_value(self, line: int, value: int) -> None:
        self.check_line(line)
        if self._disowned:
            return
        self._check_usable()
        self._pull()
        v = 1 if value else 0
        if self._dir[line] == DIR_OUT and not self._hold:
            fd, bit = self._where(line)
            try:
                U.set_values(fd, v << bit, 1 << bit)
            except OSError as e:
                raise self._fail("set value", e) from e
            k = line // U.GPIO_V2_LINES_MAX
            self._hw[k][1][bit] = v
        self._out[line] = v
        self._notify(line, "guest")

    def set_edge(self, line: int, edge: str) -> None:
        self.check_line(line)
        if edge not in EDGES:
            raise ValueError(f"bad edge {edge!r}")
        if self._disowned:
            return
        self._pull()
        old = self._edge[line]
        self._edge[line] = edge
        try:
            self._apply()
        except BackendError:
            self._edge[line] = old
            raise
        self._notify(line, "guest")

    def fileno(self) -> int | None:
        return self._epoll.fileno() if self._epoll is not None else None

    def read_events(self) -> list[tuple[int, int]]:
        if self._epoll is None or self._disowned:
            return []
        out: list[tuple[int, int]] = []
        for fd, mask in self._epoll.poll(0):
            if fd == self._efd:
                try:
                    os.eventfd_read(fd)
                except OSError:
                    pass
                self._pull()
                continue
            if self._gone:
                continue
            k = next((k for k, (f, _) in enumerate(self._reqs) if f == fd), None)
            if k is None:
                continue
            try:
                evs = U.read_events(fd)
            except OSError as e:
                self._fail("reading edge events", e)
                if not self._gone:          # another error: stop polling this fd
                    log.warning("gpiochip %s: %s; edge events off", self.path, e)
                    self._epoll.unregister(fd)
                continue
            if mask & (select.EPOLLHUP | select.EPOLLERR) and not evs:
                self._fail("poll", OSError(errno.ENODEV, "hang-up"))
                continue
            g = self._reqs[k][1]
            base = k * U.GPIO_V2_LINES_MAX
            for ev in evs:
                try:
                    i = base + g.index(ev.offset)
                except ValueError:
                    continue
                out.append((i, 1 if ev.id == U.GPIO_V2_LINE_EVENT_RISING_EDGE else 0))
                self._notify(i, "chip", out[-1][1])
        return out

    def reset_lines(self) -> None:
        if self._disowned:
            return
        self._pull()
        n = len(self._offsets)
        self._dir, self._out, self._edge = [DIR_IN] * n, [0] * n, [EDGE_NONE] * n
        if self._gone:
            return                       # nothing to release on a chip that is gone
        try:
            self._apply()
        except BackendError as e:
            log.error("gpiochip %s: reset failed: %s", self.path, e)
            return
        for i in range(n):
            self._notify(i, "reset")

    def line_info(self, line: int) -> dict:
        self._pull()
        d = super().line_info(line)
        d["edge"] = self._edge[line]
        return d

    # ---- control-socket watching (read-only) ------------------------------------------
    def add_watcher(self, cb: Callable[[dict], None]) -> None:
        """Call ``cb(info)`` after every change the guest makes (source "guest"/"reset")
        and every input edge the chip reports (source "chip", only on lines whose edge
        detection the guest armed). Runs on the loop thread."""
        self._pull()                        # what C changed before is old news
        with self._wlock:
            self._watchers.append(cb)
            if self.line_table is not None:
                self.line_table.set_notify_fd(self._efd)

    def remove_watcher(self, cb: Callable[[dict], None]) -> None:
        with self._wlock:
            if cb in self._watchers:
                self._watchers.remove(cb)
            if not self._watchers and self.line_table is not None:
                self.line_table.set_notify_fd(-1)

    def close(self) -> None:
        """Close the request fds (the kernel releases the lines when the last reference,
        in this process or one they were handed to, is closed). Idempotent."""
        if self.line_table is not None:
            self.line_table.set_python_only(True)      # C must not touch closed fds
            self.line_table.set_notify_fd(-1)
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        reqs, self._reqs = self._reqs, []
        for fd, _ in reqs:
            try:
                os.close(fd)
            except OSError:
                pass
