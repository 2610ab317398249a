"""Hardware-in-loop through the virtio-mmio path (``--transport mmio``, docs/MMIO.md): a stock
Linux 6.12 guest's own ``virtio_mmio`` and ``gpio-virtio`` drivers bind unchanged to the
platform device that our bridge module (guest/vv_mmio_bridge) registers for the PCI
function's BAR0 and interrupt.

One boot for the module; the suspend test leaves gpio-virtio wedged, so it runs last.
"""
from __future__ import annotations

import re

import pytest

from vfio_virtio_kit import guest_pm
from vfio_virtio_kit.rig import Rig, hold_output, record, release_output, wait_host

pytestmark = pytest.mark.hil

NAMES = "led0,led1,btn0,relay,irq0,irq1,spare6,spare7"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("mmio"), "--transport", "mmio", "--no-soft-reset",
            names=NAMES)
    r.start()
    r.boot()            # r.addr: the virtio-mmio platform device (parent of virtio0)
    rc, out = r.m.run(f"basename $(readlink -f /sys/bus/platform/devices/{r.addr}/..)",
                      timeout=20)
    r.pci = out.strip()
    yield r
    r.close()


def test_probe_binds_virtio_mmio_and_gpio_virtio(rig):
    """The bridge binds our PCI function (1af4:10f9, which virtio_pci leaves alone), the
    stock virtio_mmio binds the platform device it registers, gpio-virtio binds virtio0; the
    chip has our line count and names."""
    m = rig.m
    p = f"/sys/bus/pci/devices/{rig.pci}"
    rc, out = m.run(f"cat {p}/vendor {p}/device; basename $(readlink {p}/driver); "
                    f"basename $(readlink /sys/bus/platform/devices/{rig.addr}/driver); "
                    "basename $(readlink /sys/bus/virtio/devices/virtio0/driver); "
                    "cat /sys/bus/virtio/devices/virtio0/device", timeout=20)
    assert out.split() == ["0x1af4", "0x10f9", "vv_mmio_bridge", "virtio-mmio",
                           "gpio_virtio", "0x0029"], out
    assert rig.addr.startswith("virtio-mmio.")
    rc, out = m.run("gpiodetect", timeout=20)
    assert rc == 0 and re.search(r"gpiochip0 \[virtio0\] \(8 lines\)", out), out
    rc, out = m.run("gpioinfo gpiochip0", timeout=20)
    assert re.findall(r'line\s+\d+:\s+"([^"]+)"', out) == NAMES.split(","), out


def test_set_and_get(rig):
    """Outputs set in the guest reach the host; inputs the host drives read in the guest."""
    for v in (1, 0, 1):
        hold_output(rig.m, 0, v)
        wait_host(rig, 0, direction="out", value=v)
        release_output(rig.m, 0)
    with rig.host() as h:
        for v in (1, 0):
            h.set(2, v)
            assert rig.m.run("gpioget gpiochip0 2", timeout=20) == (0, f"{v}\n")


def _gpiomon_edge(rig) -> None:
    m = rig.m
    with rig.host() as h:
        h.set(4, 0)
    cid = m.start("gpiomon --num-events=1 --rising-edge gpiochip0 4", timeout=60)
    try:
        wait_host(rig, 4, edge="rising")               # the driver armed the interrupt
    except AssertionError as e:
        raise AssertionError(f"{e}; gpiomon: {m.wait(cid, 5)}") from None
    with rig.host() as h:
        h.set(4, 1)
    rc, out = m.wait(cid, 60)
    assert rc == 0 and re.findall(r"(RISING|FALLING) EDGE", out) == ["RISING"], out


def _irq_count(rig, kind: str) -> int:
    rc, out = rig.m.run("grep virtio0 /proc/interrupts", timeout=20)
    assert kind in out, out
    return sum(int(x) for x in out.split()[1:] if x.isdigit())


def test_interrupt_reaches_gpiomon_over_msix(rig):
    """An edge on the host reaches gpiomon: eventq buffer completed, Used Buffer Notification
    in InterruptStatus, MSI-X vector 0 (the bridge's default), virtio_mmio's vm_interrupt."""
    before = _irq_count(rig, "PCI-MSIX")
    _gpiomon_edge(rig)
    assert _irq_count(rig, "PCI-MSIX") > before


