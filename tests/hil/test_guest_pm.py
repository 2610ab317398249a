"""Hardware-in-loop: the guest power-management scenarios of vfio_virtio_kit.guest_pm,
checked against libvfio-user's C sample `gpio-pci-idio-16` over vfio-user-pci.

They guard the rig the resume-latency work relies on: every sleep path reaches the PCI noirq
phase (where Linux puts PCI functions in D3hot, PCI PM 1.2 section 5.4) for the vfio-user
device, per-device callback times are parsed from the kernel log, and the device still works
after resume. Sleep states: Documentation/admin-guide/pm/sleep-states.rst.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vfio_virtio_kit import guest_pm
from vfio_virtio_kit.machine import GuestMachine

pytestmark = pytest.mark.hil

NOIRQ = {"pci_pm_suspend_noirq", "pci_pm_resume_noirq"}


def _idio16_addr(m: GuestMachine) -> str:
    rc, out = m.run("for d in /sys/bus/pci/devices/*; do "
                    "[ \"$(cat $d/vendor)\" = 0x494f ] && echo ${d##*/}; done; true", timeout=20)
    addrs = out.split()
    assert rc == 0 and len(addrs) == 1, out
    return addrs[0]


def _lines(m: GuestMachine) -> int:
    rc, out = m.run("gpioinfo | grep -c 'line '", timeout=20)
    assert rc == 0, out
    return int(out)


@pytest.fixture
def idio16_guest(hil_logdir: Path, idio16_server: Path):
    dev = {"driver": "vfio-user-pci", "socket": {"type": "unix", "path": str(idio16_server)}}
    with GuestMachine(hil_logdir, devices=[dev]) as m:
        m.wait_ready(timeout=120)
        guest_pm.enable_pm_debug(m)
        yield m
    assert m.exitcode == 0


@pytest.mark.parametrize("mode", ["freeze", "mem"])
def test_pm_test_platform_reaches_noirq(idio16_guest: GuestMachine, mode: str) -> None:
    """pm_test=platform: the device's noirq suspend and resume callbacks run (and succeed)."""
    m = idio16_guest
    addr = _idio16_addr(m)
    r = guest_pm.suspend(m, mode=mode, pm_test="platform")
    assert r.rc == 0, r.output
    calls = {c.callback: c for c in r.device_calls(addr)}
    assert NOIRQ <= set(calls), f"noirq phase not reached for {addr}: {sorted(calls)}"
    assert all(c.error == 0 for c in calls.values())
    assert _lines(m) == 32, "device unusable after resume"


def test_real_s2idle_then_s3(idio16_guest: GuestMachine) -> None:
    """Real s2idle woken by the control port's IRQ, then real S3 woken by the RTC alarm; the
    vfio-user device is resumed and usable after each."""
    m = idio16_guest
    addr = _idio16_addr(m)
    r = guest_pm.suspend_s2idle_wake_serial(m, timeout=60)
    assert r.rc == 0, r.output
    assert "PM: suspend-to-idle" in r.dmesg and "resume from suspend-to-idle" in r.dmesg
    assert NOIRQ <= {c.callback for c in r.device_calls(addr)}
    assert _lines(m) == 32

    r = guest_pm.suspend_s3_rtc(m, wake_after=2, timeout=60)
    assert r.rc == 0, r.output
    assert "Waking up from system sleep state S3" in r.dmesg
    assert NOIRQ <= {c.callback for c in r.device_calls(addr)}
    assert _lines(m) == 32
