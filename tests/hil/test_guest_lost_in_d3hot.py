"""Hardware-in-loop, issue 12 case 1: the client is lost while the function is in D3hot.

A real guest is in real s2idle (the PCI noirq phase put our function in D3hot), its QEMU is
killed with SIGKILL, and a new QEMU boots the guest again. The new guest's stock gpio-virtio
driver must get a working device: probe (GET_LINE_NAMES), gpioset and gpioget all complete.
The lines keep their state (the default policy) until the new driver takes over.
"""
from __future__ import annotations

import re

import pytest

from vfio_virtio_kit import guest_pm
from vfio_virtio_kit.rig import Rig, hold_output, wait_host

pytestmark = pytest.mark.hil

NAMES = "led0,led1,btn0,relay,irq0,irq1,spare6,spare7"


@pytest.mark.parametrize("nsr", ["--no-soft-reset", "--soft-reset"])
def test_qemu_killed_in_s2idle_next_guest_works(tmp_path, nsr):
    with Rig(tmp_path, nsr, names=NAMES) as rig:
        m = rig.boot()
        hold_output(m, 3, 1)
        wait_host(rig, 3, direction="out", value=1)
        # Real s2idle with no wake source: the guest stays suspended, our function in D3hot.
        # as guest_pm.suspend_s2idle_wake_serial prepares it, without arming the wake
        guest_pm.enable_pm_debug(m, debug_messages=True)
        m.run("echo 8 > /proc/sys/kernel/printk; "
              "echo N > /sys/module/printk/parameters/console_suspend; "
              "echo none > /sys/power/pm_test", timeout=15, check=True)
        mark = m.console_mark()
        log_mark = rig.srv.log_size()
        m.start("echo freeze > /sys/power/state", timeout=0)
        m.wait_console(r"PM: noirq suspend of devices complete", 60, start=mark)
        assert rig.srv.wait_log(r"PM: D0 -> D3hot", 5, log_mark), \
            "the function never reached D3hot"
        m.proc.kill()                                   # QEMU killed in the middle of it
        m.proc.wait(10)
        m.__exit__(None, None, None)
        rig.m = None
        assert rig.srv.alive()
        wait_host(rig, 3, direction="out", value=1)     # still driving, nobody attached
        m2 = rig.boot("guest2")                         # probe ran GET_LINE_NAMES
        rc, out = m2.run("gpioinfo gpiochip0", timeout=20)
        assert rc == 0 and re.findall(r'line\s+\d+:\s+"([^"]+)"', out) == NAMES.split(","), out
        with rig.host() as h:
            assert h.get(3)["direction"] == "out"       # kept until the new driver drives it
            h.set(2, 1)
        assert m2.run("gpioget gpiochip0 2", timeout=20) == (0, "1\n")
        m2.run("gpioset gpiochip0 3=0", timeout=20, check=True)
        wait_host(rig, 3, value=0)
