"""Logging off the hot path: records are written after the reply, not inside the callback.

A register write that logs at INFO (a PM transition, a status change) used to format the
record and write it to stderr inside the libvfio-user callback, i.e. before the reply left:
the driver waited for the log line. :class:`DeferredHandler` only queues the record (the
``LogRecord`` is built by the logging module either way) and asks the server's loop to write
the queue out once the current callback has returned, so the cost lands after the reply.

* ERROR and above are written at once (they may precede a crash; ordering kept: the queue is
  flushed first).
* The queue is bounded: past ``limit`` records it is flushed on the spot (a log storm degrades
  to synchronous logging, never to unbounded memory).
* ``flush()`` is what ``logging.shutdown`` calls at exit, so nothing queued is lost on a
  clean stop.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

#: Seconds between the first queued record and the write of the batch. Long enough that the
#: write does not run while the driver waits for the next reply (on one CPU, work the server
#: does right after a reply delays the client all the same), short enough for a human tail.
FLUSH_DELAY = 0.05

_IMMUTABLE = frozenset((int, float, str, bytes, bool, type(None)))


class DeferredHandler(logging.Handler):
    """Queue records; write them through ``target`` when the scheduler runs ``flush``.

    ``schedule(fn)`` must run ``fn`` soon, after the current work (the server passes
    ``lambda fn: loop.call_later(0, fn)``); until :meth:`set_scheduler` is called records are
    written at once."""

    def __init__(self, target: logging.Handler, limit: int = 1000) -> None:
        super().__init__(level=target.level)
        self.target = target
        self.limit = limit
        self._queue: list[logging.LogRecord] = []
        self._scheduled = False
        self._schedule: Callable[[Callable[[], None]], object] | None = None

    def set_scheduler(self, schedule: Callable[[Callable[[], None]], object] | None) -> None:
        """Where deferred flushes run (None: write every record at once)."""
        self.flush()
        self._schedule = schedule

    def emit(self, record: logging.LogRecord) -> None:
        if self._schedule is None or record.levelno >= logging.ERROR:
            self.flush()
            self.target.handle(record)
            return
        if record.exc_info and not record.exc_text:
            record.exc_text = self.target.formatter.formatException(record.exc_info) \
                if self.target.formatter else logging.Formatter().formatException(record.exc_info)
        args = record.args
        if args and not (type(args) is tuple and all(type(a) in _IMMUTABLE for a in args)):
            record.msg, record.args = record.getMessage(), None   # may change before the write
        self._queue.append(record)
        self._queued()

    def defer_call(self, logger: logging.Logger, level: int, msg, args) -> None:
        """Queue a logging call itself (see :func:`install`): the record is built at flush,
        with this moment's timestamp."""
        self._queue.append((logger, level, msg, args, time.time_ns()))
        self._queued()

    def _queued(self) -> None:
        """Something was queued: write now when the queue is full, else make sure a flush is
        scheduled (written at once if scheduling fails)."""
        if len(self._queue) >= self.limit:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            try:
                self._schedule(self._flush_scheduled)
            except Exception:
                self._scheduled = False
                self.flush()

    def _flush_scheduled(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        q, self._queue = self._queue, []
        for r in q:
            if type(r) is tuple:
                logger, level, msg, args, t_ns = r
                r = logger.makeRecord(logger.name, level, "(unknown file)", 0, msg, args, None)
                r.created = t_ns / 1e9
                r.msecs = (t_ns // 1_000_000) % 1000
                r.relativeCreated = (t_ns / 1e6) - logging._startTime * 1000
            self.target.handle(r)
        self.target.flush()

    def close(self) -> None:
        self.flush()
        self.target.close()
        super().close()


_ACTIVE: DeferredHandler | None = None
_ORIG_LOG = logging.Logger._log
_PLAIN: dict[int, bool] = {}


def _plain(logger: logging.Logger) -> bool:
    """True when the logger's records reach only the root's handlers, unfiltered."""
    c = logger
    while c is not None:
        if c.filters or (c.handlers and c.parent is not None) or \
                (not c.propagate and c.parent is not None):
            return False
        c = c.parent
    return True


def _deferred_log(self, level, msg, args, exc_info=None, extra=None, stack_info=False,
                  stacklevel=1):
    """``Logger._log`` while a DeferredHandler is active: a plain INFO/WARNING/DEBUG call
    (no exception, extra or stack) is queued as it is, and its LogRecord is built after the
    reply; everything else takes the normal path."""
    h = _ACTIVE
    if (h is None or h._schedule is None or level >= logging.ERROR or exc_info or extra
            or stack_info):
        return _ORIG_LOG(self, level, msg, args, exc_info, extra, stack_info, stacklevel)
    plain = _PLAIN.get(id(self))
    if plain is None:
        plain = _PLAIN[id(self)] = _plain(self)
    if not plain or (args and not (type(args) is tuple
                                   and all(type(a) in _IMMUTABLE for a in args))):
        return _ORIG_LOG(self, level, msg, args, exc_info, extra, stack_info, stacklevel)
    h.defer_call(self, level, msg, args)


def install(level: str, fmt: str) -> DeferredHandler:
    """Configure the root logger like ``logging.basicConfig(level, format)`` with a
    deferred stderr handler; returns it (call :meth:`DeferredHandler.set_scheduler`)."""
    # The format names no caller, thread or process: skip collecting them for every record
    # (findCaller walks the stack; the logging docs list these switches for speed).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    target = logging.StreamHandler()
    target.setFormatter(logging.Formatter(fmt))
    handler = DeferredHandler(target)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Not even the LogRecord is built inside a callback: plain calls are queued as they are
    # (the record is made at flush, with the call's timestamp).
    global _ACTIVE
    _ACTIVE = handler
    _PLAIN.clear()
    logging.Logger._log = _deferred_log
    return handler
