"""vfio-virtio-gpio-ctl against the real server (sim backend), run as a user runs it.

Every test runs the tool as a separate process and checks what a person at the shell sees:
stdout lines, stderr messages and exit codes (0 ok, 1 error, 2 usage, as gpiod and argparse
use them). The other end is the real server; the guest side is a real vfio-user client
(GpioDriver), so "the guest sees it" is checked through the device, not through a mock.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vfio_virtio.client import ControlClient
from vfio_virtio.ctl import format_event, main
from vfio_virtio.gpio import spec as G
from vfio_virtio_kit.gpio_driver import GpioDriver
from vfio_virtio_kit.server_proc import ServerProcess

NAMES = "led,l1,button,l3,alarm"          # lines 5-7 stay unnamed
LED, BUTTON, ALARM = 0, 2, 4
TOOL = [sys.executable, "-m", "vfio_virtio.ctl"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = ServerProcess("--lines", "8", "--names", NAMES,
                      workdir=str(tmp_path_factory.mktemp("ctl"))).start()
    yield s
    s.stop()


def ctl(srv, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*TOOL, "--control", srv.control, *args], capture_output=True,
                          text=True, timeout=timeout)


def start_monitor(srv, *args: str) -> subprocess.Popen:
    """A monitor process that has printed its banner, i.e. is watching."""
    p = subprocess.Popen([*TOOL, "--control", srv.control, "monitor", "--banner", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    banner = read_line(p, 30)
    assert banner.startswith("Monitoring"), (banner, p.stderr.read() if p.poll() else "")
    return p


def read_line(p: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, "no output from the tool"
    return p.stdout.readline().rstrip("\n")


def host_set(srv, line: int, value: int) -> None:
    with ControlClient(srv.control) as c:
        c.set(line, value)


# ---- get / set ----------------------------------------------------------------------------
def test_set_by_name_reaches_the_guest_and_get_shows_it(srv):
    r = ctl(srv, "set", "button=1", "l3=0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    with GpioDriver.open(srv.socket) as d:
        assert d.get_value(BUTTON) == 1 and d.get_value(3) == 0
    r = ctl(srv, "get", "button", "3")
    assert (r.returncode, r.stdout) == (0, '"button"=active "3"=inactive\n')
    r = ctl(srv, "set", "button=off")
    r = ctl(srv, "get", "--numeric", "button")
    assert (r.returncode, r.stdout) == (0, "0\n")


@pytest.mark.parametrize("word,value", [("1", 1), ("active", 1), ("on", 1), ("true", 1),
                                        ("0", 0), ("inactive", 0), ("off", 0),
                                        ("false", 0)])
def test_set_accepts_gpioset_value_words(srv, word, value):
    assert ctl(srv, "set", f"6={word}").returncode == 0
    with ControlClient(srv.control) as c:
        assert c.get(6)["input"] == value


def test_get_shows_what_the_guest_drives(srv):
    with GpioDriver.open(srv.socket) as d:
        d.set_direction(LED, G.VIRTIO_GPIO_DIRECTION_OUT)
        d.set_value(LED, 1)
        r = ctl(srv, "--unquoted", "get", "led")
        assert (r.returncode, r.stdout) == (0, "led=active\n")
        r = ctl(srv, "info", "led", "7")
    assert r.returncode == 0, r.stderr
    head, led, seven = r.stdout.splitlines()
    assert head == f"{srv.control} - 8 lines:"
    assert led.split() == ["line", "0:", '"led"', "output", "value=1", "host-input=0"]
    assert seven.split()[:4] == ["line", "7:", "unnamed", "input"]


def test_info_lists_every_line(srv):
    r = ctl(srv, "info")
    assert r.returncode == 0
    rows = r.stdout.splitlines()[1:]
    assert [row.split()[2] for row in rows] == \
        ['"led"', '"l1"', '"button"', '"l3"', '"alarm"', "unnamed", "unnamed", "unnamed"]


# ---- errors a user sees -------------------------------------------------------------------
@pytest.mark.parametrize("args,code,message", [
    (["get", "nope"], 1, "cannot find line 'nope'"),
    (["get", "\u00b2"], 1, "cannot find line '\u00b2'"),          # a digit, not ASCII
    (["get", "8"], 1, "cannot find line '8'"),                     # offsets 0..7
    (["--by-name", "get", "0"], 1, "cannot find line '0'"),
    (["get", "led", "0"], 1, "lines 'led' and '0' are the same line"),
    (["set", "nope=1"], 1, "cannot find line 'nope'"),
    (["set", "led=2"], 2, "invalid line value: '2'"),
    (["set", "led"], 2, "invalid line value assignment: 'led'"),
    (["set", "=1"], 2, "invalid line value assignment: '=1'"),
    (["monitor", "-n", "x"], 2, "invalid number"),
    (["monitor", "--idle-timeout", "soon"], 2, "invalid period"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_bad_arguments_give_one_line_and_the_gpiod_exit_code(srv, args, code, message):
    r = ctl(srv, *args)
    assert r.returncode == code, r
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_nothing_is_set_when_one_line_is_unknown(srv):
    host_set(srv, 5, 0)
    r = ctl(srv, "set", "5=1", "nope=1")
    assert r.returncode == 1
    with ControlClient(srv.control) as c:
        assert c.get(5)["input"] == 0


def test_unreachable_socket(tmp_path):
    for path in (tmp_path / "missing.sock", tmp_path):      # absent; not a socket
        r = subprocess.run([*TOOL, "--control", str(path), "get", "0"], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 1
        assert r.stderr.startswith(f"vfio-virtio-gpio-ctl: cannot connect to control socket "
                                   f"{path}: ") and "Traceback" not in r.stderr


def test_usage_without_control_or_command():
    r = subprocess.run(TOOL, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--control" in r.stderr


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "vfio-virtio-gpio-ctl"
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "monitor" in r.stdout


# ---- monitor ------------------------------------------------------------------------------
def test_monitor_prints_edges_and_stops_after_num_events(srv):
    host_set(srv, ALARM, 0)
    p = start_monitor(srv, "--num-events", "2", "alarm")
    host_set(srv, BUTTON, 1)                 # a line not monitored: no output
    host_set(srv, ALARM, 1)
    host_set(srv, ALARM, 1)                  # no change, no edge
    host_set(srv, ALARM, 0)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    lines = [ln.split("\t") for ln in out.splitlines()]
    assert [(e, who) for _, e, who in lines] == [("rising", '"alarm"'), ("falling", '"alarm"')]
    t0, t1 = (float(ts) for ts, _, _ in lines)
    assert 0 < t0 <= t1


def test_monitor_format_and_edge_filter(srv):
    host_set(srv, 7, 0)
    p = start_monitor(srv, "-n", "1", "--edges", "falling", "-F", "%o %l %e %E %s %% %x", "7")
    host_set(srv, 7, 1)                      # rising: filtered out
    host_set(srv, 7, 0)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out) == (0, "7 unnamed 2 falling host % %x\n"), err


def test_monitor_sees_the_guest_driving_an_output(srv):
    p = start_monitor(srv, "-n", "1", "-F", "%l %E %s", "l1")
    with GpioDriver.open(srv.socket) as d:
        d.set_direction(1, G.VIRTIO_GPIO_DIRECTION_OUT)
        d.set_value(1, 1)
        out, err = p.communicate(timeout=30)
    assert (p.returncode, out) == (0, "l1 rising guest\n"), err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_monitor_stops_cleanly_on_signal(srv, sig):
    host_set(srv, 5, 0)
    p = start_monitor(srv)
    host_set(srv, 5, 1)
    assert read_line(p, 30).endswith("\trising\t5")
    p.send_signal(sig)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out, err) == (0, "", "")


def test_monitor_idle_timeout_ends_quietly(srv):
    t = time.monotonic()
    r = ctl(srv, "monitor", "--idle-timeout", "200ms", "alarm")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert time.monotonic() - t >= 0.2


def test_monitor_reports_a_server_that_goes_away(tmp_path):
    s = ServerProcess("--lines", "2", workdir=str(tmp_path)).start()
    try:
        p = start_monitor(s)
    finally:
        s.stop()
    out, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "Traceback" not in err and "control" in err


# ---- formatting (in process) --------------------------------------------------------------
def test_format_specifiers_follow_gpiomon():
    wall = 86400 + 3661.5                    # 1970-01-02T01:01:01.5 UTC
    got = format_event("[%o|%l|%e|%E|%S|%U|%%|%q|%]", 3, "", 1, "host", 12.25, wall)
    assert got == "[3|unnamed|1|rising|12.250000000|1970-01-02T01:01:01.500000000Z|%|%q|%]"
    assert format_event("%", 0, "a", 2, "guest", 0, 0) == "%"


def test_main_returns_exit_codes_in_process(tmp_path, capsys):
    assert main(["--control", str(tmp_path / "none"), "info"]) == 1
    assert main(["--control", "x", "get"]) == 2
    assert "cannot connect" in capsys.readouterr().err


# ---- a peer that does not speak the protocol (hostile or simply the wrong socket) -----------
class FakePeer:
    """A UNIX socket whose every reply comes from ``answer(request) -> bytes`` (None: stay
    silent; b"": hang up)."""

    def __init__(self, path: Path, answer) -> None:
        import socket
        import threading
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.path, self.answer = str(path), answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import json
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                for line in conn.makefile("rb"):
                    out = self.answer(json.loads(line))
                    if out is None:
                        continue
                    if out == b"":
                        break
                    conn.sendall(out)

    def close(self) -> None:
        self.sock.close()


def _info(req, **extra) -> bytes:
    import json
    return (json.dumps({"ok": True, "id": req["id"], "lines": 2, "names": [], **extra})
            + "\n").encode()


@pytest.mark.parametrize("name,answer,message", [
    ("not json", lambda req: b"hello\n", "not a control-protocol reply: b'hello'"),
    ("json list", lambda req: b"[1]\n", "not a control-protocol reply: b'[1]'"),
    ("bad info", lambda req: _info(req, lines="x"), "unexpected reply from"),
    ("bad value", lambda req: _info(req, line=0, value=7), "unexpected reply for line 0"),
    ("hangs up", lambda req: b"", "lost the control socket"),
    ("silent", lambda req: None, "no reply from"),
])
def test_a_peer_that_is_not_a_control_socket(tmp_path, name, answer, message):
    peer = FakePeer(tmp_path / "peer.sock", answer)
    try:
        r = subprocess.run([*TOOL, "--control", peer.path, "--timeout", "1", "get", "0"],
                           capture_output=True, text=True, timeout=30)
    finally:
        peer.close()
    assert r.returncode == 1 and message in r.stderr, r
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_client_api_raises_protocol_error(tmp_path):
    from vfio_virtio.client import ControlProtocolError
    peer = FakePeer(tmp_path / "peer.sock", lambda req: b"\xff\xfe\n")
    try:
        with ControlClient(peer.path, timeout=5) as c, pytest.raises(ControlProtocolError):
            c.info()
    finally:
        peer.close()


def test_the_vfio_user_socket_is_not_a_control_socket(srv):
    """A user who passes --socket's path by mistake gets one line, and the server lives."""
    r = subprocess.run([*TOOL, "--control", srv.socket, "--timeout", "2", "get", "0"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r
    assert srv.alive()
    assert ctl(srv, "get", "0").returncode == 0
