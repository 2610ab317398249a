"""The gpiod backend against a real kernel GPIO chip (gpio-sim), run INSIDE the gpio-sim test
guest (chroot into the host root, the project's venv). Part of vfio-virtio.

Starts our server with ``--backend gpiod:/dev/gpiochipN``, drives it with the driver-side
harness (VfioUserClient + VirtioPciDriver + GpioDriver) and prints one machine-readable line
per check: ``VV-CHECK {"name": ..., "ok": true|false, ...}``; tests/hil/test_gpiod_sim.py
parses them. Usage: ``python guest/gpiosim/checks.py [WORKDIR]``.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import traceback

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, TOP)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from simchip import Sampler, SimChip  # noqa: E402

from vfio_virtio.backends import gpio_uapi as U  # noqa: E402
from vfio_virtio.backends.control import ControlClient, ControlError  # noqa: E402
from vfio_virtio.gpio import spec as G  # noqa: E402
from vfio_virtio_kit.gpio_driver import GpioDriver  # noqa: E402
from vfio_virtio_kit.server_proc import ServerProcess  # noqa: E402

NAMES = ["led0", "relay", "btn", "rise", "fall", "both", "hi", "lo"]
OUT, IN_, RISE, FALL, BOTH, HI, LO = 1, 2, 3, 4, 5, 6, 7
NEG = 0.4            # seconds to wait for an event that must NOT come

WORK = sys.argv[1] if len(sys.argv) > 1 else "/tmp/vvsim"
os.makedirs(WORK, exist_ok=True)
T0 = time.monotonic()


def emit(name: str, ok: bool, **detail) -> None:
    print("VV-CHECK " + json.dumps({"name": name, "ok": bool(ok),
                                    "t": round(time.monotonic() - T0, 2), **detail}),
          flush=True)


@contextlib.contextmanager
def check(name: str, **extra):
    detail: dict = dict(extra)
    try:
        yield detail
    except Exception as e:
        emit(name, False, error=f"{type(e).__name__}: {e}"[:600],
             trace=traceback.format_exc()[-1500:], **detail)
    else:
        emit(name, True, **detail)


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def no_event(d: GpioDriver, what: str) -> None:
    try:
        got = d.events(timeout=NEG)
    except TimeoutError:
        return
    raise AssertionError(f"{what}: unexpected event {got}")


def one_event(d: GpioDriver, gpio: int, what: str) -> None:
    got = d.events(timeout=5.0)
    expect(got == [(gpio, G.VIRTIO_GPIO_IRQ_STATUS_VALID)], f"{what}: got {got}")


class InfoWatch:
    """The kernel's own record of a line: every request, release and reconfiguration of
    ``k`` (GPIO_V2_GET_LINEINFO_WATCH_IOCTL), however short, shows up here."""

    def __init__(self, chip: SimChip, k: int) -> None:
        self.fd = os.open(chip.dev, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.info = U.watch_line_info(self.fd, k)

    def changes(self) -> list[str]:
        names = {U.GPIO_V2_LINE_CHANGED_REQUESTED: "requested",
                 U.GPIO_V2_LINE_CHANGED_RELEASED: "released",
                 U.GPIO_V2_LINE_CHANGED_CONFIG: "config"}
        return [(c.timestamp_ns / 1e9, f"{names.get(c.event_type, c.event_type)} "
                 f"flags={c.info.flags:#x}") for c in U.read_info_changes(self.fd)]

    def close(self) -> None:
        os.close(self.fd)


def server(tag: str, *args: str) -> ServerProcess:
    return ServerProcess(*args, workdir=os.path.join(WORK, tag), control=False,
                         ready_timeout=60.0)


def status(d: GpioDriver, mtype: int, gpio: int, value: int = 0) -> int:
    return d.request(mtype, gpio, value)[0]


def check_basics(d: GpioDriver, chip: SimChip) -> None:
    with check("names") as r:
        r["names"] = d.names()
        expect(r["names"] == NAMES, f"GET_LINE_NAMES {r['names']} != chip names {NAMES}")
    with check("output"):
        for v in (1, 0, 1):
            d.set_value(OUT, v)
            if d.get_direction(OUT) != G.VIRTIO_GPIO_DIRECTION_OUT:
                d.set_direction(OUT, G.VIRTIO_GPIO_DIRECTION_OUT)
            expect(chip.value(OUT) == v, f"SET_VALUE {v}: sim value {chip.value(OUT)}")
    with check("input"):
        d.set_direction(IN_, G.VIRTIO_GPIO_DIRECTION_IN)
        for v in (1, 0, 1, 0):
            chip.pull(IN_, v)
            expect(d.get_value(IN_) == v, f"pull {v}: GET_VALUE {d.get_value(IN_)}")


def level_fires_while_active(d: GpioDriver, chip: SimChip, gpio: int, irq_type: int,
                             active: int) -> None:
    """A level interrupt (5.17: level types re-fire while the level holds): nothing while
    the line is inactive, one event per held buffer while active, nothing once inactive."""
    level = {1: "high", 0: "low"}
    chip.pull(gpio, 1 - active)
    d.set_irq_type(gpio, irq_type)
    d.queue_irq(gpio)
    no_event(d, f"level {level[1 - active]} on a level-{level[active]} line")
    chip.pull(gpio, active)
    one_event(d, gpio, f"level {level[active]}")
    d.queue_irq(gpio)
    one_event(d, gpio, f"level still {level[active]} re-fires")
    chip.pull(gpio, 1 - active)
    d.queue_irq(gpio)
    no_event(d, f"level back {level[1 - active]}")


def check_irqs(d: GpioDriver, chip: SimChip) -> None:
    T = G
    with check("irq_edge_rising"):
        chip.pull(RISE, 0)
        d.set_irq_type(RISE, T.VIRTIO_GPIO_IRQ_TYPE_EDGE_RISING)
        d.queue_irq(RISE)
        chip.pull(RISE, 1)
        one_event(d, RISE, "rising edge")
        # masked (no buffer): two rising edges latch into one
        chip.pull(RISE, 0)
        chip.pull(RISE, 1)
        chip.pull(RISE, 0)
        chip.pull(RISE, 1)
        expect(d.get_value(RISE) == 1, "level after the pulls")  # the edges reached the server
        d.queue_irq(RISE)
        one_event(d, RISE, "latched rising edge")
        d.queue_irq(RISE)
        no_event(d, "second latched edge (edges collapse)")
        chip.pull(RISE, 0)
        no_event(d, "falling edge on a rising-edge line")
        d.set_irq_type(RISE, T.VIRTIO_GPIO_IRQ_TYPE_NONE)
        d.events(timeout=5.0)                              # the held buffer, INVALID
    with check("irq_edge_falling"):
        chip.pull(FALL, 1)
        d.set_irq_type(FALL, T.VIRTIO_GPIO_IRQ_TYPE_EDGE_FALLING)
        d.queue_irq(FALL)
        chip.pull(FALL, 0)
        one_event(d, FALL, "falling edge")
        d.queue_irq(FALL)
        chip.pull(FALL, 1)
        no_event(d, "rising edge on a falling-edge line")
        chip.pull(FALL, 0)
        one_event(d, FALL, "falling edge after a rising one")
    with check("irq_edge_both"):
        chip.pull(BOTH, 0)
        d.set_irq_type(BOTH, T.VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH)
        for v in (1, 0, 1):
            d.queue_irq(BOTH)
            chip.pull(BOTH, v)
            one_event(d, BOTH, f"edge to {v}")
    with check("irq_level_high"):
        level_fires_while_active(d, chip, HI, T.VIRTIO_GPIO_IRQ_TYPE_LEVEL_HIGH, 1)
        d.set_irq_type(HI, T.VIRTIO_GPIO_IRQ_TYPE_NONE)
        d.events(timeout=5.0)
        # masked: a high pulse while no buffer is held is not latched
        d.set_irq_type(HI, T.VIRTIO_GPIO_IRQ_TYPE_LEVEL_HIGH)
        chip.pull(HI, 1)
        chip.pull(HI, 0)
        expect(d.get_value(HI) == 0, "level after the pulse")
        d.queue_irq(HI)
        no_event(d, "level pulse while masked (levels do not latch)")
    with check("irq_level_low"):
        level_fires_while_active(d, chip, LO, T.VIRTIO_GPIO_IRQ_TYPE_LEVEL_LOW, 0)


def check_d3hot(d: GpioDriver, chip: SimChip) -> None:
    with check("d3hot_nsr_output_kept") as r:
        d.set_value(OUT, 1)
        expect(chip.value(OUT) == 1, "output not driving 1 before D3hot")
        w = InfoWatch(chip, OUT)
        s = Sampler(chip, OUT).begin()
        d.drv.set_power_state(3)
        expect(d.drv.power_state() == 3, "not in D3hot")
        chip.pull(BOTH, 0)                  # input activity while suspended
        chip.pull(OUT, 0)                   # the sim's pull must not win over our output
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end and s.samples < 200:
            time.sleep(0.01)   # keep sampling for a while in D3hot (not a synchronisation)
        d.drv.set_power_state(0)
        expect(d.get_value(OUT) == 1, "output value after D0")
        r.update(s.stop())
        r["line_info_changes"] = [c for _, c in w.changes()]
        w.close()
        expect(r["first"] == 1 and r["changes"] == 0,
               f"sim value changed during D3hot: {r}")
        expect(not r["line_info_changes"], f"line reconfigured during D3hot: {r}")


def check_handover(d: GpioDriver, chip: SimChip, s1: ServerProcess,
                   spec: str) -> ServerProcess | None:
    """Replace the server process; the output is sampled throughout. Returns the new one."""
    s2 = None
    with check("handover") as r:
        expect(chip.value(OUT) == 1, "output not driving 1 before the handover")
        w = InfoWatch(chip, OUT)
        s = Sampler(chip, OUT).begin()
        t0 = time.monotonic()
        s2 = ServerProcess("--backend", spec, "--take-over", s1.socket + ".handover",
                           "--handover", s1.socket + ".handover",
                           workdir=s1.workdir, control=False, ready_timeout=60.0)
        s2.log_path = os.path.join(s1.workdir, "server2.log")
        try:
            s2.start()
        except Exception:
            r.update(s.stop())
            s2 = None
            raise
        r["handover_s"] = round(time.monotonic() - t0, 3)
        rc = s1.proc.wait(20)
        r["old_exit"] = rc
        d.reattach(s1.socket)
        expect(d.get_value(OUT) == 1, "GET_VALUE after the handover")
        # The client's own first change: everything the detectors saw before it would be a
        # glitch of the handover; what they see after it proves they are live.
        t_client = time.monotonic()
        d.set_value(OUT, 0)
        expect(chip.value(OUT) == 0, "new process does not drive the line")
        d.set_direction(OUT, G.VIRTIO_GPIO_DIRECTION_IN)       # a reconfiguration
        d.set_value(OUT, 1)
        d.set_direction(OUT, G.VIRTIO_GPIO_DIRECTION_OUT)      # and another one
        expect(chip.value(OUT) == 1, "new process does not drive the line")
        r.update(s.stop())
        info = w.changes()
        w.close()
        r["changes_before_client"] = sum(1 for t, _ in s.changes if t < t_client)
        r["line_info_before_client"] = [c for t, c in info if t < t_client]
        r["line_info_after_client"] = [c for t, c in info if t >= t_client]
        with open(s2.log_path) as f:
            m = [ln for ln in f if "exchange" in ln]
        r["exchange"] = m[-1].split("exchange", 1)[1].strip() if m else None
        expect(r["first"] == 1 and r["changes_before_client"] == 0,
               f"output changed across the handover: {r}")
        expect(not r["line_info_before_client"], f"line released or reconfigured: {r}")
        expect(len(r["line_info_after_client"]) == 2 and r["changes"] >= 1,
               f"detectors missed the client's own changes: {r}")
        chip.pull(BOTH, 0)
        d.queue_irq(BOTH)
        chip.pull(BOTH, 1)
        one_event(d, BOTH, "edge after the handover")
    return s2


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_chip_gone(d: GpioDriver, chip: SimChip, srv: ServerProcess) -> None:
    with check("chip_gone") as r:
        chip.set_live(False)
        st = [status(d, G.VIRTIO_GPIO_MSG_GET_VALUE, IN_),
              status(d, G.VIRTIO_GPIO_MSG_SET_VALUE, OUT, 0),
              status(d, G.VIRTIO_GPIO_MSG_SET_DIRECTION, 0, G.VIRTIO_GPIO_DIRECTION_OUT)]
        r["statuses"] = st
        expect(st == [G.VIRTIO_GPIO_STATUS_ERR] * 3, f"requests after removal: {st}")
        c0 = cpu_seconds(srv.proc.pid)
        t0 = time.monotonic()
        no_event(d, "eventq after removal")
        time.sleep(0.6)         # measuring CPU use over an interval, not synchronising
        used = cpu_seconds(srv.proc.pid) - c0
        r["server_cpu_share"] = round(used / (time.monotonic() - t0), 3)
        expect(srv.alive(), "server died after the chip went away")
        expect(r["server_cpu_share"] < 0.5, f"server spins: {r['server_cpu_share']}")
        chip.set_live(True)
        st2 = status(d, G.VIRTIO_GPIO_MSG_GET_VALUE, IN_)
        r["after_return"] = st2
        expect(st2 == G.VIRTIO_GPIO_STATUS_ERR, "documented: stays ERR until restart")
        rc = srv.stop()
        r["exit"] = rc
        expect(rc == 0, f"server exit status {rc} after the chip went away\n"
               f"{srv.log_tail(20)}")


def check_busy_and_soft_reset(chip: SimChip) -> None:
    spec = f"gpiod:{chip.dev}"
    cfd = os.open(chip.dev, os.O_RDWR | os.O_CLOEXEC)
    hold = U.request_lines(cfd, [2], "holder", U.build_config([U.GPIO_V2_LINE_FLAG_INPUT], [0]))
    with check("busy_line") as r:
        p = subprocess.run([sys.executable, "-m", "vfio_virtio", "--socket",
                            os.path.join(WORK, "busy.sock"), "--backend", spec],
                           cwd=TOP, capture_output=True, text=True, timeout=60)
        r["rc"], r["stderr"] = p.returncode, p.stderr.strip()[-400:]
        expect(p.returncode == 1, f"exit status {p.returncode}, want 1")
        expect("line 2" in p.stderr and "holder" in p.stderr and "Traceback" not in p.stderr,
               "message must name the busy line and its consumer")
    os.close(hold)
    os.close(cfd)
    chip.pull(0, 0)
    s3 = ServerProcess("--backend", spec, "--soft-reset", workdir=os.path.join(WORK, "sr"),
                       ready_timeout=60.0)
    with s3, GpioDriver.open(s3.socket) as d:
        with check("control_watch_readonly") as r:
            with ControlClient(s3.control) as c, c.watch() as cw:
                d.set_value(0, 1)
                d.set_direction(0, G.VIRTIO_GPIO_DIRECTION_OUT)
                r["event"] = cw.wait_for(lambda e: e.get("line") == 0
                                         and e.get("value") == 1, 10)
                d.set_irq_type(1, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH)
                chip.pull(1, 1)
                ev = cw.wait_for(lambda e: e.get("line") == 1 and e.get("source") == "chip",
                                 10)
                expect(ev["value"] == 1, f"chip edge event {ev}")
                try:
                    c.set(2, 1)
                except ControlError as e:
                    r["set_refused"] = str(e)
                expect("cannot drive" in r.get("set_refused", ""), "set was not refused")
                r["get"] = c.get(0)
                expect(r["get"]["value"] == 1 and r["get"]["direction"] == "out", "get")
        with check("soft_reset_releases") as r:
            d.set_value(0, 1)
            d.set_direction(0, G.VIRTIO_GPIO_DIRECTION_OUT)
            expect(chip.value(0) == 1, "output not driving")
            d.drv.set_power_state(3)
            d.drv.set_power_state(0)
            cfd = os.open(chip.dev, os.O_RDWR | os.O_CLOEXEC)
            try:
                info = U.line_info(cfd, 0)
            finally:
                os.close(cfd)
            r["flags"] = hex(info.flags)
            expect(info.flags & U.GPIO_V2_LINE_FLAG_INPUT
                   and not info.flags & U.GPIO_V2_LINE_FLAG_OUTPUT,
                   f"line 0 not an input after the soft reset: {r['flags']}")
            # no longer driven: the (simulated) external pull sets the level now. gpio-sim
            # keeps the last driven level when a line turns input, until the pull changes.
            r["sim_value_after_reset"] = chip.value(0)
            chip.pull(0, 1)
            chip.pull(0, 0)
            r["sim_value_after_pull_down"] = chip.value(0)
            expect(r["sim_value_after_pull_down"] == 0, "the line still drives 1")


def check_fast_path(chip: SimChip) -> None:
    """GET_VALUE / SET_VALUE on gpiod lines are served by the C request path (the control
    socket's fast_path counters), still reach the sim value / read the pull, tell watchers;
    configuration goes to Python; a removed chip answers ERR."""
    OUT_, IN1, OUT2 = 0, 1, 2
    s = ServerProcess("--backend", f"gpiod:{chip.dev}", workdir=os.path.join(WORK, "fp"),
                      ready_timeout=60.0)
    with s, GpioDriver.open(s.socket) as d, ControlClient(s.control) as c:
        def chains() -> int:
            fp = c.info().get("fast_path")
            expect(fp is not None, "no fast_path counters: the C request path is off")
            return fp["chains"]
        with check("fast_path_gpiod") as r:
            d.set_direction(OUT_, G.VIRTIO_GPIO_DIRECTION_OUT)
            d.set_direction(IN1, G.VIRTIO_GPIO_DIRECTION_IN)
            c0 = chains()
            with c.watch() as cw:
                for v in (1, 0, 1):
                    d.set_value(OUT_, v)
                    got = chip.value(OUT_)
                    expect(got == v, f"SET_VALUE {v}: sim value {got}")
                    cw.wait_for(lambda e: e.get("line") == OUT_ and e.get("source") == "guest"
                                and e.get("value") == v, 10)
            expect(d.get_value(OUT_) == 1, "GET_VALUE of the output")
            for v in (1, 0):
                chip.pull(IN1, v)
                got = d.get_value(IN1)
                expect(got == v, f"pull {v}: GET_VALUE {got}")
            c1 = chains()
            r["c_chains"] = c1 - c0
            expect(r["c_chains"] == 6, f"{r['c_chains']} of 6 GET/SET_VALUE served in C")
            d.set_value(OUT2, 1)                                # stored: not an output yet
            d.set_direction(OUT2, G.VIRTIO_GPIO_DIRECTION_OUT)  # Python reconfigures
            expect(chip.value(OUT2) == 1, "SET_DIRECTION OUT drives the stored value")
            r["c_chains_config"] = chains() - c1
            expect(r["c_chains_config"] == 1, "SET_DIRECTION must be served by Python")
        with check("fast_path_gpiod_chip_gone") as r:
            chip.set_live(False)
            st = [status(d, G.VIRTIO_GPIO_MSG_GET_VALUE, IN1),
                  status(d, G.VIRTIO_GPIO_MSG_SET_VALUE, OUT_, 0),
                  status(d, G.VIRTIO_GPIO_MSG_GET_VALUE, OUT_)]
            r["statuses"] = st
            expect(st == [G.VIRTIO_GPIO_STATUS_ERR] * 3, f"requests after removal: {st}")
            expect(s.alive(), "server died after the chip went away")
            chip.set_live(True)
            rc = s.stop()
            r["exit"] = rc
            expect(rc == 0, f"server exit status {rc}\n{s.log_tail(20)}")


def measure_fast_path(chip: SimChip, rounds: int = 5, n: int = 200) -> None:
    """Figures, not a check: GET_VALUE of a gpiod input line, C request path (--fast on) vs
    Python (--fast off), two servers on disjoint lines of one chip, rounds interleaved.
    Per request: driver round trip and server CPU (/proc stat ticks). TCG: ratios only."""
    arms = {"c": ("on", "0-1"), "python": ("off", "2-3")}
    with check("fast_path_gpiod_figures", rounds=rounds, requests=n) as r, \
            contextlib.ExitStack() as st:
        drv, srv = {}, {}
        for arm, (fast, lines) in arms.items():
            srv[arm] = st.enter_context(ServerProcess(
                "--backend", f"gpiod:{chip.dev}:{lines}", "--fast", fast,
                workdir=os.path.join(WORK, f"fig-{arm}"), control=False, ready_timeout=60.0))
            drv[arm] = st.enter_context(GpioDriver.open(srv[arm].socket))
            drv[arm].set_direction(0, G.VIRTIO_GPIO_DIRECTION_IN)
        rt = {a: [] for a in arms}
        cpu = {a: [] for a in arms}
        for _ in range(rounds):
            for arm in arms:
                d, pid = drv[arm], srv[arm].proc.pid
                c0, t0 = cpu_seconds(pid), time.monotonic()
                for _ in range(n):
                    d.get_value(0)
                rt[arm].append((time.monotonic() - t0) / n * 1e6)
                cpu[arm].append((cpu_seconds(pid) - c0) / n * 1e6)
        med = {a: {"round_trip_us": round(sorted(rt[a])[rounds // 2], 1),
                   "server_cpu_us": round(sorted(cpu[a])[rounds // 2], 1)} for a in arms}
        r.update(med)
        r["ratio_round_trip"] = round(med["python"]["round_trip_us"]
                                      / max(med["c"]["round_trip_us"], 1e-9), 2)
        r["ratio_server_cpu"] = round(med["python"]["server_cpu_us"]
                                      / max(med["c"]["server_cpu_us"], 1e-9), 2)


def main() -> int:
    a = SimChip("a", 8, NAMES)
    b = SimChip("b", 4)
    fp = SimChip("c", 4)
    spec = f"gpiod:{a.dev}"
    t = time.monotonic()
    s1 = server("s1", "--backend", spec, "--handover", os.path.join(WORK, "s1", "gpio.sock")
                + ".handover")
    try:
        s1.start()
    except RuntimeError as e:
        emit("handover_flag", False, error=str(e)[-400:])
        s1 = server("s1", "--backend", spec)
        s1.start()
    emit("server_start", True, seconds=round(time.monotonic() - t, 2))
    cur = s1
    try:
        with GpioDriver.open(s1.socket) as d:
            check_basics(d, a)
            check_irqs(d, a)
            check_d3hot(d, a)
            s2 = check_handover(d, a, s1, spec)
            if s2 is not None:
                cur = s2
            check_chip_gone(d, a, cur)
    finally:
        for s in (s1, cur):
            if s.alive():
                s.stop()
    check_busy_and_soft_reset(b)
    measure_fast_path(fp)
    check_fast_path(fp)
    for c in (a, b, fp):
        try:
            c.remove()
        except OSError as e:
            emit("teardown", False, error=str(e))
    emit("done", True, seconds=round(time.monotonic() - T0, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
