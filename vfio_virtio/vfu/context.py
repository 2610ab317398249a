"""A Pythonic libvfio-user context: one device, one client at a time.

Callbacks reach the owning :class:`Context` through libvfio-user's private pointer (an
``ffi.new_handle`` kept alive for the context's life). A Python exception inside a callback is
logged and answered with an errno reply (EIO), never a crash of the server.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from typing import Callable, Protocol

from .._buildid import CFFI_BUILD, check_build_id

try:
    from .. import _vfu
except ImportError as e:  # pragma: no cover - depends on the build
    raise ImportError(f"vfio_virtio._vfu is not built ({e}): run `make setup`") from e

ffi, lib = _vfu.ffi, _vfu.lib

_PATCHES = os.path.join(os.path.dirname(CFFI_BUILD), "scripts", "patches", "libvfio-user")
VFU_SOURCES = ([os.path.join(CFFI_BUILD, "build_vfu.py"),
                os.path.join(os.path.dirname(CFFI_BUILD), "scripts", "libvfio-user.sha256")]
               + ([os.path.join(_PATCHES, n) for n in sorted(os.listdir(_PATCHES))
                   if n.endswith(".patch")] if os.path.isdir(_PATCHES) else []))
check_build_id("vfio_virtio._vfu", ffi.string(lib.VV_VFU_BUILD_ID).decode(), VFU_SOURCES)

log = logging.getLogger("vfio_virtio.vfu")

# Region indices (libvfio-user's VFU_PCI_DEV_*_REGION_IDX).
BAR0 = lib.VFU_PCI_DEV_BAR0_REGION_IDX
CFG = lib.VFU_PCI_DEV_CFG_REGION_IDX

REGION_RW = lib.VFU_REGION_FLAG_RW
REGION_MEM = lib.VFU_REGION_FLAG_MEM

CAP_CALLBACK = lib.VFU_CAP_FLAG_CALLBACK
CAP_READONLY = lib.VFU_CAP_FLAG_READONLY

IRQ_INTX = lib.VFU_DEV_INTX_IRQ
IRQ_MSIX = lib.VFU_DEV_MSIX_IRQ

PCI_TYPE_EXPRESS = lib.VFU_PCI_TYPE_EXPRESS
PCI_TYPE_CONVENTIONAL = lib.VFU_PCI_TYPE_CONVENTIONAL

RESET_DEVICE = lib.VFU_RESET_DEVICE
RESET_LOST_CONN = lib.VFU_RESET_LOST_CONN
RESET_PCI_FLR = lib.VFU_RESET_PCI_FLR
RESET_NAMES = {RESET_DEVICE: "device", RESET_LOST_CONN: "lost-connection",
               RESET_PCI_FLR: "flr"}

_LOG_LEVELS = {lib.LOG_ERR: logging.ERROR, lib.LOG_WARNING: logging.WARNING,
               lib.LOG_INFO: logging.INFO, lib.LOG_DEBUG: logging.DEBUG}


class RegionHandler(Protocol):
    """What a region callback talks to: byte-exact reads and writes at an offset."""

    def read(self, offset: int, count: int) -> bytes: ...
    def write(self, offset: int, data: bytes) -> None: ...


def _check(ret: int, call: str) -> int:
    """Turn libvfio-user's -1/errno convention into OSError naming the call."""
    if ret < 0:
        err = ffi.errno or errno.EIO
        raise OSError(err, f"{call}: {os.strerror(err)}")
    return ret


