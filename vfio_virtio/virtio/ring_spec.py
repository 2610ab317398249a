"""Split virtqueue constants (virtio 1.3 section 2.7), named as the spec names them, plus
this project's chain-error and queue-broken codes (mirrored in cffi_build/csrc/virtq.h)."""
from __future__ import annotations

# 2.7.5 descriptor flags
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
# 2.7.6 available ring flags
VRING_AVAIL_F_NO_INTERRUPT = 1
# 2.7.8 used ring flags
VRING_USED_F_NO_NOTIFY = 1

# 2.7: split queue size is a power of 2, at most 32768
VQ_MAX_SIZE = 32768
# 2.7 alignment: descriptor table 16, available ring 2, used ring 4
DESC_ALIGN = 16
AVAIL_ALIGN = 2
USED_ALIGN = 4
DESC_SIZE = 16
USED_ELEM_SIZE = 8

# Chain errors: the chain has a valid head and is completed (used len 0 / error status).
VQ_ERR_DESC_INDEX = 1         # next index >= table size (2.7.5)
VQ_ERR_CHAIN_LEN = 2          # loop, or chain longer than queue size (2.7.5.3.1)
VQ_ERR_NESTED_INDIRECT = 3    # INDIRECT inside an indirect table (2.7.5.3.1)
VQ_ERR_INDIRECT_LEN = 4       # table len 0, not a multiple of 16, or more than size entries
VQ_ERR_INDIRECT_NEXT = 5      # INDIRECT and NEXT together (2.7.5.3.1)
VQ_ERR_INDIRECT_FEATURE = 6   # INDIRECT without VIRTIO_F_INDIRECT_DESC (2.7.5.3.1)
VQ_ERR_INDIRECT_UNMAPPED = 7  # indirect table not in readable guest memory
VQ_ERR_UNMAPPED = 8           # buffer not mapped with the needed permission
VQ_ERR_LEN_OVERFLOW = 9       # total chain length above 2**32 - 1
VQ_ERR_ORDER = 10             # device-readable after device-writable (2.7.4.2)
VQ_ERR_ZERO_LEN = 11          # zero-length buffer descriptor

# Queue broken: nothing more can be popped; the device must set DEVICE_NEEDS_RESET (2.1.2).
VQ_BROKEN_CONFIG = 1          # size not a power of 2 / too large, or a ring misaligned
VQ_BROKEN_RING_UNMAPPED = 2   # a ring is not mapped with the needed permission
VQ_BROKEN_AVAIL_IDX = 3       # avail idx moved more than size past last_avail_idx (2.7.13.2)
VQ_BROKEN_HEAD = 4            # head index from the available ring >= size

ERR_NAMES = {v: k for k, v in globals().items() if k.startswith("VQ_ERR_")}
BROKEN_NAMES = {v: k for k, v in globals().items() if k.startswith("VQ_BROKEN_")}


def vring_need_event(event_idx: int, new_idx: int, old: int) -> bool:
    """2.7.10: whether new_idx has passed event_idx since old (all mod 2**16)."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old) & 0xFFFF)


def avail_ring_bytes(size: int, event_idx: bool) -> int:
    """Bytes of the available ring: flags, idx, ring[size], used_event if EVENT_IDX (2.7.6)."""
    return 4 + 2 * size + (2 if event_idx else 0)


def used_ring_bytes(size: int, event_idx: bool) -> int:
    """Bytes of the used ring: flags, idx, ring[size] of 8 bytes, avail_event (2.7.8)."""
    return 4 + 8 * size + (2 if event_idx else 0)
