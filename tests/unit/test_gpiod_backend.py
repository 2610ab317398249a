"""GpiodBackend against a real gpiochip (the kernel's gpio-sim via configfs) when one can be
made, and its mapping logic against a stand-in chip that uses the real libgpiod settings
classes otherwise."""
from __future__ import annotations

import os
import select
import types
import uuid

import pytest

gpiod = pytest.importorskip("gpiod", reason="libgpiod 2.x Python bindings (PyPI gpiod) "
                            "not installed")

from vfio_virtio.backends import gpiod_backend as gb  # noqa: E402
from vfio_virtio.backends.base import DIR_IN, DIR_NONE, DIR_OUT, EDGE_BOTH  # noqa
from vfio_virtio.backends.gpiod_backend import GpiodBackend, parse_offsets  # noqa: E402

CONFIGFS = "/sys/kernel/config/gpio-sim"


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


@pytest.fixture
def gpio_sim():
    """A live gpio-sim chip with 8 lines: yields (chip_path, sim_line_dir(line))."""
    if not os.path.isdir(CONFIGFS):
        pytest.skip("no gpio-sim: /sys/kernel/config/gpio-sim missing (kernel without "
                    "CONFIG_GPIO_SIM, module not loadable, or configfs not mounted)")
    dev = os.path.join(CONFIGFS, f"vv-{uuid.uuid4().hex[:8]}")
    bank = os.path.join(dev, "bank0")
    try:
        os.mkdir(dev)
        os.mkdir(bank)
        _write(os.path.join(bank, "num_lines"), "8")
        _write(os.path.join(dev, "live"), "1")
    except OSError as e:
        pytest.skip(f"cannot create a gpio-sim chip: {e}")
    chip = _read(os.path.join(bank, "chip_name"))
    devname = _read(os.path.join(dev, "dev_name"))
    base = f"/sys/devices/platform/{devname}/{chip}"
    yield f"/dev/{chip}", lambda line: f"{base}/sim_gpio{line}"
    _write(os.path.join(dev, "live"), "0")
    os.rmdir(bank)
    os.rmdir(dev)


def test_real_chip_inputs_outputs_and_edges(gpio_sim):
    path, sim_line = gpio_sim
    be = GpiodBackend(path)
    try:
        assert be.nlines == 8 and be.get_direction(0) == DIR_IN
        be.set_direction(1, DIR_OUT, 1)
        assert _read(sim_line(1) + "/value") == "1"
        be.set_value(1, 0)
        assert _read(sim_line(1) + "/value") == "0"
        be.set_edge(2, EDGE_BOTH)
        _write(sim_line(2) + "/pull", "pull-up")
        assert select.select([be.fileno()], [], [], 5.0)[0], "no edge event within 5 s"
        assert be.read_events() == [(2, 1)]
        assert be.get_value(2) == 1
        be.reset_lines()
        assert be.get_direction(1) == DIR_IN
    finally:
        be.close()


# ---- stand-in chip: exercises the backend's own logic with libgpiod's real settings ----

class FakeRequest:
    def __init__(self, config):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK) if hasattr(os, "eventfd") else os.pipe()[0]
        self.config = {}
        self._store(config)
        self.values = {}
        self.events: list = []
        self.released = False

    def _store(self, config):
        for key, settings in config.items():
            for off in (key if isinstance(key, tuple) else (key,)):
                self.config[off] = settings

    def reconfigure_lines(self, config):
        self.config = {}
        self._store(config)

    def get_value(self, off):
        return gpiod.line.Value.ACTIVE if self.values.get(off) else gpiod.line.Value.INACTIVE

    def set_value(self, off, v):
        self.values[off] = v == gpiod.line.Value.ACTIVE

    def wait_edge_events(self, timeout):
        return bool(self.events)

    def read_edge_events(self):
        ev, self.events = self.events, []
        return ev

    def release(self):
        self.released = True
        os.close(self.fd)


@pytest.fixture
def fake(monkeypatch):
    state = types.SimpleNamespace(request=None)

    class Chip:
        def __init__(self, path):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

        def get_info(self):
            return types.SimpleNamespace(num_lines=16)

        def get_line_info(self, off):
            return types.SimpleNamespace(name=f"chipline{off}" if off % 2 else "")

    def request_lines(path, consumer=None, config=None):
        state.request = FakeRequest(config)
        return state.request

    mod = types.SimpleNamespace(Chip=Chip, request_lines=request_lines,
                                is_gpiochip_device=lambda p: p == "/dev/fakechip",
                                LineSettings=gpiod.LineSettings, line=gpiod.line,
                                EdgeEvent=gpiod.EdgeEvent)
    monkeypatch.setattr(gb, "_import_gpiod", lambda: mod)
    return state


def test_selection_names_and_initial_inputs(fake):
    be = GpiodBackend("/dev/fakechip", offsets=[3, 4, 5, 9], lines=3)
    assert be.nlines == 3 and be.names == ["chipline3", "", "chipline5"]
    cfg = fake.request.config
    assert sorted(cfg) == [3, 4, 5]
    assert all(s.direction == gpiod.line.Direction.INPUT for s in cfg.values())
    with pytest.raises(ValueError, match="3 names for 2 lines"):
        GpiodBackend("/dev/fakechip", offsets=[1, 2], names=["a", "b", "c"])
    with pytest.raises(ValueError, match="lines 0..15"):
        GpiodBackend("/dev/fakechip", offsets=[16])
    with pytest.raises(ValueError, match="not a GPIO character device"):
        GpiodBackend("/dev/null")


def test_reconfigure_always_carries_every_line(fake):
    # libgpiod resets lines missing from a reconfigure: the backend must pass them all
    be = GpiodBackend("/dev/fakechip", offsets=[0, 1, 2])
    be.set_edge(0, EDGE_BOTH)
    be.set_direction(2, DIR_OUT, 1)
    cfg = fake.request.config
    assert cfg[0].edge_detection == gpiod.line.Edge.BOTH
    assert cfg[2].direction == gpiod.line.Direction.OUTPUT
    assert cfg[2].output_value == gpiod.line.Value.ACTIVE
    assert cfg[1].direction == gpiod.line.Direction.INPUT
    be.set_direction(1, DIR_NONE)
    assert fake.request.config[0].edge_detection == gpiod.line.Edge.BOTH
    assert be.get_direction(1) == DIR_NONE and be.get_value(2) == 1
    be.reset_lines()
    assert all(s.direction == gpiod.line.Direction.INPUT
               and s.edge_detection == gpiod.line.Edge.NONE
               for s in fake.request.config.values())


def test_edge_events_map_to_line_and_level(fake):
    be = GpiodBackend("/dev/fakechip", offsets=[7, 8])
    T = gpiod.EdgeEvent.Type
    fake.request.events = [
        types.SimpleNamespace(line_offset=8, event_type=T.RISING_EDGE),
        types.SimpleNamespace(line_offset=3, event_type=T.RISING_EDGE),   # not ours
        types.SimpleNamespace(line_offset=7, event_type=T.FALLING_EDGE)]
    assert be.read_events() == [(1, 1), (0, 0)]
    assert be.read_events() == []
    be.close()
    be.close()
    assert fake.request.released


def test_parse_offsets():
    assert parse_offsets("0-3,8") == [0, 1, 2, 3, 8]
    for bad in ("", "a", "3-1", "1,1", "1-", "-1"):
        with pytest.raises(ValueError):
            parse_offsets(bad)
