"""The request path through the real socket: C ring vs pure-Python ring, in the same run.

Two servers run side by side (``--ring c`` and ``--ring py``), pinned with the client to one
CPU, each with 8 lines and its own driver. Round robin, per sample:

* request     -- one GET_VALUE: add the chain, kick (a BAR notify write, answered), wait for
  the used element through the queue's MSI-X eventfd, read the response.
* empty_kick  -- the same notify write with nothing new in the ring: the transport floor a
  request pays whatever the device does (vfio-user message, libvfio-user dispatch, our BAR
  routing) -- "device added" = request / empty_kick - 1.
* throughput  -- 128 requests added, one kick, timed until all 128 are used.

Then per server, alone: server CPU time per request and per empty kick (from the kernel's
per-task run time, ns resolution), RSS, and idle CPU over a quiet interval. And a baseline:
libvfio-user's own C sample (gpio-pci-idio-16, BAR2 served by a C callback) against our BAR0
common-config read (device_feature, 4 bytes), same client, interleaved.
"""
from __future__ import annotations

import glob
import time

from vfio_virtio.gpio import spec as G
from vfio_virtio.testing.gpio_driver import REQUESTQ, GpioDriver
from vfio_virtio.testing.vfio_user import VfioUserClient
from vfio_virtio.virtio import spec as V

from .common import CSample, no_gc, ratio, round_robin, server_usage, start_server, stats

BATCH = 128
GET_VALUE = G.VIRTIO_GPIO_MSG_GET_VALUE


