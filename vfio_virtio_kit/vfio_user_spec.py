"""vfio-user protocol constants, named as the specification names them.

Sources: QEMU ``docs/interop/vfio-user.rst`` ("vfio-user Protocol Specification",
sections "Commands", "Header", one section per message) and the VFIO ioctl ABI in
``<linux/vfio.h>`` that the specification reuses for flags and indices.
All data is in host byte order (spec "Protocol Specification"); this machine is
little-endian x86_64, so the struct formats below use ``<``.
"""

from __future__ import annotations

import struct

# --- Protocol version (spec "VFIO_USER_VERSION"; libvfio-user serves 0.1) --------
VFIO_USER_MAJOR = 0
VFIO_USER_MINOR = 1

# Default max_data_xfer_size when a peer does not state one (spec "Version").
VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE = 1024 * 1024

# --- Commands (spec "Commands" table) ---------------------------------------------
VFIO_USER_VERSION = 1
VFIO_USER_DMA_MAP = 2
VFIO_USER_DMA_UNMAP = 3
VFIO_USER_DEVICE_GET_INFO = 4
VFIO_USER_DEVICE_GET_REGION_INFO = 5
VFIO_USER_DEVICE_GET_REGION_IO_FDS = 6
VFIO_USER_DEVICE_GET_IRQ_INFO = 7
VFIO_USER_DEVICE_SET_IRQS = 8
VFIO_USER_REGION_READ = 9
VFIO_USER_REGION_WRITE = 10
VFIO_USER_DMA_READ = 11
VFIO_USER_DMA_WRITE = 12
VFIO_USER_DEVICE_RESET = 13
VFIO_USER_DIRTY_PAGES = 14          # older revision (libvfio-user's header); gone in newer spec
VFIO_USER_REGION_WRITE_MULTI = 15
VFIO_USER_DEVICE_FEATURE = 16
VFIO_USER_MIG_DATA_READ = 17
VFIO_USER_MIG_DATA_WRITE = 18

COMMAND_NAMES = {
    v: k for k, v in globals().items()
    if k.startswith("VFIO_USER_") and isinstance(v, int)
    and k not in ("VFIO_USER_MAJOR", "VFIO_USER_MINOR", "VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE")
}

# --- Header (spec "Header"): u16 msg_id, u16 command, u32 msg_size, u32 flags, u32 error
HEADER = struct.Struct("<HHIII")
HEADER_SIZE = HEADER.size  # 16

# Flags word: bits 0-3 Type, bit 4 No_reply, bit 5 Error.
VFIO_USER_F_TYPE_MASK = 0xF
VFIO_USER_F_TYPE_COMMAND = 0
VFIO_USER_F_TYPE_REPLY = 1
VFIO_USER_F_NO_REPLY = 1 << 4
VFIO_USER_F_ERROR = 1 << 5

# --- Message payloads (spec section of each command) -------------------------------
VERSION = struct.Struct("<HH")                 # major, minor, then JSON (NUL-terminated)
DMA_MAP = struct.Struct("<IIQQQ")              # argsz, flags, offset, address, size
DMA_UNMAP = struct.Struct("<IIQQ")             # argsz, flags, address, size
DEVICE_INFO = struct.Struct("<IIII")           # argsz, flags, num_regions, num_irqs
REGION_INFO = struct.Struct("<IIIIQQ")         # argsz, flags, index, cap_offset, size, offset
REGION_IO_FDS = struct.Struct("<IIII")         # argsz, flags, index, count
SUB_REGION_IO_FD = struct.Struct("<QQIIIIQ")   # offset, size, fd_index, type, flags, pad, data
IRQ_INFO = struct.Struct("<IIII")              # argsz, flags, index, count
IRQ_SET = struct.Struct("<IIIII")              # argsz, flags, index, start, count (+ data)
REGION_ACCESS = struct.Struct("<QII")          # offset, region, count (+ data)
DMA_ACCESS = struct.Struct("<QQ")              # address, count (+ data)
INFO_CAP_HEADER = struct.Struct("<HHI")        # id, version, next (linux/vfio.h)
SPARSE_MMAP_HEADER = struct.Struct("<II")      # nr_areas, reserved
SPARSE_MMAP_AREA = struct.Struct("<QQ")        # offset, size

# DMA map flags (spec "VFIO_USER_DMA_MAP").
VFIO_USER_F_DMA_REGION_READ = 1 << 0
VFIO_USER_F_DMA_REGION_WRITE = 1 << 1
# DMA unmap flags (linux/vfio.h, reused by libvfio-user).
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1

# Device info flags (spec "VFIO_USER_DEVICE_GET_INFO").
VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1

# Region info flags and capability ids (spec "VFIO_USER_DEVICE_GET_REGION_INFO").
VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3
VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1
VFIO_REGION_INFO_CAP_TYPE = 2

# Region I/O fd types (spec "VFIO_USER_DEVICE_GET_REGION_IO_FDS").
VFIO_USER_IO_FD_TYPE_IOEVENTFD = 0
VFIO_USER_IO_FD_TYPE_IOREGIONFD = 1

# IRQ info flags (spec "VFIO_USER_DEVICE_GET_IRQ_INFO").
VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3

# IRQ set flags (spec "VFIO_USER_DEVICE_SET_IRQS").
VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5
VFIO_IRQ_SET_DATA_TYPE_MASK = (
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD)
VFIO_IRQ_SET_ACTION_TYPE_MASK = (
    VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER)

# PCI region indices (linux/vfio.h enum; VFIO_PCI_NUM_REGIONS = 9). libvfio-user adds
# its (v1) migration region at index 9.
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR1_REGION_INDEX = 1
VFIO_PCI_BAR2_REGION_INDEX = 2
VFIO_PCI_BAR3_REGION_INDEX = 3
VFIO_PCI_BAR4_REGION_INDEX = 4
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9

# PCI IRQ indices (linux/vfio.h enum).
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5
