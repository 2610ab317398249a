"""Micro-benchmark of the split ring: chains/second through the C and the Python ring.

The driver side (DriverRing) prepares each batch outside the timed region; the timed part
is what the device does per batch: pop_batch, optionally read the request and write a
response, push_batch, needs_notify. Prints a table and writes JSON (``--out``).
Never passes or fails on a time.

    .venv/bin/python benchmarks/ring_bench.py [--quick] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vfio_virtio.dma import DmaTable  # noqa: E402
from vfio_virtio_kit.driver_ring import DriverRing  # noqa: E402
from vfio_virtio_kit.guestmem import GuestMemory  # noqa: E402
from vfio_virtio.virtio.queue import Virtqueue  # noqa: E402

QUEUE_SIZE = 256
REQUEST = b"\x04\x00\x01\x00\x00\x00\x00\x00"   # 8-byte request, like a virtio-gpio one


def run_one(impl: str, batch: int, chains: int, mode: str, indirect: bool) -> dict:
    """Time `chains` chains in batches of `batch`; returns the figures for one row."""
    with GuestMemory(4 << 20, iova=0x100000) as mem:
        dma = DmaTable()
        mem.register(dma)
        dr = DriverRing(mem, QUEUE_SIZE, event_idx=True, indirect=indirect, arena=1 << 20)
        vq = Virtqueue(0, dma, max_size=QUEUE_SIZE, impl=impl)
        dr.attach(vq)
        vq.enable()
        done = 0
        elapsed = 0.0
        notifies = 0
        while done < chains:
            n = min(batch, chains - done)
            for _ in range(n):
                dr.add([REQUEST], [2], indirect=indirect)
            t0 = time.perf_counter()
            if mode == "backend":
                raw = vq._r.pop_batch(n, max(QUEUE_SIZE, 4 * n))
                vq._r.push_batch([c[0] for c in raw], [2] * len(raw))
                got = len(raw)
            else:
                popped = vq.pop_batch(n)
                if mode == "data":
                    for c in popped:
                        c.read()
                        c.write(b"\x00\x01")
                vq.push_batch([(c.head, 2) for c in popped])
                got = len(popped)
            notifies += vq.needs_notify()
            elapsed += time.perf_counter() - t0
            if got != n:
                raise RuntimeError(f"popped {got} of {n} chains")
            dr.used()
            done += n
        dma.clear()
    return {"impl": impl, "batch": batch, "mode": mode, "indirect": indirect,
            "chains": chains, "seconds": elapsed, "chains_per_s": chains / elapsed,
            "us_per_chain": 1e6 * elapsed / chains, "notifies": notifies}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer chains, fewer rows")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--chains", type=int, help="chains per row (default 20000, quick 2000)")
    args = ap.parse_args(argv)
    chains = args.chains or (2000 if args.quick else 20000)
    if chains <= 0:
        ap.error("--chains must be positive")
    batches = (1, 64) if args.quick else (1, 8, 64, 128)
    modes = ("ring", "data") if args.quick else ("backend", "ring", "data")
    rows = []
    print(f"{'impl':4} {'mode':8} {'ind':3} {'batch':>5} {'chains/s':>12} {'us/chain':>9}")
    for mode in modes:
        for indirect in ((False,) if args.quick else (False, True)):
            for batch in batches:
                for impl in ("c", "py"):
                    r = run_one(impl, batch, chains, mode, indirect)
                    rows.append(r)
                    print(f"{impl:4} {mode:8} {'y' if indirect else 'n':3} {batch:5d} "
                          f"{r['chains_per_s']:12.0f} {r['us_per_chain']:9.2f}")
    ratios = {}
    for r in rows:
        if r["impl"] == "c":
            py = next(x for x in rows if x["impl"] == "py" and all(
                x[k] == r[k] for k in ("batch", "mode", "indirect")))
            key = f"{r['mode']}/{'indirect' if r['indirect'] else 'direct'}/batch{r['batch']}"
            ratios[key] = py["us_per_chain"] / r["us_per_chain"]
    print("C speed-up over Python: " + ", ".join(f"{k} x{v:.1f}" for k, v in ratios.items()))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"benchmark": "ring", "queue_size": QUEUE_SIZE, "chains_per_row": chains,
                       "python": platform.python_version(), "machine": platform.machine(),
                       "rows": rows, "c_speedup": ratios}, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
