"""Whole-message gate in front of ``vfu_run_ctx``: the loop never blocks on a client.

libvfio-user reads a message in two calls on the connection: the header (non-blocking in
``LIBVFIO_USER_FLAG_ATTACH_NB`` mode, but a *partial* header makes it drop the connection), then
the body with a blocking ``recv``. A client that sends a header and stops would freeze the one
loop (control socket, line events) until the socket timeout, and a valid request written in
two parts would be refused. So before the library is let in, the gate looks at what is queued
on the connection without consuming anything (``FIONREAD``, ``MSG_PEEK``; peeking takes no
SCM_RIGHTS fds): only when the whole announced message is there does ``admit`` say go. A
partial message waits for more bytes (an edge-triggered epoll, so no busy loop) until a
deadline; past it the connection is shut down, the library sees EOF and drops the client.

Headers the library will refuse outright (not a command, size out of range) are admitted at
once: libvfio-user (with our patch 0002) closes the connection for them without waiting.
"""
from __future__ import annotations

import fcntl
import logging
import os
import select
import socket
import struct
import termios
import time
from typing import Callable

log = logging.getLogger(__name__)

# libvfio-user's include/vfio-user.h and lib/private.h (this revision).
HEADER = struct.Struct("<HHIII")            # msg_id, command, msg_size, flags, error_no
HEADER_SIZE = HEADER.size                    # sizeof(struct vfio_user_header)
TYPE_MASK = 0xF                              # flags.type
TYPE_COMMAND = 0
MAX_DATA_XFER_SIZE = 1 << 20                 # VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE
REGION_ACCESS_SIZE = 16                      # sizeof(struct vfio_user_region_access)
SERVER_MAX_MSG_SIZE = MAX_DATA_XFER_SIZE + HEADER_SIZE + REGION_ACCESS_SIZE

_HUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_SIZE_FLAGS = struct.Struct("<II")          # msg_size, flags at offset 4
_PEEK_FLAGS = socket.MSG_PEEK | socket.MSG_DONTWAIT
PEEK_BYTES = 512                             # covers every register access message


def queued(fd: int) -> int:
    """Bytes queued for reading on stream socket ``fd`` (FIONREAD)."""
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]


def needed_from(header: bytes | bytearray) -> int:
    """How many bytes the message starting with ``header`` occupies on the stream; a header
    the library refuses needs nothing more than itself."""
    size, flags = _SIZE_FLAGS.unpack_from(header, 4)
    if flags & TYPE_MASK != TYPE_COMMAND or not HEADER_SIZE <= size <= SERVER_MAX_MSG_SIZE:
        return HEADER_SIZE
    return size


class ConnectionGate:
    """Admits the library to one connection only when a whole message is queued on it.

    ``admit(fd, reader)`` is called by ``reader``, the loop's callback for readable ``fd``.
    True: call ``vfu_run_ctx`` now (a whole message, or EOF/error, which the library handles).
    False: part of a message is queued; the gate has taken ``fd`` off the loop, and gives it
    back (and calls ``reader()``) when more bytes arrive, or at the deadline, ``timeout``
    seconds after the partial message was first seen; ``admit`` then shuts the connection
    down and says go, so that the library reads EOF and drops the client.
    """

    def __init__(self, loop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self._ep: select.epoll | None = select.epoll()   # held for the server's life
        self._fd = -1
        self._since: float | None = None
        self._timer: int | None = None
        self._watching = False
        self._reader: Callable[[], None] | None = None
        self._sock: socket.socket | None = None
        self._peek = bytearray(PEEK_BYTES)
        self.stalls = 0                      # connections dropped at the deadline

    def admit(self, fd: int, reader: Callable[[], None]) -> bool:
        if fd != self._fd:
            self.forget()
            self._fd = fd
            self._sock = socket.socket(fileno=os.dup(fd))
        # Fast path (every message of a normal client): one peek sees the whole message.
        try:
            n = self._sock.recv_into(self._peek, PEEK_BYTES, _PEEK_FLAGS)
        except OSError:
            n = 0                            # nothing queued, or an error: let it read
        if n == 0 or (n >= HEADER_SIZE and n >= needed_from(self._peek)):
            if self._since is not None:
                self._done_waiting()
            return True
        missing = self._missing(fd)
        if missing == 0:
            self._done_waiting()
            return True
        now = time.monotonic()
        if self._since is None:
            self._since = now
        if now - self._since >= self.timeout:
            self._drop(missing)
            self._done_waiting()
            return True
        self._wait(fd, reader, self._since + self.timeout - now)
        return False

    def forget(self) -> None:
        """The connection is gone (or about to be): release everything held for it."""
        self._unwatch()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._fd = -1
        self._since = None

    def close(self) -> None:
        self.forget()
        if self._ep is not None:
            self._ep.close()
            self._ep = None

    # --- internals ------------------------------------------------------------------------

    def _missing(self, fd: int) -> int:
        """Bytes still missing from the first queued message; 0 when complete, at EOF or on
        an error (the library then reads and handles it)."""
        try:
            n = queued(fd)
            if n == 0:
                return 0                     # readable with nothing queued: EOF or error
            if n < HEADER_SIZE:
                need = HEADER_SIZE
            else:
                hdr = self._sock.recv(HEADER_SIZE, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                if len(hdr) < HEADER_SIZE:   # an fd-carrying segment boundary: let it read
                    return 0
                need = needed_from(hdr)
            if n >= need or self._hung_up(fd):
                return 0
            return need - n
        except OSError:
            return 0

    def _hung_up(self, fd: int) -> bool:
        p = select.poll()
        p.register(fd, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        return bool(p.poll(0))

    def _wait(self, fd: int, reader: Callable[[], None], left: float) -> None:
        """Take ``fd`` off the loop (once per partial message) and watch it edge-triggered;
        (re)arm the deadline."""
        self._reader = reader
        if not self._watching:
            self.loop.remove_reader(fd)
            self._ep.register(fd, select.EPOLLIN | select.EPOLLET | _HUP)
            self._ep.poll(0)                 # the bytes already seen are not news
            self._watching = True
            self.loop.add_reader(self._ep.fileno(), self._on_more)
            self.loop.call_later(0, self._on_more)   # bytes that came while registering
        if self._timer is not None:
            self.loop.cancel(self._timer)
        self._timer = self.loop.call_later(max(0.0, left), self._on_more)

    def _on_more(self) -> None:
        """More bytes, a hang-up, or the deadline: let the reader ask again."""
        if not self._watching:
            return
        self._ep.poll(0)                     # consume the edge
        self._reader()

    def _done_waiting(self) -> None:
        """The wait is over: the loop watches the connection again."""
        reader = self._reader
        self._unwatch()
        if reader is not None:
            self.loop.add_reader(self._fd, reader)

    def _unwatch(self) -> None:
        self._since = None
        self._reader = None
        if self._timer is not None:
            self.loop.cancel(self._timer)
            self._timer = None
        if self._watching:
            self._watching = False
            self.loop.remove_reader(self._ep.fileno())
            try:
                self._ep.unregister(self._fd)
            except (OSError, ValueError):
                pass

    def _drop(self, missing: int) -> None:
        self.stalls += 1
        log.warning("client stalled %.1f s in the middle of a message (%d bytes missing): "
                    "dropping it", self.timeout, missing)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
