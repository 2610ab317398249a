"""virtio-gpio constants, named as virtio 1.3 section 5.17 ("GPIO Device") names them.

Wire layouts are given as :mod:`struct` format strings (all little-endian, packed).
"""
from __future__ import annotations

import struct

# 5.17.1 Device ID
VIRTIO_ID_GPIO = 41

# 5.17.2 Virtqueues
VIRTIO_GPIO_REQUESTQ = 0
VIRTIO_GPIO_EVENTQ = 1

# 5.17.3 Feature bits
VIRTIO_GPIO_F_IRQ = 0

# 5.17.4 Device configuration layout: struct virtio_gpio_config
# { le16 ngpio; u8 padding[2]; le32 gpio_names_size; }
VIRTIO_GPIO_CONFIG_FMT = "<HxxI"
VIRTIO_GPIO_CONFIG_SIZE = struct.calcsize(VIRTIO_GPIO_CONFIG_FMT)  # 8

# 5.17.6 requestq: struct virtio_gpio_request { le16 type; le16 gpio; le32 value; }
VIRTIO_GPIO_REQUEST_FMT = "<HHI"
VIRTIO_GPIO_REQUEST_SIZE = struct.calcsize(VIRTIO_GPIO_REQUEST_FMT)  # 8

# struct virtio_gpio_response { u8 status; u8 value; }
VIRTIO_GPIO_RESPONSE_FMT = "<BB"
VIRTIO_GPIO_RESPONSE_SIZE = struct.calcsize(VIRTIO_GPIO_RESPONSE_FMT)  # 2

# Status field of struct virtio_gpio_response
VIRTIO_GPIO_STATUS_OK = 0x0
VIRTIO_GPIO_STATUS_ERR = 0x1

# GPIO message types
VIRTIO_GPIO_MSG_GET_LINE_NAMES = 0x0001
VIRTIO_GPIO_MSG_GET_DIRECTION = 0x0002
VIRTIO_GPIO_MSG_SET_DIRECTION = 0x0003
VIRTIO_GPIO_MSG_GET_VALUE = 0x0004
VIRTIO_GPIO_MSG_SET_VALUE = 0x0005
VIRTIO_GPIO_MSG_SET_IRQ_TYPE = 0x0006

# GPIO direction types
VIRTIO_GPIO_DIRECTION_NONE = 0x00
VIRTIO_GPIO_DIRECTION_OUT = 0x01
VIRTIO_GPIO_DIRECTION_IN = 0x02

# GPIO interrupt types
VIRTIO_GPIO_IRQ_TYPE_NONE = 0x00
VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING = 0x01
VIRTIO_GPIO_IRQ_TYPE_EDGE_FALLING = 0x02
VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH = 0x03
VIRTIO_GPIO_IRQ_TYPE_LEVEL_HIGH = 0x04
VIRTIO_GPIO_IRQ_TYPE_LEVEL_LOW = 0x08

# 5.17.7 eventq: struct virtio_gpio_irq_request { le16 gpio; }
VIRTIO_GPIO_IRQ_REQUEST_FMT = "<H"
VIRTIO_GPIO_IRQ_REQUEST_SIZE = struct.calcsize(VIRTIO_GPIO_IRQ_REQUEST_FMT)  # 2

# struct virtio_gpio_irq_response { u8 status; }
VIRTIO_GPIO_IRQ_RESPONSE_FMT = "<B"
VIRTIO_GPIO_IRQ_RESPONSE_SIZE = struct.calcsize(VIRTIO_GPIO_IRQ_RESPONSE_FMT)  # 1

# Status field of struct virtio_gpio_irq_response
VIRTIO_GPIO_IRQ_STATUS_INVALID = 0x0
VIRTIO_GPIO_IRQ_STATUS_VALID = 0x1

# Convenience groupings (not spec names).
DIRECTIONS = frozenset({VIRTIO_GPIO_DIRECTION_NONE, VIRTIO_GPIO_DIRECTION_OUT,
                        VIRTIO_GPIO_DIRECTION_IN})
IRQ_TYPES = frozenset({VIRTIO_GPIO_IRQ_TYPE_NONE, VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING,
                       VIRTIO_GPIO_IRQ_TYPE_EDGE_FALLING, VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH,
                       VIRTIO_GPIO_IRQ_TYPE_LEVEL_HIGH, VIRTIO_GPIO_IRQ_TYPE_LEVEL_LOW})
EDGE_IRQ_TYPES = frozenset({VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING, VIRTIO_GPIO_IRQ_TYPE_EDGE_FALLING,
                            VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH})
LEVEL_IRQ_TYPES = frozenset({VIRTIO_GPIO_IRQ_TYPE_LEVEL_HIGH, VIRTIO_GPIO_IRQ_TYPE_LEVEL_LOW})

# ngpio is a le16 and a device with 0 lines fails the Linux driver's probe.
VIRTIO_GPIO_MAX_LINES = 0xFFFF