def task_cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` in ns (/proc/PID/task/*/schedstat, field 1)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


class ReqRig:
    """A server with one ring implementation and a driver on it."""

    def __init__(self, ring: str, cpu: int = 0) -> None:
        self.ring = ring
        self.srv = start_server("--lines", "8", "--ring", ring, cpu=cpu)
        try:
            self.gd = GpioDriver.open(self.srv.socket)
        except BaseException:
            self.srv.stop()
            raise
        self.drv = self.gd.drv
        self.pid = self.srv.proc.pid

    def request(self) -> float:
        gd = self.gd
        t0 = time.perf_counter_ns()
        resp = gd.request(GET_VALUE, 1)
        t1 = time.perf_counter_ns()
        if resp[:1] != b"\x00":
            raise RuntimeError(f"GET_VALUE failed: {resp!r}")
        return (t1 - t0) / 1e3

    def empty_kick(self) -> float:
        t0 = time.perf_counter_ns()
        self.drv.kick(REQUESTQ)
        return (time.perf_counter_ns() - t0) / 1e3

    def batch(self, n: int = BATCH) -> float:
        """``n`` requests in flight, one kick; microseconds until all are used."""
        gd, drv = self.gd, self.drv
        heads = [gd.add_request(GET_VALUE, i & 7) for i in range(n)]
        # GpioDriver.wait_used re-arms used_event under EVENT_IDX (not negotiated here).
        wait_used = getattr(gd, "wait_used", None) or drv.wait_used
        t0 = time.perf_counter_ns()
        drv.kick(REQUESTQ)
        got = 0
        used = []
        while got < n:
            u = wait_used(REQUESTQ, 5.0)
            used += u
            got += len(u)
        t1 = time.perf_counter_ns()
        for head, length in used:
            gd.response(REQUESTQ, head, length)
        if sorted(h for h, _ in used) != sorted(heads):
            raise RuntimeError("throughput batch: used heads differ from the added ones")
        return (t1 - t0) / 1e3

    def cpu_per_op(self, op, k: int) -> float:
        """Server CPU microseconds per call of ``op`` (k calls, nothing else running)."""
        with no_gc():
            c0 = task_cpu_ns(self.pid)
            for _ in range(k):
                op()
            c1 = task_cpu_ns(self.pid)
        return (c1 - c0) / 1e3 / k

    def idle_cpu(self, seconds: float) -> dict:
        """Server CPU over ``seconds`` of nothing happening (driver connected, DRIVER_OK)."""
        return _idle_of(self.pid, seconds)

    def close(self) -> None:
        try:
            self.gd.close()
        finally:
            self.srv.stop()


def _bar_baseline(ours: ReqRig, n: int, cpu: int) -> dict:
    """Our 4-byte BAR0 read (device_feature) vs the C sample's 4-byte BAR2 read."""
    if not CSample.available():
        return {"skipped": "libvfio-user sample gpio-pci-idio-16 not built"}
    cap = ours.drv.caps[V.VIRTIO_PCI_CAP_COMMON_CFG]
    off = cap.offset + V.VIRTIO_PCI_COMMON_DF
    with CSample(cpu=cpu) as sample, VfioUserClient(sample.socket) as sc:
        def ours_read() -> float:
            t0 = time.perf_counter_ns()
            ours.gd.client.region_read(cap.bar, off, 4)
            return (time.perf_counter_ns() - t0) / 1e3

        def c_read() -> float:
            t0 = time.perf_counter_ns()
            sc.region_read(2, 0, 4)
            return (time.perf_counter_ns() - t0) / 1e3

        raw = round_robin({"ours": ours_read, "c_sample": c_read}, n)
        idle = _idle_of(sample.proc.pid, 0.5)
        usage = server_usage(sample.proc.pid)
    out = {k: stats(v) for k, v in raw.items()}
    out["ratio_ours_over_c"] = ratio(out["ours"]["median_us"], out["c_sample"]["median_us"])
    out["c_sample_idle"] = idle
    out["c_sample_rss_bytes"] = usage["rss_bytes"]
    return out


def _idle_of(pid: int, seconds: float) -> dict:
    c0, t0 = task_cpu_ns(pid), time.monotonic()
    time.sleep(seconds)               # a measurement interval, not synchronisation
    c1, t1 = task_cpu_ns(pid), time.monotonic()
    return {"seconds": t1 - t0, "cpu_us": (c1 - c0) / 1e3,
            "cpu_percent": 100.0 * (c1 - c0) / 1e9 / (t1 - t0)}


def run(quick: bool = False, cpu: int = 0, log=print) -> dict:
    """The request-path section of the results."""
    n = 300 if quick else 5000
    nb = 20 if quick else 300
    k = 300 if quick else 3000
    idle_s = 0.5 if quick else 1.5
    rigs = {}
    try:
        for ring in ("c", "py"):
            rigs[ring] = ReqRig(ring, cpu)
        c, py = rigs["c"], rigs["py"]
        raw = round_robin({"c/request": c.request, "py/request": py.request,
                            "c/empty_kick": c.empty_kick, "py/empty_kick": py.empty_kick},
                           n)
        braw = round_robin({"c": c.batch, "py": py.batch}, nb, block=5)
        out: dict = {"method": __doc__, "batch": BATCH, "latency": {}, "throughput": {},
                     "server": {}}
        for key, v in raw.items():
            ring, arm = key.split("/")
            out["latency"].setdefault(ring, {})[arm] = stats(v)
        for ring, v in braw.items():
            s = stats(v)
            s["requests_per_s"] = BATCH / (s["median_us"] / 1e6)
            out["throughput"][ring] = s
        for ring, rig in rigs.items():
            out["server"][ring] = {
                "cpu_us_per_request": rig.cpu_per_op(lambda r=rig: r.gd.request(GET_VALUE, 1), k),
                "cpu_us_per_empty_kick": rig.cpu_per_op(rig.empty_kick, k),
                "cpu_us_per_request_batched": rig.cpu_per_op(rig.batch, max(3, k // BATCH))
                / BATCH,
                "rss_bytes": server_usage(rig.pid)["rss_bytes"],
                "idle": rig.idle_cpu(idle_s),
            }
        lat = out["latency"]
        out["ratios"] = {
            "py_over_c_request": ratio(lat["py"]["request"]["median_us"],
                                       lat["c"]["request"]["median_us"]),
            "c_request_over_empty_kick": ratio(lat["c"]["request"]["median_us"],
                                               lat["c"]["empty_kick"]["median_us"]),
            "c_over_py_throughput": ratio(out["throughput"]["c"]["requests_per_s"],
                                          out["throughput"]["py"]["requests_per_s"]),
        }
        out["baseline"] = _bar_baseline(c, n, cpu)
    finally:
        for rig in rigs.values():
            rig.close()
    r = out["ratios"]
    log(f"request: C {lat['c']['request']['median_us']:.1f} us, Python "
        f"{lat['py']['request']['median_us']:.1f} us, empty kick "
        f"{lat['c']['empty_kick']['median_us']:.1f} us (request x"
        f"{r['c_request_over_empty_kick']:.2f}); throughput C "
        f"{out['throughput']['c']['requests_per_s']:.0f}/s, Python "
        f"{out['throughput']['py']['requests_per_s']:.0f}/s")
    b = out["baseline"]
    if "skipped" not in b:
        log(f"BAR read: ours {b['ours']['median_us']:.1f} us, C sample "
            f"{b['c_sample']['median_us']:.1f} us (x{b['ratio_ours_over_c']:.2f})")
    return out
