"""The request path through the real socket: the C request path, the C ring under a Python
device, and the pure-Python path, in the same run.

Three servers run side by side, pinned with the client to one CPU, each with 8 lines and its
own driver: ``c`` (the default server: BAR0 hot registers and the requestq in C, issue 15),
``cring`` (``--fast off``: the C ring with the Python device, the path before issue 15) and
``py`` (``--ring py``: the pure-Python reference). Round robin, per sample:

* request     -- one GET_VALUE: add the chain, kick (a BAR notify write, answered), wait for
  the used element through the queue's MSI-X eventfd, read the response.
* request_lean -- the same GET_VALUE with a preallocated chain re-offered each time (what a
  kernel driver does; the Python client's own cost is then close to a BAR read's).
* empty_kick  -- the same notify write with nothing new in the ring: the transport floor a
  request pays whatever the device does (vfio-user message, libvfio-user dispatch, our BAR
  routing) -- "device added" = request / empty_kick - 1.
* throughput  -- 128 requests added, one kick, timed until the driver sees all 128 used
  (used idx; reading the 128 responses comes after, untimed).
* bar_read    -- a 4-byte BAR0 common-config read (device_feature) on the ``c`` server, and
  the same read of libvfio-user's own C sample (gpio-pci-idio-16, BAR2 served by a C
  callback), same client, in the same round robin: the peers of the issue's targets.

Then per server, alone: server CPU time per request and per empty kick (from the kernel's
per-task run time, ns resolution), RSS, and idle CPU over a quiet interval. And a baseline:
libvfio-user's own C sample (gpio-pci-idio-16, BAR2 served by a C callback) against our BAR0
common-config read (device_feature, 4 bytes), same client, interleaved.
"""
from __future__ import annotations

import glob
import os
import select
import time