class Context:
    """One libvfio-user context (socket transport, PCI device, non-blocking attach).

    Usage: create, ``pci_init``, ``set_ids``, regions, capabilities, IRQ counts, callbacks,
    ``realize``; then ``attach`` / ``run`` from a poll loop on ``poll_fd``; ``destroy``.
    """

    def __init__(self, socket_path: str) -> None:
        self._handle = ffi.new_handle(self)
        self._regions: dict[int, RegionHandler] = {}
        self.reset_cb: Callable[[int], None] | None = None
        self.dma_cb: Callable[[bool, int, int, int, int], None] | None = None
        self.socket_path = socket_path
        ctx = lib.vfu_create_ctx(lib.VFU_TRANS_SOCK, socket_path.encode(),
                                 lib.LIBVFIO_USER_FLAG_ATTACH_NB, self._handle,
                                 lib.VFU_DEV_TYPE_PCI)
        if ctx == ffi.NULL:
            err = ffi.errno or errno.EIO
            raise OSError(err, f"vfu_create_ctx({socket_path}): {os.strerror(err)}")
        self._ctx = ctx
        level = lib.LOG_DEBUG if log.isEnabledFor(logging.DEBUG) else lib.LOG_INFO
        _check(lib.vv_setup_log(ctx, level), "vfu_setup_log")

    # --- set-up (before realize) ---------------------------------------------------------

    def pci_init(self, express: bool = True, revision: int = 0) -> None:
        kind = PCI_TYPE_EXPRESS if express else PCI_TYPE_CONVENTIONAL
        _check(lib.vfu_pci_init(self._ctx, kind, lib.PCI_HEADER_TYPE_NORMAL, revision),
               "vfu_pci_init")

    def set_ids(self, vendor: int, device: int, subsys_vendor: int, subsys: int) -> None:
        lib.vfu_pci_set_id(self._ctx, vendor, device, subsys_vendor, subsys)

    def set_class(self, base: int, sub: int, prog_if: int) -> None:
        lib.vfu_pci_set_class(self._ctx, base, sub, prog_if)

    @property
    def config_space(self):
        """The config space buffer as a cdata ``uint8_t *`` (library-owned, 4 KiB for PCIe)."""
        p = lib.vv_config_space(self._ctx)
        if p == ffi.NULL:
            raise OSError(errno.EINVAL, "config space: vfu_pci_init not called")
        return p

    def config_view(self, size: int = 4096) -> memoryview:
        """A writable memoryview of the first ``size`` bytes of config space."""
        return memoryview(ffi.buffer(self.config_space, size)).cast("B")

    def setup_region(self, idx: int, size: int, handler: RegionHandler, flags: int) -> None:
        """Register a region whose accesses go to ``handler`` (read/write by offset)."""
        self._regions[idx] = handler
        _check(lib.vv_setup_region(self._ctx, idx, size, flags), f"vfu_setup_region({idx})")

    def add_capability(self, data: bytes, pos: int = 0, flags: int = 0) -> int:
        """Add a PCI capability (``data`` starts with its header); returns its offset."""
        buf = ffi.new("uint8_t[]", bytes(data))
        return _check(lib.vfu_pci_add_capability(self._ctx, pos, flags, buf),
                      "vfu_pci_add_capability")

    def setup_irqs(self, kind: int, count: int) -> None:
        _check(lib.vfu_setup_device_nr_irqs(self._ctx, kind, count), "vfu_setup_device_nr_irqs")

    def setup_reset(self, cb: Callable[[int], None]) -> None:
        """``cb(reset_type)`` for device reset, lost connection and FLR."""
        self.reset_cb = cb
        _check(lib.vv_setup_reset(self._ctx), "vfu_setup_device_reset_cb")

    def setup_dma(self, cb: Callable[[bool, int, int, int, int], None]) -> None:
        """``cb(mapped, iova, length, vaddr, prot)`` on every DMA map/unmap (vaddr 0: no fd)."""
        self.dma_cb = cb
        _check(lib.vv_setup_dma(self._ctx), "vfu_setup_device_dma")

    def realize(self) -> None:
        _check(lib.vfu_realize_ctx(self._ctx), "vfu_realize_ctx")

    # --- running --------------------------------------------------------------------------

    def attach(self) -> bool:
        """Accept a client if one is waiting: True when attached, False if none yet."""
        if lib.vfu_attach_ctx(self._ctx) == 0:
            return True
        if ffi.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return False
        _check(-1, "vfu_attach_ctx")
        return False

    @property
    def poll_fd(self) -> int:
        return _check(lib.vfu_get_poll_fd(self._ctx), "vfu_get_poll_fd")

    def run(self) -> int:
        """Process pending client messages. Raises ConnectionResetError when the client left."""
        ret = lib.vfu_run_ctx(self._ctx)
        if ret >= 0:
            return ret
        err = ffi.errno
        if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
            return 0
        if err in (errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE, errno.ESHUTDOWN):
            raise ConnectionResetError(err, "vfu_run_ctx: client disconnected")
        raise OSError(err, f"vfu_run_ctx: {os.strerror(err)}")

    def irq_trigger(self, vector: int) -> bool:
        """Signal interrupt ``vector``; False when the client wired no eventfd for it."""
        if lib.vfu_irq_trigger(self._ctx, vector) == 0:
            return True
        if ffi.errno in (errno.ENOENT, errno.EINVAL):
            return False
        _check(-1, "vfu_irq_trigger")
        return False

    def destroy(self) -> None:
        if self._ctx is not None:
            lib.vfu_destroy_ctx(self._ctx)
            self._ctx = None

    # --- callback entry points ------------------------------------------------------------

    def _region_access(self, idx: int, buf, count: int, offset: int, is_write: bool) -> int:
        handler = self._regions.get(idx)
        if handler is None:
            return -errno.EINVAL
        if is_write:
            handler.write(offset, ffi.buffer(buf, count)[:])
            return count
        data = handler.read(offset, count)
        if len(data) != count:
            log.error("region %d read at %#x returned %d of %d bytes", idx, offset,
                      len(data), count)
            return -errno.EIO
        ffi.memmove(buf, data, count)
        return count


