"""Run every benchmark and write results.json, resume.png, request.png and summary.md.

    .venv/bin/python -m benchmarks.run [--quick] [--out DIR] [--cpu N] [--guest-resume FILE]
    .venv/bin/python benchmarks/run.py ...

Default output: benchmarks/results/<UTC date-time>/ (gitignored). ``--quick`` runs everything
once, small (well under a minute), for CI. Figures are printed and saved; nothing here passes
or fails on a time. The exit status is non-zero only if a benchmark could not run (or a device
was found in the wrong state after its samples, which would make its figures meaningless).
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TOP not in sys.path:
    sys.path.insert(0, TOP)

from benchmarks import guest_resume, report, request, resume, ring_bench  # noqa: E402
from benchmarks.common import pin  # noqa: E402

RESULTS = os.path.join(TOP, "benchmarks", "results")
FULL_LINES = [1, 8, 64, 512]
QUICK_LINES = [1, 8]


def _meta(args: argparse.Namespace, date: str) -> dict:
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in f
                              if ln.startswith("model name")), "")
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", TOP, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"date": date, "quick": args.quick, "cpu": args.cpu, "cpu_model": cpu_model,
            "ncpus": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "commit": commit or "?",
            "load_avg_at_start": os.getloadavg()}


def find_guest_resume(explicit: str | None, outdir: str) -> dict | None:
    """The guest-side figures written by the hardware-in-loop run, if any: --guest-resume,
    else <outdir>/guest_resume.json, else the newest benchmarks/results/*/guest_resume.json."""
    cands = [explicit] if explicit else []
    cands.append(os.path.join(outdir, "guest_resume.json"))
    cands += sorted(glob.glob(os.path.join(RESULTS, "*", "guest_resume.json")), reverse=True)
    for path in cands:
        if path and os.path.isfile(path):
            try:
                with open(path) as f:
                    return {"path": os.path.abspath(path), "data": json.load(f)}
            except (OSError, ValueError) as e:
                return {"path": os.path.abspath(path), "data": None, "error": str(e)}
    return None


def _ring(quick: bool, repeats: int = 5) -> dict:
    """ring_bench's table, plus the target rows (batch 64, direct) re-run ``repeats`` times
    interleaved C/Python: one 20000-chain row takes ~10-100 ms, short enough for other load on
    the machine to move a single ratio by 2x, so the target uses the median of the repeats."""
    with tempfile.TemporaryDirectory(prefix="vv-ring-") as d:
        path = os.path.join(d, "ring.json")
        ring_bench.main((["--quick"] if quick else []) + ["--out", path])
        with open(path) as f:
            out = json.load(f)
    chains = out.get("chains_per_row", 2000)
    rep: dict = {}
    for mode in ("backend", "ring"):
        us = {"c": [], "py": []}
        for _ in range(2 if quick else repeats):
            for impl in ("c", "py"):
                us[impl].append(ring_bench.run_one(impl, 64, chains, mode, False)["us_per_chain"])
        c, py = statistics.median(us["c"]), statistics.median(us["py"])
        rep[f"{mode}/direct/batch64"] = {"c_us_per_chain": us["c"], "py_us_per_chain": us["py"],
                                         "c_speedup_median": py / c}
    out["repeated"] = rep
    print("repeated (median C speed-up): " + ", ".join(
        f"{k} x{v['c_speedup_median']:.1f}" for k, v in rep.items()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="vfio-virtio benchmarks (see docs/BENCHMARKS.md)")
    ap.add_argument("--quick", action="store_true", help="small and fast (CI smoke run)")
    ap.add_argument("--out", help="output directory (default benchmarks/results/<UTC time>)")
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin client and servers to")
    ap.add_argument("--lines", help="comma-separated line counts for the resume benchmark")
    ap.add_argument("--guest-resume", metavar="FILE", help="guest-side resume figures (JSON)")
    ap.add_argument("--skip", action="append", default=[],
                    choices=("resume", "request", "ring", "guest"),
                    help="leave a benchmark out (the guest one never runs with --quick)")
    ap.add_argument("--guest-cycles", type=int, default=5, help="suspend cycles per arm")
    ap.add_argument("--update-docs", action="store_true",
                    help="write this run's figures into README.md and docs/BENCHMARKS.md "
                         "(the generated block, benchmarks/figures.py)")
    args = ap.parse_args(argv)
    if args.cpu < 0 or args.cpu not in os.sched_getaffinity(0):
        ap.error(f"--cpu {args.cpu} is not available to this process")
    lines = QUICK_LINES if args.quick else FULL_LINES
    if args.lines:
        try:
            lines = [int(x) for x in args.lines.split(",")]
        except ValueError:
            ap.error("--lines takes comma-separated integers")
        if any(not 1 <= n <= 1024 for n in lines):
            ap.error("--lines: each count must be within 1..1024")
    now = dt.datetime.now(dt.timezone.utc)
    outdir = args.out or os.path.join(RESULTS, now.strftime("%Y%m%dT%H%M%SZ"))
    os.makedirs(outdir, exist_ok=True)

    pin(args.cpu)
    t0 = time.monotonic()
    res: dict = {"meta": _meta(args, now.isoformat(timespec="seconds"))}
    if "resume" not in args.skip:
        res["resume"] = resume.run(lines, quick=args.quick, cpu=args.cpu)
    if "request" not in args.skip:
        res["request"] = request.run(quick=args.quick, cpu=args.cpu)
    if "ring" not in args.skip:
        res["ring"] = _ring(args.quick)
    if "guest" not in args.skip and not args.quick and not args.guest_resume:
        g = guest_resume.run(cycles=max(1, args.guest_cycles))
        if g is not None:
            with open(os.path.join(outdir, "guest_resume.json"), "w") as f:
                json.dump(g, f, indent=1)
    g = find_guest_resume(args.guest_resume, outdir)
    if g:
        res["guest_resume"] = g
    res["meta"]["seconds"] = time.monotonic() - t0
    res["meta"]["load_avg_at_end"] = os.getloadavg()
    paths = report.write_all(res, outdir)
    print()
    with open(paths["summary.md"]) as f:
        print(f.read())
    print(f"results in {outdir} ({res['meta']['seconds']:.0f} s)")
    if args.update_docs:
        from benchmarks import figures
        for p in figures.update_docs(res):
            print(f"updated {p}")
    bad = [r["lines"] for r in res.get("resume", {}).get("by_lines", [])
           if not all(v["ok"] for v in r["verified"].values())]
    if bad:
        print(f"ERROR: device state wrong after the resume samples at lines {bad}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
