"""Fixtures for hardware-in-loop tests (real QEMU + Linux guest, see docs/HIL.md)."""

from __future__ import annotations

import ctypes
import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfio_virtio_kit.assets import GuestAssets, find_assets, libvfio_user_sample


@pytest.fixture(scope="session")
def guest_assets() -> GuestAssets:
    """QEMU + guest paths; errors with 'guest assets missing: run make setup' if absent."""
    return find_assets()


@pytest.fixture
def hil_logdir(tmp_path: Path) -> Path:
    """Per-test directory for console / QEMU / server logs (kept by pytest for inspection)."""
    d = tmp_path / "logs"
    d.mkdir()
    return d


_libc = ctypes.CDLL(None, use_errno=True)
_IN_CREATE, _IN_MOVED_TO, _IN_NONBLOCK, _IN_CLOEXEC = 0x100, 0x80, 0o4000, 0o2000000


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Wait until a vfio-user server has created its listening socket.

    libvfio-user's samples signal no readiness and the socket accepts exactly one client, so
    a probe connection is not allowed: wait on inotify for the socket file to appear in its
    directory (and on a pidfd, failing at once if the server dies), bounded by ``timeout``.
    """
    ifd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if ifd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    pidfd = os.pidfd_open(proc.pid)
    try:
        if _libc.inotify_add_watch(ifd, os.fsencode(path.parent), _IN_CREATE | _IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path.parent}")
        deadline = time.monotonic() + timeout
        while not path.is_socket():  # checked after the watch exists: no lost wake-up
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"vfio-user server did not create {path} within {timeout}s")
            ready, _, _ = select.select([ifd, pidfd], [], [], left)
            if pidfd in ready:
                proc.wait()
                raise RuntimeError(f"vfio-user server exited early (rc={proc.returncode})")
            if ifd in ready:
                try:
                    os.read(ifd, 4096)
                except BlockingIOError:
                    pass
    finally:
        os.close(ifd)
        os.close(pidfd)


@pytest.fixture
def idio16_server(hil_logdir: Path) -> Iterator[Path]:
    """libvfio-user's own C sample `gpio-pci-idio-16`, listening; yields its socket path."""
    sample = libvfio_user_sample("gpio-pci-idio-16")
    sock = hil_logdir / "idio16.sock"
    if len(os.fsencode(sock)) > 100:  # sun_path limit
        sock = Path(f"/tmp/vv-idio16-{os.getpid()}.sock")
    sock.unlink(missing_ok=True)
    log = open(hil_logdir / "idio16-server.log", "wb")
    proc = subprocess.Popen([str(sample), "-v", str(sock)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_socket(sock, proc)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        sock.unlink(missing_ok=True)
