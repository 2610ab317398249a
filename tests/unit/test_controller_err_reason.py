"""Say why a request got ERR (issue 16): every ERR answer of the requestq is logged at debug
level with its reason, and the answer itself is unchanged (virtio 1.3 5.17.6 status ERR).

An operator who sees a guest's GPIO request fail runs the server with ``--log-level debug``
and reads why; at the default level nothing is logged and nothing is formatted.
"""
from __future__ import annotations

import logging
import struct

import pytest

from vfio_virtio.backends.sim import SimBackend
from vfio_virtio.gpio import spec as G
from vfio_virtio.gpio.controller import GpioController

LOGGER = "vfio_virtio.gpio.controller"
ERR2 = bytes([G.VIRTIO_GPIO_STATUS_ERR, 0])
M = G


def req(mtype: int, gpio: int = 0, value: int = 0) -> bytes:
    return struct.pack(G.VIRTIO_GPIO_REQUEST_FMT, mtype, gpio, value)


def make(names=None, irq=True) -> GpioController:
    c = GpioController(SimBackend(4, names))
    c.irq_feature = irq
    return c


def out_with_rising(c: GpioController) -> GpioController:
    c.handle(req(M.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 1, M.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING), 2)
    return c


CASES = [
    # (controller, request bytes, response capacity, expected answer, words in the reason)
    ("short request", make, b"\x04\x00", 2, ERR2, "request of 2 bytes, not 8"),
    ("no names", make, req(M.VIRTIO_GPIO_MSG_GET_LINE_NAMES), 1, b"\x01",
     "no line is named"),
    ("names buffer", lambda: make(["a"]), req(M.VIRTIO_GPIO_MSG_GET_LINE_NAMES), 2, ERR2,
     "response buffer of 2 bytes, not 6"),        # 1 + "a" and 4 NULs
    ("response size", make, req(M.VIRTIO_GPIO_MSG_GET_VALUE, 0), 4, ERR2,
     "response buffer of 4 bytes, not 2"),
    ("gpio range", make, req(M.VIRTIO_GPIO_MSG_GET_VALUE, 4), 2, ERR2,
     "gpio 4 out of range (ngpio 4)"),
    ("unknown type", make, req(0x77, 1), 2, ERR2, "unknown message type 119"),
    ("direction", make, req(M.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, 9), 2, ERR2,
     "not a direction"),
    ("out with irq", lambda: out_with_rising(make()),
     req(M.VIRTIO_GPIO_MSG_SET_DIRECTION, 1, M.VIRTIO_GPIO_DIRECTION_OUT), 2, ERR2,
     "SET_DIRECTION OUT while an irq type is set"),
    ("value", make, req(M.VIRTIO_GPIO_MSG_SET_VALUE, 1, 2), 2, ERR2, "a value is 0 or 1"),
    ("no irq feature", lambda: make(irq=False),
     req(M.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 1, M.VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH), 2, ERR2,
     "without VIRTIO_GPIO_F_IRQ"),
    ("irq type", make, req(M.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 1, 5), 2, ERR2,
     "not an irq type"),
    ("change through NONE", lambda: out_with_rising(make()),
     req(M.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 1, M.VIRTIO_GPIO_IRQ_TYPE_EDGE_FALLING), 2, ERR2,
     "only through NONE"),
]


@pytest.mark.parametrize("name,make_ctl,data,cap,answer,why", CASES,
                         ids=[c[0] for c in CASES])
def test_err_is_logged_with_its_reason(caplog, name, make_ctl, data, cap, answer, why):
    c = make_ctl()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert c.handle(data, cap) == answer
    errs = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(errs) == 1 and errs[0].startswith("requestq ERR: ") and why in errs[0], errs


def test_output_line_cannot_get_an_irq_type(caplog):
    c = make()
    c.handle(req(M.VIRTIO_GPIO_MSG_SET_DIRECTION, 2, M.VIRTIO_GPIO_DIRECTION_OUT), 2)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert c.handle(req(M.VIRTIO_GPIO_MSG_SET_IRQ_TYPE, 2, 1), 2) == ERR2
    assert "message type 6 gpio 2 value 1: an output line cannot have an irq type" in \
        caplog.text


def test_ok_answers_and_default_level_log_nothing(caplog):
    c = make()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert c.handle(req(M.VIRTIO_GPIO_MSG_GET_VALUE, 1), 2) == b"\x00\x00"
    assert not caplog.records
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert c.handle(req(M.VIRTIO_GPIO_MSG_SET_VALUE, 1, 7), 2) == ERR2
    assert not caplog.records
