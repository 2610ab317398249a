"""A vfio-user client for tests and benchmarks.

Written from QEMU's ``docs/interop/vfio-user.rst`` (the "vfio-user Protocol
Specification"); section names below refer to it. One request is outstanding at a
time: every request waits for its reply. The server is not trusted: every receive
is bounded by ``timeout`` (TimeoutError), replies are checked against the request,
and server-initiated commands (DMA_READ/DMA_WRITE) are served from the client's own
mapping of fd-backed DMA regions, or refused with an error reply, never left hanging.
"""

from __future__ import annotations

import array
import errno as _errno
import json
import os
import select
import socket
import struct
import time

from vfio_virtio_kit import vfio_user_spec as U
from vfio_virtio_kit.vfio_user_msgs import (
    DeviceInfo, DmaWindow, IrqInfo, Message, RegionInfo, ServerDisconnected,
    VfioUserError, VfioUserProtocolError, build_header, parse_region_caps)

__all__ = ["VfioUserClient", "VfioUserError", "VfioUserProtocolError", "ServerDisconnected",
           "Message", "RegionInfo", "DeviceInfo", "IrqInfo", "build_header"]

_ACCESS_REQ = struct.Struct("<HHIIIQII")   # header + REGION_ACCESS in one pack
_CMSG_FDS = 64                              # most fds accepted in one server message
_ANCBUF = socket.CMSG_SPACE(_CMSG_FDS * 4)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)


