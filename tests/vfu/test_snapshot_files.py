"""Hostile snapshot files for --restore (issue 13): every bad file is refused with one line
and a non-zero exit before the server starts; never a traceback, never a server that starts
with invalid state, never a hang (FIFOs, /dev/zero). A good snapshot still restores."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from vfio_virtio_kit.server_proc import TOP, ServerProcess
from vfio_virtio_kit.vfio_user import VfioUserClient


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfio_virtio", *args], cwd=TOP,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    """A real snapshot, saved at exit by a server a driver used."""
    d = tmp_path_factory.mktemp("snap")
    path = str(d / "good.json")
    srv = ServerProcess("--snapshot", path, workdir=str(d / "srv"))
    srv.start()
    try:
        with VfioUserClient(srv.socket) as c:
            assert c.cfg_read16(0) == 0x1AF4
    finally:
        assert srv.stop() == 0
    with open(path) as f:
        return json.load(f)


def refused(tmp_path, content: str | bytes | None = None, path: str | None = None) -> str:
    """Run the server with --restore of ``content`` (or ``path``); it must exit 1 with one
    error line and no traceback. Returns that line."""
    if path is None:
        path = str(tmp_path / "snap.json")
        with open(path, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
    try:
        r = run_cli("--socket", str(tmp_path / "s.sock"), "--restore", path, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the server started (or hung) with a bad snapshot")
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1 and "cannot restore snapshot" in lines[0], r.stderr[-2000:]
    assert not os.path.exists(tmp_path / "s.sock") and not os.path.exists(tmp_path / "s.sock.lock")
    return lines[0]


@pytest.mark.parametrize("text", ["null", "42", "[1, 2]", '"snapshot"', "[" * 100000 + "]" * 100000,
                                  '{"format": 1e400}', "{", "\xff\xfe", "NaN"],
                         ids=["null", "number", "list", "string", "deep", "1e400", "truncated",
                              "binary", "nan"])
def test_malformed_documents(tmp_path, text):
    refused(tmp_path, text.encode("latin-1"))


def _set(d: dict, path: str, value) -> dict:
    d = copy.deepcopy(d)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return d


BAD_VALUES = [
    ("core.device.held_heads", [1, 2]),
    ("pm.state", -1), ("pm.state", 7), ("pm.state", 1), ("pm.state", "0"),
    ("core.status", -1), ("core.status", 256), ("core.status", 2.5), ("core.status", True),
    ("core.driver_features", 1 << 64), ("core.config_generation", 10 ** 30),
    ("transport.dfselect", 1 << 40), ("transport.queue_select", -5), ("transport.isr", 99),
    ("transport.config_vector", 7), ("transport.queue_vectors", [0]),
    ("core.queues", []), ("core.queues.0.size", 3), ("core.queues.0.size", 1 << 16),
    ("core.queues.0.enabled", 1), ("core.queues.1.last_avail_idx", 1 << 16),
    ("core.device.controller.ngpio", 9), ("core.device.controller.held", [99]),
    ("core.device.controller.lines", {"0": {"direction": 1, "value": 1, "irq_type": 1,
                                            "latched": False}}),
    ("core.device.controller.lines", {"8": {"direction": 1, "value": 0, "irq_type": 0,
                                            "latched": False}}),
    ("core.device.controller.lines", {"0": {"direction": 5, "value": 0, "irq_type": 0,
                                            "latched": False}}),
    ("core.device", None), ("pm", []), ("transport", "x"), ("lines", 9), ("lines", 8.0),
]


@pytest.mark.parametrize("path,value", BAD_VALUES,
                         ids=[f"{p}={json.dumps(v)[:20]}" for p, v in BAD_VALUES])
def test_bad_values_are_refused_before_anything_applies(tmp_path, good, path, value):
    refused(tmp_path, json.dumps(_set(good, path, value)))


def test_held_head_for_a_line_not_held(tmp_path, good):
    refused(tmp_path, json.dumps(_set(good, "core.device.held_heads", {"3": 0})))


def test_unknown_key_is_refused(tmp_path, good):
    refused(tmp_path, json.dumps(_set(good, "core.surprise", 1)))


def test_oversized_file(tmp_path, good):
    refused(tmp_path, json.dumps(good) + " " * (2 << 20))


def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    assert "not a regular file" in refused(tmp_path, path=fifo)


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/"], ids=str)
def test_device_files_and_directories_are_refused(tmp_path, path):
    refused(tmp_path, path=path)


def test_good_snapshot_restores_and_old_msix_enabled_key_is_accepted(tmp_path, good,
                                                                      server_factory):
    assert "msix_enabled" not in good                  # no longer written (never read)
    path = str(tmp_path / "old.json")
    with open(path, "w") as f:
        json.dump(dict(good, msix_enabled=True), f)
    srv = server_factory("--restore", path)
    with VfioUserClient(srv.socket) as c:
        assert c.cfg_read16(0) == 0x1AF4
