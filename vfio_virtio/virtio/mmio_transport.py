"""virtio-mmio front end (virtio 1.3 section 4.2, version 2 register layout) in BAR0 of the
PCI function.

vfio-user carries PCI functions, so the virtio-mmio register block is served as BAR0 of a
function with its own PCI IDs (``mmio_spec.VV_MMIO_PCI_*``, not virtio-pci's). In a Linux
guest the bridge module guest/vv_mmio_bridge registers a ``virtio-mmio`` platform device for
that BAR and interrupt; the stock ``virtio_mmio`` driver then binds unchanged.

One interrupt carries both notification kinds (4.2.3.4): MSI-X vector 0 when the client has
enabled MSI-X, INTx otherwise. InterruptStatus shows the reasons until InterruptACK clears
them (4.2.2.1). INTx over vfio is an edge on an eventfd that the client turns into a level it
drops at the next BAR access; to keep the line's level meaning (asserted while
InterruptStatus != 0), every BAR access that leaves bits pending asserts it again (except
the read of InterruptStatus itself, which the driver's handler follows with InterruptACK).
"""
from __future__ import annotations

import logging

from ..pci import spec as P
from ..pci.function import PciFunction, PciIds
from . import mmio_spec as M
from . import spec as V
from .core import VirtioCore
from .transport_base import TransportBase

log = logging.getLogger(__name__)

BAR = 0
BAR_SIZE = 0x1000                  # registers + config; the smallest BAR PciFunction takes
SHM_ABSENT = 0xFFFFFFFF            # SHMLen/SHMBase of a region that does not exist (4.2.2)


def pci_ids(virtio_device_id: int = 41) -> PciIds:
    """PCI IDs of the function in mmio mode: 1af4:10f9 from QEMU's experimental range, so
    virtio_pci never drives it (docs/MMIO.md); subsystem device = the virtio device ID
    (default 41, GPIO) for people reading lspci; class 'other system peripheral'."""
    return PciIds(vendor=M.VV_MMIO_PCI_VENDOR_ID, device=M.VV_MMIO_PCI_DEVICE_ID,
                  subsys_vendor=M.VV_MMIO_PCI_SUBSYS_VENDOR_ID, subsys=virtio_device_id,
                  revision=M.VV_MMIO_PCI_REVISION,
                  class_code=(P.PCI_BASE_CLASS_SYSTEM, P.PCI_CLASS_SYSTEM_OTHER, 0))


