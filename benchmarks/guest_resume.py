"""Guest side: the resume time a real Linux 6.12 guest reports for our device
(pm_print_times), No_Soft_Reset on vs off, several suspend cycles each.

Each cycle is an s2idle with pm_test=platform, which reaches the PCI noirq phase where Linux
puts the function in D3hot. Per cycle we take the device's PCI resume callbacks:
pci_pm_resume_noirq (power-up, includes the PCI-mandated D3hot->D0 delay, paid by both arms),
pci_pm_resume_early, pci_pm_resume (virtio: skipped with No_Soft_Reset, else the full
virtio_device_restore). No GPIO request is made after a reset-style resume: the stock driver
would block forever (see README), which is the point of the other arm.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from vfio_virtio_kit import guest_pm
from vfio_virtio_kit.assets import AssetsMissing, find_assets
from vfio_virtio_kit.rig import Rig


def _stats(xs: list[int]) -> dict:
    s = sorted(xs)
    return {"n": len(s), "median_us": statistics.median(s), "min_us": s[0], "max_us": s[-1],
            "samples_us": s}


def run_arm(flag: str, cycles: int, workdir: Path, log=print) -> dict:
    per_cb: dict[str, list[int]] = {}
    totals: list[int] = []
    with Rig(workdir, flag) as r:
        m = r.boot()
        for i in range(cycles):
            res = guest_pm.suspend(m, "freeze", "platform")
            if res.rc != 0:
                raise RuntimeError(f"suspend cycle {i} failed: {res.output}")
            calls = [c for c in res.device_calls(r.addr) if "resume" in c.callback]
            for c in calls:
                per_cb.setdefault(c.callback, []).append(c.usecs)
            totals.append(sum(c.usecs for c in calls))
        log(f"guest resume {flag}: total median {statistics.median(totals):.0f} us "
            f"over {cycles} cycles")
    return {"server_flag": flag, "device": r.addr, "cycles": cycles,
            "total": _stats(totals), "callbacks": {k: _stats(v) for k, v in per_cb.items()}}


def run(cycles: int = 5, log=print) -> dict | None:
    """Both arms; None when the guest assets are missing (`make setup` builds them)."""
    try:
        find_assets()
    except AssetsMissing as e:
        log(f"guest resume benchmark skipped: {e}")
        return None
    with tempfile.TemporaryDirectory(prefix="vv-guest-bench-") as d:
        arms = {"no_soft_reset": run_arm("--no-soft-reset", cycles, Path(d) / "nsr1", log),
                "soft_reset": run_arm("--soft-reset", cycles, Path(d) / "nsr0", log)}
    a, b = arms["no_soft_reset"], arms["soft_reset"]
    out = {"method": "s2idle, pm_test=platform, pm_print_times; sum of the device's PCI "
                     "resume callbacks per cycle", "arms": arms,
           "ratio_reset_over_retention_total": b["total"]["median_us"] / a["total"]["median_us"]}
    cb = "pci_pm_resume"
    if cb in a["callbacks"] and cb in b["callbacks"]:
        out["ratio_reset_over_retention_pci_pm_resume"] = (
            b["callbacks"][cb]["median_us"] / max(a["callbacks"][cb]["median_us"], 1))
    return out
