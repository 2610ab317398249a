"""Hardware-in-loop: a stock Linux 6.12 guest's unmodified gpio-virtio driver uses our device
through a real QEMU vfio-user-pci, and suspend/resume is checked from inside and outside.

One boot per No_Soft_Reset setting (module-scoped) keeps the suite fast under TCG.
"""
from __future__ import annotations

import re

import pytest

from vfio_virtio_kit import guest_pm
from vfio_virtio_kit.machine import GuestMachine
from vfio_virtio_kit.rig import Rig, hold_output, record, release_output, wait_host

pytestmark = pytest.mark.hil

NAMES = "led0,led1,btn0,relay,irq0,irq1,spare6,spare7"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("nsr1"), "--no-soft-reset", names=NAMES)
    r.start()
    r.boot()
    yield r
    r.close()


def test_probe_binds_stock_driver(rig):
    """1. gpio-virtio binds to our PCI function; the chip has our line count and names."""
    m = rig.m
    rc, out = m.run(f"cat /sys/bus/pci/devices/{rig.addr}/vendor "
                    f"/sys/bus/pci/devices/{rig.addr}/device; "
                    "basename $(readlink /sys/bus/virtio/devices/virtio0/driver)", timeout=20)
    assert out.split() == ["0x1af4", "0x1069", "gpio_virtio"], out
    rc, out = m.run("gpiodetect", timeout=20)
    assert rc == 0 and re.search(r"gpiochip0 \[virtio0\] \(8 lines\)", out), out
    rc, out = m.run("gpioinfo gpiochip0", timeout=20)
    names = re.findall(r'line\s+\d+:\s+"([^"]+)"', out)
    assert names == NAMES.split(","), out


def test_outputs_reach_the_host(rig):
    """2. gpioset in the guest changes the line the host reads, both ways."""
    for v in (1, 0, 1):
        hold_output(rig.m, 0, v)
        wait_host(rig, 0, direction="out", value=v)
        release_output(rig.m, 0)


def test_inputs_reach_the_guest(rig):
    """3. The host drives an input; gpioget in the guest reads it."""
    with rig.host() as h:
        for v in (1, 0, 1, 0):
            h.set(2, v)
            rc, out = rig.m.run("gpioget gpiochip0 2", timeout=20)
            assert rc == 0 and out.strip() == str(v), out


@pytest.mark.parametrize("flag, edge, level, kind", [
    ("--rising-edge", "rising", 1, "RISING"),
    ("--falling-edge", "falling", 0, "FALLING"),
    ("", "both", 1, "RISING"),
    ("", "both", 0, "FALLING"),
])
def test_interrupts_reach_gpiomon(rig, flag, edge, level, kind):
    """4. gpiomon sees the edges the host generates (SET_IRQ_TYPE, eventq buffer, MSI-X).
    One event per run: for both-edge mode Linux reads the level in its threaded handler to
    name the edge, so the host holds the new level until the guest has reported it."""
    m = rig.m
    cid = m.start(f"gpiomon --num-events=1 {flag} gpiochip0 4", timeout=60)
    try:
        wait_host(rig, 4, edge=edge)                   # the driver armed the interrupt
    except AssertionError as e:
        raise AssertionError(f"{e}; gpiomon: {m.wait(cid, 5)}") from None
    with rig.host() as h:
        h.set(4, level)
    rc, out = m.wait(cid, 60)
    assert rc == 0, out
    assert re.findall(r"(RISING|FALLING) EDGE", out) == [kind], out


def _no_reprobe(m: GuestMachine) -> None:
    rc, out = m.run("ls /sys/bus/virtio/devices/; gpiodetect", timeout=20)
    assert out.split()[0] == "virtio0" and "gpiochip0 [virtio0]" in out, out


def test_suspend_keeps_state_with_no_soft_reset(rig):
    """5. s2idle (pm_test=platform reaches the PCI noirq phase: D3hot) and a real s2idle
    woken by a device IRQ: outputs keep driving on the host throughout, the chip works after
    resume without re-probe; the guest's per-device resume time is recorded."""
    m = rig.m
    hold_output(m, 3, 1)
    wait_host(rig, 3, direction="out", value=1)
    times = {}
    for label, run in (("platform", lambda: guest_pm.suspend(m, "freeze", "platform")),
                       ("s2idle", lambda: guest_pm.suspend_s2idle_wake_serial(m, timeout=60))):
        r = run()
        assert r.rc == 0, r.output
        calls = {c.callback: c.usecs for c in r.device_calls(rig.addr)}
        assert "pci_pm_suspend_noirq" in calls and "pci_pm_resume_noirq" in calls, calls
        times[label] = calls
        with rig.host() as h:
            line = h.get(3)
        assert line["direction"] == "out" and line["value"] == 1
        with rig.host() as h:
            h.set(2, 1)
        assert m.run("gpioget gpiochip0 2", timeout=20) == (0, "1\n")
        _no_reprobe(m)
    record("guest_resume_nsr1", {"device": rig.addr, "calls_usecs": times})


