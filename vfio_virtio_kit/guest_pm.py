"""Guest power-management scenarios on a :class:`~vfio_virtio_kit.machine.GuestMachine`.

All run through the guest's sysfs (Documentation/power/basic-pm-debugging.rst,
Documentation/admin-guide/pm/sleep-states.rst):

- :func:`suspend`: ``/sys/power/state`` with a ``pm_test`` level. ``platform`` runs every
  device callback, including the noirq phase where PCI drops functions to D3hot, and returns
  at once when ``pm_test_delay`` is 0; ``devices`` stops before noirq.
- :func:`suspend_s3_rtc`: real S3 (``mem``) woken by the CMOS RTC alarm; q35 wakes from S3
  through a reset, so afterwards only ``reboot -f`` ends the guest (which ``shutdown`` does).
- :func:`suspend_s2idle_wake_serial`: real s2idle (``freeze``); neither the RTC nor
  ``system_powerdown`` wakes it, the control port's IRQ does (wakeup enabled on ttyS1).

With ``pm_print_times`` on, the kernel logs each device callback
(``<driver> <dev>: PM: <callback> returned <err> after <n> usecs``): :func:`device_pm_times`
extracts them for one device, e.g. a PCI address.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from .machine import GuestMachine

__all__ = ["SuspendResult", "PmCall", "enable_pm_debug", "suspend", "suspend_s3_rtc",
           "suspend_s2idle_wake_serial", "device_pm_times"]

PM_TEST_LEVELS = ("none", "core", "processors", "platform", "devices", "freezer")
_CALL_RE = re.compile(
    r"^(?:\[\s*[\d.]+\]\s+)?(?P<drv>\S+) (?P<dev>\S+): PM: (?P<cb>[A-Za-z0-9_.]+)"
    r"(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?(?: \[\S+\])? returned (?P<err>-?\d+) after (?P<us>\d+) usecs$",
    re.M)


@dataclass
class PmCall:
    """One device PM callback as timed by the kernel (pm_print_times)."""

    driver: str   # e.g. "virtio-pci", "pci-idio-16"
    device: str   # e.g. "0000:00:01.0"
    callback: str  # e.g. "pci_pm_resume_noirq"
    error: int
    usecs: int


@dataclass
class SuspendResult:
    """Outcome of one suspend/resume cycle."""

    mode: str
    pm_test: str
    rc: int                 # exit code of the write to /sys/power/state (0 = resumed fine)
    output: str             # its stderr (e.g. "write error: Device or resource busy")
    dmesg: str              # kernel log produced during the cycle
    seconds: float          # host wall-clock time of the cycle
    calls: list[PmCall] = field(default_factory=list)

    def device_calls(self, device: str) -> list[PmCall]:
        """The callbacks of one device (name as the kernel prints it, e.g. a PCI address)."""
        return [c for c in self.calls if c.device == device]


def device_pm_times(dmesg: str, device: str | None = None) -> list[PmCall]:
    """Parse pm_print_times lines from ``dmesg``; only ``device``'s if given."""
    out = []
    for m in _CALL_RE.finditer(dmesg):
        if device is not None and m.group("dev") != device:
            continue
        out.append(PmCall(m.group("drv"), m.group("dev"), m.group("cb"),
                          int(m.group("err")), int(m.group("us"))))
    return out


def enable_pm_debug(m: GuestMachine, print_times: bool = True, debug_messages: bool = False) -> None:
    """Turn on per-device PM callback timing (and optionally pm_debug_messages)."""
    cmds = [f"echo {int(print_times)} > /sys/power/pm_print_times"]
    if debug_messages:
        cmds.append("echo 1 > /sys/power/pm_debug_messages")
    m.run("; ".join(cmds), timeout=10, check=True)


def _cycle(m: GuestMachine, mode: str, pm_test: str, prep: str, timeout: float,
           wake: bool = False) -> SuspendResult:
    if pm_test not in PM_TEST_LEVELS:
        raise ValueError(f"pm_test must be one of {PM_TEST_LEVELS}")
    if mode not in ("freeze", "mem", "standby"):
        raise ValueError("mode must be freeze, mem or standby")
    m.run(f"dmesg -c >/dev/null && echo {pm_test} > /sys/power/pm_test", timeout=15, check=True)
    m.run("p=/sys/module/suspend/parameters/pm_test_delay; [ ! -w $p ] || echo 0 > $p",
          timeout=15, check=True)
    if prep:
        m.run(prep, timeout=15, check=True)
    mark = m.console_mark()
    t0 = time.monotonic()
    cid = m.start(f"echo {mode} > /sys/power/state", timeout=timeout)
    if wake:
        # The noirq phase has finished once its summary is printed (pm_print_times on): from
        # then on the wake-armed serial IRQ ends s2idle (an earlier byte would abort it).
        m.wait_console(r"PM: noirq suspend of devices complete", timeout, start=mark)
        m.send_wake()
    rc, out = m.wait(cid, timeout + 10.0)
    seconds = time.monotonic() - t0
    _, dmesg = m.run("dmesg; echo none > /sys/power/pm_test", timeout=15)
    return SuspendResult(mode, pm_test, rc, out, dmesg, seconds, device_pm_times(dmesg))


def suspend(m: GuestMachine, mode: str = "freeze", pm_test: str = "platform",
            timeout: float = 60.0) -> SuspendResult:
    """One suspend/resume cycle stopped at ``pm_test`` level (``none`` = for real: only use
    it with a wake source armed, see the other helpers). pm_test_delay is set to 0."""
    return _cycle(m, mode, pm_test, "", timeout)


def suspend_s3_rtc(m: GuestMachine, wake_after: int = 2, timeout: float = 60.0) -> SuspendResult:
    """Real S3: arm the RTC alarm ``wake_after`` seconds ahead, then ``mem``.

    After it the guest can only leave through ``reboot -f`` (poweroff hangs after S3 on q35),
    which is what :meth:`GuestMachine.shutdown` sends.
    """
    prep = ("echo 0 > /sys/class/rtc/rtc0/wakealarm && "
            f"echo +{int(wake_after)} > /sys/class/rtc/rtc0/wakealarm")
    return _cycle(m, "mem", "none", prep, timeout)


def suspend_s2idle_wake_serial(m: GuestMachine, timeout: float = 60.0) -> SuspendResult:
    """Real s2idle, woken by one byte on the control port (ttyS1 wakeup enabled).

    Needs ``pm_print_times`` (enabled here) to know when the guest is past the noirq phase.
    """
    enable_pm_debug(m, debug_messages=True)
    # pm_pr_dbg() prints at KERN_DEBUG: raise the console loglevel, and keep the console
    # printing while suspended so the noirq summary reaches the host.
    prep = ("echo 8 > /proc/sys/kernel/printk && echo N > /sys/module/printk/parameters/console_suspend"
            " && echo enabled > /sys/class/tty/ttyS1/power/wakeup")
    return _cycle(m, "freeze", "none", prep, timeout, wake=True)
