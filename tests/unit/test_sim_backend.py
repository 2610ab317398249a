"""SimBackend: the in-memory line bank, device side and thread-safe host side."""
from __future__ import annotations

import select
import threading

import pytest

from vfio_virtio.backends import make_backend
from vfio_virtio.backends.base import DIR_IN, DIR_NONE, DIR_OUT, EDGE_BOTH
from vfio_virtio.backends.sim import MAX_PENDING_EVENTS, SimBackend
from vfio_virtio.loop import Loop


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


@pytest.fixture
def sim():
    s = SimBackend(8, ["a", "b"])
    yield s
    s.close()


@pytest.mark.parametrize("n", [0, -1, 65536, 10**9, True, "8", 2.0, None])
def test_refuses_bad_line_counts(n):
    with pytest.raises(ValueError):
        SimBackend(n)


@pytest.mark.parametrize("n", [1, 1024, 65535])
def test_accepts_line_counts(n):
    s = SimBackend(n)
    assert s.nlines == n and s.get_direction(n - 1) == DIR_IN
    s.close()


def test_names_padded_and_too_many_refused(sim):
    assert sim.names == ["a", "b", "", "", "", "", "", ""]
    assert SimBackend(2).names is None
    with pytest.raises(ValueError):
        SimBackend(2, ["a", "b", "c"])


@pytest.mark.parametrize("line", [-1, 8, 1 << 20, "1", 1.0, None, True])
def test_line_numbers_are_checked(sim, line):
    with pytest.raises(ValueError):
        sim.get_value(line)
    with pytest.raises(ValueError):
        sim.set_input(line, 1)


@pytest.mark.parametrize("level", [2, -1, "1", 1.0, None])
def test_set_input_level_is_checked(sim, level):
    with pytest.raises(ValueError):
        sim.set_input(0, level)


def test_input_change_is_an_event_that_wakes_the_fd(sim):
    fd = sim.fileno()
    assert not readable(fd)
    sim.set_input(3, 1)
    sim.set_input(3, 1)  # no change: no event
    sim.set_input(3, 0)
    assert readable(fd)
    assert sim.read_events() == [(3, 1), (3, 0)]
    assert not readable(fd) and sim.read_events() == []


def test_output_is_driven_and_host_level_seen_when_it_stops_driving(sim):
    sim.set_direction(2, DIR_OUT, 1)
    assert sim.get_value(2) == 1
    sim.set_input(2, 0)
    sim.set_input(2, 1)
    assert sim.read_events() == []  # the pin is driven by the guest: nothing sensed
    sim.set_value(2, 0)
    info = sim.get_line(2)
    assert (info["direction"], info["value"], info["input"]) == ("out", 0, 1)
    sim.set_direction(2, DIR_IN)
    assert sim.get_value(2) == 1


def test_set_value_on_non_output_is_refused(sim):
    with pytest.raises(ValueError):
        sim.set_value(0, 1)


def test_watchers_see_guest_and_host_changes(sim):
    seen = []
    sim.add_watcher(seen.append)
    sim.set_direction(1, DIR_OUT, 1)
    sim.set_value(1, 1)          # no change: no notification
    sim.set_input(4, 1)
    sim.set_direction(4, DIR_NONE)  # 'in' -> 'none': visible direction change
    assert [(e["line"], e["source"], e["direction"], e["value"]) for e in seen] == [
        (1, "guest", "out", 1), (4, "host", "in", 1), (4, "guest", "none", 1)]
    sim.remove_watcher(seen.append)
    sim.set_input(5, 1)
    assert len(seen) == 3


def test_reset_lines_releases_outputs_keeps_host_levels(sim):
    sim.set_input(0, 1)
    sim.set_direction(0, DIR_OUT, 0)
    sim.set_edge(1, EDGE_BOTH)
    sim.reset_lines()
    assert [sim.get_line(i)["direction"] for i in range(2)] == ["in", "in"]
    assert sim.get_value(0) == 1 and sim.get_line(1)["edge"] == "none"


def test_host_thread_wakes_the_loop():
    sim = SimBackend(4)
    loop = Loop()
    got = []
    loop.add_reader(sim.fileno(), lambda: got.extend(sim.read_events()))
    t = threading.Thread(target=sim.set_input, args=(2, 1))
    t.start()
    t.join(5)
    loop.run_once(5.0)
    assert got == [(2, 1)]
    loop.close()
    sim.close()


def test_event_flood_is_bounded_and_never_blocks(sim):
    for i in range(MAX_PENDING_EVENTS + 100):
        sim.set_input(0, i & 1 ^ 1)
    ev = sim.read_events()
    assert len(ev) == MAX_PENDING_EVENTS and ev[-1] == (0, (MAX_PENDING_EVENTS + 99) & 1 ^ 1)


def test_lines_snapshot_and_close_idempotent(sim):
    assert [d["line"] for d in sim.lines()] == list(range(8))
    assert sim.lines()[0] == {"line": 0, "name": "a", "direction": "in", "value": 0,
                              "input": 0, "edge": "none"}
    sim.close()
    sim.close()


@pytest.mark.parametrize("spec,msg", [
    ("", "empty backend"), ("bogus", "unknown backend"), ("sim:3", "takes no argument"),
    ("gpiod:", "expected gpiod:"), ("gpiod:dev/gpiochip0", "expected gpiod:"),
    ("gpiod:/nonexistent/gpiochip9", "not a GPIO character device"), ("gpiod:/dev/gpiochip0:x-1", "offset"),
])
def test_make_backend_errors_are_clear(spec, msg):
    with pytest.raises(ValueError, match=msg):
        make_backend(spec, 8, None)


def test_make_backend_sim():
    b = make_backend("sim", 3, ["x"])
    assert b.kind == "sim" and b.nlines == 3 and b.names == ["x", "", ""]
    b.close()
    with pytest.raises(ValueError):
        make_backend("sim", 0, None)
    with pytest.raises(ValueError):
        make_backend("sim", 1, ["a", "b"])
