"""One table of every ratio ``make bench`` measured, with both sides' settings and the targets.

    python benchmarks/summary.py [--results benchmarks/results] [--out summary.md]

Reads what the benchmark scripts of one run wrote in ``benchmarks/results/``
(``latency.json``, ``throughput.json``, ``paper_suite.json``, ``scaling.json``,
``pytriton.json``, ``cold_start.json``), writes ``summary.md`` (markdown: each row a
ratio, the settings of both sides, the target and met / missed) and ``summary.png`` (each
ratio against its target), prints the target lines, and exits 1 when a target is missed.
A file that is missing (its script did not run) leaves its rows "not run".
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import pyplot
from benchmarks.targets import Better, Targets

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
CURVE, PLAIN = "CurveZMQ on", "no encryption"


@dataclass(frozen=True)
class Ratio:
    """One comparison: ``ours`` over ``theirs``, each with its settings, and its target."""

    what: str
    ours: str
    theirs: str
    value: float | None
    unit: str = "x"
    limit: float | None = None  # no target: shown for the record
    better: Better = "lower"
    source: str = ""


def load(results: Path, name: str) -> dict[str, Any]:
    path = results / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def _num(node: Any, *keys: str) -> float | None:
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if isinstance(node, int | float) and not math.isnan(node):
        return float(node)
    return None


def latency_rows(data: dict[str, Any]) -> list[Ratio]:
    rows = {(r["path"], r["payload"]): r for r in data.get("rows", [])}
    small = data.get("small_payload", "bytes 8 B")
    out = []
    for enc, label, limit in (("+curve", CURVE, 1.5), ("plain", PLAIN, None)):
        for payload, what in ((small, f"no-op p50, sequential ({small})"),
                              ("ndarray f64 1 MiB", "1 MiB float64 array p50, sequential")):
            row = rows.get((f"dlhub-hpc {enc}", payload), {})
            out.append(Ratio(what, f"hub, {label}, defaults",
                             f"two-hop pyzmq relay floor, {label}", row.get("ratio"),
                             limit=limit, source="latency.py"))
    hub = rows.get(("dlhub-hpc plain", small), {}).get("p50")
    for (path, payload), row in rows.items():
        if path.startswith("parsl-htex") and payload == small and hub:
            tuned = "defaults" if path.endswith("defaults") else path.removeprefix("parsl-htex ")
            out.append(Ratio(f"no-op p50, sequential ({small})",
                             f"Parsl HTEX, {PLAIN} (its default), {tuned}",
                             f"hub, {PLAIN}, defaults", row["p50"] / hub, source="latency.py"))
    return out


def throughput_rows(data: dict[str, Any]) -> list[Ratio]:
    res = data.get("results", {})
    floor = "two-hop relay floor, CurveZMQ on, batching <= 32"
    return [Ratio("no-op req/s, 32 in flight, 2 workers",
                  "hub through Client.map, CurveZMQ on, batches <= 32", floor,
                  _num(res, "ratio"), limit=0.8, better="higher", source="throughput.py"),
            Ratio("no-op req/s, 32 in flight, 2 workers",
                  "hub through Client.submit, CurveZMQ on, batches <= 32", floor,
                  _num(res, "submit_ratio"), better="higher", source="throughput.py")]


def paper_rows(data: dict[str, Any]) -> list[Ratio]:
    noop = data.get("servables", {}).get("noop", {}).get("memo", {})
    hit, floor = _num(noop, "client on", "p50"), _num(noop, "floor", "client_p50")
    out = [Ratio("memo hit p50 through the public Client", "hub memo hit, CurveZMQ on",
                 "one-hop floor (answers at once), CurveZMQ on, same Client",
                 hit / floor if hit and floor else None, limit=1.2, source="paper_suite.py")]
    tp = data.get("servables", {}).get("oqmd_rf", {}).get("throughput", {})
    for prefix, label in (("", "scikit-learn predict"), ("compiled ", "compiled trees")):
        on, off = _num(tp, prefix + "on", "requests_per_s"), _num(tp, prefix + "off",
                                                                  "requests_per_s")
        out.append(Ratio(f"forest req/s, 32 in flight, 2 workers ({label})",
                         "hub, batching on", "hub, batching off",
                         on / off if on and off else None, better="higher",
                         source="paper_suite.py"))
    return out


def scaling_rows(data: dict[str, Any]) -> list[Ratio]:
    rows = data.get("rows", [])
    value = _num(data, "ratio")
    largest = rows[-1]["workers"] if rows else "largest"
    return [Ratio("hub CPU per request (schedstat ns)", f"{largest} connected workers",
                  "8 connected workers", value, limit=1.25, source="scaling.py")]


def pytriton_rows(data: dict[str, Any]) -> list[Ratio]:
    res = data.get("results", {})
    store = data.get("settings", {}).get("pytriton tensor store", "?")
    theirs = (f"PyTriton, 2 instances, dynamic batching <= 32 (defaults), HTTP, {PLAIN}, "
              f"tensor store {store}")
    ours = "hub, 2 workers, batches <= 32 (defaults), CurveZMQ on"
    return [
        Ratio("forest req/s, 32 in flight (scikit-learn predict)",
              f"{ours}, Client.submit", theirs, _num(res, "oqmd_rf", "ratio"), limit=4.0,
              better="higher", source="pytriton_peer.py"),
        Ratio("forest req/s, 32 in flight (scikit-learn predict)",
              f"{ours}, Client.map", theirs, _num(res, "oqmd_rf", "map_ratio"), limit=4.0,
              better="higher", source="pytriton_peer.py"),
        Ratio("no-op req/s, 32 in flight", f"{ours}, Client.submit", theirs,
              _num(res, "noop", "ratio"), better="higher", source="pytriton_peer.py"),
        Ratio("no-op req/s, 32 in flight", f"{ours}, Client.map", theirs,
              _num(res, "noop", "map_ratio"), better="higher", source="pytriton_peer.py"),
    ]


def cold_rows(data: dict[str, Any]) -> list[Ratio]:
    rows = data.get("cold_start", {})
    return [Ratio("cold start, process launch to first answer", mode,
                  "floor: python -c, imports numpy, answers over a pipe", _num(row, "ratio"),
                  source="cold_start.py")
            for mode, row in rows.items() if not mode.startswith("floor")]


def collect(results: Path) -> list[Ratio]:
    return [*latency_rows(load(results, "latency")),
            *throughput_rows(load(results, "throughput")),
            *paper_rows(load(results, "paper_suite")),
            *scaling_rows(load(results, "scaling")),
            *pytriton_rows(load(results, "pytriton")),
            *cold_rows(load(results, "cold_start"))]


def check(rows: Sequence[Ratio]) -> Targets:
    targets = Targets()
    for r in rows:
        if r.limit is not None:
            targets.check(f"{r.what}: {r.ours} / {r.theirs}", r.value, r.limit, r.better,
                          unit=r.unit)
    return targets


def markdown(rows: Sequence[Ratio]) -> str:
    lines = [f"# Benchmark summary ({time.strftime('%Y-%m-%d %H:%M %Z')})", "",
             "Each ratio is ours / theirs, measured in the same run. Settings of both sides "
             "are named in each row.", "",
             "| what | ours (settings) | theirs (settings) | ratio | target | verdict | script |",
             "|---|---|---|---:|---|---|---|"]
    for r in rows:
        value = "not run" if r.value is None else f"{r.value:.2f}{r.unit}"
        if r.limit is None:
            goal, verdict = "-", "-"
        else:
            goal = f"{'<=' if r.better == 'lower' else '>='} {r.limit:g}{r.unit}"
            met = None if r.value is None else (
                r.value <= r.limit if r.better == "lower" else r.value >= r.limit)
            verdict = "not run" if met is None else ("met" if met else "**missed**")
        lines.append(f"| {r.what} | {r.ours} | {r.theirs} | {value} | {goal} | {verdict} "
                     f"| {r.source} |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Ratio], path: Path) -> None:
    """Each targeted ratio as a bar, its target as a tick; log scale."""
    plt = pyplot()
    if plt is None:
        return
    shown = [r for r in rows if r.value is not None]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(shown) + 1.5))
    ys = list(range(len(shown)))
    colors = ["tab:grey" if r.limit is None else
              ("tab:green" if (r.value <= r.limit if r.better == "lower"  # type: ignore[operator]
                               else r.value >= r.limit) else "tab:red")  # type: ignore[operator]
              for r in shown]
    ax.barh(ys, [r.value for r in shown], color=colors)
    for y, r in zip(ys, shown, strict=True):
        if r.limit is not None:
            ax.plot([r.limit, r.limit], [y - 0.4, y + 0.4], color="black", lw=2)
    ax.set_yticks(ys, [f"{r.what}\n{r.ours} / {r.theirs}"[:110] for r in shown], fontsize=6)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("ratio, ours / theirs (black tick: target; green met, red missed)")
    ax.invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=None, help="default RESULTS/summary.md")
    parser.add_argument("--plot", type=Path, default=None, help="default RESULTS/summary.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = collect(args.results)
    out = args.out or args.results / "summary.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows))
    plot(rows, args.plot or args.results / "summary.png")
    print(f"wrote {out}")
    targets = check(rows)
    targets.report()
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
