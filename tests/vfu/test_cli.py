"""Operator input: every bad flag gets a clear one-line error and a non-zero exit, never a
traceback; a socket held by a live server is refused; a stale one is replaced."""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from vfio_virtio_kit.server_proc import TOP
from vfio_virtio_kit.vfio_user import VfioUserClient


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


# --- issue 13: operator input that must never destroy files or leave a broken server -------

def test_socket_naming_a_regular_file_is_refused_and_kept(tmp_path):
    """--socket naming an existing regular file: refused, the file is not deleted."""
    victim = tmp_path / "important.txt"
    victim.write_text("keep me\n")
    r = run_cli("--socket", str(victim), timeout=20)
    assert r.returncode == 1, r.stderr
    assert "not a socket" in r.stderr and "Traceback" not in r.stderr
    assert victim.read_text() == "keep me\n"
    assert not os.path.exists(str(victim) + ".lock")


@pytest.mark.parametrize("same", ["same", "relative"])
def test_control_equal_to_socket_is_refused(tmp_path, same):
    sock = tmp_path / "s.sock"
    other = str(sock) if same == "same" else os.path.relpath(sock, TOP)
    r = run_cli("--socket", str(sock), "--control", other, timeout=20)
    assert r.returncode == 2, r.stderr
    assert "--control" in r.stderr and "--socket" in r.stderr and "Traceback" not in r.stderr
    assert not sock.exists()


@pytest.mark.parametrize("fd", ["0", "1", "2"])
def test_ready_fd_of_a_standard_stream_is_refused_in_one_line(tmp_path, fd):
    r = run_cli("--socket", str(tmp_path / "s.sock"), "--ready-fd", fd, timeout=20)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "--ready-fd" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.parametrize("where", ["missing_dir", "a_directory"])
def test_snapshot_path_is_checked_at_start(tmp_path, where):
    target = tmp_path / "nodir" / "s.json" if where == "missing_dir" else tmp_path
    r = run_cli("--socket", str(tmp_path / "s.sock"), "--snapshot", str(target), timeout=20)
    assert r.returncode == 2, r.stderr
    assert "--snapshot" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s.sock").exists()


def test_snapshot_save_failure_at_exit_still_cleans_up(server_factory, tmp_path):
    """The snapshot's directory vanishes while the server runs: at SIGTERM the save fails
    with one logged line, and the socket and its lock are still removed."""
    d = tmp_path / "snapdir"
    d.mkdir()
    srv = server_factory("--snapshot", str(d / "s.json"))
    d.rmdir()
    rc = srv.stop()
    log = srv.log_tail(200)
    assert "Traceback" not in log, log
    assert "snapshot" in log and rc == 1
    assert not os.path.exists(srv.socket) and not os.path.exists(srv.socket + ".lock")


def test_names_file_fifo_is_refused_without_hanging(tmp_path):
    fifo = str(tmp_path / "names")
    os.mkfifo(fifo)
    r = run_cli("--socket", str(tmp_path / "s.sock"), "--names-file", fifo, timeout=20)
    assert r.returncode == 2, r.stderr
    assert "not a regular file" in r.stderr and "Traceback" not in r.stderr


def _loaded_binding(pid: int) -> bool:
    """The process has mapped the libvfio-user binding: it is importing the server, well
    past interpreter start-up and before the server's signal handlers exist."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "_vfu" in f.read()
    except OSError:
        return False


def test_sigusr1_during_start_up_does_not_kill(tmp_path):
    """SIGUSR1 (save a snapshot) sent over and over while the server starts: it is held
    until the handler is ready, then served (a snapshot is written); the server lives."""
    snap = tmp_path / "s.json"
    r, w = os.pipe()
    p = subprocess.Popen([sys.executable, "-m", "vfio_virtio", "--socket",
                          str(tmp_path / "s.sock"), "--snapshot", str(snap),
                          "--ready-fd", str(w)], cwd=TOP, pass_fds=[w],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(w)
    try:
        t0 = time.monotonic()
        while not _loaded_binding(p.pid) and p.poll() is None and time.monotonic() - t0 < 30:
            time.sleep(0.001)         # pacing of a /proc poll (the start-up has no event)
        ready = b""
        while not ready and p.poll() is None and time.monotonic() - t0 < 30:
            p.send_signal(signal.SIGUSR1)
            if select.select([r], [], [], 0.001)[0]:
                ready = os.read(r, 100)
        assert ready.startswith(b"READY"), (p.poll(), p.stderr.read(2000) if p.poll() else "")
        end = time.monotonic() + 10
        while not snap.exists() and time.monotonic() < end:
            time.sleep(0.01)          # the saved file is the only thing to observe
        assert snap.exists() and p.poll() is None
    finally:
        os.close(r)
        p.terminate()
        p.wait(10)
        p.stderr.close()
