"""Hardware-in-loop: a handover while a real QEMU guest is attached (docs/HANDOVER.md).

What the operator must know, observed rather than assumed: the new process carries the lines
(an output the guest drives keeps driving, read on the new server's control socket), but
QEMU's vfio-user-pci client does not reconnect to it, so the guest's gpio device is dead
until the VM is restarted or the device re-plugged (tests/hil/test_replug_qemu.py has the
plain re-plug and the QEMU unplug bug it works around)."""
from __future__ import annotations

import os
import types

import pytest

from vfio_virtio_kit.machine import GuestMachine
from vfio_virtio_kit.rig import Rig, hold_output, record, wait_host
from vfio_virtio_kit.server_proc import ServerProcess
from vfio_virtio.backends.control import ControlClient

pytestmark = pytest.mark.hil


def test_handover_with_qemu_attached(tmp_path):
    h = str(tmp_path / "handover.sock")
    r = Rig(tmp_path, "--handover", h)
    new = None
    try:
        r.start()
        m = r.boot()
        hold_output(m, 0, 1)
        wait_host(r, 0, direction="out", value=1)
        new = ServerProcess("--lines", "8", "--take-over", h, "--handover", h,
                            workdir=str(tmp_path))
        new.log_path = os.path.join(str(tmp_path), "server-new.log")
        new.start()
        assert r.srv.proc.wait(20) == 0, r.srv.log_tail()
        with ControlClient(new.control) as c:
            assert c.get(0)["direction"] == "out" and c.get(0)["value"] == 1
        # the guest's next request: QEMU's client lost its server and does not reconnect
        rc, out = m.run("gpioget gpiochip0 2 >/tmp/g 2>&1 & p=$!; for i in $(seq 20); do "
                        "[ -d /proc/$p ] || { wait $p; echo exited=$?; cat /tmp/g; exit 0; }; "
                        "grep -q 'State:.*D' /proc/$p/status && { echo blocked; exit 0; }; "
                        "read -t 0.3 < /dev/zero 2>/dev/null; done; echo waiting", timeout=30)
        qemu_alive = m.proc.poll() is None
        record("handover_qemu", {"guest_request": out.strip(), "qemu_alive": qemu_alive,
                                 "new_server_clients": "see server-new.log"})
        assert "exited=0" not in out, f"the guest request succeeded after the handover: {out}"
        with ControlClient(new.control) as c:          # lines still as the guest left them
            assert c.get(0)["value"] == 1
        assert new.alive()
    finally:
        r.close()
        if new is not None:
            new.stop()


def _wait_guest_chip(m, timeout: float = 60) -> str:
    """Wait (bounded, paced in the guest) until a virtio gpiochip shows up; its name."""
    rc, out = m.run("for i in $(seq 150); do c=$(gpiodetect 2>/dev/null | grep virtio | "
                    "cut -d' ' -f1); [ -n \"$c\" ] && { echo $c; exit 0; }; "
                    "read -t 0.3 < /dev/zero 2>/dev/null; done; exit 1", timeout=timeout)
    if rc != 0:
        raise m.error(f"no virtio gpiochip in the guest: {out}")
    return out.strip()


def test_operator_replug_after_handover(tmp_path):
    """The re-plug procedure: the device, served without MSI-X (QEMU 11.1 aborts at the
    unplug of a vfio-user device with MSI-X: docs/HANDOVER.md), sits behind a
    pcie-root-port; device_del, hand over, device_add: the guest's driver binds the new
    process's device and the output the guest drove before kept driving on the host the
    whole time."""
    h = str(tmp_path / "handover.sock")
    old = ServerProcess("--lines", "8", "--no-msix", "--handover", h,
                        workdir=str(tmp_path)).start()
    new = None
    dev = {"driver": "vfio-user-pci", "id": "gpio0", "bus": "rp0",
           "socket": {"type": "unix", "path": old.socket}}
    try:
        m = GuestMachine(tmp_path / "logs", name="replug",
                         devices=["pcie-root-port,id=rp0,chassis=1", dev])
        with m:
            m.wait_ready(timeout=120)
            chip = _wait_guest_chip(m)
            m.run(f"gpioset --mode=signal {chip} 0=1 & echo $! > /tmp/hold0", timeout=10,
                  check=True)
            r = types.SimpleNamespace(host=lambda: ControlClient(old.control))
            wait_host(r, 0, direction="out", value=1)
            m.qmp.execute("device_del", {"id": "gpio0"})
            m.qmp.wait_event("DEVICE_DELETED", 60)
            m.run("kill $(cat /tmp/hold0); true", timeout=10)
            with ControlClient(old.control) as c:
                assert c.get(0)["value"] == 1             # the unplug kept the line
            new = ServerProcess("--lines", "8", "--no-msix", "--take-over", h,
                                "--handover", h, workdir=str(tmp_path))
            new.log_path = os.path.join(str(tmp_path), "server-new.log")
            new.start()
            assert old.proc.wait(20) == 0, old.log_tail()
            with ControlClient(new.control) as c:
                assert c.get(0)["direction"] == "out" and c.get(0)["value"] == 1
            m.qmp.execute("device_add", dev)
            chip = _wait_guest_chip(m)
            with ControlClient(new.control) as c:
                assert c.get(0)["value"] == 1             # the new probe kept the line
                c.set(2, 1)
            rc, out = m.run(f"gpioget {chip} 2", timeout=20)
            assert rc == 0 and out.strip() == "1", out
            m.run(f"gpioset --mode=signal {chip} 0=0 & echo $! > /tmp/hold0", timeout=10,
                  check=True)
            r = types.SimpleNamespace(host=lambda: ControlClient(new.control))
            wait_host(r, 0, direction="out", value=0)
    finally:
        old.stop()
        if new is not None:
            new.stop()
