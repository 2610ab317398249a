"""`make demo`: a simulated GPIO bank served to a real QEMU guest, told as a story.

The chip appears in the guest; lines toggle both ways; an interrupt; suspend/resume with
No_Soft_Reset on and off, with the guest's own per-device resume times. Under two minutes.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vfio_virtio_kit import guest_pm
from vfio_virtio_kit.assets import AssetsMissing, find_assets
from vfio_virtio_kit.rig import Rig, hold_output, release_output, wait_host

NAMES = "led0,led1,button,relay,alarm,spare5,spare6,spare7"
LED, BUTTON, RELAY, ALARM = 0, 2, 3, 4


class Story:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.step_no = 0
        self.summary: list[tuple[str, str]] = []

    def step(self, title: str) -> None:
        self.step_no += 1
        print(f"\n[{time.monotonic() - self.t0:5.1f}s] {self.step_no}. {title}", flush=True)

    def say(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            print(f"      {line}", flush=True)

    def result(self, what: str, value: str) -> None:
        self.summary.append((what, value))
        self.say(f"-> {what}: {value}")


def host_ctl(s: Story, r: Rig, *args: str) -> str:
    """Run the host-side line tool as a person would (vfio-virtio-gpio-ctl, README), show the
    command and what it printed, and return its output."""
    cmd = [sys.executable, "-m", "vfio_virtio.ctl", "--control", r.srv.control, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    s.say(f"host$ vfio-virtio-gpio-ctl {' '.join(args)}")
    if p.stdout.strip():
        s.say(p.stdout)
    if p.returncode != 0:
        raise RuntimeError(f"vfio-virtio-gpio-ctl {' '.join(args)} exited {p.returncode}: "
                           f"{p.stderr.strip()}")
    return p.stdout.strip()


def resume_usecs(r: Rig, res: guest_pm.SuspendResult) -> str:
    """The guest's own resume times for our device (pm_print_times): the virtio part
    (pci_pm_resume: skipped with No_Soft_Reset, else virtio_device_restore) and the total of
    its PCI resume callbacks (which includes the PCI-mandated D3hot -> D0 delay)."""
    calls = [c for c in res.device_calls(r.addr) if "resume" in c.callback]
    virtio = sum(c.usecs for c in calls if c.callback == "pci_pm_resume")
    return f"virtio resume {virtio} us (all PCI resume callbacks {sum(c.usecs for c in calls)} us)"


def part_retention(s: Story, workdir: Path) -> None:
    with Rig(workdir / "nsr1", "--no-soft-reset", names=NAMES) as r:
        s.step("Server up (No_Soft_Reset = 1); booting a Linux 6.12 guest under QEMU (TCG)")
        m = r.boot()
        s.say(f"guest kernel {m.kernel_release} booted in {m.boot_seconds:.1f} s")
        _, out = m.run("gpiodetect; gpioinfo gpiochip0 | head -4", timeout=20)
        s.say(out)
        s.result("chip in the guest", re.search(r"gpiochip0 \[virtio0\] \(\d+ lines\)",
                                                 out).group(0))

        s.step("Guest drives an output; the host reads it through the control socket")
        hold_output(m, LED, 1)
        line = wait_host(r, LED, direction="out", value=1)
        s.say(f"guest$ gpioset --mode=signal gpiochip0 {LED}=1 &    (led0 held high)")
        host_ctl(s, r, "info", "led0")
        s.step("Host drives an input; the guest reads it")
        host_ctl(s, r, "set", "button=1")
        _, out = m.run(f"gpioget gpiochip0 {BUTTON}", timeout=20)
        s.say(f"guest$ gpioget gpiochip0 {BUTTON}    (button)\n{out.strip()}")
        s.result("lines both ways", f"led0 -> host {line['value']}, button -> guest {out.strip()}")

        s.step("Interrupt: guest waits with gpiomon, the host raises the alarm line")
        cid = m.start(f"gpiomon --num-events=1 --rising-edge gpiochip0 {ALARM}", timeout=60)
        wait_host(r, ALARM, edge="rising")
        host_ctl(s, r, "set", "alarm=1")
        _, out = m.wait(cid, 60)
        s.say(f"guest gpiomon: {out.strip()}")
        s.result("interrupt", "RISING EDGE delivered" if "RISING" in out else out.strip())

        s.step("Suspend to idle with No_Soft_Reset = 1 (device goes D3hot and back)")
        hold_output(m, RELAY, 1)
        wait_host(r, RELAY, direction="out", value=1)
        res = guest_pm.suspend(m, "freeze", "platform")
        _, out = m.run(f"gpioget gpiochip0 {BUTTON}; ls /sys/bus/virtio/devices", timeout=20)
        us = resume_usecs(r, res)
        s.say("relay on the host after resume:")
        relay = host_ctl(s, r, "info", "relay")
        s.say(f"guest gpioget after resume: {out.split()[0]}  (no re-probe: "
              f"{out.split()[1]} still there)")
        kept = "state kept" if "output value=1" in relay else "STATE LOST"
        s.result("resume, No_Soft_Reset=1", f"{kept}; {us}")
        release_output(m, RELAY)
        release_output(m, LED)


def part_reset(s: Story, workdir: Path) -> None:
    with Rig(workdir / "nsr0", "--soft-reset", names=NAMES) as r:
        s.step("Same again with No_Soft_Reset = 0 (the device soft-resets on D3hot -> D0)")
        m = r.boot()
        hold_output(m, RELAY, 1)
        wait_host(r, RELAY, direction="out", value=1)
        res = guest_pm.suspend(m, "freeze", "platform")
        wait_host(r, RELAY, direction="in")
        us = resume_usecs(r, res)
        s.say("relay on the host after resume (output dropped by the reset):")
        host_ctl(s, r, "info", "relay")
        _, out = m.run("gpioget gpiochip0 2 & p=$!; for i in 1 2 3 4 5 6 7 8 9 10; do "
                       "grep -q 'State:.*D' /proc/$p/status && { echo blocked; exit 0; }; "
                       "read -t 0.3 < /dev/zero 2>/dev/null; done; echo not-blocked",
                       timeout=30)
        s.say("Linux re-initialised the virtio device, but gpio-virtio has no restore callback:")
        s.say(f"its next request waits forever in uninterruptible sleep: gpioget is "
              f"{out.strip()}")
        s.result("resume, No_Soft_Reset=0", f"device reset, output dropped, driver wedged; {us}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vfio_virtio_kit.demo", description=__doc__)
    ap.add_argument("--workdir", help="where logs go (default: a temporary directory)")
    args = ap.parse_args(argv)
    try:
        find_assets()
    except AssetsMissing as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vv-demo-"))
    s = Story()
    print("vfio-virtio demo: a virtio-gpio device served over vfio-user to a real guest")
    print(f"logs: {workdir}")
    try:
        part_retention(s, workdir)
        part_reset(s, workdir)
    except Exception as e:
        print(f"\ndemo failed: {e}\n(logs in {workdir})", file=sys.stderr)
        return 1
    print(f"\nSummary ({time.monotonic() - s.t0:.0f} s)")
    width = max(len(w) for w, _ in s.summary)
    for what, value in s.summary:
        print(f"  {what:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
