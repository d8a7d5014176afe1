"""benchmarks/summary.py and latency.py's pairing: every ratio compares like with like."""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmarks import latency, summary


def _row(path: str, payload: str, p50: float) -> latency.Row:
    return latency.Row(path, payload, 8, 10, p50, p50, p50)


def test_each_path_is_compared_with_the_floor_of_the_same_encryption() -> None:
    rows = [_row(latency.FLOOR_CURVE, "bytes 8 B", 0.5), _row(latency.HUB_CURVE, "bytes 8 B", 0.7),
            _row(latency.FLOOR_PLAIN, "bytes 8 B", 0.4), _row(latency.HUB_PLAIN, "bytes 8 B", 0.8),
            _row(latency.HTEX_DEFAULTS, "bytes 8 B", 4.0)]
    latency.add_ratios(rows)
    by_path = {r.path: r for r in rows}
    assert by_path[latency.HUB_CURVE].floor == latency.FLOOR_CURVE
    assert by_path[latency.HUB_CURVE].ratio == 0.7 / 0.5
    assert by_path[latency.HUB_PLAIN].floor == latency.FLOOR_PLAIN
    assert by_path[latency.HUB_PLAIN].ratio == 0.8 / 0.4
    assert by_path[latency.HTEX_DEFAULTS].floor == latency.FLOOR_PLAIN  # HTEX: unencrypted
    assert by_path[latency.FLOOR_CURVE].ratio is None
    ratios = latency.headline(rows, "bytes 8 B")
    assert ratios["hub_curve_p50_over_floor_curve_p50"] == 0.7 / 0.5
    assert ratios[f"{latency.HTEX_DEFAULTS} p50 / {latency.HUB_PLAIN} p50"] == 4.0 / 0.8


def _write(folder: Path, name: str, data: object) -> None:
    (folder / f"{name}.json").write_text(json.dumps(data))


def test_the_summary_names_both_sides_and_fails_on_a_miss(tmp_path: Path) -> None:
    _write(tmp_path, "latency", {"small_payload": "bytes 8 B", "rows": [
        {"path": "dlhub-hpc +curve", "payload": "bytes 8 B", "ratio": 1.7, "p50": 0.9},
        {"path": "dlhub-hpc plain", "payload": "bytes 8 B", "ratio": 1.6, "p50": 0.8},
        {"path": "dlhub-hpc +curve", "payload": "ndarray f64 1 MiB", "ratio": 1.1, "p50": 9.0},
        {"path": "parsl-htex defaults", "payload": "bytes 8 B", "ratio": 7.0, "p50": 3.2}]})
    _write(tmp_path, "throughput", {"results": {"ratio": 0.9}})
    assert summary.main(["--results", str(tmp_path)]) == 1  # the no-op p50 1.7x > 1.5x
    text = (tmp_path / "summary.md").read_text()
    noop = next(line for line in text.splitlines() if line.startswith("| no-op p50")
                and "CurveZMQ on" in line)
    assert "hub, CurveZMQ on, defaults" in noop and "floor, CurveZMQ on" in noop
    assert "1.70x" in noop and "**missed**" in noop
    htex = next(line for line in text.splitlines() if "Parsl HTEX" in line)
    assert "no encryption (its default), defaults" in htex and "hub, no encryption" in htex
    assert "4.00x" in htex  # 3.2 ms / 0.8 ms, the hub without CurveZMQ
    assert "| 0.90x | >= 0.8x | met |" in text
    assert "| not run | >= 4x | not run |" in text  # no pytriton.json: not run, not failed


def test_the_summary_passes_when_every_measured_target_is_met(tmp_path: Path) -> None:
    _write(tmp_path, "throughput", {"results": {"ratio": 0.85}})
    _write(tmp_path, "scaling", {"ratio": 1.1, "rows": [{"workers": 8}, {"workers": 1024}]})
    assert summary.main(["--results", str(tmp_path)]) == 0
    assert "1024 connected workers" in (tmp_path / "summary.md").read_text()


def test_scaling_reads_cpu_finer_than_a_clock_tick() -> None:
    import psutil

    from benchmarks._scaling.fleet import cpu_seconds

    me = psutil.Process()
    before = cpu_seconds(me)
    sum(i * i for i in range(2000))  # well under one 10 ms tick of psutil's counters
    os.sched_yield()  # the kernel brings a running thread's on-CPU time up to date
    after = cpu_seconds(me)
    assert after > before
    assert (after * 1e9) % 1e7 != 0  # nanoseconds, not whole ticks
