"""Split virtqueue, device side (virtio 1.3 section 2.7): the Python-facing API.

Knows nothing of PCI or of any device type. Two implementations of the same ring logic: C
(``vfio_virtio._virtq``, one call per batch, no Python on the path) and pure Python
(:mod:`vfio_virtio.virtio.ring_py`); pick one per queue with ``impl="c"|"py"``, default
from the environment variable ``VFIO_VIRTIO_RING``, else ``"c"``.

Chains hold host addresses of guest buffers. They are valid only while the DmaTable's
generation is unchanged: :meth:`Chain.read` / :meth:`Chain.write` raise OSError(EFAULT)
after any DMA map or unmap; the device then completes the chain with length 0 (or drops it
if the queue was reset). :meth:`Virtqueue.chain_at` re-walks a chain afresh.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct

from vfio_virtio.dma import DmaTable, ffi, lib
from vfio_virtio.virtio import ring_spec as R
from vfio_virtio.virtio.ring_py import PyRing, RawChain

_CHAIN = struct.Struct("<IiIIII")
_IOV = struct.Struct("<QQII")
_STATE_FIELDS = ("size", "desc_addr", "driver_addr", "device_addr", "enabled", "event_idx",
                 "indirect", "last_avail_idx", "used_idx", "signalled_used",
                 "signalled_used_valid", "broken")
_BOOL_FIELDS = ("enabled", "event_idx", "indirect", "signalled_used_valid")


class Chain:
    """One descriptor chain popped from the available ring (2.7.5).

    ``iovs`` is a tuple of (host_addr, iova, len, writable) with writable 0 or 1, readable
    buffers first; it is empty when ``error`` is set."""

    __slots__ = ("head", "error", "readable_len", "writable_len", "iovs", "_dma", "_gen")

    def __init__(self, raw: RawChain, dma: DmaTable) -> None:
        self.head, self.error, self.readable_len, self.writable_len, self.iovs = raw
        self._dma = dma
        self._gen = dma._generation

    def __repr__(self) -> str:
        err = R.ERR_NAMES.get(self.error, self.error) if self.error else 0
        return (f"Chain(head={self.head}, error={err}, r={self.readable_len}, "
                f"w={self.writable_len}, iovs={len(self.iovs)})")

    def _check(self) -> None:
        if self._dma.generation != self._gen:
            raise OSError(errno.EFAULT, "chain buffers were unmapped (DMA table changed)")

    def read(self, limit: int | None = None) -> bytes:
        """Gather up to ``limit`` device-readable bytes (all when None).

        Raises OSError(EFAULT) if the DMA table changed since the chain was popped."""
        self._check()
        left = self.readable_len if limit is None else min(limit, self.readable_len)
        parts = []
        for addr, _, n, writable in self.iovs:
            if left <= 0 or writable:
                break
            k = min(n, left)
            parts.append(ctypes.string_at(addr, k))
            left -= k
        return b"".join(parts)

    def write(self, data: bytes, offset: int = 0) -> int:
        """Scatter data into the device-writable buffers from byte ``offset`` on.

        Returns the number of bytes written (short when the buffers are smaller). Raises
        OSError(EFAULT) if the DMA table changed since the chain was popped."""
        self._check()
        if offset < 0:
            raise ValueError("negative offset")
        done = 0
        for addr, _, n, writable in self.iovs:
            if not writable:
                continue
            if offset >= n:
                offset -= n
                continue
            k = min(n - offset, len(data) - done)
            if k <= 0:
                break
            ffi.memmove(ffi.cast("char *", addr + offset), data[done:done + k], k)
            done += k
            offset = 0
        return done


class CRing:
    """The C ring (struct vv_queue) behind the same interface as PyRing."""

    def __init__(self, dma: DmaTable) -> None:
        object.__setattr__(self, "dma", dma)
        object.__setattr__(self, "q", ffi.new("struct vv_queue *"))
        self.q.dma = dma.c_table
        object.__setattr__(self, "_chains", ffi.new("struct vv_chain[]", 1))
        object.__setattr__(self, "_iovs", ffi.new("struct vv_iov[]", 1))

    def __getattr__(self, name: str):
        v = getattr(self.q, name)
        return bool(v) if name in ("signalled_used_valid", "event_idx", "indirect",
                                   "enabled") else v

    def __setattr__(self, name: str, value) -> None:
        setattr(self.q, name, int(value))

    def check(self) -> int:
        return lib.vv_queue_check(self.q)

    def _arrays(self, chains: int, iovs: int):
        if len(self._chains) < chains:
            object.__setattr__(self, "_chains", ffi.new("struct vv_chain[]", chains))
        if len(self._iovs) < iovs:
            object.__setattr__(self, "_iovs", ffi.new("struct vv_iov[]", iovs))
        return self._chains, self._iovs

    def pop_batch(self, max_chains: int, max_iovs: int) -> list[RawChain]:
        chains, iovs = self._arrays(max(max_chains, 1), max(max_iovs, 1))
        n = lib.vv_pop_batch(self.q, chains, max_chains, iovs, max_iovs)
        if n < 0:
            raise ValueError(f"vv_pop_batch: {os.strerror(-n)}")
        if n == 0:
            return []
        recs = list(_CHAIN.iter_unpack(ffi.buffer(chains, _CHAIN.size * n)))
        total = sum(c[3] for c in recs)
        iraw = list(_IOV.iter_unpack(ffi.buffer(iovs, _IOV.size * total))) if total else []
        return [(h, e, rl, wl, tuple(iraw[s:s + c])) for h, e, s, c, rl, wl in recs]

    def chain_at(self, head: int, max_iovs: int) -> RawChain:
        chains, iovs = self._arrays(1, max_iovs)
        if not 0 <= head <= 0xFFFFFFFF:
            raise ValueError(f"chain_at({head}): bad head")
        rc = lib.vv_chain_at(self.q, head, chains, iovs, max_iovs)
        if rc == -errno.EFAULT:
            raise OSError(errno.EFAULT, "descriptor table not mapped")
        if rc < 0:
            raise ValueError(f"chain_at({head}): bad head or queue config")
        c = chains[0]
        return (c.head, c.error, c.readable_len, c.writable_len,
                tuple(_IOV.iter_unpack(ffi.buffer(iovs, _IOV.size * c.iov_count))))

    def push_batch(self, ids: list[int], lens: list[int]) -> int:
        n = len(ids)
        return lib.vv_push_batch(self.q, ffi.new("uint32_t[]", ids), ffi.new("uint32_t[]", lens), n)

    def needs_notify(self) -> bool:
        return bool(lib.vv_needs_notify(self.q))


class Virtqueue:
    """One split virtqueue. Config (size, addresses, features) is set while disabled."""

    def __init__(self, index: int, dma: DmaTable, max_size: int = 256,
                 impl: str | None = None) -> None:
        impl = impl or os.environ.get("VFIO_VIRTIO_RING") or "c"
        if impl not in ("c", "py"):
            raise ValueError(f"impl must be 'c' or 'py', not {impl!r}")
        if not 0 < max_size <= R.VQ_MAX_SIZE or max_size & (max_size - 1):
            raise ValueError(f"max_size {max_size}: power of 2 up to {R.VQ_MAX_SIZE}")
        self.index = index
        self.dma = dma
        self.max_size = max_size
        self.impl = impl
        self._r = CRing(dma) if impl == "c" else PyRing(dma)
        self._avail_idx: tuple | None = None   # (DMA generation, driver_addr, c_uint16)
        self.reset()

    def _config(name: str, bits: int | None):  # noqa: N805 - property factory
        def get(self):
            return getattr(self._r, name)

        def set_(self, value):
            if self._r.enabled:
                raise RuntimeError(f"queue {self.index}: {name} is read-only while enabled")
            if bits is None:
                value = bool(value)
            elif not 0 <= int(value) < (1 << bits):
                raise ValueError(f"{name} out of range: {value}")
            setattr(self._r, name, value)
        return property(get, set_, doc=f"Queue {name}; settable while not enabled.")

    size = _config("size", 16)
    desc_addr = _config("desc_addr", 64)
    driver_addr = _config("driver_addr", 64)
    device_addr = _config("device_addr", 64)
    event_idx = _config("event_idx", None)
    indirect = _config("indirect", None)
    del _config

    @property
    def enabled(self) -> bool:
        return bool(self._r.enabled)

    @property
    def broken(self) -> int:
        """0, or VQ_BROKEN_*: the device must set DEVICE_NEEDS_RESET (2.1.2)."""
        return self._r.broken

    @property
    def last_avail_idx(self) -> int:
        return self._r.last_avail_idx

    @property
    def used_idx(self) -> int:
        return self._r.used_idx

    def avail_pending(self) -> bool:
        """Whether the driver made buffers available that the device has not taken yet
        (avail idx != last_avail_idx), or the queue is broken or its avail ring unreadable
        (a scan will find out and report it). False for a disabled queue. Cheap: the avail
        idx's host address is kept per DMA generation (a map or unmap re-translates)."""
        r = self._r
        s = getattr(r, "q", r)                  # the C ring's struct, or the Python ring
        if not s.enabled:
            return False
        if s.broken:
            return True
        gen, addr = self.dma.generation, s.driver_addr
        c = self._avail_idx
        if c is None or c[0] != gen or c[1] != addr:
            host = self.dma.translate(addr + 2, 2, 1)          # PROT_READ
            if host is None:
                return True
            c = self._avail_idx = (gen, addr, ctypes.c_uint16.from_address(host))
        return c[2].value != s.last_avail_idx

    def enable(self) -> None:
        """Start using the rings (queue_enable = 1). Indices start at 0 (2.7.13.1 / 4.1.4.3).
        A bad size or misaligned ring sets :attr:`broken` (VQ_BROKEN_CONFIG) instead of
        raising: the transport reports it with DEVICE_NEEDS_RESET."""
        r = self._r
        if r.enabled:
            return
        r.last_avail_idx = r.used_idx = r.signalled_used = 0
        r.signalled_used_valid = False
        r.broken = r.check()
        r.enabled = True

    def reset(self) -> None:
        """Back to power-on values: disabled, size = max_size, addresses 0, no features."""
        r = self._r
        r.enabled = False
        r.size = self.max_size
        r.desc_addr = r.driver_addr = r.device_addr = 0
        r.event_idx = r.indirect = False
        r.last_avail_idx = r.used_idx = r.signalled_used = 0
        r.signalled_used_valid = False
        r.broken = 0

    def _iov_cap(self, max_chains: int) -> int:
        return max(self._r.size, 4 * max_chains, 1)

    def pop_batch(self, max_chains: int = 64) -> list[Chain]:
        """Pop up to ``max_chains`` available chains in one pass (2.7.13.2 device side).

        Call until it returns an empty list: a batch may end early when its buffers fill
        the iovec space. Malformed chains come back with ``error != 0`` (complete them with
        length 0); a queue that became unusable sets :attr:`broken` and yields nothing more.
        """
        if max_chains <= 0:
            return []
        raw = self._r.pop_batch(max_chains, self._iov_cap(max_chains))
        return [Chain(c, self.dma) for c in raw]

    def chain_at(self, head: int) -> Chain:
        """Re-walk the chain at descriptor ``head`` (e.g. a buffer held across a snapshot).
        Raises ValueError for a head outside the queue, OSError(EFAULT) if unmapped."""
        return Chain(self._r.chain_at(head, self._iov_cap(1)), self.dma)

    def push(self, head: int, written: int) -> bool:
        """Complete one chain; see :meth:`push_batch`."""
        return self.push_batch([(head, written)])

    def push_batch(self, items: list[tuple[int, int]]) -> bool:
        """Add (head, bytes written) used elements and publish used idx once (2.7.8).

        Returns False (nothing written) when the queue is disabled or broken, or its used
        ring is unmapped (then :attr:`broken` is set). Raises ValueError for a head >= size
        or a length outside 32 bits."""
        if not items:
            return True
        ids, lens = zip(*items)
        if min(ids) < 0 or max(ids) > 0xFFFFFFFF or min(lens) < 0 or max(lens) > 0xFFFFFFFF:
            raise ValueError("push: head/len out of range")
        rc = self._r.push_batch(ids, lens)
        if rc == -errno.EINVAL:
            raise ValueError(f"push: head >= queue size {self._r.size}")
        return rc == 0

    def needs_notify(self) -> bool:
        """Whether to interrupt the driver for what was pushed since the last call (2.7.7.2,
        2.7.10 with event idx, else VRING_AVAIL_F_NO_INTERRUPT). Call after push_batch."""
        return self._r.needs_notify()

    def get_state(self) -> dict:
        """Everything needed to continue this queue in another process."""
        return {f: (bool if f in _BOOL_FIELDS else int)(getattr(self._r, f))
                for f in _STATE_FIELDS}

    def set_state(self, d: dict) -> None:
        """Restore :meth:`get_state` output. Raises ValueError on a malformed dict."""
        limits = {"size": 16, "desc_addr": 64, "driver_addr": 64, "device_addr": 64,
                  "last_avail_idx": 16, "used_idx": 16, "signalled_used": 16, "broken": 8}
        try:
            vals = {f: d[f] for f in _STATE_FIELDS}
        except KeyError as e:
            raise ValueError(f"queue state lacks {e}") from None
        for f, v in vals.items():
            if not isinstance(v, (int, bool)) or (f in limits and not 0 <= v < 1 << limits[f]):
                raise ValueError(f"queue state: bad {f}={v!r}")
        for f, v in vals.items():
            setattr(self._r, f, v)
        if self._r.enabled and not self._r.broken:
            self._r.broken = self._r.check()
