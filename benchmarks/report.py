"""Outputs of a benchmark run: results.json, resume.png, request.png, summary.md.

``write_all(results, outdir)`` writes all four; ``targets(results)`` evaluates the project's
targets (figures against goals, "met"/"missed"; reported, never enforced).
"""
from __future__ import annotations

import json
import math
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: ring_bench rows judged against the C >= 10x Python target, first found wins: the raw ring
#: (pop/push without Python Chain objects), else the ring as the device uses it (quick mode).
RING_TARGET_KEYS = ("backend/direct/batch64", "ring/direct/batch64")


def _fmt(x: float, nd: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def targets(res: dict) -> list[dict]:
    """[{name, goal, measured, met}] for every target the run has figures for."""
    out = []
    by = res.get("resume", {}).get("by_lines", [])
    if by:
        worst = max(by, key=lambda r: r["ratios"]["retention_d0_over_floor"])
        x = worst["ratios"]["retention_d0_over_floor"]
        out.append({"name": "resume with retention vs bare config write",
                    "goal": "PMCSR D0 write (No_Soft_Reset) <= 1.5x a bare config write",
                    "measured": f"x{x:.2f} (worst, {worst['lines']} lines; "
                                f"{_fmt(worst['arms']['retention']['components']['d0_write']['median_us'])}"
                                f" vs {_fmt(worst['arms']['floor']['median_us'])} us)",
                    "met": x <= 1.5})
        r = by[-1]["ratios"]["reset_over_retention"]
        out.append({"name": "reset-style resume vs retention", "goal": "(no goal: the gap)",
                    "measured": f"x{r:.1f} at {by[-1]['lines']} lines", "met": None})
    ring = res.get("ring", {})
    rep = ring.get("repeated", {})
    key = next((k for k in RING_TARGET_KEYS if k in rep or k in ring.get("c_speedup", {})), None)
    if key:
        x = rep[key]["c_speedup_median"] if key in rep else ring["c_speedup"][key]
        how = f"median of {len(rep[key]['c_us_per_chain'])} runs" if key in rep else "1 run"
        out.append({"name": "ring processing, C vs Python", "goal": ">= 10x chains/s",
                    "measured": f"x{x:.1f} ({key}, {how})", "met": x >= 10})
    req = res.get("request", {})
    if "ratios" in req:
        x = req["ratios"]["c_request_over_empty_kick"] - 1
        lat = req["latency"]["c"]
        out.append({"name": "device cost per request over the transport floor",
                    "goal": "<= 30% over an empty kick round trip",
                    "measured": f"+{100 * x:.0f}% ({_fmt(lat['request']['median_us'])} vs "
                                f"{_fmt(lat['empty_kick']['median_us'])} us)", "met": x <= 0.30})
    out += _issue15_targets(res)
    srv = req.get("server", {}).get("c")
    if srv:
        pct = srv["idle"]["cpu_percent"]
        out.append({"name": "idle CPU of the server", "goal": "~0 (< 0.1% of a CPU)",
                    "measured": f"{pct:.3f}% over {srv['idle']['seconds']:.1f} s",
                    "met": pct < 0.1})
    return out


def _issue15_targets(res: dict) -> list[dict]:
    """Issue 15's targets (the request path in C), each from this run's figures."""
    out = []
    req = res.get("request", {})
    r = req.get("ratios", {})
    lat = req.get("latency", {})
    med = lambda ring, arm: _fmt(lat[ring][arm]["median_us"])  # noqa: E731
    if "c_request_over_c_sample_bar" in r:
        x = r["c_request_over_c_sample_bar"]
        lean = r.get("c_request_lean_over_c_sample_bar")
        measured = (f"x{lean:.2f} with a preallocated request ({med('c', 'request_lean')} vs "
                    f"{med('c_sample', 'bar_read')} us); x{x:.2f} with the harness driver "
                    f"that builds each chain ({med('c', 'request')} us)" if lean is not None
                    else f"x{x:.2f} ({med('c', 'request')} vs {med('c_sample', 'bar_read')} us)")
        out.append({"name": "one GET_VALUE round trip vs the C sample's 4-byte BAR read",
                    "goal": "<= 1.2x", "met": (lean if lean is not None else x) <= 1.2,
                    "measured": measured})
        x = r["c_bar_read_over_c_sample_bar"]
        out.append({"name": "BAR0 common-config read vs the C sample's BAR read",
                    "goal": "<= 1.05x", "met": x <= 1.05,
                    "measured": f"x{x:.2f} ({med('c', 'bar_read')} vs "
                                f"{med('c_sample', 'bar_read')} us)"})
    if "c_over_cring_throughput" in r:
        tp = req["throughput"]
        x = r["c_over_cring_throughput"]
        out.append({"name": f"requests/s at {req['batch']} per kick vs the C ring "
                            "(C ring + Python device, the path before issue 15)",
                    "goal": ">= 5x", "met": x >= 5,
                    "measured": f"x{x:.1f} ({tp['c']['requests_per_s'] / 1e3:.0f} k/s vs "
                                f"{tp['cring']['requests_per_s'] / 1e3:.0f} k/s)"})
        x = r["c_over_py_throughput"]
        y = r.get("py_over_c_server_cpu_batched", float("nan"))
        out.append({"name": "C path vs Python reference path, requests/s end to end",
                    "goal": ">= 50x", "met": x >= 50,
                    "measured": f"x{x:.1f} end to end ({tp['py']['requests_per_s'] / 1e3:.0f}"
                                f" k/s Python); server CPU per request x{y:.0f}"})
        srv = req["server"]["c"]
        out.append({"name": "server CPU per request (C path)", "goal": "(report)",
                    "met": None,
                    "measured": f"{srv['cpu_us_per_request']:.2f} us at batch 1, "
                                f"{srv['cpu_us_per_request_batched']:.2f} us at "
                                f"{req['batch']} per kick"})
    by = [b for b in res.get("resume", {}).get("by_lines", [])
          if "retention_d0_info_over_floor_info" in b["ratios"]]
    if by:
        worst = max(by, key=lambda b: b["ratios"]["retention_d0_info_over_floor_info"])
        x = worst["ratios"]["retention_d0_info_over_floor_info"]
        a = worst["arms"]
        out.append({"name": "D0 write with retention, server at its default log level (INFO)",
                    "goal": "<= 1.3x a bare config write", "met": x <= 1.3,
                    "measured": f"x{x:.2f} (worst, {worst['lines']} lines; "
                                f"{_fmt(a['retention_info']['components']['d0_write']['median_us'])}"
                                f" vs {_fmt(a['floor_info']['median_us'])} us)"})
    return out


def plot_resume(res: dict, path: str) -> None:
    """Median (marker) and p99 (bar top) resume latency vs line count, log scales."""
    by = res["resume"]["by_lines"]
    xs = [r["lines"] for r in by]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = {"reset": "reset (soft reset + re-init + restore lines)",
              "retention": "retention (D0 write + 1 request)",
              "suspend": "VIRTIO_F_SUSPEND (DRIVER_OK + 1 request)",
              "request": "1 request alone", "floor": "floor: bare config write"}
    for arm, label in labels.items():
        med = [r["arms"][arm]["median_us"] for r in by]
        p99 = [r["arms"][arm]["p99_us"] for r in by]
        ax.errorbar(xs, med, yerr=[[0] * len(med), [p - m for p, m in zip(p99, med)]],
                    marker="o", capsize=3, label=label,
                    linestyle="--" if arm in ("floor", "request") else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("configured GPIO lines")
    ax.set_ylabel("latency, us (median; bar to p99)")
    ax.set_title("Resume latency, driver side through vfio-user")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_request(res: dict, path: str) -> None:
    """Request latency distributions (C ring vs Python ring, floors) and throughput."""
    req = res["request"]
    series = [("C path\nrequest", req["latency"]["c"]["request"]),
              ("Python ring\nrequest", req["latency"]["py"]["request"]),
              ("empty kick\n(C)", req["latency"]["c"]["empty_kick"]),
              ("empty kick\n(Python)", req["latency"]["py"]["empty_kick"])]
    b = req.get("baseline", {})
    if "ours" in b:
        series += [("BAR read\nours", b["ours"]), ("BAR read\nC sample", b["c_sample"])]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    ax.boxplot([s["samples_us"] for _, s in series], whis=(1, 99), showfliers=False)
    ax.set_xticks(range(1, len(series) + 1), [n for n, _ in series], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("round trip, us (box: quartiles, whiskers: p1-p99)")
    ax.set_title("One request vs transport floors")
    ax.grid(True, which="both", axis="y", alpha=0.3)
    tp = req["throughput"]
    ax2.bar(["C path", "Python"], [tp["c"]["requests_per_s"], tp["py"]["requests_per_s"]],
            color=["tab:blue", "tab:orange"])
    ax2.set_ylabel(f"requests/s ({req['batch']} per kick, median batch)")
    ax2.set_title("Throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load(m: dict) -> str:
    a, b = m.get("load_avg_at_start"), m.get("load_avg_at_end")
    fmt = lambda v: "/".join(f"{x:.2f}" for x in v) if v else "?"  # noqa: E731
    return f"{fmt(a)} at start, {fmt(b)} at end"


def summary_md(res: dict) -> str:
    """The markdown summary: targets, resume table, request table, ring, guest side."""
    m = res.get("meta", {})
    L = [f"# vfio-virtio benchmark results ({m.get('date', '?')})", "",
         f"{'Quick' if m.get('quick') else 'Full'} run, client and servers pinned to CPU "
         f"{m.get('cpu', 0)}; {m.get('cpu_model', '')}; Python {m.get('python', '')}; "
         f"commit {m.get('commit', '?')}; load average {_load(m)} (other processes share "
         f"the CPU: they show in the p99s). Medians unless noted; ratios are measured in "
         f"this run.",
         "", "## Targets", "", "| target | goal | measured | |", "|---|---|---|---|"]
    for t in targets(res):
        mark = "" if t["met"] is None else ("met" if t["met"] else "missed")
        L.append(f"| {t['name']} | {t['goal']} | {t['measured']} | {mark} |")
    by = res.get("resume", {}).get("by_lines", [])
    if by:
        L += ["", "## Resume latency (us, median / p99)", "",
              "| lines | floor: config write | retention: D0 write | retention total | "
              "reset total | reset / retention | SUSPEND resume | 1 request | state checked |",
              "|---:|---|---|---|---|---:|---|---|---|"]
        for r in by:
            a = r["arms"]

            def mp(s: dict) -> str:
                return f"{_fmt(s['median_us'])} / {_fmt(s['p99_us'])}"
            ok = all(v["ok"] for v in r["verified"].values())
            L.append(f"| {r['lines']} | {mp(a['floor'])} | "
                     f"{mp(a['retention']['components']['d0_write'])} | {mp(a['retention'])} | "
                     f"{mp(a['reset'])} | x{r['ratios']['reset_over_retention']:.1f} | "
                     f"{mp(a['suspend'])} | {mp(a['request'])} | {'yes' if ok else 'NO'} |")
        last = by[-1]["arms"]["reset"]["components"]
        L += ["", f"Reset arm at {by[-1]['lines']} lines, medians: D0 write "
              f"{_fmt(last['d0_write']['median_us'])} us, virtio re-init "
              f"{_fmt(last['virtio_reinit']['median_us'])} us, restoring lines "
              f"{_fmt(last['restore_lines']['median_us'])} us."]
    req = res.get("request", {})
    if "latency" in req:
        lat, tp, srv = req["latency"], req["throughput"], req["server"]
        cols = [k for k in ("c", "cring", "py") if k in lat]
        names = {"c": "C path", "cring": "C ring + Python device", "py": "Python"}
        L += ["", "## Request path", "", "| | " + " | ".join(names[k] for k in cols) + " |",
              "|---|" + "---|" * len(cols)]

        def row(label: str, f) -> None:
            L.append(f"| {label} | " + " | ".join(f(k) for k in cols) + " |")
        row("request round trip, median / p99 (us)",
            lambda k: f"{_fmt(lat[k]['request']['median_us'])} / {_fmt(lat[k]['request']['p99_us'])}")
        row("request, preallocated chain (lean driver), median / p99 (us)",
            lambda k: f"{_fmt(lat[k]['request_lean']['median_us'])} / "
                      f"{_fmt(lat[k]['request_lean']['p99_us'])}" if "request_lean" in lat[k]
            else "-")
        row("empty kick (transport floor), median (us)",
            lambda k: _fmt(lat[k]['empty_kick']['median_us']))
        row(f"throughput, {req['batch']} per kick (requests/s)",
            lambda k: f"{tp[k]['requests_per_s']:.0f}")
        for key, label in (("cpu_us_per_request", "server CPU per request (us)"),
                           ("cpu_us_per_request_batched", f"server CPU per request, {req['batch']} per kick (us)"),
                           ("cpu_us_per_empty_kick", "server CPU per empty kick (us)")):
            row(label, lambda k, key=key: f"{srv[k][key]:.2f}")
        row("server RSS (MiB)", lambda k: f"{srv[k]['rss_bytes'] / 2**20:.1f}")
        row("server idle CPU (% of a CPU)", lambda k: f"{srv[k]['idle']['cpu_percent']:.3f}")
        b = req.get("baseline", {})
        if "ours" in b:
            L += ["", f"BAR read, 4 bytes: ours {_fmt(b['ours']['median_us'])} us (p99 "
                  f"{_fmt(b['ours']['p99_us'])}), libvfio-user C sample "
                  f"{_fmt(b['c_sample']['median_us'])} us (p99 {_fmt(b['c_sample']['p99_us'])}): "
                  f"x{b['ratio_ours_over_c']:.2f}. C sample RSS "
                  f"{b['c_sample_rss_bytes'] / 2**20:.1f} MiB, idle CPU "
                  f"{b['c_sample_idle']['cpu_percent']:.3f}%."]
        elif b.get("skipped"):
            L += ["", f"BAR baseline skipped: {b['skipped']}."]
    ring = res.get("ring", {})
    if ring.get("c_speedup"):
        L += ["", "## Ring processing alone (no socket), C speed-up over Python", "",
              "| mode/layout/batch | C chains/s | Python chains/s | C / Python |", "|---|---:|---:|---:|"]
        rows = ring.get("rows", [])
        for key, x in ring["c_speedup"].items():
            mode, layout, batch = key.split("/")
            pick = {r["impl"]: r for r in rows if r["mode"] == mode and r["batch"] == int(batch[5:])
                    and r["indirect"] == (layout == "indirect")}
            c, p = pick.get("c", {}), pick.get("py", {})
            L.append(f"| {key} | {c.get('chains_per_s', 0):.0f} | {p.get('chains_per_s', 0):.0f}"
                     f" | x{x:.1f} |")
        for key, r in ring.get("repeated", {}).items():
            L.append(f"| {key}, median of {len(r['c_us_per_chain'])} interleaved runs | "
                     f"{1e6 / statistics.median(r['c_us_per_chain']):.0f} | "
                     f"{1e6 / statistics.median(r['py_us_per_chain']):.0f} | "
                     f"x{r['c_speedup_median']:.1f} |")
    L += ["", "## Guest side (pm_print_times)", ""]
    g = res.get("guest_resume")
    if g:
        L.append(f"From `{g.get('path')}`:")
        L += ["", "```json", json.dumps(g.get("data"), indent=1)[:4000], "```"]
    else:
        L.append("No guest_resume.json in this run: the hardware-in-loop setup writes it "
                 "(see docs/BENCHMARKS.md, \"Guest side\").")
    return "\n".join(L) + "\n"


def _finite(o):
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def write_all(res: dict, outdir: str) -> dict[str, str]:
    """Write results.json, resume.png, request.png and summary.md; returns their paths."""
    os.makedirs(outdir, exist_ok=True)
    paths = {k: os.path.join(outdir, k) for k in
             ("results.json", "resume.png", "request.png", "summary.md")}
    res = dict(res, targets=targets(res))
    with open(paths["results.json"], "w") as f:
        json.dump(_finite(res), f, indent=1, allow_nan=False, default=str)
    if res.get("resume", {}).get("by_lines"):
        plot_resume(res, paths["resume.png"])
    if "latency" in res.get("request", {}):
        plot_request(res, paths["request.png"])
    with open(paths["summary.md"], "w") as f:
        f.write(summary_md(res))
    return paths
