"""One definition each of the virtio-gpio queue indices and wire formats (issue 16).

virtio 1.3 5.17.2 (requestq 0, eventq 1) and 5.17.6 (struct virtio_gpio_request) live in
vfio_virtio/gpio/spec.py; the device, the driver-side kit, tests, benchmarks and fuzzers
import them. A second literal copy can drift from the first without any test noticing.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIRS = ("vfio_virtio", "tests", "benchmarks", "fuzz")
COPIES = {
    "request struct format": re.compile(r"""["']<HHI["']"""),
    "queue index": re.compile(r"^\s*(?:REQUESTQ|EVENTQ)\b[\w, ]*=\s*\d", re.M),
}


def test_queue_indices_and_request_format_defined_once():
    found = []
    for d in DIRS:
        for f in sorted((ROOT / d).rglob("*.py")):
            if f == Path(__file__).resolve() or f.name.endswith("spec.py"):
                continue                 # spec modules are the homes of their own specs
            text = f.read_text()
            for what, pat in COPIES.items():
                for m in pat.finditer(text):
                    line = text.count("\n", 0, m.start()) + 1
                    found.append(f"{f.relative_to(ROOT)}:{line}: {what} {m.group(0).strip()!r}")
    assert not found, "define these in gpio/spec.py and import them:\n" + "\n".join(found)


def test_the_home_has_them():
    from vfio_virtio.gpio import spec as G
    assert (G.VIRTIO_GPIO_REQUESTQ, G.VIRTIO_GPIO_EVENTQ) == (0, 1)
    assert G.VIRTIO_GPIO_REQUEST_FMT == "<HHI" and G.VIRTIO_GPIO_REQUEST_SIZE == 8
