"""virtio-pci modern front end (virtio 1.3, section 4.1).

One region table {cfg_type, offset, size} produces the BAR0 layout, the BAR access dispatch
and the vendor capability list. Common configuration, ISR, device configuration and notify
live in BAR0; the PCI_CFG capability is a window into BAR0 through config space (4.1.4.9).
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Callable

from ..pci import spec as P
from ..pci.function import PciFunction
from ..power import NOTHING
from . import spec as V
from .core import VirtioCore
from .transport_base import TransportBase

log = logging.getLogger(__name__)

BAR = 0
BAR_SIZE = 0x4000
SLOT = 0x1000
NOTIFY_OFF_MULTIPLIER = 4


@dataclass(frozen=True)
class Region:
    cfg_type: int
    offset: int
    size: int


def region_table(device_cfg_size: int, num_queues: int) -> list[Region]:
    """The BAR0 layout: one 4 KiB slot per structure."""
    return [
        Region(V.VIRTIO_PCI_CAP_COMMON_CFG, 0 * SLOT, V.VIRTIO_PCI_COMMON_CFG_LEN),
        Region(V.VIRTIO_PCI_CAP_ISR_CFG, 1 * SLOT, 1),
        Region(V.VIRTIO_PCI_CAP_DEVICE_CFG, 2 * SLOT, max(device_cfg_size, 1)),
        Region(V.VIRTIO_PCI_CAP_NOTIFY_CFG, 3 * SLOT, num_queues * NOTIFY_OFF_MULTIPLIER),
    ]


def vendor_cap(r: Region) -> bytes:
    """struct virtio_pci_cap (+ notify_off_multiplier for NOTIFY_CFG), 4.1.4."""
    length = V.VIRTIO_PCI_NOTIFY_CAP_LEN if r.cfg_type == V.VIRTIO_PCI_CAP_NOTIFY_CFG \
        else V.VIRTIO_PCI_CAP_LEN
    cap = struct.pack("<BBBBBBxxII", P.PCI_CAP_ID_VNDR, 0, length, r.cfg_type, BAR, 0,
                      r.offset, r.size)
    if r.cfg_type == V.VIRTIO_PCI_CAP_NOTIFY_CFG:
        cap += struct.pack("<I", NOTIFY_OFF_MULTIPLIER)
    return cap


class _Field:
    __slots__ = ("size", "get", "set")

    def __init__(self, size: int, get: Callable[[], int], set: Callable[[int], None] | None):
        self.size, self.get, self.set = size, get, set


class VirtioPciTransport(TransportBase):
    """Binds a :class:`VirtioCore` to a :class:`PciFunction` as virtio-pci modern."""

    def __init__(self, fn: PciFunction, core: VirtioCore, device_cfg_size: int,
                 reset_lines_on_disconnect: bool = False) -> None:
        self.fast = None               # gpio/fastpath.FastPath once BAR0 is served from C
        self._isr = 0
        super().__init__(fn, core, reset_lines_on_disconnect)
        self.regions = region_table(device_cfg_size, len(core.queues))
        self._handlers = {
            V.VIRTIO_PCI_CAP_COMMON_CFG: (self._common_read, self._common_write),
            V.VIRTIO_PCI_CAP_ISR_CFG: (self._isr_read, self._ignore_write),
            V.VIRTIO_PCI_CAP_DEVICE_CFG: (self._devcfg_read, self._devcfg_write),
            V.VIRTIO_PCI_CAP_NOTIFY_CFG: (self._notify_read, self._notify_write),
        }
        self.isr = 0
        self._reset_regs()
        self._fields = self._common_fields()
        fn.add_bar(BAR, BAR_SIZE, self)
        for r in self.regions:
            fn.add_vendor_cap(vendor_cap(r))
        self._pci_cfg = bytearray(V.VIRTIO_PCI_CFG_CAP_LEN)
        self._pci_cfg[:V.VIRTIO_PCI_CAP_LEN] = struct.pack(
            "<BBBBBBxxII", P.PCI_CAP_ID_VNDR, 0, V.VIRTIO_PCI_CFG_CAP_LEN,
            V.VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0, 0)
        self._pci_cfg_window = _PciCfgWindow(self)
        self.pci_cfg_offset = fn.add_vendor_cap(bytes(self._pci_cfg), handler=self._pci_cfg_window)
        fn.intx_pending = lambda: self.isr != 0     # INTx level: re-signalled while set

    @property
    def isr(self) -> int:
        """ISR status bits; kept in the C register image while the fast path is installed."""
        return self._isr if self.fast is None else self.fast.isr

    @isr.setter
    def isr(self, value: int) -> None:
        if self.fast is None:
            self._isr = value
        else:
            self.fast.isr = value

    def _reset_regs(self) -> None:
        super()._reset_regs()
        self.config_vector = V.VIRTIO_MSI_NO_VECTOR
        self.queue_vectors = [V.VIRTIO_MSI_NO_VECTOR] * len(self.core.queues)
        self.isr = 0

    def _function_reset(self) -> None:
        self._pci_cfg_window.reset()           # config-space registers: function resets only

    # --- BAR0 dispatch (the PciFunction gates it by power state) --------------------------

    def _find(self, offset: int):
        for r in self.regions:
            if r.offset <= offset < r.offset + SLOT:
                return r
        return None

    def read(self, offset: int, count: int) -> bytes:
        r = self._find(offset)
        if r is None or offset + count > r.offset + SLOT:
            return bytes(count)
        return self._handlers[r.cfg_type][0](offset - r.offset, count)

    def write(self, offset: int, data: bytes) -> None:
        r = self._find(offset)
        if r is None or offset + len(data) > r.offset + SLOT:
            log.debug("BAR0 write at %#x outside the register map ignored", offset)
            return
        self._handlers[r.cfg_type][1](offset - r.offset, data)

    @staticmethod
    def _ignore_write(offset: int, data: bytes) -> None:
        log.debug("write to read-only virtio structure ignored")

    # --- common configuration (4.1.4.3) ---------------------------------------------------

    def _common_fields(self) -> dict[int, _Field]:
        c = self.core
        F = _Field
        qget = lambda attr, dflt=0: (lambda: getattr(self._q(), attr) if self._q() else dflt)  # noqa: E731
        return {
            V.VIRTIO_PCI_COMMON_DFSELECT: F(4, lambda: self.dfselect, self._set_dfselect),
            V.VIRTIO_PCI_COMMON_DF: F(4, self._get_df, None),
            V.VIRTIO_PCI_COMMON_GFSELECT: F(4, lambda: self.gfselect, self._set_gfselect),
            V.VIRTIO_PCI_COMMON_GF: F(4, self._get_gf, self._set_gf),
            V.VIRTIO_PCI_COMMON_MSIX: F(2, lambda: self.config_vector, self._set_config_vector),
            V.VIRTIO_PCI_COMMON_NUMQ: F(2, lambda: len(c.queues), None),
            V.VIRTIO_PCI_COMMON_STATUS: F(1, lambda: c.status, self._set_status),
            V.VIRTIO_PCI_COMMON_CFGGENERATION: F(1, lambda: c.config_generation, None),
            V.VIRTIO_PCI_COMMON_Q_SELECT: F(2, lambda: self.queue_select, self._set_qsel),
            V.VIRTIO_PCI_COMMON_Q_SIZE: F(2, qget("size"), self._set_qsize),
            V.VIRTIO_PCI_COMMON_Q_MSIX: F(2, self._get_qvec, self._set_qvec),
            V.VIRTIO_PCI_COMMON_Q_ENABLE: F(2, lambda: int(bool(self._q() and self._q().enabled)),
                                           self._set_qenable),
            V.VIRTIO_PCI_COMMON_Q_NOFF: F(2, lambda: self.queue_select if self._q() else 0, None),
            V.VIRTIO_PCI_COMMON_Q_DESCLO: F(8, qget("desc_addr"), lambda v: self._set_qaddr("desc_addr", v)),
            V.VIRTIO_PCI_COMMON_Q_AVAILLO: F(8, qget("driver_addr"), lambda v: self._set_qaddr("driver_addr", v)),
            V.VIRTIO_PCI_COMMON_Q_USEDLO: F(8, qget("device_addr"), lambda v: self._set_qaddr("device_addr", v)),
            V.VIRTIO_PCI_COMMON_Q_NDATA: F(2, lambda: self.queue_select if self._q() else 0, None),
            V.VIRTIO_PCI_COMMON_Q_RESET: F(2, self._get_qreset, self._set_qreset),
            V.VIRTIO_PCI_COMMON_ADM_Q_IDX: F(2, lambda: 0, None),
            V.VIRTIO_PCI_COMMON_ADM_Q_NUM: F(2, lambda: 0, None),
        }

    def _common_read(self, offset: int, count: int) -> bytes:
        f = self._fields.get(offset)
        if f is not None and f.size == count:          # the common case: one whole field
            return f.get().to_bytes(count, "little")
        out = bytearray(count)
        for foff, f in self._fields.items():
            lo, hi = max(offset, foff), min(offset + count, foff + f.size)
            if lo < hi:
                val = f.get().to_bytes(f.size, "little")
                out[lo - offset:hi - offset] = val[lo - foff:hi - foff]
        return bytes(out)

    def _common_write(self, offset: int, data: bytes) -> None:
        f = self._fields.get(offset)
        if f is not None and f.size == len(data) and f.set is not None:
            f.set(int.from_bytes(data, "little"))      # the common case: one whole field
            return
        end = offset + len(data)
        for foff, f in self._fields.items():
            lo, hi = max(offset, foff), min(end, foff + f.size)
            if lo >= hi:
                continue
            if f.set is None:
                log.debug("write to read-only common cfg field %#x ignored", foff)
                continue
            cur = bytearray(f.get().to_bytes(f.size, "little"))   # byte-enable merge
            cur[lo - foff:hi - foff] = data[lo - offset:hi - offset]
            f.set(int.from_bytes(cur, "little"))

    def _valid_vector(self, v: int) -> int:
        # 4.1.5.1.2: a vector the device cannot map reads back NO_VECTOR.
        return v if v < self.fn.msix_vectors else V.VIRTIO_MSI_NO_VECTOR

    def _set_config_vector(self, v: int) -> None:
        self.config_vector = self._valid_vector(v)

    def _get_qvec(self) -> int:
        return self.queue_vectors[self.queue_select] if self._q() else V.VIRTIO_MSI_NO_VECTOR

    def _set_qvec(self, v: int) -> None:
        if self._q():
            self.queue_vectors[self.queue_select] = self._valid_vector(v)

    def _set_qaddr(self, attr: str, v: int) -> None:
        if self._configurable():
            setattr(self._q(), attr, v)

    def _set_qenable(self, v: int) -> None:
        q = self._q()
        if q is None or not v & 1:
            return                              # writing 0 is forbidden to the driver
        if q.enabled:
            return
        self.core.enable_queue(self.queue_select)

    def _on_queue_reset(self, index: int) -> None:
        self.queue_vectors[index] = V.VIRTIO_MSI_NO_VECTOR

    # --- ISR, device config, notify -------------------------------------------------------

    def _isr_read(self, offset: int, count: int) -> bytes:
        if offset != 0:
            return bytes(count)                # past the 1-byte structure: no side effect
        val, self.isr = self.isr, 0            # read-to-clear (4.1.4.5)
        return bytes([val]) + bytes(count - 1)

    def _devcfg_read(self, offset: int, count: int) -> bytes:
        return self.core.device.config_read(offset, count)

    def _devcfg_write(self, offset: int, data: bytes) -> None:
        self.core.device.config_write(offset, data)

    @staticmethod
    def _notify_read(offset: int, count: int) -> bytes:
        return bytes(count)

    def _notify_write(self, offset: int, data: bytes) -> None:
        # Each queue's notify address is queue_notify_off * multiplier; the value written is
        # the queue index (no VIRTIO_F_NOTIFICATION_DATA). Trust the address, not the value.
        self.core.kick(offset // NOTIFY_OFF_MULTIPLIER)

    # --- Interrupts (core -> function) ----------------------------------------------------

    def queue_interrupt(self, index: int) -> None:
        if self.fn.msix_enabled:
            vec = self.queue_vectors[index]
            if vec != V.VIRTIO_MSI_NO_VECTOR:
                self.fn.trigger_msix(vec)
        else:
            self.isr |= V.VIRTIO_PCI_ISR_QUEUE
            self.fn.trigger_intx()

    def config_interrupt(self) -> None:
        self.isr |= V.VIRTIO_PCI_ISR_CONFIG
        if self.fn.msix_enabled:
            if self.config_vector != V.VIRTIO_MSI_NO_VECTOR:
                self.fn.trigger_msix(self.config_vector)
        else:
            self.fn.trigger_intx()

    def reset_event(self, event):
        """The shared half decides and applies; the C register image (when the fast path is
        installed) is then re-rendered from the registers the reset changed."""
        outcome = super().reset_event(event)
        if self.fast is not None and outcome != NOTHING:
            self.fast.sync()                  # (gating alone is re-rendered by its listener)
        return outcome

    # --- snapshot -----------------------------------------------------------------------

    def get_state(self) -> dict:
        return {"dfselect": self.dfselect, "gfselect": self.gfselect,
                "queue_select": self.queue_select, "config_vector": self.config_vector,
                "queue_vectors": list(self.queue_vectors), "isr": self.isr,
                "touched": self.driven}

    def set_state(self, d: dict) -> None:
        self.dfselect = int(d["dfselect"]) & 0xFFFFFFFF
        self.gfselect = int(d["gfselect"]) & 0xFFFFFFFF
        self.queue_select = int(d["queue_select"]) & 0xFFFF
        self.config_vector = self._valid_vector(int(d["config_vector"]) & 0xFFFF)
        qv = [self._valid_vector(int(v) & 0xFFFF) for v in d["queue_vectors"]]
        if len(qv) != len(self.queue_vectors):
            raise ValueError("snapshot queue vector count does not match the device")
        self.queue_vectors = qv
        self.isr = int(d["isr"]) & 3
        self.driven = bool(d.get("touched", True))


class _PciCfgWindow:
    """VIRTIO_PCI_CAP_PCI_CFG (4.1.4.9): cap.bar/offset/length select a BAR access that
    pci_cfg_data performs. Invalid selections (other BAR, length not 1/2/4, misaligned,
    beyond the BAR) make pci_cfg_data inert: reads 0, writes ignored."""

    DATA = V.VIRTIO_PCI_CAP_LEN

    def __init__(self, t: VirtioPciTransport) -> None:
        self.t = t

    def _target(self):
        bar, = struct.unpack_from("<B", self.t._pci_cfg, 4)
        off, length = struct.unpack_from("<II", self.t._pci_cfg, 8)
        if bar != BAR or length not in (1, 2, 4) or off % length or off + length > BAR_SIZE:
            return None
        return off, length

    def read(self, offset: int, count: int) -> bytes:
        img = self.t._pci_cfg
        if offset < self.DATA < offset + count or offset >= self.DATA:
            tgt = self._target()
            data = bytearray(4)
            if tgt is not None:
                data[:tgt[1]] = self.t.fn.bar_read(BAR, tgt[0], tgt[1])
            img[self.DATA:self.DATA + 4] = data
        return bytes(img[offset:offset + count])

    def write(self, offset: int, data: bytes) -> None:
        img = self.t._pci_cfg
        for i, b in enumerate(data):
            pos = offset + i
            if 4 <= pos < self.DATA + 4 and not 5 <= pos < 8:   # bar, offset, length, data
                img[pos] = b
        if offset + len(data) > self.DATA:
            tgt = self._target()
            if tgt is not None:
                self.t.fn.bar_write(BAR, tgt[0], bytes(img[self.DATA:self.DATA + tgt[1]]))
        self._sync()

    def reset(self) -> None:
        """Function reset: bar, offset, length and data back to 0 (a previous client's
        selection, e.g. a reserved bar value, must not outlive it)."""
        img = self.t._pci_cfg
        img[4] = 0
        img[8:self.DATA + 4] = bytes(self.DATA + 4 - 8)
        self._sync()

    def _sync(self) -> None:
        self.t.fn.cfg[self.t.pci_cfg_offset + 2:self.t.pci_cfg_offset + V.VIRTIO_PCI_CFG_CAP_LEN] = \
            self.t._pci_cfg[2:]