class VfioUserClient:
    """Client end of one vfio-user connection (spec "Client/server interactions").

    ``negotiate=False`` leaves the VFIO_USER_VERSION exchange to the caller (hostile
    client tests); ``caps`` replaces the capability object sent in it.
    """

    def __init__(self, path: str, timeout: float = 5.0, *, negotiate: bool = True,
                 caps: dict | None = None, max_msg_fds: int = 8,
                 max_data_xfer_size: int = U.VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE) -> None:
        self.path = path
        self.timeout = timeout
        self.max_msg_fds = max_msg_fds
        self.max_data_xfer_size = max_data_xfer_size
        self.server_version: tuple[int, int] | None = None
        self.server_caps: dict = {}
        self.server_max_msg_fds = 1                           # spec "Version": default 1
        self.server_max_data_xfer_size = U.VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE
        self._msg_id = 0
        self._buf = bytearray(max_data_xfer_size + 4096)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._fds: list[int] = []
        self._dma: list[DmaWindow] = []
        self._acc = bytearray(_ACCESS_REQ.size)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            # Blocking socket with kernel timeouts: no extra poll() per call.
            self._sock.settimeout(None)
            tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            if negotiate:
                self.negotiate(caps=caps)
        except BaseException:
            self._sock.close()
            raise

    # ---- connection -----------------------------------------------------------
    def __enter__(self) -> "VfioUserClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        """The socket's fd (for select/poll in tests)."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket, the client's DMA mappings and any unclaimed fds."""
        for w in self._dma:
            w.close()
        self._dma.clear()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._sock.close()

    def negotiate(self, major: int = U.VFIO_USER_MAJOR, minor: int = U.VFIO_USER_MINOR,
                  caps: dict | None = None) -> dict:
        """VFIO_USER_VERSION (spec "Version"): send our version and capabilities,
        check and record the server's. Returns the server's capability object."""
        if caps is None:
            caps = {"max_msg_fds": self.max_msg_fds,
                    "max_data_xfer_size": self.max_data_xfer_size}
        data = json.dumps({"capabilities": caps}).encode() + b"\0"
        msg = self.request(U.VFIO_USER_VERSION, U.VERSION.pack(major, minor) + data)
        if len(msg.payload) < U.VERSION.size:
            raise VfioUserProtocolError("short VERSION reply")
        smajor, sminor = U.VERSION.unpack_from(msg.payload)
        if smajor != major or sminor > minor:
            raise VfioUserProtocolError(f"server answered version {smajor}.{sminor}")
        raw = msg.payload[U.VERSION.size:].rstrip(b"\0")
        try:
            obj = json.loads(raw) if raw else {}
            scaps = obj.get("capabilities", {}) if isinstance(obj, dict) else None
            if not isinstance(scaps, dict):
                raise ValueError("capabilities is not an object")
        except ValueError as e:
            raise VfioUserProtocolError(f"bad VERSION JSON: {e}") from None
        self.server_version = (smajor, sminor)
        self.server_caps = scaps
        self.server_max_msg_fds = int(scaps.get("max_msg_fds", 1))
        self.server_max_data_xfer_size = int(
            scaps.get("max_data_xfer_size", U.VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE))
        return scaps

    # ---- raw message layer ----------------------------------------------------
    def next_msg_id(self) -> int:
        """A fresh message id (u16, wraps)."""
        self._msg_id = (self._msg_id + 1) & 0xFFFF
        return self._msg_id

    def send_raw(self, data: bytes | bytearray | memoryview, fds: tuple[int, ...] | list[int] = ()) -> None:
        """Send bytes exactly as given (header included), fds as SCM_RIGHTS."""
        try:
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                sent = self._sock.sendmsg([data], anc)
                if sent < len(data):
                    self._sock.sendall(memoryview(data)[sent:])
            else:
                self._sock.sendall(data)
        except BlockingIOError:
            raise TimeoutError(f"vfio-user send timed out after {self.timeout}s") from None

    def recv_reply(self) -> Message:
        """Receive the next message from the server as is (no error raised for the
        Error flag; server commands are returned, not served)."""
        return Message(*self._recv())

    def request(self, command: int, payload: bytes = b"", fds: tuple[int, ...] | list[int] = (),
                no_reply: bool = False) -> Message:
        """Send one command and return its checked reply (None-payload if no_reply)."""
        mid = self.next_msg_id()
        flags = U.VFIO_USER_F_NO_REPLY if no_reply else 0
        self.send_raw(build_header(mid, command, U.HEADER_SIZE + len(payload), flags) + payload, fds)
        if no_reply:
            return Message(mid, command, U.VFIO_USER_F_TYPE_REPLY, 0, b"", [])
        return Message(*self._wait_reply(mid, command))

    def wait_closed(self, timeout: float | None = None) -> bool:
        """True if the server closes the connection within ``timeout``; False if
        it sends data instead or stays silent."""
        r, _, _ = select.select([self._sock], [], [], self.timeout if timeout is None else timeout)
        if not r:
            return False
        try:
            return self._sock.recv(1, socket.MSG_PEEK) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    def serve(self, timeout: float, count: int | None = None) -> int:
        """Serve server-initiated commands until ``count`` were served or none came
        for ``timeout`` s; returns how many were served."""
        n = 0
        while count is None or n < count:
            if self._end - self._start < U.HEADER_SIZE:
                r, _, _ = select.select([self._sock], [], [], timeout)
                if not r:
                    return n
            m = self._recv()
            if m[2] & U.VFIO_USER_F_TYPE_MASK != U.VFIO_USER_F_TYPE_COMMAND:
                self._close_fds(m[5])
                raise VfioUserProtocolError(f"unsolicited reply id {m[0]}")
            self._serve_command(m)
            n += 1
        return n

    # ---- receive path ---------------------------------------------------------
    def _fill(self, need: int, deadline: float) -> None:
        if self._start and len(self._buf) - self._start < need:
            n = self._end - self._start
            self._buf[0:n] = self._view[self._start:self._end]
            self._start, self._end = 0, n
        if len(self._buf) < need:
            raise VfioUserProtocolError(f"server message of {need} bytes exceeds limit")
        if time.monotonic() > deadline:
            raise TimeoutError(f"vfio-user reply not complete after {self.timeout}s")
        try:
            n, anc, mflags, _ = self._sock.recvmsg_into([self._view[self._end:]], _ANCBUF)
        except BlockingIOError:
            raise TimeoutError(f"no vfio-user reply within {self.timeout}s") from None
        except ConnectionResetError:
            raise ServerDisconnected("server reset the connection") from None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fa = array.array("i")
                fa.frombytes(data[:len(data) - len(data) % 4])
                self._fds.extend(fa)
        if mflags & _MSG_CTRUNC:
            raise VfioUserProtocolError("server sent more fds than accepted")
        if n == 0:
            raise ServerDisconnected("server closed the connection")
        self._end += n

    def _recv(self) -> tuple[int, int, int, int, bytes, list[int]]:
        deadline = time.monotonic() + self.timeout
        while self._end - self._start < U.HEADER_SIZE:
            self._fill(U.HEADER_SIZE, deadline)
        mid, cmd, size, flags, err = U.HEADER.unpack_from(self._buf, self._start)
        if size < U.HEADER_SIZE:
            raise VfioUserProtocolError(f"message size {size} < header")
        while self._end - self._start < size:
            self._fill(size, deadline)
        payload = bytes(self._view[self._start + U.HEADER_SIZE:self._start + size])
        self._start += size
        if self._start == self._end:
            self._start = self._end = 0
        fds, self._fds = self._fds, []
        return mid, cmd, flags, err, payload, fds

    def _wait_reply(self, mid: int, command: int) -> tuple[int, int, int, int, bytes, list[int]]:
        while True:
            m = self._recv()
            if m[2] & U.VFIO_USER_F_TYPE_MASK == U.VFIO_USER_F_TYPE_COMMAND:
                self._serve_command(m)
                continue
            if m[2] & U.VFIO_USER_F_TYPE_MASK != U.VFIO_USER_F_TYPE_REPLY or m[0] != mid or m[1] != command:
                self._close_fds(m[5])
                raise VfioUserProtocolError(
                    f"expected reply to id {mid} cmd {command}, got id {m[0]} cmd {m[1]} flags {m[2]:#x}")
            if m[2] & U.VFIO_USER_F_ERROR:
                self._close_fds(m[5])
                raise VfioUserError(m[3] or _errno.EINVAL, command)
            return m

    @staticmethod
    def _close_fds(fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)

    def _reply(self, m: tuple, payload: bytes = b"", error: int = 0) -> None:
        if m[2] & U.VFIO_USER_F_NO_REPLY:
            return
        flags = U.VFIO_USER_F_TYPE_REPLY | (U.VFIO_USER_F_ERROR if error else 0)
        if error:
            payload = b""
        self.send_raw(build_header(m[0], m[1], U.HEADER_SIZE + len(payload), flags, error) + payload)

    def _serve_command(self, m: tuple) -> None:
        """Serve DMA_READ/DMA_WRITE (spec "VFIO_USER_DMA_READ/WRITE") from our own
        mapping of the DMA window; anything else is refused with an error reply."""
        mid, cmd, flags, err, payload, fds = m
        self._close_fds(fds)
        if cmd not in (U.VFIO_USER_DMA_READ, U.VFIO_USER_DMA_WRITE):
            self._reply(m, error=_errno.ENOTSUP)
            return
        if len(payload) < U.DMA_ACCESS.size:
            self._reply(m, error=_errno.EINVAL)
            return
        addr, count = U.DMA_ACCESS.unpack_from(payload)
        if count > self.max_data_xfer_size:
            self._reply(m, error=_errno.EINVAL)
            return
        write = cmd == U.VFIO_USER_DMA_WRITE
        if write and len(payload) != U.DMA_ACCESS.size + count:
            self._reply(m, error=_errno.EINVAL)
            return
        for w in self._dma:
            if w.mm is not None and w.iova <= addr and addr + count <= w.iova + w.size:
                off = addr - w.iova
                if write:
                    if not w.prot & U.VFIO_USER_F_DMA_REGION_WRITE:
                        break
                    w.mm[off:off + count] = payload[U.DMA_ACCESS.size:]
                    self._reply(m, U.DMA_ACCESS.pack(addr, count))
                else:
                    self._reply(m, U.DMA_ACCESS.pack(addr, count) + w.mm[off:off + count])
                return
        self._reply(m, error=_errno.EFAULT)

    # ---- device API -----------------------------------------------------------
    def device_info(self) -> DeviceInfo:
        """VFIO_USER_DEVICE_GET_INFO -> (flags, num_regions, num_irqs)."""
        r = self.request(U.VFIO_USER_DEVICE_GET_INFO, U.DEVICE_INFO.pack(U.DEVICE_INFO.size, 0, 0, 0))
        r.require(U.DEVICE_INFO.size)
        _, flags, nreg, nirq = U.DEVICE_INFO.unpack_from(r.payload)
        return DeviceInfo(flags, nreg, nirq)

    def region_info(self, index: int, argsz: int = U.REGION_INFO.size) -> RegionInfo:
        """VFIO_USER_DEVICE_GET_REGION_INFO; asks again with the argsz the server
        states when the capability chain did not fit. The caller owns ``.fd``."""
        for _ in range(2):
            r = self.request(U.VFIO_USER_DEVICE_GET_REGION_INFO,
                             U.REGION_INFO.pack(argsz, 0, index, 0, 0, 0))
            r.require(U.REGION_INFO.size)
            rargsz, flags, ridx, cap_off, size, offset = U.REGION_INFO.unpack_from(r.payload)
            if argsz < rargsz <= 65536:
                self._close_fds(r.fds)
                argsz = rargsz
                continue
            break
        if ridx != index:
            self._close_fds(r.fds)
            raise VfioUserProtocolError(f"region info for {ridx}, asked {index}")
        caps = parse_region_caps(r.payload, cap_off) if flags & U.VFIO_REGION_INFO_FLAG_CAPS else []
        fd = r.fds[0] if r.fds else None
        self._close_fds(r.fds[1:])
        return RegionInfo(index, flags, cap_off, size, offset, fd, rargsz, caps)

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        """VFIO_USER_REGION_READ: ``count`` bytes at ``offset`` of region ``index``."""
        mid = self.next_msg_id()
        _ACCESS_REQ.pack_into(self._acc, 0, mid, U.VFIO_USER_REGION_READ, _ACCESS_REQ.size,
                              0, 0, offset, index, count)
        self.send_raw(self._acc)
        p = self._wait_reply(mid, U.VFIO_USER_REGION_READ)[4]
        if len(p) != U.REGION_ACCESS.size + count or U.REGION_ACCESS.unpack_from(p)[2] != count:
            raise VfioUserProtocolError(f"REGION_READ reply of {len(p)} bytes for count {count}")
        return p[U.REGION_ACCESS.size:]

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        """VFIO_USER_REGION_WRITE, waiting for the server's acknowledgement."""
        mid = self.next_msg_id()
        n = len(data)
        _ACCESS_REQ.pack_into(self._acc, 0, mid, U.VFIO_USER_REGION_WRITE, _ACCESS_REQ.size + n,
                              0, 0, offset, index, n)
        self.send_raw(bytes(self._acc) + data)
        p = self._wait_reply(mid, U.VFIO_USER_REGION_WRITE)[4]
        if len(p) < U.REGION_ACCESS.size or U.REGION_ACCESS.unpack_from(p)[2] != n:
            raise VfioUserProtocolError("REGION_WRITE reply does not acknowledge the count")

    def cfg_read(self, offset: int, count: int) -> bytes:
        """Read PCI config space (region VFIO_PCI_CONFIG_REGION_INDEX)."""
        return self.region_read(U.VFIO_PCI_CONFIG_REGION_INDEX, offset, count)

    def cfg_write(self, offset: int, data: bytes) -> None:
        """Write PCI config space."""
        self.region_write(U.VFIO_PCI_CONFIG_REGION_INDEX, offset, data)

    def cfg_read8(self, offset: int) -> int:
        return self.cfg_read(offset, 1)[0]

    def cfg_read16(self, offset: int) -> int:
        return int.from_bytes(self.cfg_read(offset, 2), "little")

    def cfg_read32(self, offset: int) -> int:
        return int.from_bytes(self.cfg_read(offset, 4), "little")

    def cfg_write16(self, offset: int, value: int) -> None:
        self.cfg_write(offset, value.to_bytes(2, "little"))

    def cfg_write32(self, offset: int, value: int) -> None:
        self.cfg_write(offset, value.to_bytes(4, "little"))

    def dma_map(self, iova: int, size: int, fd: int | None, offset: int = 0,
                prot: int = U.VFIO_USER_F_DMA_REGION_READ | U.VFIO_USER_F_DMA_REGION_WRITE) -> None:
        """VFIO_USER_DMA_MAP of [iova, iova+size) backed by ``fd`` at ``offset``
        (the fd is duplicated by the kernel on send; the caller keeps its own)."""
        self.request(U.VFIO_USER_DMA_MAP, U.DMA_MAP.pack(U.DMA_MAP.size, prot, offset, iova, size),
                     (fd,) if fd is not None else ())
        self._dma.append(DmaWindow.open(iova, size, fd, offset, prot))

    def dma_unmap(self, iova: int, size: int, flags: int = 0) -> None:
        """VFIO_USER_DMA_UNMAP of a window given exactly as mapped."""
        self.request(U.VFIO_USER_DMA_UNMAP, U.DMA_UNMAP.pack(U.DMA_UNMAP.size, flags, iova, size))
        for w in [w for w in self._dma if (w.iova, w.size) == (iova, size)
                  or flags & U.VFIO_DMA_UNMAP_FLAG_ALL]:
            w.close()
            self._dma.remove(w)

    def irq_info(self, index: int) -> IrqInfo:
        """VFIO_USER_DEVICE_GET_IRQ_INFO -> (flags, count)."""
        r = self.request(U.VFIO_USER_DEVICE_GET_IRQ_INFO, U.IRQ_INFO.pack(U.IRQ_INFO.size, 0, index, 0))
        r.require(U.IRQ_INFO.size)
        _, flags, ridx, count = U.IRQ_INFO.unpack_from(r.payload)
        if ridx != index:
            raise VfioUserProtocolError(f"irq info for {ridx}, asked {index}")
        return IrqInfo(flags, count)

    def set_irqs(self, index: int, start: int = 0, fds: list[int] | tuple[int, ...] = (),
                 action: int = U.VFIO_IRQ_SET_ACTION_TRIGGER, *, count: int | None = None,
                 data: bytes | None = None, flags: int | None = None) -> None:
        """VFIO_USER_DEVICE_SET_IRQS (spec section of that name).

        fds given: DATA_EVENTFD, count = len(fds) (sent in chunks of the server's
        max_msg_fds). ``data`` given: DATA_BOOL. Neither: DATA_NONE with ``count``
        (default 0: with start 0 and ACTION_TRIGGER this disables the whole index).
        ``flags`` overrides the computed flags word (hostile tests).
        """
        if fds and flags is None:
            step = max(1, self.server_max_msg_fds)
            for i in range(0, len(fds), step):
                chunk = list(fds[i:i + step])
                self.request(U.VFIO_USER_DEVICE_SET_IRQS, U.IRQ_SET.pack(
                    U.IRQ_SET.size, U.VFIO_IRQ_SET_DATA_EVENTFD | action, index, start + i,
                    len(chunk)), chunk)
            return
        if flags is None:
            flags = (U.VFIO_IRQ_SET_DATA_BOOL if data is not None else U.VFIO_IRQ_SET_DATA_NONE) | action
        if count is None:
            count = len(data) if data is not None else len(fds)
        body = data or b""
        self.request(U.VFIO_USER_DEVICE_SET_IRQS,
                     U.IRQ_SET.pack(U.IRQ_SET.size + len(body), flags, index, start, count) + body,
                     list(fds))

    def disable_irqs(self, index: int) -> None:
        """DATA_NONE|ACTION_TRIGGER, start 0, count 0: disable every IRQ of ``index``."""
        self.set_irqs(index, 0, (), U.VFIO_IRQ_SET_ACTION_TRIGGER, count=0)

    def mask_irq(self, index: int, sub: int, mask: bool = True) -> None:
        """DATA_NONE with ACTION_MASK (or ACTION_UNMASK) for one sub-index."""
        act = U.VFIO_IRQ_SET_ACTION_MASK if mask else U.VFIO_IRQ_SET_ACTION_UNMASK
        self.set_irqs(index, sub, (), act, count=1)

    def device_reset(self) -> None:
        """VFIO_USER_DEVICE_RESET (no payload either way)."""
        self.request(U.VFIO_USER_DEVICE_RESET)
