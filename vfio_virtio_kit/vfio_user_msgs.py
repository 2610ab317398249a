"""Value types and errors of the vfio-user client (see vfio_user.py)."""

from __future__ import annotations

import errno as _errno
import mmap
import os
from dataclasses import dataclass, field
from typing import NamedTuple

from vfio_virtio_kit import vfio_user_spec as U


class VfioUserError(OSError):
    """The server answered a command with the Error flag (spec "Header": the Error
    field holds a UNIX errno; 0 is reported as EINVAL)."""

    def __init__(self, errno: int, command: int) -> None:
        name = U.COMMAND_NAMES.get(command, f"command {command}")
        super().__init__(errno, f"{name} failed: {os.strerror(errno)}")
        self.command = command


class VfioUserProtocolError(OSError):
    """The server sent something the protocol does not allow (EPROTO)."""

    def __init__(self, what: str) -> None:
        super().__init__(_errno.EPROTO, what)


class ServerDisconnected(ConnectionError):
    """The server closed or reset the connection."""


def build_header(msg_id: int, command: int, msg_size: int, flags: int = 0, error: int = 0) -> bytes:
    """The 16-byte header of spec "Header" (no range checks: tests build bad ones)."""
    return U.HEADER.pack(msg_id & 0xFFFF, command & 0xFFFF, msg_size & 0xFFFFFFFF,
                         flags & 0xFFFFFFFF, error & 0xFFFFFFFF)


@dataclass(slots=True)
class Message:
    """One message as received: header fields, payload after the header, fds."""

    msg_id: int
    command: int
    flags: int
    error_no: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def is_reply(self) -> bool:
        return self.flags & U.VFIO_USER_F_TYPE_MASK == U.VFIO_USER_F_TYPE_REPLY

    @property
    def is_error(self) -> bool:
        return bool(self.flags & U.VFIO_USER_F_ERROR)

    def require(self, n: int) -> None:
        """Raise VfioUserProtocolError if the payload is shorter than ``n``."""
        if len(self.payload) < n:
            for fd in self.fds:
                os.close(fd)
            raise VfioUserProtocolError(
                f"{U.COMMAND_NAMES.get(self.command, self.command)} reply of {len(self.payload)} bytes < {n}")


class DeviceInfo(NamedTuple):
    flags: int
    num_regions: int
    num_irqs: int


class IrqInfo(NamedTuple):
    flags: int
    count: int


@dataclass
class RegionInfo:
    """Reply to VFIO_USER_DEVICE_GET_REGION_INFO. ``fd`` (mmap-able regions only)
    belongs to the caller: close it with ``close()``."""

    index: int
    flags: int
    cap_offset: int
    size: int
    offset: int
    fd: int | None
    argsz: int = 0
    caps: list[tuple[int, int, bytes]] = field(default_factory=list)  # (id, version, body)

    @property
    def readable(self) -> bool:
        return bool(self.flags & U.VFIO_REGION_INFO_FLAG_READ)

    @property
    def writable(self) -> bool:
        return bool(self.flags & U.VFIO_REGION_INFO_FLAG_WRITE)

    @property
    def mmappable(self) -> bool:
        return bool(self.flags & U.VFIO_REGION_INFO_FLAG_MMAP)

    def sparse_areas(self) -> list[tuple[int, int]]:
        """(offset, size) pairs of a VFIO_REGION_INFO_CAP_SPARSE_MMAP capability."""
        for cid, _ver, body in self.caps:
            if cid == U.VFIO_REGION_INFO_CAP_SPARSE_MMAP and len(body) >= U.SPARSE_MMAP_HEADER.size:
                n, _ = U.SPARSE_MMAP_HEADER.unpack_from(body)
                n = min(n, (len(body) - U.SPARSE_MMAP_HEADER.size) // U.SPARSE_MMAP_AREA.size)
                return [U.SPARSE_MMAP_AREA.unpack_from(body, U.SPARSE_MMAP_HEADER.size + i * 16)
                        for i in range(n)]
        return []

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def parse_region_caps(payload: bytes, cap_offset: int) -> list[tuple[int, int, bytes]]:
    """Walk the VFIO capability chain of a region-info reply (offsets relative to
    the start of the region info structure; bounded, loop-safe)."""
    caps: list[tuple[int, int, bytes]] = []
    off, seen = cap_offset, set()
    while off and off not in seen and off + U.INFO_CAP_HEADER.size <= len(payload) and len(caps) < 64:
        seen.add(off)
        cid, ver, nxt = U.INFO_CAP_HEADER.unpack_from(payload, off)
        end = nxt if off < nxt <= len(payload) else len(payload)
        caps.append((cid, ver, bytes(payload[off + U.INFO_CAP_HEADER.size:end])))
        off = nxt
    return caps


@dataclass
class DmaWindow:
    """A window this client mapped; ``mm`` is the client's own view of it (used to
    serve DMA_READ/DMA_WRITE from the server), None when not mappable here."""

    iova: int
    size: int
    prot: int
    mm: mmap.mmap | None

    @classmethod
    def open(cls, iova: int, size: int, fd: int | None, offset: int, prot: int) -> "DmaWindow":
        mm = None
        if fd is not None and size > 0:
            try:  # only map what the file backs: touching past its end is SIGBUS
                if os.fstat(fd).st_size >= offset + size:
                    mm = mmap.mmap(fd, size, offset=offset)
            except (OSError, ValueError, OverflowError):
                mm = None
        return cls(iova, size, prot, mm)

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None