class VirtioMmioTransport(TransportBase):
    """Binds a :class:`VirtioCore` to BAR0 of a :class:`PciFunction` as a virtio-mmio v2
    register block. Same constructor as VirtioPciTransport; the shared half is
    :class:`TransportBase`."""

    def __init__(self, fn: PciFunction, core: VirtioCore, device_cfg_size: int,
                 reset_lines_on_disconnect: bool = False) -> None:
        if M.Config + device_cfg_size > BAR_SIZE:
            raise ValueError(f"device config of {device_cfg_size} bytes does not fit BAR0")
        super().__init__(fn, core, reset_lines_on_disconnect)
        self.device_cfg_size = device_cfg_size
        self._reset_regs()
        self._reads = {
            M.MagicValue: lambda: M.MAGIC_VALUE,
            M.Version: lambda: M.VERSION,
            M.DeviceID: lambda: core.device.device_id,
            M.VendorID: lambda: M.VV_MMIO_VENDOR_ID,
            M.DeviceFeatures: self._get_df,
            M.QueueNumMax: lambda: self._q().max_size if self._q() else 0,
            M.QueueReady: lambda: int(bool(self._q() and self._q().enabled)),
            M.InterruptStatus: lambda: self.interrupt_status,
            M.Status: lambda: core.status,
            M.SHMLenLow: lambda: SHM_ABSENT, M.SHMLenHigh: lambda: SHM_ABSENT,
            M.SHMBaseLow: lambda: SHM_ABSENT, M.SHMBaseHigh: lambda: SHM_ABSENT,
            M.QueueReset: self._get_qreset,
            M.ConfigGeneration: lambda: core.config_generation,
        }
        self._writes = {
            M.DeviceFeaturesSel: self._set_dfselect,
            M.DriverFeatures: self._set_gf,
            M.DriverFeaturesSel: self._set_gfselect,
            M.QueueSel: self._set_qsel,
            M.QueueNum: self._set_qsize,
            M.QueueReady: self._set_qready,
            M.QueueNotify: core.kick,
            M.InterruptACK: self._ack,
            M.Status: self._set_status,
            M.QueueDescLow: lambda v: self._set_qaddr("desc_addr", v, 0),
            M.QueueDescHigh: lambda v: self._set_qaddr("desc_addr", v, 32),
            M.QueueDriverLow: lambda v: self._set_qaddr("driver_addr", v, 0),
            M.QueueDriverHigh: lambda v: self._set_qaddr("driver_addr", v, 32),
            M.QueueDeviceLow: lambda v: self._set_qaddr("device_addr", v, 0),
            M.QueueDeviceHigh: lambda v: self._set_qaddr("device_addr", v, 32),
            M.SHMSel: self._set_shmsel,
            M.QueueReset: self._set_qreset,
        }
        fn.add_bar(BAR, BAR_SIZE, self)

    def _reset_regs(self) -> None:
        """Register state a device reset returns to its initial values (4.2.2.1: InterruptStatus
        and every QueueReady clear; the queues themselves are reset by the core)."""
        super()._reset_regs()
        self.shm_select = 0
        self.interrupt_status = 0

    # --- BAR dispatch ---------------------------------------------------------------------

    def read(self, offset: int, count: int) -> bytes:
        if offset >= M.Config:
            data = self._config_read(offset - M.Config, count)
        elif count != M.REGISTER_WIDTH or offset % M.REGISTER_WIDTH:
            log.debug("BAR0 read of %d bytes at %#x: not a 32-bit aligned register access",
                      count, offset)
            data = bytes(count)
        else:
            get = self._reads.get(offset)
            data = (get() & 0xFFFFFFFF if get else 0).to_bytes(4, "little")
            if offset == M.InterruptStatus:
                return data            # the handler's ACK comes next: no second edge
        self._reassert_intx()
        return data

    def write(self, offset: int, data: bytes) -> None:
        if offset >= M.Config:
            self._config_write(offset - M.Config, data)
        elif len(data) != M.REGISTER_WIDTH or offset % M.REGISTER_WIDTH:
            log.debug("BAR0 write of %d bytes at %#x ignored: not a 32-bit aligned register "
                      "access (4.2.2.2)", len(data), offset)
        else:
            put = self._writes.get(offset)
            if put is None:
                log.debug("BAR0 write at %#x ignored: read-only or reserved", offset)
            else:
                put(int.from_bytes(data, "little"))
        self._reassert_intx()

    def _config_read(self, offset: int, count: int) -> bytes:
        if offset + count > self.device_cfg_size:
            return bytes(count)
        return self.core.device.config_read(offset, count)

    def _config_write(self, offset: int, data: bytes) -> None:
        if offset + len(data) <= self.device_cfg_size:
            self.core.device.config_write(offset, data)

    # --- queues ---------------------------------------------------------------------------

    def _set_qaddr(self, attr: str, v: int, shift: int) -> None:
        if self._configurable():
            q = self._q()
            setattr(q, attr, getattr(q, attr) & ~(0xFFFFFFFF << shift) | (v << shift))

    def _set_qready(self, v: int) -> None:
        """1 enables the selected queue; 0 on a ready queue takes it away again (Linux's
        vm_del_vq does this and checks that QueueReady then reads 0)."""
        q = self._q()
        if q is None:
            return
        if v & 1:
            if q.enabled:
                return
            self.core.enable_queue(self.queue_select)
        elif q.enabled:
            self.core.reset_queue(self.queue_select)

    def _set_shmsel(self, v: int) -> None:
        self.shm_select = v                     # every ID is absent: lengths read all ones

    # --- interrupts (4.2.3.4) -------------------------------------------------------------

    def _ack(self, v: int) -> None:
        self.interrupt_status &= ~v

    def _raise(self, bit: int) -> None:
        self.interrupt_status |= bit
        if self.fn.msix_enabled:
            self.fn.trigger_msix(0)
        else:
            self.fn.trigger_intx()

    def _reassert_intx(self) -> None:
        if self.interrupt_status and not self.fn.msix_enabled:
            self.fn.trigger_intx()

    def queue_interrupt(self, index: int) -> None:
        self._raise(M.VIRTIO_MMIO_INT_VRING)

    def config_interrupt(self) -> None:
        self._raise(M.VIRTIO_MMIO_INT_CONFIG)

    # --- snapshot -----------------------------------------------------------------------

    def get_state(self) -> dict:
        return {"kind": "mmio", "dfselect": self.dfselect, "gfselect": self.gfselect,
                "queue_select": self.queue_select, "shm_select": self.shm_select,
                "interrupt_status": self.interrupt_status,
                "queue_reset_pending": [False] * len(self.core.queues),   # resets complete at once
                "touched": self.driven}

    def set_state(self, d: dict) -> None:
        if d.get("kind") != "mmio":
            raise ValueError("snapshot is not of a virtio-mmio transport")
        qr = [bool(x) for x in d["queue_reset_pending"]]
        if len(qr) != len(self.core.queues):
            raise ValueError("snapshot queue count does not match the device")
        self.dfselect = int(d["dfselect"]) & 0xFFFFFFFF
        self.gfselect = int(d["gfselect"]) & 0xFFFFFFFF
        self.queue_select = int(d["queue_select"]) & 0xFFFFFFFF
        self.shm_select = int(d["shm_select"]) & 0xFFFFFFFF
        self.interrupt_status = int(d["interrupt_status"]) & 3
        self.driven = bool(d.get("touched", True))
