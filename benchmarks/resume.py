"""Resume latency, driver side, through the real vfio-user socket.

Emulates what Linux does on resume (docs/FACTS.md, "Linux guest"). Per line count N, two
servers run side by side (pinned to one CPU with the client): one with No_Soft_Reset=1
(retention) and one with ``--soft-reset``. Both get the same N configured lines (even lines:
input, EDGE_BOTH, one event buffer held by the device; odd lines: output driving a value).
Then, round robin, per sample:

* floor      -- a bare config write round trip: PMCSR rewritten with its current value (D0).
* request    -- one GET_VALUE request alone (kick -> used -> MSI-X eventfd).
* retention  -- [PMCSR D3hot, untimed] PMCSR D0, then one request proves the device is usable.
* reset      -- [PMCSR D3hot, untimed] PMCSR D0 (the device soft-resets), then the whole
  virtio_device_restore sequence (reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, config
  and queue MSI-X vectors, queues, DRIVER_OK) and every line restored the way gpio-virtio would
  (one request at a time: direction, value, irq type; an event buffer re-queued per IRQ line).
* suspend    -- VIRTIO_F_SUSPEND (no D-state): status |= SUSPEND, poll until it reads back
  with DRIVER_OK clear [the "suspend" part], then DRIVER_OK and one request [the resume part].

After the samples, both devices are checked to be in the configured state (control socket)
and to deliver an edge through a held event buffer, so the figures are of devices that work.
"""
from __future__ import annotations

import time

from vfio_virtio.backends.control import ControlClient
from vfio_virtio.gpio import spec as G
from vfio_virtio.pci import spec as P
from vfio_virtio_kit.gpio_driver import DEFAULT_FEATURES, EVENTQ, REQUESTQ, GpioDriver
from vfio_virtio.virtio import spec as V

from .common import round_robin, start_server, stats

FEATURES = DEFAULT_FEATURES | (1 << V.VIRTIO_F_SUSPEND)
QUEUE_SIZE = 1024            # 512 lines -> 256 held event chains of 2 descriptors each
ARMS = ("floor", "request", "retention", "reset", "suspend", "floor_info", "retention_info")


