"""Hardware-in-loop: a handover while a real QEMU guest is attached (docs/HANDOVER.md).

What the operator must know, observed rather than assumed: the new process carries the lines
(an output the guest drives keeps driving, read on the new server's control socket), but
QEMU's vfio-user-pci client does not reconnect to it, so the guest's gpio device is dead
until the VM is restarted (or the device re-plugged)."""
from __future__ import annotations

import os

import pytest

from vfio_virtio.testing.rig import Rig, hold_output, record, wait_host
from vfio_virtio.testing.server_proc import ServerProcess
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