def _owner(ctx) -> Context:
    return ffi.from_handle(lib.vfu_get_private(ctx))


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


@ffi.def_extern()
def vv_py_region(ctx, idx, buf, count, offset, is_write):
    try:
        return _owner(ctx)._region_access(idx, buf, count, offset, bool(is_write))
    except OSError as e:
        log.debug("region %d %s at %#x+%d refused: %s", idx, "write" if is_write else "read",
                  offset, count, e)
        return -_errno_of(e)
    except Exception:
        log.exception("region %d access at %#x+%d failed", idx, offset, count)
        return -errno.EIO


@ffi.def_extern()
def vv_py_log(ctx, level, msg):
    try:
        log.log(_LOG_LEVELS.get(level, logging.DEBUG), "libvfio-user: %s",
                ffi.string(msg).decode(errors="replace"))
    except Exception:  # logging must never take the server down
        pass


@ffi.def_extern()
def vv_py_reset(ctx, kind):
    try:
        owner = _owner(ctx)
        if owner.reset_cb is not None:
            owner.reset_cb(int(kind))
        return 0
    except Exception as e:
        log.exception("reset (%s) failed", RESET_NAMES.get(kind, kind))
        return -_errno_of(e)


def _past_end_of_file(vaddr: int, length: int) -> bool:
    """True when part of host [vaddr, vaddr+length) maps pages past the end of the file that
    backs it: touching them raises SIGBUS, which would kill the server. A client can send a
    DMA map larger than its fd (libvfio-user mmaps it without a size check). Best effort:
    False when it cannot be told (no /proc access to the mapping's file)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                rng, _perms, off = line.split(None, 3)[:3]
                lo, hi = (int(x, 16) for x in rng.split("-"))
                if lo <= vaddr < hi:
                    st = os.stat(f"/proc/self/map_files/{rng}")
                    return (stat.S_ISREG(st.st_mode)
                            and int(off, 16) + (vaddr - lo) + length > st.st_size)
    except (OSError, ValueError):
        pass
    return False


@ffi.def_extern()
def vv_py_dma(ctx, mapped, info):
    try:
        owner = _owner(ctx)
        if owner.dma_cb is not None:
            vaddr = int(ffi.cast("uintptr_t", info.vaddr))
            if mapped and vaddr and _past_end_of_file(vaddr, int(info.iova.iov_len)):
                log.warning("DMA map iova=%#x len=%#x extends past the end of its file: "
                            "refused (the device will not access it)",
                            int(ffi.cast("uintptr_t", info.iova.iov_base)),
                            int(info.iova.iov_len))
                return
            owner.dma_cb(bool(mapped), int(ffi.cast("uintptr_t", info.iova.iov_base)),
                         int(info.iova.iov_len), vaddr, int(info.prot))
    except Exception:
        log.exception("DMA %s callback failed", "map" if mapped else "unmap")