def line_plan(n: int) -> list[tuple[int, int, int]]:
    """(direction, value, irq_type) per line: even lines IRQ inputs, odd lines outputs."""
    plan = []
    for i in range(n):
        if i % 2 == 0:
            plan.append((G.VIRTIO_GPIO_DIRECTION_IN, 0, G.VIRTIO_GPIO_IRQ_TYPE_EDGE_BOTH))
        else:
            plan.append((G.VIRTIO_GPIO_DIRECTION_OUT, (i // 2) & 1, G.VIRTIO_GPIO_IRQ_TYPE_NONE))
    return plan


class ResumeRig:
    """One server + one driver with ``lines`` configured lines."""

    def __init__(self, lines: int, soft_reset: bool, cpu: int = 0,
                 log_level: str | None = None) -> None:
        self.lines = lines
        self.plan = line_plan(lines)
        extra = ("--log-level", log_level) if log_level else ()
        self.srv = start_server("--lines", str(lines), "--queue-size", str(QUEUE_SIZE),
                                "--soft-reset" if soft_reset else "--no-soft-reset", *extra,
                                cpu=cpu)
        try:
            self.gd = GpioDriver.open(self.srv.socket, features=FEATURES, bring_up=False)
            self.drv, self.client, self.mem = self.gd.drv, self.gd.client, self.gd.mem
            self.ring_mark = self.mem._next      # offset: rings of every re-init reuse it
            self.drv.bring_up([REQUESTQ, EVENTQ], wanted=FEATURES)
            pm = self.drv.find_pci_cap(P.PCI_CAP_ID_PM)
            if pm is None:
                raise RuntimeError("device has no PM capability")
            self.pmcsr_off = pm + P.PCI_PM_CTRL
            base = self.client.cfg_read16(self.pmcsr_off)
            self.pmcsr_d0 = base & ~(P.PCI_PM_CTRL_STATE_MASK | P.PCI_PM_CTRL_PME_STATUS)
            self.restore_lines()
        except BaseException:
            self.srv.stop()
            raise

    # --- steps ----------------------------------------------------------------------------

    def pm_write(self, d: int) -> None:
        """One PMCSR write (2 bytes, as Linux's pci_write_config_word)."""
        self.client.cfg_write16(self.pmcsr_off, self.pmcsr_d0 | d)

    def prove(self) -> None:
        """One request that must succeed: the device is usable."""
        self.gd.ok(G.VIRTIO_GPIO_MSG_GET_VALUE, 0)

    def reinit(self) -> None:
        """virtio_device_restore: reset, ACK, DRIVER, features, FEATURES_OK, vectors and
        queues (fresh, zeroed rings in the same guest memory, as find_vqs allocates them),
        DRIVER_OK. The driver forgets every buffer it had queued."""
        drv = self.drv
        drv.negotiate(FEATURES)
        self.mem.write(self.mem.iova + self.ring_mark, bytes(self.mem._next - self.ring_mark))
        self.mem._next = self.ring_mark
        self.gd._inbufs.clear()
        self.gd.irq_heads.clear()
        drv.set_config_vector(0)
        drv.setup_queue(REQUESTQ, None, 1)
        drv.setup_queue(EVENTQ, None, 2)
        drv.driver_ok()

    def restore_lines(self) -> None:
        """Every line back to the plan, one request at a time (gpio-virtio waits for each);
        IRQ lines get their event buffer re-queued (one kick each, as on unmask)."""
        gd = self.gd
        for i, (direction, value, irq) in enumerate(self.plan):
            if direction == G.VIRTIO_GPIO_DIRECTION_OUT:
                gd.set_value(i, value)
            gd.set_direction(i, direction)
            if irq != G.VIRTIO_GPIO_IRQ_TYPE_NONE:
                gd.set_irq_type(i, irq)
                gd.queue_irq(i)

    def status(self) -> int:
        return self.drv.read_status()

    # --- one timed sample per arm (returns component times in microseconds) -------------

    def sample_floor(self) -> dict:
        t0 = time.perf_counter_ns()
        self.pm_write(P.PCI_D0)
        return {"total": (time.perf_counter_ns() - t0) / 1e3}

    def sample_request(self) -> dict:
        t0 = time.perf_counter_ns()
        self.prove()
        return {"total": (time.perf_counter_ns() - t0) / 1e3}

    def sample_retention(self) -> dict:
        self.pm_write(P.PCI_D3hot)
        t0 = time.perf_counter_ns()
        self.pm_write(P.PCI_D0)
        t1 = time.perf_counter_ns()
        self.prove()
        t2 = time.perf_counter_ns()
        return {"total": (t2 - t0) / 1e3, "d0_write": (t1 - t0) / 1e3, "request": (t2 - t1) / 1e3}

    def sample_reset(self) -> dict:
        self.pm_write(P.PCI_D3hot)
        t0 = time.perf_counter_ns()
        self.pm_write(P.PCI_D0)
        t1 = time.perf_counter_ns()
        self.reinit()
        t2 = time.perf_counter_ns()
        self.restore_lines()
        t3 = time.perf_counter_ns()
        return {"total": (t3 - t0) / 1e3, "d0_write": (t1 - t0) / 1e3,
                "virtio_reinit": (t2 - t1) / 1e3, "restore_lines": (t3 - t2) / 1e3}

    def sample_suspend(self) -> dict:
        drv = self.drv
        st = drv.read_status()
        t0 = time.perf_counter_ns()
        drv.write_status(st | V.VIRTIO_CONFIG_S_SUSPEND)
        deadline = time.monotonic() + 5.0
        while True:
            s = drv.read_status()
            if s & V.VIRTIO_CONFIG_S_SUSPEND and not s & V.VIRTIO_CONFIG_S_DRIVER_OK:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"SUSPEND did not read back (status {s:#x})")
        t1 = time.perf_counter_ns()
        drv.write_status((s & ~V.VIRTIO_CONFIG_S_SUSPEND) | V.VIRTIO_CONFIG_S_DRIVER_OK)
        self.prove()
        t2 = time.perf_counter_ns()
        return {"total": (t2 - t1) / 1e3, "suspend": (t1 - t0) / 1e3, "resume": (t2 - t1) / 1e3}

    # --- checks ---------------------------------------------------------------------------

    def verify(self) -> dict:
        """The device is in the configured state and a held event buffer delivers an edge."""
        problems = []
        with ControlClient(self.srv.control) as ctl:
            for i, info in enumerate(ctl.list()[:self.lines]):
                direction, value, irq = self.plan[i]
                want_dir = "out" if direction == G.VIRTIO_GPIO_DIRECTION_OUT else "in"
                if info.get("direction") != want_dir:
                    problems.append(f"line {i}: direction {info.get('direction')} != {want_dir}")
                elif want_dir == "out" and info.get("value") != value:
                    problems.append(f"line {i}: value {info.get('value')} != {value}")
                if irq and info.get("edge") in (None, "none"):
                    problems.append(f"line {i}: irq type lost (edge {info.get('edge')})")
                if len(problems) > 5:
                    break
            events = []
            for level in (1, 0):
                ctl.set(0, level)
                events += self.gd.events(timeout=2.0)
                self.gd.queue_irq(0)
        if events != [(0, G.VIRTIO_GPIO_IRQ_STATUS_VALID)] * 2:
            problems.append(f"edge on line 0 gave events {events}")
        return {"ok": not problems, "problems": problems}

    def close(self) -> None:
        try:
            self.gd.close()
        finally:
            self.srv.stop()


def run_lines(lines: int, n: int, n_reset: int, warmup_s: float = 0.2, cpu: int = 0) -> dict:
    """All arms for one line count. ``n_reset``: samples of the (slow, O(lines)) reset arm."""
    keep = ResumeRig(lines, soft_reset=False, cpu=cpu)
    try:
        reset = ResumeRig(lines, soft_reset=True, cpu=cpu)
    except BaseException:
        keep.close()
        raise
    try:
        # the server as an operator runs it: default log level (INFO)
        info = ResumeRig(lines, soft_reset=False, cpu=cpu, log_level="info")
    except BaseException:
        keep.close()
        reset.close()
        raise
    try:
        arms = {"floor": keep.sample_floor, "request": keep.sample_request,
                "retention": keep.sample_retention, "reset": reset.sample_reset,
                "suspend": keep.sample_suspend, "floor_info": info.sample_floor,
                "retention_info": info.sample_retention}
        counts = {k: (n_reset if k == "reset" else n) for k in arms}
        raw = round_robin(arms, counts, block=10, warmup_s=warmup_s)
        out: dict = {"lines": lines, "arms": {}}
        for k, rows in raw.items():
            arm = stats([r["total"] for r in rows])
            arm["components"] = {c: stats([r[c] for r in rows], keep_raw=False)
                                 for c in rows[0] if c != "total"} if rows else {}
            out["arms"][k] = arm
        a = out["arms"]
        out["ratios"] = {
            "reset_over_retention": a["reset"]["median_us"] / a["retention"]["median_us"],
            "retention_over_floor": a["retention"]["median_us"] / a["floor"]["median_us"],
            "retention_d0_over_floor": (a["retention"]["components"]["d0_write"]["median_us"]
                                        / a["floor"]["median_us"]),
            "suspend_over_retention": a["suspend"]["median_us"] / a["retention"]["median_us"],
            # issue 15 target: <= 1.3 with the server at its default log level
            "retention_d0_info_over_floor_info": (
                a["retention_info"]["components"]["d0_write"]["median_us"]
                / a["floor_info"]["median_us"]),
        }
        out["verified"] = {"retention": keep.verify(), "reset": reset.verify()}
        return out
    finally:
        info.close()
        reset.close()
        keep.close()


def run(line_counts: list[int], quick: bool = False, cpu: int = 0, log=print) -> dict:
    """Resume benchmark over ``line_counts``; returns the results section."""
    results = []
    for lines in line_counts:
        n = 30 if quick else (1000 if lines <= 64 else 400)
        n_reset = 30 if quick else (1000 if lines <= 8 else 300 if lines <= 64 else 100)
        t0 = time.monotonic()
        r = run_lines(lines, n, n_reset, warmup_s=0.1 if quick else 0.3, cpu=cpu)
        a = r["arms"]
        log(f"resume lines={lines:4d}: floor {a['floor']['median_us']:.1f} us, retention "
            f"{a['retention']['median_us']:.1f} us, reset {a['reset']['median_us']:.1f} us "
            f"(x{r['ratios']['reset_over_retention']:.1f}), suspend "
            f"{a['suspend']['median_us']:.1f} us; at INFO: D0 write "
            f"x{r['ratios']['retention_d0_info_over_floor_info']:.2f} the floor"
            f"  [{time.monotonic() - t0:.1f} s]")
        for name, v in r["verified"].items():
            if not v["ok"]:
                log(f"  WARNING: {name} device not in the configured state: {v['problems']}")
        results.append(r)
    return {"method": __doc__, "features": FEATURES, "queue_size": QUEUE_SIZE,
            "by_lines": results}
