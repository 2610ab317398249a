"""Handover between server processes (vfio_virtio/handover.py, docs/HANDOVER.md), sim backend:
device state passes to the new process, which serves the same socket path; the lock moves
with it; a successor that cannot take the state leaves the old server serving."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vfio_virtio.gpio import spec as G
from vfio_virtio_kit.gpio_driver import GpioDriver
from vfio_virtio_kit.server_proc import TOP, ServerProcess


def _successor(workdir: str, hpath: str, *extra: str) -> ServerProcess:
    s = ServerProcess("--lines", "8", "--take-over", hpath, "--handover", hpath, *extra,
                      workdir=workdir)
    s.log_path = os.path.join(workdir, f"server-{os.urandom(3).hex()}.log")
    return s


def test_handover_carries_state_and_socket(tmp_path):
    wd = str(tmp_path)
    h = os.path.join(wd, "handover.sock")
    old = ServerProcess("--lines", "8", "--handover", h, workdir=wd).start()
    new = new2 = None
    try:
        d = GpioDriver.open(old.socket)
        d.set_value(0, 1)
        d.set_direction(0, G.VIRTIO_GPIO_DIRECTION_OUT)
        d.set_irq_type(3, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH)
        new = _successor(wd, h).start()
        assert old.proc.wait(10) == 0, old.log_tail()
        assert "handover complete" in old.log_tail()
        d.reattach(old.socket)                          # same path, the new process
        assert d.get_direction(0) == G.VIRTIO_GPIO_DIRECTION_OUT
        assert d.get_value(0) == 1
        d.set_value(0, 0)
        assert d.get_value(0) == 0
        # the lock moved: a third server on this socket is refused
        p = subprocess.run([sys.executable, "-m", "vfio_virtio", "--socket", old.socket],
                           cwd=TOP, capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and "in use" in p.stderr, p.stderr
        # the listener moved too: hand over once more
        new2 = _successor(wd, h).start()
        assert new.proc.wait(10) == 0, new.log_tail()
        d.reattach(old.socket)
        assert d.get_value(0) == 0 and d.get_direction(0) == G.VIRTIO_GPIO_DIRECTION_OUT
        d.close()
    finally:
        for s in (old, new, new2):
            if s is not None:
                s.stop()
    assert not os.path.exists(old.socket + ".lock")     # the last one cleaned up


def test_failed_successor_leaves_old_server_serving(tmp_path):
    wd = str(tmp_path)
    h = os.path.join(wd, "handover.sock")
    old = ServerProcess("--lines", "8", "--handover", h, workdir=wd).start()
    try:
        d = GpioDriver.open(old.socket)
        d.set_value(1, 1)
        d.set_direction(1, G.VIRTIO_GPIO_DIRECTION_OUT)
        bad = ServerProcess("--lines", "4", "--take-over", h, workdir=wd)   # state won't fit
        bad.log_path = os.path.join(wd, "bad.log")
        with pytest.raises(RuntimeError):
            bad.start()
        assert bad.proc.returncode == 1
        assert "handover aborted" in bad.log_tail()
        assert old.alive()
        assert d.get_value(1) == 1                      # same connection, still served
        other = ServerProcess("--backend", "sim", "--lines", "8", "--take-over",
                              os.path.join(wd, "nothing.sock"), workdir=wd)
        other.log_path = os.path.join(wd, "other.log")
        with pytest.raises(RuntimeError):
            other.start()
        assert "cannot reach" in other.log_tail()
        d.close()
    finally:
        old.stop()


def test_hostile_handover_peers_do_not_stop_the_server(tmp_path):
    """A peer on the handover socket that stays silent, sends junk or passes fds gets
    nothing and the server keeps serving (the silent one is dropped after 2 s)."""
    import socket as so
    wd = str(tmp_path)
    h = os.path.join(wd, "handover.sock")
    old = ServerProcess("--lines", "8", "--handover", h, workdir=wd).start()
    try:
        d = GpioDriver.open(old.socket)
        silent = so.socket(so.AF_UNIX, so.SOCK_SEQPACKET)
        silent.connect(h)
        silent.settimeout(10)
        assert silent.recv(100) == b""                  # dropped, no state sent
        silent.close()
        for junk in (b"\xff\xfe", b"[]", b'{"op":"hello","version":99}',
                     b'{"op":"hello","version":1,"backend":"gpiod:/dev/x"}'):
            s = so.socket(so.AF_UNIX, so.SOCK_SEQPACKET)
            s.connect(h)
            s.settimeout(10)
            r, w = os.pipe()
            so.send_fds(s, [junk], [r])
            os.close(r)
            os.close(w)
            reply, fds, _, _ = so.recv_fds(s, 1 << 16, 8)
            assert not fds and b'"state"' not in reply, reply
            s.close()
        assert old.alive() and d.get_value(0) == 0      # still served on the same connection
        d.close()
    finally:
        old.stop()


def test_take_over_flags(tmp_path):
    """--take-over carries the state: --restore beside it is a flag error (exit 2)."""
    p = subprocess.run([sys.executable, "-m", "vfio_virtio", "--socket",
                        str(tmp_path / "s.sock"), "--take-over", str(tmp_path / "h"),
                        "--restore", str(tmp_path / "snap.json")],
                       cwd=TOP, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "exclude each other" in p.stderr, p.stderr
