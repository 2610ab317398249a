"""Our server plus one real QEMU guest attached to it: shared by the hardware-in-loop tests,
the demo and the guest-side benchmark."""
from __future__ import annotations

import json
import os
from pathlib import Path

from vfio_virtio.client import ControlClient
from . import guest_pm
from .machine import GuestMachine
from .server_proc import ServerProcess


RESULTS = Path(os.environ.get("VV_GUEST_RESULTS", "/tmp/vv-guest-results"))


def record(name: str, data: dict) -> None:
    """Save a guest-side measurement as ``$VV_GUEST_RESULTS/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))


class Rig:
    """``Rig(dir, "--soft-reset").start()``: a server process, then ``boot()`` a guest."""

    def __init__(self, workdir: Path, *server_args: str, lines: int = 8,
                 names: str | None = None) -> None:
        args = ["--lines", str(lines)] + (["--names", names] if names else [])
        self.srv = ServerProcess(*args, *server_args, workdir=str(workdir))
        self.workdir = Path(workdir)
        self.m: GuestMachine | None = None
        self.addr = ""

    def start(self) -> "Rig":
        self.srv.start()
        return self

    def boot(self, name: str = "guest", extra_args: tuple[str, ...] = ()) -> GuestMachine:
        """Launch a guest attached to the server; wait for its shell; find our PCI address."""
        dev = {"driver": "vfio-user-pci", "socket": {"type": "unix", "path": self.srv.socket}}
        self.m = GuestMachine(self.workdir / "logs", devices=[dev], name=name,
                              extra_args=extra_args)
        self.m.__enter__()
        self.m.wait_ready(timeout=120)
        guest_pm.enable_pm_debug(self.m)
        rc, out = self.m.run("dirname $(readlink -f /sys/bus/virtio/devices/virtio0)",
                             timeout=20)
        if rc != 0:
            raise self.m.error(f"our device did not bind: {out}")
        self.addr = out.strip().rsplit("/", 1)[-1]
        return self.m

    def host(self) -> ControlClient:
        return ControlClient(self.srv.control)

    def stop_guest(self) -> None:
        if self.m is not None:
            if self.m.proc is not None:
                self.m.shutdown(soft_timeout=5, hard_timeout=5)
            self.m.__exit__(None, None, None)
            self.m = None

    def close(self) -> None:
        self.stop_guest()
        self.srv.stop()

    def __enter__(self) -> "Rig":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def hold_output(m: GuestMachine, line: int, value: int) -> None:
    """gpioset keeps the line requested (and driven) in the background until killed."""
    m.run(f"gpioset --mode=signal gpiochip0 {line}={value} & echo $! > /tmp/hold{line}",
          timeout=10, check=True)


def release_output(m: GuestMachine, line: int) -> None:
    m.run(f"kill $(cat /tmp/hold{line}); wait $(cat /tmp/hold{line}) 2>/dev/null; true",
          timeout=10)


def wait_host(r: Rig, line: int, timeout: float = 30, **want) -> dict:
    """Wait (event-driven, bounded) until the host sees ``line`` with the wanted fields."""
    with r.host() as h:
        now = h.get(line)
        if all(now.get(k) == v for k, v in want.items()):
            return now
        with h.watch() as w:
            now = h.get(line)
            if all(now.get(k) == v for k, v in want.items()):
                return now
            try:
                return w.wait_for(lambda e: e.get("line") == line
                                  and all(e.get(k) == v for k, v in want.items()), timeout)
            except TimeoutError:
                raise AssertionError(f"host never saw line {line} with {want} within "
                                     f"{timeout} s; now {h.get(line)}") from None
