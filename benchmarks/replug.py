"""What serving without MSI-X (``--no-msix``, needed to re-plug under QEMU 11.1) costs a
real guest, and how long a re-plug takes.

Two arms in one run, each a fresh TCG guest with the device behind a pcie-root-port:
``msix`` (the default function) and ``intx`` (``--no-msix``). Per arm: the guest runs
``gpioget`` N times in a shell loop (process start-up included, the same in both arms) and
reports the elapsed time from /proc/uptime, repeated ``--rounds`` times. The intx arm then
re-plugs the device ``--replugs`` times: device_del until DEVICE_DELETED, and device_add
until the guest lists the virtio gpiochip again (host-side wall clock).

``python -m benchmarks.replug [--out FILE]``; results are printed and saved as JSON
(default benchmarks/results/replug-<UTC time>.json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from vfio_virtio_kit.machine import GuestMachine
from vfio_virtio_kit.server_proc import ServerProcess

from .common import SERVER_ARGS

CHIP_SCRIPT = ("for i in $(seq 300); do c=$(gpiodetect 2>/dev/null | grep virtio | "
               "cut -d' ' -f1); [ -n \"$c\" ] && {{ echo $c; exit 0; }}; {pace}done; exit 1")


def _chip(m: GuestMachine, pace: str = "read -t 0.1 < /dev/zero 2>/dev/null; ") -> str:
    rc, out = m.run(CHIP_SCRIPT.format(pace=pace), timeout=90)
    if rc != 0:
        raise m.error(f"no virtio gpiochip: {out}")
    return out.strip()


def _gpioget_loop(m: GuestMachine, chip: str, n: int) -> float:
    """Seconds the guest took for ``n`` gpioget calls (its /proc/uptime)."""
    rc, out = m.run(f"read a _ </proc/uptime; for i in $(seq {n}); do gpioget {chip} 2 "
                    ">/dev/null || exit 1; done; read b _ </proc/uptime; echo $a $b",
                    timeout=600)
    if rc != 0:
        raise m.error(f"gpioget loop failed: {out}")
    a, b = (float(x) for x in out.split()[-2:])
    return b - a


def run_arm(name: str, flags: tuple[str, ...], args, workdir: Path, log=print) -> dict:
    srv = ServerProcess("--lines", "8", *SERVER_ARGS, *flags, control=False,
                        workdir=str(workdir / name)).start()
    dev = {"driver": "vfio-user-pci", "id": "gpio0", "bus": "rp0",
           "socket": {"type": "unix", "path": srv.socket}}
    res: dict = {"flags": list(flags), "requests_per_round": args.requests}
    try:
        with GuestMachine(workdir / name / "logs", name=name,
                          devices=["pcie-root-port,id=rp0,chassis=1", dev]) as m:
            m.wait_ready(timeout=120)
            chip = _chip(m)
            rounds = [_gpioget_loop(m, chip, args.requests) for _ in range(args.rounds)]
            res["gpioget_ms"] = [round(1000 * r / args.requests, 3) for r in rounds]
            res["gpioget_median_ms"] = statistics.median(res["gpioget_ms"])
            log(f"{name}: gpioget {res['gpioget_ms']} ms each")
            if "--no-msix" in flags:
                dels, adds = [], []
                for _ in range(args.replugs):
                    t0 = time.monotonic()
                    m.qmp.execute("device_del", {"id": "gpio0"})
                    m.qmp.wait_event("DEVICE_DELETED", 60)
                    t1 = time.monotonic()
                    m.qmp.execute("device_add", dev)
                    _chip(m, pace="")
                    t2 = time.monotonic()
                    dels.append(round(t1 - t0, 3))
                    adds.append(round(t2 - t1, 3))
                res["device_del_s"], res["device_add_to_chip_s"] = dels, adds
                log(f"{name}: device_del {dels} s, device_add to gpiochip {adds} s")
    finally:
        srv.stop()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100, help="gpioget calls per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replugs", type=int, default=3)
    ap.add_argument("--out", help="JSON file (default benchmarks/results/replug-<time>.json)")
    args = ap.parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out) if args.out else \
        Path(__file__).parent / "results" / f"replug-{stamp}.json"
    with tempfile.TemporaryDirectory(prefix="vv-replug-") as tmp:
        result = {"date": stamp, "arms": {
            "msix": run_arm("msix", (), args, Path(tmp)),
            "intx": run_arm("intx", ("--no-msix",), args, Path(tmp)),
        }}
    a = result["arms"]
    result["intx_over_msix"] = round(a["intx"]["gpioget_median_ms"]
                                     / a["msix"]["gpioget_median_ms"], 3)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
