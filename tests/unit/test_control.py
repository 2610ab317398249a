"""Control socket (docs/CONTROL.md): protocol, hostile input, many clients, watch.

The server runs in a Loop on the test's thread; clients pump that loop while they wait
(``pump=lambda: loop.run_once(0.01)``), so there are no threads and no sleeps.
"""
from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from vfio_virtio.backends.base import DIR_OUT, Backend
from vfio_virtio.backends.control import (MAX_LINE, ControlClient, ControlError,
                                          ControlServer)
from vfio_virtio.backends.sim import SimBackend
from vfio_virtio.loop import Loop


class Env:
    def __init__(self, tmp_path, backend=None, info=None):
        self.loop = Loop()
        self.sim = backend or SimBackend(8, ["led", "button"])
        self.path = str(tmp_path / "ctl.sock")
        self.server = ControlServer(self.path, self.sim, self.loop, info=info)

    def pump(self) -> None:
        self.loop.run_once(0.01)

    def client(self) -> ControlClient:
        return ControlClient(self.path, timeout=5.0, pump=self.pump)

    def raw(self) -> ControlClient:
        return self.client()

    def close(self) -> None:
        self.server.close()
        self.loop.close()


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def test_socket_is_private_and_unlinked_on_close(tmp_path):
    e = Env(tmp_path)
    assert stat.S_IMODE(os.stat(e.path).st_mode) == 0o600
    e.close()
    assert not os.path.exists(e.path)


def test_stale_socket_replaced_other_file_refused(tmp_path):
    p = tmp_path / "ctl.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    s.close()
    e = Env(tmp_path)   # stale socket file from a dead server
    e.close()
    p.write_text("not a socket")
    with pytest.raises(FileExistsError):
        ControlServer(str(p), SimBackend(1), Loop())


def test_info_list_get(tmp_path):
    e = Env(tmp_path, info=lambda: {"device_status": 15})
    with e.client() as c:
        info = c.info()
        assert info["backend"] == "sim" and info["lines"] == 8 and info["protocol"] == 1
        assert info["names"][:2] == ["led", "button"] and info["device_status"] == 15
        lines = c.list()
        assert len(lines) == 8 and lines[1]["name"] == "button"
        assert c.get(0) == {"line": 0, "name": "led", "direction": "in", "value": 0,
                            "input": 0, "edge": "none"}
    e.close()


def test_set_drives_input_and_reaches_the_device(env):
    with env.client() as c:
        assert c.set(1, 1)["value"] == 1
    assert env.sim.read_events() == [(1, 1)]
    assert env.sim.get_value(1) == 1


def test_set_on_output_changes_input_level_only(env):
    env.sim.set_direction(0, DIR_OUT, 1)
    with env.client() as c:
        r = c.set(0, 0)
        assert (r["direction"], r["value"], r["input"]) == ("out", 1, 0)


@pytest.mark.parametrize("fields,err", [
    ({"line": 8, "value": 1}, "line must be"),
    ({"line": -1, "value": 1}, "line must be"),
    ({"line": "1", "value": 1}, "line must be"),
    ({"line": 1.0, "value": 1}, "line must be"),
    ({"line": True, "value": 1}, "line must be"),
    ({"value": 1}, "line must be"),
    ({"line": 1, "value": 2}, "value must be"),
    ({"line": 1, "value": True}, "value must be"),
    ({"line": 1, "value": "1"}, "value must be"),
    ({"line": 1}, "value must be"),
])
def test_set_rejects_bad_fields(env, fields, err):
    with env.client() as c:
        with pytest.raises(ControlError, match=err):
            c.request("set", **fields)
    assert env.sim.read_events() == []