from vfio_virtio.gpio import spec as G
from vfio_virtio_kit.gpio_driver import REQUESTQ, GpioDriver
from vfio_virtio_kit.vfio_user import VfioUserClient
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

    def __init__(self, ring: str, cpu: int = 0, fast: bool = True) -> None:
        self.ring = ring
        # 512 entries: a batch of 128 two-descriptor requests beside the lean arm's chain
        self.srv = start_server("--lines", "8", "--ring", ring, "--fast",
                                "on" if fast else "off", "--queue-size", "512", cpu=cpu)
        try:
            self.gd = GpioDriver.open(self.srv.socket, queue_size=512)
        except BaseException:
            self.srv.stop()
            raise
        self.drv = self.gd.drv
        self.pid = self.srv.proc.pid
        self._lean = None

    def request(self) -> float:
        gd = self.gd
        t0 = time.perf_counter_ns()
        resp = gd.request(GET_VALUE, 1)
        t1 = time.perf_counter_ns()
        if resp[:1] != b"\x00":
            raise RuntimeError(f"GET_VALUE failed: {resp!r}")
        return (t1 - t0) / 1e3

    def request_lean(self) -> float:
        """One GET_VALUE the way a kernel driver with a preallocated request does it: the
        same chain (descriptors written once) re-offered, kick, used idx seen after the
        MSI-X eventfd, response read. The client's own Python cost is then close to a BAR
        read's, so what differs from one is the device's work."""
        drv, ring = self.drv, self.drv.rings[REQUESTQ]
        if self._lean is None:
            head = self.gd.add_request(GET_VALUE, 1)
            resp_iova = self.gd._inbufs.pop((REQUESTQ, head))[0][0]
            bar, off = drv.notify_addr(REQUESTQ)
            self._lean = (head, resp_iova, bar, off, drv.eventfds[drv.queue_vectors[REQUESTQ]])
            ring.avail_idx = (ring.avail_idx - 1) & 0xFFFF     # offered below, each time
        head, resp_iova, bar, off, efd = self._lean
        want = (ring.last_used + 1) & 0xFFFF
        mem, write = self.gd.mem, self.gd.client.region_write
        t0 = time.perf_counter_ns()
        ring.put_avail(head)
        ring.publish()
        write(bar, off, b"\0\0")
        while ring.used_idx != want:
            select.select([efd], [], [], 5.0)
        os.eventfd_read(efd)
        resp = mem.read(resp_iova, 2)
        t1 = time.perf_counter_ns()
        ring.last_used = want
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
        ring = drv.rings[REQUESTQ]
        vec = drv.queue_vectors[REQUESTQ]
        want = (ring.last_used + n) & 0xFFFF
        deadline = time.monotonic() + 5.0
        t0 = time.perf_counter_ns()
        drv.kick(REQUESTQ)
        while ring.used_idx != want:
            if time.monotonic() > deadline:
                raise TimeoutError("throughput batch: not all requests were used")
            drv.wait_irq(vec, 5.0)
        t1 = time.perf_counter_ns()
        used = ring.used()
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
    rigs: dict[str, ReqRig] = {}
    sample = None
    try:
        rigs["c"] = ReqRig("c", cpu)
        rigs["cring"] = ReqRig("c", cpu, fast=False)
        rigs["py"] = ReqRig("py", cpu, fast=False)
        arms = {}
        for name, rig in rigs.items():
            arms[f"{name}/request"] = rig.request
            arms[f"{name}/request_lean"] = rig.request_lean
            arms[f"{name}/empty_kick"] = rig.empty_kick
        c = rigs["c"]
        cap = c.drv.caps[V.VIRTIO_PCI_CAP_COMMON_CFG]
        off = cap.offset + V.VIRTIO_PCI_COMMON_DF

        def ours_read() -> float:
            t0 = time.perf_counter_ns()
            c.gd.client.region_read(cap.bar, off, 4)
            return (time.perf_counter_ns() - t0) / 1e3
        arms["c/bar_read"] = ours_read
        if CSample.available():
            sample = CSample(cpu=cpu).start()
            sc = VfioUserClient(sample.socket)

            def c_read() -> float:
                t0 = time.perf_counter_ns()
                sc.region_read(2, 0, 4)
                return (time.perf_counter_ns() - t0) / 1e3
            arms["c_sample/bar_read"] = c_read
        raw = round_robin(arms, n)
        braw = round_robin({name: rig.batch for name, rig in rigs.items()}, nb, block=5)
        out: dict = {"method": __doc__, "batch": BATCH, "latency": {}, "throughput": {},
                     "server": {}}
        for key, v in raw.items():
            ring, arm = key.split("/")
            out["latency"].setdefault(ring, {})[arm] = stats(v)
        for ring, v in braw.items():
            st = stats(v)
            st["requests_per_s"] = BATCH / (st["median_us"] / 1e6)
            out["throughput"][ring] = st
        for ring, rig in rigs.items():
            batched = rig.cpu_per_op(rig.batch, max(3, k // BATCH)) / BATCH
            out["server"][ring] = {
                "cpu_us_per_request": rig.cpu_per_op(lambda r=rig: r.gd.request(GET_VALUE, 1), k),
                "cpu_us_per_empty_kick": rig.cpu_per_op(rig.empty_kick, k),
                "cpu_us_per_request_batched": batched,
                "server_requests_per_cpu_s_batched": 1e6 / batched if batched else None,
                "rss_bytes": server_usage(rig.pid)["rss_bytes"],
                "idle": rig.idle_cpu(idle_s),
            }
        lat, tp, srv = out["latency"], out["throughput"], out["server"]
        med = lambda ring, arm: lat[ring][arm]["median_us"]  # noqa: E731
        out["ratios"] = {
            "py_over_c_request": ratio(med("py", "request"), med("c", "request")),
            "cring_over_c_request": ratio(med("cring", "request"), med("c", "request")),
            "c_request_over_empty_kick": ratio(med("c", "request"), med("c", "empty_kick")),
            "c_over_py_throughput": ratio(tp["c"]["requests_per_s"], tp["py"]["requests_per_s"]),
            "c_over_cring_throughput": ratio(tp["c"]["requests_per_s"],
                                             tp["cring"]["requests_per_s"]),
            "py_over_c_server_cpu_batched": ratio(srv["py"]["cpu_us_per_request_batched"],
                                                  srv["c"]["cpu_us_per_request_batched"]),
        }
        if "c_sample" in lat:
            cs = med("c_sample", "bar_read")
            out["ratios"]["c_request_over_c_sample_bar"] = ratio(med("c", "request"), cs)
            out["ratios"]["c_request_lean_over_c_sample_bar"] = ratio(med("c", "request_lean"),
                                                                      cs)
            out["ratios"]["c_bar_read_over_c_sample_bar"] = ratio(med("c", "bar_read"), cs)
            out["baseline"] = {"ours": lat["c"]["bar_read"], "c_sample": lat["c_sample"]["bar_read"],
                               "ratio_ours_over_c": out["ratios"]["c_bar_read_over_c_sample_bar"],
                               "c_sample_idle": _idle_of(sample.proc.pid, idle_s),
                               "c_sample_rss_bytes": server_usage(sample.proc.pid)["rss_bytes"]}
            sc.close()
        else:
            out["baseline"] = {"skipped": "libvfio-user sample gpio-pci-idio-16 not built"}
    finally:
        for rig in rigs.values():
            rig.close()
        if sample is not None:
            sample.stop()
    r = out["ratios"]
    log(f"request: C path {med('c', 'request'):.1f} us, C ring + Python device "
        f"{med('cring', 'request'):.1f} us, Python {med('py', 'request'):.1f} us, empty kick "
        f"{med('c', 'empty_kick'):.1f} us; throughput C path {tp['c']['requests_per_s']:.0f}/s "
        f"(x{r['c_over_cring_throughput']:.1f} the C ring, x{r['c_over_py_throughput']:.1f} "
        f"Python); server CPU per request at {BATCH}/kick: C {srv['c']['cpu_us_per_request_batched']:.2f} us, "
        f"Python {srv['py']['cpu_us_per_request_batched']:.2f} us")
    if "c_request_over_c_sample_bar" in r:
        log(f"vs the C sample's BAR read {med('c_sample', 'bar_read'):.1f} us: request "
            f"x{r['c_request_over_c_sample_bar']:.2f} (lean driver "
            f"x{r['c_request_lean_over_c_sample_bar']:.2f}), our BAR read "
            f"x{r['c_bar_read_over_c_sample_bar']:.2f}")
    return out
