"""The runtime package stands alone (issue 16): the development kit (vfio_virtio_kit: client
harness, driver-side virtio, guest fixture, demo) is not in the wheel, and nothing in the
runtime imports it."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_packages_are_the_runtime_only():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pkgs = cfg["tool"]["setuptools"]["packages"]
    assert all(p == "vfio_virtio" or p.startswith("vfio_virtio.") for p in pkgs), pkgs
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".")
               for p in (ROOT / "vfio_virtio").rglob("__init__.py")}
    assert on_disk == set(pkgs), "every runtime subpackage is in the wheel, and only those"


def test_runtime_sources_do_not_name_the_kit():
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "vfio_virtio").rglob("*.py")
           for i, line in enumerate(p.read_text().splitlines(), 1)
           if re.search(r"\bvfio_virtio_kit\b|\btesting\b.*import|import.*\btesting\b", line)]
    assert not bad, bad


def test_runtime_entry_points_load_without_the_kit():
    code = ("import sys, vfio_virtio.cli, vfio_virtio.ctl, vfio_virtio.client, "
            "vfio_virtio.server, vfio_virtio.handover; "
            "print(sorted(m for m in sys.modules if m.startswith('vfio_virtio_kit')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]", out
