"""Operator input: every bad flag gets a clear one-line error and a non-zero exit, never a
traceback; a socket held by a live server is refused; a stale one is replaced."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from vfio_virtio.testing.server_proc import TOP
from vfio_virtio.testing.vfio_user import VfioUserClient


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfio_virtio", *args], cwd=TOP,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args, message", [
    (["--lines", "0"], "between 1 and 1024"),
    (["--lines", "abc"], "not an integer"),
    (["--lines", "5000"], "between 1 and 1024"),
    (["--queue-size", "100"], "power of two"),
    (["--names", "a,a"], "unique"),
    (["--names", "a\x01"], "printable"),
    (["--lines", "2", "--names", "a,b,c"], "3 names given for 2 lines"),
    (["--names-file", "/nonexistent/names"], "cannot read names file"),
    (["--backend", "bogus"], "unknown backend"),
    (["--backend", "sim:x"], "takes no argument"),
    (["--ring", "rust"], "invalid choice"),
    (["--ready-fd", "987"], "not an open file descriptor"),
    (["--log-level", "loud"], "invalid choice"),
])
def test_bad_arguments_give_clear_errors(tmp_path, args, message):
    r = run_cli("--socket", str(tmp_path / "s.sock"), *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_socket_directory(tmp_path):
    r = run_cli("--socket", str(tmp_path / "nodir" / "s.sock"))
    assert r.returncode == 1
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_busy_socket_is_refused_and_live_server_untouched(server):
    r = run_cli("--socket", server.socket)
    assert r.returncode == 1
    assert "in use by a running server" in r.stderr
    with VfioUserClient(server.socket) as c:       # the live one still serves
        assert c.cfg_read16(0) == 0x1AF4


def test_stale_socket_is_replaced(tmp_path, server_factory):
    stale = tmp_path / "srv0" / "gpio.sock"
    stale.parent.mkdir()                           # the factory's workdir for server 0
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))                             # a socket file nobody listens on
    s.close()
    srv = server_factory()                         # same path: srv0/gpio.sock
    assert srv.socket == str(stale)
    with VfioUserClient(srv.socket) as c:
        assert c.cfg_read16(2) == 0x1069


def test_sigterm_removes_socket(server):
    assert os.path.exists(server.socket)
    assert server.stop() == 0
    assert not os.path.exists(server.socket)
    assert not os.path.exists(server.socket + ".lock")
