"""Smoke test of the benchmark harness (issue 7): ``python -m benchmarks.run --quick`` runs
end to end and writes well-formed outputs. It checks the shape of the outputs, never the
figures: benchmarks report times, they do not pass or fail on them (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import percentile, stats

TOP = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STAT_KEYS = {"n", "median_us", "p99_us", "mean_us", "samples_us"}


def _strict_json(path: Path) -> dict:
    """JSON as the spec defines it: NaN/Infinity are not JSON and must not appear."""
    def reject(token: str):
        raise ValueError(f"non-standard JSON constant {token} in {path}")
    return json.loads(path.read_text(), parse_constant=reject)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert b"IEND" in data[-16:], f"{path.name} is truncated"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run into a temporary directory holding a guest_resume.json (the HIL hook)."""
    out = tmp_path_factory.mktemp("bench")
    (out / "guest_resume.json").write_text(json.dumps(
        {"source": "smoke-test", "arms": {"retention": {"median_ms": 1.0}}}))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
                          cwd=TOP, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"benchmark run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, proc


def test_quick_run_writes_all_outputs(quick_run):
    """Issue 7: results.json, resume.png, request.png and summary.md in the --out directory."""
    out, _ = quick_run
    for name in ("results.json", "resume.png", "request.png", "summary.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name


def test_results_json_has_every_arm_with_stats_and_raw_samples(quick_run):
    """Issue 7: every arm's distribution (median, p99, mean, n) plus raw samples, and the
    reset/retention ratio per line count."""
    res = _strict_json(quick_run[0] / "results.json")
    assert {"meta", "resume", "request", "ring", "targets"} <= res.keys()
    by = res["resume"]["by_lines"]
    assert [r["lines"] for r in by] == [1, 8]
    for r in by:
        assert set(r["arms"]) == {"floor", "request", "retention", "reset", "suspend",
                                  "floor_info", "retention_info"}   # issue 15: at INFO
        for arm in r["arms"].values():
            assert STAT_KEYS <= arm.keys()
            assert arm["n"] == len(arm["samples_us"]) > 0
        assert r["ratios"]["reset_over_retention"] > 0
        assert all(v["ok"] for v in r["verified"].values()), r["verified"]
    lat = res["request"]["latency"]
    for ring in ("c", "py"):
        assert STAT_KEYS <= lat[ring]["request"].keys()
        assert res["request"]["throughput"][ring]["requests_per_s"] > 0
        assert res["request"]["server"][ring]["rss_bytes"] > 0
    assert res["ring"]["rows"] and res["ring"]["c_speedup"]
    assert res["guest_resume"]["data"]["source"] == "smoke-test"
    assert all({"name", "goal", "measured", "met"} <= t.keys() for t in res["targets"])


def test_pngs_are_complete_png_files(quick_run):
    out, _ = quick_run
    _assert_png(out / "resume.png")
    _assert_png(out / "request.png")


def test_summary_markdown_has_target_table_and_guest_hook(quick_run):
    """The summary carries the targets table (figure + met/missed) and the guest section."""
    text = (quick_run[0] / "summary.md").read_text()
    assert text.startswith("# ")
    assert "## Targets" in text and "|---|" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and ("met |" in ln or "missed |" in ln)]
    assert len(rows) >= 4, text
    assert "## Guest side" in text and "smoke-test" in text


def test_stats_percentiles():
    """The reported median/p99 are the interpolated order statistics of the samples."""
    xs = [float(x) for x in range(1, 101)]
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 99) == pytest.approx(99.01)
    s = stats([3.0, 1.0, 2.0])
    assert (s["n"], s["median_us"], s["mean_us"], s["samples_us"]) == (3, 2.0, 2.0, [3.0, 1.0, 2.0])
    assert math.isnan(stats([])["median_us"])
