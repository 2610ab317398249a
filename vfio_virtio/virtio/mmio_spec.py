"""virtio-mmio constants (virtio 1.3 section 4.2.2, "MMIO Device Register Layout"), named as
the spec's register table names them, and the PCI IDs this project gives the function that
carries the register block in BAR0 (docs/MMIO.md explains the choice)."""

# 4.2.2 Table 4.1: offsets from the base of the register block.
MagicValue = 0x000            # R   0x74726976 ("virt")
Version = 0x004               # R   0x2 (0x1 is the legacy layout, 4.2.4)
DeviceID = 0x008              # R   virtio device ID (5: GPIO is 41)
VendorID = 0x00C              # R   virtio subsystem vendor ID
DeviceFeatures = 0x010        # R   32 bits of the features selected by DeviceFeaturesSel
DeviceFeaturesSel = 0x014     # W
DriverFeatures = 0x020        # W   32 bits of the features selected by DriverFeaturesSel
DriverFeaturesSel = 0x024     # W
QueueSel = 0x030              # W
QueueNumMax = 0x034           # R   0: queue not available
QueueNum = 0x038              # W
QueueReady = 0x044            # RW  reads the last value written
QueueNotify = 0x050           # W   the queue index (no VIRTIO_F_NOTIFICATION_DATA)
InterruptStatus = 0x060       # R
InterruptACK = 0x064          # W
Status = 0x070                # RW  device status (2.1); 0 resets
QueueDescLow = 0x080          # W
QueueDescHigh = 0x084         # W
QueueDriverLow = 0x090        # W
QueueDriverHigh = 0x094       # W
QueueDeviceLow = 0x0A0        # W
QueueDeviceHigh = 0x0A4       # W
SHMSel = 0x0AC                # W
SHMLenLow = 0x0B0             # R   all ones: no shared memory region with that ID
SHMLenHigh = 0x0B4            # R
SHMBaseLow = 0x0B8            # R
SHMBaseHigh = 0x0BC           # R
QueueReset = 0x0C0            # RW  VIRTIO_F_RING_RESET
ConfigGeneration = 0x0FC      # R
Config = 0x100                # RW  device-specific configuration space

MAGIC_VALUE = 0x74726976
VERSION = 2

# 4.2.2 InterruptStatus / InterruptACK bits.
VIRTIO_MMIO_INT_VRING = 0x1   # "Used Buffer Notification"
VIRTIO_MMIO_INT_CONFIG = 0x2  # "Configuration Change Notification"

# 4.2.2.2: the control registers are accessed 32 bits wide and aligned only.
REGISTER_WIDTH = 4

# Registers by access type (for the front end's dispatch and for tests).
READ_ONLY = (MagicValue, Version, DeviceID, VendorID, DeviceFeatures, QueueNumMax,
             InterruptStatus, SHMLenLow, SHMLenHigh, SHMBaseLow, SHMBaseHigh,
             ConfigGeneration)
WRITE_ONLY = (DeviceFeaturesSel, DriverFeatures, DriverFeaturesSel, QueueSel, QueueNum,
              QueueNotify, InterruptACK, QueueDescLow, QueueDescHigh, QueueDriverLow,
              QueueDriverHigh, QueueDeviceLow, QueueDeviceHigh, SHMSel)
READ_WRITE = (QueueReady, Status, QueueReset)

# The virtio-mmio VendorID register: a 32-bit value of the implementer's choosing (QEMU uses
# "QEMU"). Ours reads as the ASCII bytes "VFIO" in memory order.
VV_MMIO_VENDOR_ID = int.from_bytes(b"VFIO", "little")

# PCI IDs of the function in mmio mode. 1af4:10f0-10ff is the range QEMU's
# docs/specs/pci-ids.rst marks "available for experimental usage without registration";
# Linux virtio_pci probes every 1af4 device but accepts only 0x1000-0x107f (-ENODEV for
# this one, silently), so only our bridge module (guest/vv_mmio_bridge) binds it.
VV_MMIO_PCI_VENDOR_ID = 0x1AF4
VV_MMIO_PCI_DEVICE_ID = 0x10F9
VV_MMIO_PCI_SUBSYS_VENDOR_ID = 0x1AF4
VV_MMIO_PCI_REVISION = 1
