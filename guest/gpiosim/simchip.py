"""A gpio-sim chip made through configfs (Linux ``Documentation/admin-guide/gpio/gpio-sim.rst``),
for the checks that run inside the gpio-sim test guest. Part of vfio-virtio."""
from __future__ import annotations

import os
import threading
import time

CONFIGFS = "/sys/kernel/config/gpio-sim"


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


class SimChip:
    """``SimChip("a", 8, names)``: a live chip; ``dev`` is /dev/gpiochipN, ``value(k)``
    reads sim line k's level, ``pull(k, 1|0)`` sets its simulated pull."""

    def __init__(self, tag: str, nlines: int, names: list[str] | None = None) -> None:
        self.dir = os.path.join(CONFIGFS, f"vv-{tag}")
        self.bank = os.path.join(self.dir, "bank0")
        self.nlines = nlines
        self.names = names or []
        os.mkdir(self.dir)
        os.mkdir(self.bank)
        _write(os.path.join(self.bank, "num_lines"), str(nlines))
        for k, name in enumerate(self.names):
            d = os.path.join(self.bank, f"line{k}")
            os.mkdir(d)
            _write(os.path.join(d, "name"), name)
        self.set_live(True)

    def set_live(self, on: bool) -> None:
        _write(os.path.join(self.dir, "live"), "1" if on else "0")
        if on:
            self.chip = _read(os.path.join(self.bank, "chip_name"))
            self.dev = f"/dev/{self.chip}"
            self.sysfs = f"/sys/devices/platform/{_read(os.path.join(self.dir, 'dev_name'))}" \
                         f"/{self.chip}"

    def value(self, k: int) -> int:
        return int(_read(f"{self.sysfs}/sim_gpio{k}/value"))

    def pull(self, k: int, up: int) -> None:
        _write(f"{self.sysfs}/sim_gpio{k}/pull", "pull-up" if up else "pull-down")

    def remove(self) -> None:
        if _read(os.path.join(self.dir, "live")) == "1":
            self.set_live(False)
        for k in range(len(self.names)):
            os.rmdir(os.path.join(self.bank, f"line{k}"))
        os.rmdir(self.bank)
        os.rmdir(self.dir)


class Sampler(threading.Thread):
    """Reads sim line ``k``'s level as fast as it can until stopped; records every change
    with its time. ``changes`` lists (t, value) for each value that differs from the one
    before (the first sample is not a change)."""

    def __init__(self, chip: SimChip, k: int) -> None:
        super().__init__(daemon=True)
        self.path = f"{chip.sysfs}/sim_gpio{k}/value"
        self.samples = 0
        self.first: int | None = None
        self.changes: list[tuple[float, int]] = []
        self.max_gap = 0.0          # longest time between two samples
        self._stop_ev = threading.Event()
        self._started = threading.Event()

    def run(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        last_t = None
        prev = None
        try:
            while not self._stop_ev.is_set():
                v = int(os.pread(fd, 8, 0).strip() or b"-1")
                t = time.monotonic()
                if last_t is not None:
                    self.max_gap = max(self.max_gap, t - last_t)
                last_t = t
                if prev is None:
                    self.first = v
                elif v != prev:
                    self.changes.append((t, v))
                prev = v
                self.samples += 1
                if self.samples == 1:
                    self._started.set()
        finally:
            os.close(fd)
            self._started.set()

    def begin(self) -> "Sampler":
        self.start()
        self._started.wait(10)
        return self

    def stop(self) -> dict:
        self._stop_ev.set()
        self.join(10)
        return {"samples": self.samples, "first": self.first, "changes": len(self.changes),
                "max_sample_gap_ms": round(self.max_gap * 1e3, 2)}
