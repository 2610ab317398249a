"""The libvfio-user binding (vfio_virtio.vfu) in-process with a real client: errors become
OSError naming the call; a Python exception in a callback becomes an errno reply, never a
crash; callbacks reach their owning Context."""
from __future__ import annotations

import errno
import os
import select
import threading

import pytest

from vfio_virtio_kit.vfio_user import VfioUserClient, VfioUserError
from vfio_virtio.vfu import context as vfu


class Handler:
    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes]] = []

    def read(self, offset: int, count: int) -> bytes:
        if offset == 0x10:
            raise RuntimeError("a bug in a device model")
        if offset == 0x20:
            raise OSError(errno.EPERM, "refused")
        if offset == 0x30:
            return b"short"                        # wrong length: EIO, not garbage
        return bytes((offset + i) & 0xFF for i in range(count))

    def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, data))


@pytest.fixture
def served(tmp_path):
    sock = str(tmp_path / "b.sock")
    ctx = vfu.Context(sock)
    ctx.pci_init()
    ctx.set_ids(0x1AF4, 0x1069, 0x1AF4, 0x40)
    h = Handler()
    ctx.setup_region(vfu.BAR0, 0x1000, h, vfu.REGION_RW | vfu.REGION_MEM)
    resets = []
    ctx.setup_reset(resets.append)
    ctx.realize()
    stop = threading.Event()

    def serve() -> None:
        attached = False
        while not stop.is_set():
            r, _, _ = select.select([ctx.poll_fd], [], [], 0.05)
            if not r:
                continue
            if not attached:
                attached = ctx.attach()
                continue
            try:
                ctx.run()
            except ConnectionResetError:
                attached = False

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield sock, h, resets
    stop.set()
    t.join(5)
    ctx.destroy()


def test_create_in_missing_directory_names_the_call(tmp_path):
    with pytest.raises(OSError) as ei:
        vfu.Context(str(tmp_path / "missing" / "s.sock"))
    assert ei.value.errno == errno.ENOENT and "vfu_create_ctx" in str(ei.value)


def test_region_callbacks_reach_the_handler(served):
    sock, h, _ = served
    with VfioUserClient(sock) as c:
        assert c.region_read(0, 0x40, 4) == bytes([0x40, 0x41, 0x42, 0x43])
        c.region_write(0, 0x80, b"\x01\x02")
        assert h.writes == [(0x80, b"\x01\x02")]


@pytest.mark.parametrize("offset, err", [(0x10, errno.EIO), (0x20, errno.EPERM),
                                         (0x30, errno.EIO)])
def test_callback_failures_become_errno_replies(served, offset, err):
    sock, _, _ = served
    with VfioUserClient(sock) as c:
        with pytest.raises(VfioUserError) as ei:
            c.region_read(0, offset, 8)
        assert ei.value.errno == err
        assert c.region_read(0, 0, 2) == b"\x00\x01"        # the server carries on


def test_reset_callback_gets_the_reset_type(served):
    sock, _, resets = served
    with VfioUserClient(sock) as c:
        c.device_reset()
        c.cfg_read16(0)
    with VfioUserClient(sock) as c:                          # the lost connection was seen
        c.cfg_read16(0)
    assert resets[0] == vfu.RESET_DEVICE
    assert vfu.RESET_LOST_CONN in resets[1:]


def test_stale_extension_is_detected(tmp_path, monkeypatch):
    from vfio_virtio import _buildid
    src = tmp_path / "build_vfu.py"
    src.write_text("changed")
    with pytest.raises(ImportError, match="stale"):
        _buildid.check_build_id("vfio_virtio._vfu", "0000", [str(src)])
    assert os.path.exists(src)
