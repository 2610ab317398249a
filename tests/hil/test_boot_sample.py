"""Hardware-in-loop smoke tests: the real QEMU (sid, vfio-user-pci) boots the Debian 6.12 guest.

These guard the test rig itself before any vfio-virtio device is attached:
- the guest boots, its control port runs commands with exit codes and timeouts, and it shuts
  down softly (QEMU exits 0 without signals);
- the out-of-tree gpio-virtio.ko loads into the stock kernel (its alias virtio:d00000029 is
  what binds virtio device ID 41, virtio 1.3 section 5.17);
- a vfio-user device served by libvfio-user's own C sample `gpio-pci-idio-16` is seen by the
  guest as a PCI function with the sample's IDs (PCI Local Bus 3.0, 6.2.1: Vendor ID/Device
  ID) and driven through the Linux GPIO character device (`gpiodetect`/`gpioinfo`/`gpioget`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vfio_virtio_kit.assets import GuestAssets
from vfio_virtio_kit.machine import GuestError, GuestMachine

pytestmark = pytest.mark.hil

IDIO16_VENDOR = 0x494F   # set by the sample with vfu_pci_set_id()
IDIO16_DEVICE = 0x0DC8
IDIO16_LINES = 32        # 16 outputs + 16 inputs (Linux gpio-idio-16)


def _pci_functions(m: GuestMachine) -> dict[str, tuple[int, int, str]]:
    """{address: (vendor, device, driver name)} from the guest's sysfs (no lspci in busybox)."""
    rc, out = m.run(
        "for d in /sys/bus/pci/devices/*; do "
        "echo \"${d##*/} $(cat $d/vendor) $(cat $d/device) $(basename \"$(readlink $d/driver)\")\"; done",
        timeout=20, check=True)
    funcs = {}
    for line in out.splitlines():
        addr, ven, dev, drv = line.split(" ", 3)
        funcs[addr] = (int(ven, 16), int(dev, 16), drv)
    return funcs


def test_boot_without_device_runs_commands(guest_assets: GuestAssets, hil_logdir: Path) -> None:
    """Rig: boot, run commands (output + exit status + guest-side timeout), soft shutdown."""
    with GuestMachine(hil_logdir) as m:
        assert m.wait_ready(timeout=120) == guest_assets.kernel_release
        assert m.run("echo hello; echo err >&2; exit 7", timeout=10) == (7, "hello\nerr\n")
        # Output that looks like protocol lines must travel as data.
        assert m.run("echo 'VV-END 1 rc=0'", timeout=10) == (0, "VV-END 1 rc=0\n")
        rc, _ = m.run("sleep 30", timeout=1)
        assert rc == 137, "guest-side timeout must SIGKILL the command"
        rc, out = m.run("cat /proc/modules", timeout=10, check=True)
        assert re.search(r"^gpio_virtio ", out, re.M), "out-of-tree gpio-virtio.ko not loaded"
        assert m.query_status() == "running"
    assert m.exitcode == 0 and not m.hard_shutdown, "guest did not shut down softly"
    assert "VV-MODULE-FAIL" not in m.console_text()


def test_vfio_user_without_server_fails_with_logs(hil_logdir: Path) -> None:
    """Rig: QEMU refusing to start surfaces as GuestError carrying QEMU's own message."""
    dev = {"driver": "vfio-user-pci", "socket": {"type": "unix", "path": str(hil_logdir / "none.sock")}}
    with pytest.raises(GuestError) as ei:
        with GuestMachine(hil_logdir, devices=[dev]) as m:
            m.wait_ready(timeout=60)
    assert "QEMU exited" in str(ei.value)
    assert "none.sock" in str(ei.value), "QEMU's stderr tail missing from the error"


def test_idio16_sample_is_a_gpiochip_in_the_guest(hil_logdir: Path, idio16_server: Path) -> None:
    """libvfio-user's C sample over vfio-user-pci: PCI IDs visible, gpio-pci-idio-16 binds,
    its 32 lines are listed and readable through the GPIO character device."""
    dev = {"driver": "vfio-user-pci", "socket": {"type": "unix", "path": str(idio16_server)}}
    with GuestMachine(hil_logdir, devices=[dev]) as m:
        m.wait_ready(timeout=120)
        funcs = _pci_functions(m)
        found = [a for a, (v, d, _) in funcs.items() if (v, d) == (IDIO16_VENDOR, IDIO16_DEVICE)]
        assert len(found) == 1, f"sample device not seen by the guest: {funcs}"
        addr = found[0]
        assert funcs[addr][2] == "pci-idio-16", f"driver not bound: {funcs[addr]}"

        rc, out = m.run("gpiodetect", timeout=20)
        assert rc == 0
        chips = re.findall(r"^(gpiochip\d+) \[(\S+)\] \((\d+) lines\)$", out, re.M)
        mine = [c for c in chips if c[1] == addr]
        assert mine and int(mine[0][2]) == IDIO16_LINES, out
        chip = mine[0][0]

        rc, out = m.run(f"gpioinfo {chip}", timeout=20)
        assert rc == 0
        assert len(re.findall(r"^\s+line\s+\d+:", out, re.M)) == IDIO16_LINES, out

        # A read goes guest -> QEMU -> vfio-user -> the sample's BAR2 callback.
        rc, out = m.run(f"gpioget {chip} 16", timeout=20)
        assert rc == 0 and out.strip() in ("0", "1"), out
    assert m.exitcode == 0 and not m.hard_shutdown