def test_real_s3_wake_reset_keeps_state(rig):
    """7. Real S3 (RTC wake): QEMU's wake reset (PMCSR -> D0, then VFIO_USER_DEVICE_RESET)
    keeps the state of a No_Soft_Reset function; the chip works after resume."""
    m = rig.m
    wait_host(rig, 3, direction="out", value=1)
    r = guest_pm.suspend_s3_rtc(m, wake_after=2, timeout=60)
    assert r.rc == 0, r.output
    assert "Waking up from system sleep state S3" in r.dmesg
    with rig.host() as h:
        assert h.get(3)["direction"] == "out" and h.get(3)["value"] == 1
        h.set(2, 0)
    assert m.run("gpioget gpiochip0 2", timeout=20) == (0, "0\n")
    _no_reprobe(m)
    log = open(rig.srv.log_path).read()
    assert "VFIO_USER_DEVICE_RESET`: state kept" in log   # the wake reset kept everything
    record("guest_resume_s3_nsr1", {"device": rig.addr,
                                    "calls": [c.__dict__ for c in r.device_calls(rig.addr)]})


def test_qemu_killed_server_survives_and_serves_next(rig):
    """8. QEMU killed with SIGKILL: the server survives, keeps line state (default policy:
    outputs keep driving) and serves the next QEMU, whose guest drives the chip again."""
    old = rig.m
    old.proc.kill()
    old.proc.wait(10)
    old.__exit__(None, None, None)
    rig.m = None
    assert rig.srv.alive()
    wait_host(rig, 3, direction="out", value=1)
    m = rig.boot("guest2")
    _no_reprobe(m)
    with rig.host() as h:
        h.set(2, 1)
        assert m.run("gpioget gpiochip0 2", timeout=20) == (0, "1\n")
        assert h.get(3)["direction"] == "out"          # kept through the new boot's resets


def test_guest_reboot_resets_lines(rig):
    """8. A guest reboot (platform reset of a function in D0 that the driver used) is a real
    reset: lines return to their reset state; the rebooted guest probes the chip again.
    (-no-reboot would turn the reset into a QEMU exit: this guest resets instead.)"""
    rig.stop_guest()
    m = rig.boot("guest3", extra_args=("-action", "reboot=reset"))
    hold_output(m, 5, 1)
    wait_host(rig, 5, direction="out", value=1)
    m.qmp.execute("system_reset")
    wait_host(rig, 5, direction="in")
    m.wait_ready(timeout=120)
    rc, out = m.run("gpiodetect", timeout=20)
    assert "gpiochip0 [virtio0] (8 lines)" in out, out
    assert rig.srv.alive()


@pytest.fixture(scope="module")
def rig_soft(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("nsr0"), "--soft-reset", names=NAMES)
    r.start()
    r.boot()
    yield r
    r.close()


def test_suspend_without_no_soft_reset_wedges_stock_driver(rig_soft):
    """6. No_Soft_Reset = 0: D3hot -> D0 soft-resets the device (outputs released on the
    host). Linux restores the virtio status but gpio-virtio has no restore callback, so its
    virtqueues are gone; since 'gpio: virtio: remove timeout' it waits for the completion
    without a timeout: the next request blocks its task in uninterruptible sleep (D) for
    good. This is the bug of the source thread that No_Soft_Reset avoids."""
    r, m = rig_soft, rig_soft.m
    hold_output(m, 3, 1)
    wait_host(r, 3, direction="out", value=1)
    res = guest_pm.suspend(m, "freeze", "platform")
    assert res.rc == 0, res.output
    calls = {c.callback: c.usecs for c in res.device_calls(r.addr)}
    record("guest_resume_nsr0", {"device": r.addr, "calls_usecs": {"platform": calls}})
    wait_host(r, 3, direction="in")                    # soft reset released the output
    rc, out = m.run("gpioget gpiochip0 2 & p=$!; for i in 1 2 3 4 5 6 7 8 9 10; do "
                    "grep -q 'State:.*D' /proc/$p/status && { echo blocked; exit 0; }; "
                    "read -t 0.3 < /dev/zero 2>/dev/null; done; echo not-blocked", timeout=30)
    assert out.strip() == "blocked", out
