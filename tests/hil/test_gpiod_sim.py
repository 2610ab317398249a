"""Hardware-in-loop: the gpiod backend on a real kernel GPIO chip (gpio-sim) in a 6.12 guest.

One guest boot (module scope): the gpio-sim initramfs (scripts/setup_guest.sh) loads 9p,
configfs, irq_sim and gpio-sim, mounts this machine's root read-only over 9p and chroots
into it, so the project's own venv runs inside the TCG guest. There
``guest/gpiosim/checks.py`` creates sim chips, runs our server with
``--backend gpiod:/dev/gpiochipN`` and drives it with the driver-side harness; each check
prints a ``VV-CHECK {json}`` line that the tests below assert on. The backend's unit tests
also run there, where gpio-sim makes them unskipped.
"""
from __future__ import annotations

import dataclasses
import json
import time

import pytest

from vfio_virtio_kit.assets import cache_dir, find_assets
from vfio_virtio_kit.machine import GuestMachine
from vfio_virtio_kit.rig import record
from vfio_virtio_kit.server_proc import TOP

pytestmark = pytest.mark.hil

RUN = f"sh /mnt/host{TOP}/guest/gpiosim/run.sh {TOP}"


@pytest.fixture(scope="module")
def sim_guest(tmp_path_factory):
    initrd = cache_dir() / "guest" / "current" / "initramfs-gpiosim.cpio.gz"
    if not initrd.exists():
        pytest.fail(f"guest assets missing: run make setup ({initrd} not found)")
    assets = dataclasses.replace(find_assets(), initrd=initrd)
    t0 = time.monotonic()
    m = GuestMachine(tmp_path_factory.mktemp("gpiosim") / "logs", assets=assets,
                     name="gpiosim", extra_args=[
                         "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                         "readonly=on",
                         # the checkout itself, for a checkout the guest's tmpfs on /tmp hides
                         "-virtfs", f"local,path={TOP},mount_tag=vvrepo,security_model=none,"
                         "readonly=on"])
    with m:
        m.wait_ready(timeout=120)
        rc, out = m.run(f"vv-gpiosim-up {TOP}", timeout=60)
        if rc != 0 or "VV-GPIOSIM-UP" not in out:
            raise m.error(f"gpio-sim guest bring-up failed (rc={rc}):\n{out}")
        rc, out = m.run(f"{RUN} guest/gpiosim/checks.py /tmp/vvsim", timeout=300)
        checks = {}
        for line in out.splitlines():
            if line.startswith("VV-CHECK "):
                d = json.loads(line[len("VV-CHECK "):])
                checks[d["name"]] = d
        rc_u, out_u = m.run(f"{RUN} -m pytest -q -p no:cacheprovider -rs "
                            "tests/unit/test_gpiod_backend.py", timeout=180)
        elapsed = time.monotonic() - t0
        yield {"rc": rc, "out": out, "checks": checks, "unit": (rc_u, out_u),
               "boot_s": m.boot_seconds, "total_s": elapsed, "logs": m.logs}
    record("gpiod_sim", {"total_s": round(elapsed, 1), "boot_s": m.boot_seconds,
                         "checks": checks})


def _check(g: dict, name: str) -> dict:
    c = g["checks"].get(name)
    assert c is not None, f"check {name!r} did not run (rc={g['rc']}):\n{g['out'][-3000:]}"
    assert c["ok"], f"{name}: {json.dumps(c, indent=1)}"
    return c


@pytest.mark.parametrize("name", [
    "names",                     # the chip's line names in GET_LINE_NAMES
    "output",                    # SET_VALUE reaches the sim value
    "input",                     # pull reaches GET_VALUE
    "irq_edge_rising", "irq_edge_falling", "irq_edge_both",
    "irq_level_high", "irq_level_low",   # every IRQ type, latching and masking as on sim
    "d3hot_nsr_output_kept",     # D3hot with No_Soft_Reset=1: the sim value never changes
    "soft_reset_releases",       # the soft-reset path returns lines to input
    "busy_line",                 # a line requested elsewhere: clear error at start
    "chip_gone",                 # live 0 while serving: ERR, no crash, no spin
    "control_watch_readonly",    # --control with gpiod: watch and get, set refused
    "fast_path_gpiod",           # GET/SET_VALUE served in C: sim value, pull, watchers
    "fast_path_gpiod_chip_gone", # ... and ERR once the chip is gone (as in Python)
])
def test_gpiod_on_gpio_sim(sim_guest, name):
    _check(sim_guest, name)


def test_handover_keeps_output_driving(sim_guest):
    """The server is replaced (state + line-request fds over SCM_RIGHTS); sim `value`
    sampled throughout never changes; the reattached client is served by the new process."""
    c = _check(sim_guest, "handover")
    assert c["changes_before_client"] == 0 and c["samples"] > 0, c
    assert c["line_info_before_client"] == [], c


def test_backend_unit_tests_run_unskipped(sim_guest):
    rc, out = sim_guest["unit"]
    assert rc == 0, out[-3000:]
    assert "skipped" not in out, out[-3000:]


def test_whole_run_completed(sim_guest):
    assert sim_guest["rc"] == 0 and "done" in sim_guest["checks"], sim_guest["out"][-3000:]
    print(f"gpio-sim guest: boot {sim_guest['boot_s']:.1f} s, total {sim_guest['total_s']:.1f} s")


def test_fast_path_figures(sim_guest):
    """Figures (recorded with the checks, printed; no speed is asserted): GET_VALUE of a
    gpiod input, C request path vs Python, interleaved rounds inside the TCG guest."""
    c = _check(sim_guest, "fast_path_gpiod_figures")
    print(f"gpiod GET_VALUE in the guest: C {c['c']}, Python {c['python']}; Python/C "
          f"round trip x{c['ratio_round_trip']}, server CPU x{c['ratio_server_cpu']}")