def test_interrupt_reaches_gpiomon_over_intx(rig):
    """The same through INTx: the bridge re-bound with intx=1 registers a new platform
    device; virtio_mmio and gpio-virtio bind again; the edge arrives on the IO-APIC line."""
    m = rig.m
    rc, out = m.run("rmmod vv_mmio_bridge && insmod /lib/modules/vv_mmio_bridge.ko intx=1 && "
                    "for i in $(seq 50); do v=$(ls /sys/bus/virtio/devices/ | head -n1); "
                    "[ -n \"$v\" ] && [ -e /sys/bus/virtio/devices/$v/driver ] && break; "
                    "read -t 0.1 < /dev/zero 2>/dev/null; done; echo $v; "
                    "basename $(readlink /sys/bus/virtio/devices/$v/driver); "
                    "basename $(readlink -f /sys/bus/virtio/devices/$v/..); "
                    "grep $v /proc/interrupts; gpiodetect", timeout=30)
    assert rc == 0, out
    vdev, drv, plat = out.split("\n")[:3]
    assert drv == "gpio_virtio" and plat.startswith("virtio-mmio."), out
    assert re.search(rf"IO-APIC.*{vdev}", out), out             # INTx, not PCI-MSIX
    assert re.search(rf"gpiochip0 \[{vdev}\] \(8 lines\)", out), out
    rig.addr = plat
    try:
        _gpiomon_edge(rig)
        assert m.run("gpioget gpiochip0 4", timeout=20) == (0, "1\n")
    finally:                                           # back to the default (MSI-X)
        rc, out = m.run("rmmod vv_mmio_bridge && insmod /lib/modules/vv_mmio_bridge.ko && "
                        "basename $(readlink -f /sys/bus/virtio/devices/*/..)", timeout=30)
        assert rc == 0, out
        rig.addr = out.strip()


def test_suspend_cycle_resets_through_virtio_mmio(rig):
    """s2idle (pm_test=platform reaches the PCI noirq phase): the PCI function goes to D3hot
    and back with No_Soft_Reset, so the device itself keeps its state; but virtio_mmio has no
    No_Soft_Reset equivalent: its freeze/restore always runs and virtio_device_restore
    resets the device (Status 0) and re-negotiates. gpio-virtio has no restore callback, its
    virtqueues are never set up again: the next request blocks its task for good (6.12 waits
    without a timeout). Recorded in vv-guest-results/guest_mmio_suspend.json."""
    m = rig.m
    hold_output(m, 3, 1)
    wait_host(rig, 3, direction="out", value=1)
    log_mark = rig.srv.log_size()
    res = guest_pm.suspend(m, "freeze", "platform")
    assert res.rc == 0, res.output
    plat = {c.callback: c.usecs for c in res.device_calls(rig.addr)}
    pci = {c.callback: c.usecs for c in res.device_calls(rig.pci)}
    assert "platform_pm_suspend" in plat and "platform_pm_resume" in plat, plat
    assert "pci_pm_suspend_noirq" in pci and "pci_pm_resume_noirq" in pci, pci
    rig.srv.wait_log(r"D3hot -> D0 \(No_Soft_Reset=1\)[\s\S]*DRIVER_OK", 5, log_mark)
    with open(rig.srv.log_path, "rb") as f:
        f.seek(log_mark)
        srv_log = f.read().decode(errors="replace")
    d0 = srv_log.find("D3hot -> D0 (No_Soft_Reset=1)")
    assert srv_log.find("D0 -> D3hot") >= 0 and d0 > 0, srv_log
    after = srv_log[d0:]
    assert "driver writes status 0: virtio reset" in after, srv_log   # virtio_mmio's restore
    assert "DRIVER_OK" in after
    with rig.host() as h:                                  # line state is not virtio state
        assert h.get(3)["direction"] == "out" and h.get(3)["value"] == 1
    rc, out = m.run("gpioget gpiochip0 2 & p=$!; for i in 1 2 3 4 5 6 7 8 9 10; do "
                    "grep -q 'State:.*D' /proc/$p/status && { echo blocked; exit 0; }; "
                    "read -t 0.3 < /dev/zero 2>/dev/null; done; echo not-blocked", timeout=30)
    record("guest_mmio_suspend", {
        "platform_device": rig.addr, "pci_function": rig.pci,
        "calls_usecs": {"platform": plat, "pci": pci},
        "server_after_d0": [ln.split(" ", 3)[-1] for ln in after.splitlines()[:8]],
        "gpioget_after_resume": out.strip()})
    assert out.strip() == "blocked", out
