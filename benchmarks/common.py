"""Shared pieces of the benchmarks: CPU pinning, timing, statistics, server processes.

Every figure is measured with the client (this process) and the server(s) pinned to the same
CPU, so a round trip is two context switches and no cross-CPU wake-up (this VM halts idle
vCPUs, which makes cross-CPU wake-ups cost 50-110 us with ms tails; see docs/FACTS.md).
"""
from __future__ import annotations

import gc
import math
import os
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import psutil

from vfio_virtio_kit.server_proc import ServerProcess

LIBVFIO_USER_BUILD = Path(os.environ.get(
    "LIBVFIO_USER_BUILD", Path.home() / ".cache/vfio-virtio/libvfio-user/current/build"))
C_SAMPLE = LIBVFIO_USER_BUILD / "samples" / "gpio-pci-idio-16"

#: Server arguments common to every benchmark server: logging at INFO writes a line per PM
#: transition and per status change, which would be measured as device cost.
SERVER_ARGS = ("--log-level", "warning")

T = TypeVar("T")


def pin(cpu: int) -> None:
    """Pin this process to ``cpu`` (the servers are started with ``taskset -c cpu``)."""
    os.sched_setaffinity(0, {cpu})


@contextmanager
def no_gc() -> Iterator[None]:
    """Collect once, then keep the collector out of the timed loop."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def percentile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0-100) of an already sorted list."""
    if not sorted_xs:
        return math.nan
    k = (len(sorted_xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def stats(samples_us: list[float], keep_raw: bool = True) -> dict:
    """median, p99, mean, min, max, n of samples in microseconds (+ the raw samples)."""
    xs = sorted(samples_us)
    n = len(xs)
    out = {"n": n, "median_us": percentile(xs, 50), "p99_us": percentile(xs, 99),
           "mean_us": (sum(xs) / n) if n else math.nan,
           "min_us": xs[0] if n else math.nan, "max_us": xs[-1] if n else math.nan}
    if keep_raw:
        out["samples_us"] = [round(x, 3) for x in samples_us]
    return out


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 or NaN."""
    return a / b if b and not math.isnan(b) else math.nan


def timed(fn: Callable[[], object]) -> float:
    """Run ``fn`` once; elapsed microseconds."""
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1000.0


def round_robin(arms: dict[str, Callable[[], T]], n: int | dict[str, int], block: int = 20,
                warmup_s: float = 0.2) -> dict[str, list[T]]:
    """Run each arm ``n`` times (or ``n[arm]``), in round-robin blocks so that drift (other
    load, the VM's CPU waking up) hits every arm alike while each block stays cache-warm.
    Arms with fewer samples get proportionally smaller blocks. Before measuring, all arms
    run round robin for ``warmup_s`` seconds (at least once). Returns {arm: [result, ...]}."""
    counts = dict(n) if isinstance(n, dict) else {k: n for k in arms}
    top = max(counts.values(), default=0) or 1
    blocks = {k: max(1, round(block * counts[k] / top)) for k in arms}
    out: dict[str, list[T]] = {k: [] for k in arms}
    with no_gc():
        end = time.monotonic() + warmup_s
        while True:
            for fn in arms.values():
                fn()
            if time.monotonic() >= end:
                break
        while any(len(out[k]) < counts[k] for k in arms):
            for k, fn in arms.items():
                for _ in range(min(blocks[k], counts[k] - len(out[k]))):
                    out[k].append(fn())
    return out


def start_server(*args: str, cpu: int = 0, **kw) -> ServerProcess:
    """Our server, pinned, quiet, ready (readiness through the pipe, never a probe)."""
    return ServerProcess(*SERVER_ARGS, *args, taskset=str(cpu), **kw).start()


def server_usage(pid: int) -> dict:
    """CPU seconds (user+system) and RSS bytes of a process."""
    p = psutil.Process(pid)
    t = p.cpu_times()
    return {"cpu_s": t.user + t.system, "rss_bytes": p.memory_info().rss}


class CSample:
    """libvfio-user's own C sample device (gpio-pci-idio-16), pinned: BAR2 reads run a C
    callback that does nothing but return a byte. It has no readiness signal: the socket file
    appears once it listens, so wait for that (bounded; a dying process ends the wait)."""

    def __init__(self, cpu: int = 0, timeout: float = 5.0) -> None:
        self.workdir = tempfile.mkdtemp(prefix="vv-csample-")
        self.socket = os.path.join(self.workdir, "idio16.sock")
        self.log_path = os.path.join(self.workdir, "sample.log")
        self.cpu, self.timeout = cpu, timeout
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return C_SAMPLE.exists()

    def start(self) -> "CSample":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(["taskset", "-c", str(self.cpu), str(C_SAMPLE),
                                          self.socket], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(self.socket):
            try:
                self.proc.wait(timeout=0.005)
                raise RuntimeError(f"C sample exited {self.proc.returncode}: "
                                   f"{Path(self.log_path).read_text(errors='replace')}")
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("C sample did not create its socket in time")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> "CSample":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