@pytest.mark.parametrize("data,err", [
    (b"{not json\n", "bad JSON"),
    (b"\xff\xfe\x00garbage\n", "bad JSON"),
    (b"[1,2]\n", "JSON object"),
    (b"42\n", "JSON object"),
    (b"{}\n", "unknown op"),
    (b'{"op":"reboot"}\n', "unknown op"),
    (b'{"op":["get"]}\n', "unknown op"),
    (b'{"op":"get","line":null}\n', "line must be"),
    (b"[" * 60000 + b"\n", "bad JSON"),  # nesting deeper than the parser allows
])
def test_hostile_lines_get_error_replies_and_server_keeps_serving(env, data, err):
    with env.client() as c:
        c.send_raw(data)
        msg = c.read_message()
        assert msg["ok"] is False and err in msg["error"]
        assert c.get(0)["line"] == 0  # same connection still works


def test_blank_lines_ignored_and_ids_echoed(env):
    with env.client() as c:
        c.send_raw(b'\n  \n{"op":"info","id":"abc"}\n{"op":"bogus","id":7}\n')
        assert c.read_message()["id"] == "abc"
        assert c.read_message() == {"ok": False, "error": "unknown op 'bogus'", "id": 7}


@pytest.mark.parametrize("tail", [b"", b"\n"])
def test_line_longer_than_limit_is_refused_and_connection_closed(env, tail):
    with env.client() as c, env.client() as other:
        c.send_raw(b"x" * (MAX_LINE + 10) + tail)
        msg = c.read_message()
        assert msg["ok"] is False and "longer than" in msg["error"]
        with pytest.raises(ConnectionError):
            c.read_message()
        assert other.get(1)["name"] == "button"


def test_abrupt_disconnect_mid_line(env):
    c = env.client()
    c.send_raw(b'{"op":"li')
    c.close()
    for _ in range(5):
        env.pump()
    assert env.server.client_count == 0
    with env.client() as c2:
        assert len(c2.list()) == 8


def test_many_clients(env):
    clients = [env.client() for _ in range(20)]
    for i, c in enumerate(clients):
        c.send_raw(json.dumps({"op": "get", "line": i % 8, "id": i}).encode() + b"\n")
    for i, c in enumerate(clients):
        msg = c.read_message()
        assert msg["id"] == i and msg["line"] == i % 8
    assert env.server.client_count == 20
    for c in clients:
        c.close()


def test_watch_streams_guest_and_host_changes(env):
    with env.client() as c, c.watch() as w:
        env.sim.set_direction(0, DIR_OUT, 1)     # the guest drives line 0 high
        ev = w.wait_for(lambda e: e["line"] == 0)
        assert ev["event"] == "change" and ev["direction"] == "out" and ev["value"] == 1
        assert ev["source"] == "guest"
        c.set(1, 1)                              # another client drives an input
        ev = w.wait_for(lambda e: e["line"] == 1)
        assert (ev["value"], ev["source"]) == (1, "host")
        assert w.next_event(timeout=0.05) is None  # nothing else happened
        assert w.get(1)["value"] == 1  # requests still work on a watching connection


def test_watch_client_that_never_reads_is_dropped(env):
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(env.path)
    idle.sendall(b'{"op":"watch"}\n')
    env.pump()
    env.pump()
    assert env.server.client_count == 1
    for i in range(40000):
        env.sim.set_input(2, i & 1 ^ 1)
        if i % 1000 == 0:
            env.pump()
    for _ in range(5):
        env.pump()
    assert env.server.client_count == 0
    idle.close()


class InputOnly(Backend):
    kind = "fake"
    nlines = 2
    names = None

    def get_direction(self, line): return 0
    def set_direction(self, line, direction, value=0): pass
    def get_value(self, line): return 0
    def set_value(self, line, value): pass
    def set_edge(self, line, edge): pass
    def reset_lines(self): pass


def test_backend_that_cannot_drive_inputs(tmp_path):
    e = Env(tmp_path, backend=InputOnly())
    with e.client() as c:
        with pytest.raises(ControlError, match="cannot drive inputs"):
            c.set(0, 1)
        assert c.get(1) == {"line": 1, "name": "", "direction": "none", "value": 0}
        assert len(c.list()) == 2
    e.close()
