"""Hardware-in-loop: the whole stock-driver suite of test_guest_gpio.py (probe, output,
input, every interrupt edge to gpiomon, s2idle, real S3, the soft-reset path) on a function
served with ``--no-msix``: INTx only, the form a device that may be re-plugged under QEMU
11.1 takes (docs/HANDOVER.md, "Re-plugging the device"). The tests are that module's own;
only the two rigs differ."""
from __future__ import annotations

import pytest

from tests.hil.test_guest_gpio import *  # noqa: F401,F403 - the tests, collected here
from tests.hil.test_guest_gpio import NAMES
from vfio_virtio_kit.rig import Rig

pytestmark = pytest.mark.hil


def _rig(tmp_path_factory, name: str, *flags: str):
    r = Rig(tmp_path_factory.mktemp(name), *flags, "--no-msix", names=NAMES)
    r.start()
    r.boot()
    rc, out = r.m.run("grep virtio /proc/interrupts", timeout=20)
    assert out.strip() and "MSI" not in out, out          # INTx (IO-APIC), no MSI-X
    return r


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = _rig(tmp_path_factory, "intx-nsr1", "--no-soft-reset")
    yield r
    r.close()


@pytest.fixture(scope="module")
def rig_soft(tmp_path_factory):
    r = _rig(tmp_path_factory, "intx-nsr0", "--soft-reset")
    yield r
    r.close()
