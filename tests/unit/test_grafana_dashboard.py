"""The Grafana dashboard queries only series a hub (or the gateway) exports, and shows each
kind of them. The names are read from scrapes of live registries, not from a list kept by
hand, and every metric a PromQL expression names is checked, not only ``dlhub_`` ones."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dlhub_hpc.metrics.collector import METRIC_NAMES
from dlhub_hpc.metrics.gateway import GATEWAY_METRIC_NAMES, GatewayMetrics
from dlhub_hpc.protocol import BatchResult
from tests.unit.test_broker_state import only_batch
from tests.unit.test_metrics import MEMO, metered

DASHBOARD = Path(__file__).resolve().parents[2] / "configs" / "grafana" / "dlhub-hpc.json"
METRIC = re.compile(r"\bdlhub_[a-z0-9_]+")
# PromQL words that are not metric names (modifiers, set operators)
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                      "and", "or", "unless", "offset", "inf", "nan"})


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def exprs(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets (in rows too) and variable
    queries."""
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend(str(t["expr"]) for t in panel.get("targets", []) if "expr" in t)
            walk(panel.get("panels", []))  # a row's (collapsed) panels

    walk(board["panels"])
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            found.append(str(query["query"] if isinstance(query, dict) else query))
    return found


def metric_names(expr: str) -> set[str]:
    """The metrics a PromQL expression selects (any name, not only dlhub_ ones)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"label_values\(\s*([^,()]*),[^)]*\)", r"\1", text)  # Grafana's
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)  # label matchers, ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for found in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if found.group(2) is None and found.group(1).lower() not in KEYWORDS:
            names.add(found.group(1))
    return names


def exposed() -> frozenset[str]:
    """Every sample name a hub's and a gateway's registries show once each kind of series
    has something in it."""
    hub, registry, loop = metered(MEMO)
    hub.start("w1")
    _, batch = only_batch(hub.request("r1", [1, 2]))
    hub.send("w1", BatchResult(batch.batch_id, [[False, {"type": "ExecutionError",
                                                          "message": "boom"}]]))
    hub.request("r2", servable="nobody/none")  # refused
    loop.woke(0.01, 0.05)
    gateway = CollectorRegistry(auto_describe=False)
    metrics = GatewayMetrics()
    metrics.record("/v2/models/{name}/infer", "POST", 200, 0.01, 10, 10)
    gateway.register(metrics)
    return frozenset(s.name for r in (registry, gateway)
                     for f in text_string_to_metric_families(generate_latest(r).decode())
                     for s in f.samples)


def test_every_expr_names_only_metrics_the_hub_or_gateway_exports() -> None:
    names = exposed()
    for expr in exprs(dashboard()):
        used = metric_names(expr)
        assert used, f"no metric in {expr!r}"
        unknown = used - names
        assert not unknown, f"{expr!r} names {sorted(unknown)}, which no hub exports"


def test_the_declared_names_are_the_exposed_ones() -> None:
    """METRIC_NAMES and GATEWAY_METRIC_NAMES (what other checks read) match the scrapes."""
    assert exposed() == METRIC_NAMES | GATEWAY_METRIC_NAMES


def test_names_are_read_from_whole_promql_expressions() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, servable) (rate(dlhub_x_bucket{servable=~"$s",'
        ' a="b{c}"}[$__rate_interval]))) / clamp_min(up offset 5m, 1e-9) and on (job) '
        'process_cpu_seconds_total') == {"dlhub_x_bucket", "up", "process_cpu_seconds_total"}
    assert metric_names("label_values(dlhub_replies_total, servable)") == {
        "dlhub_replies_total"}
    nested = {"panels": [{"type": "row", "panels": [{"targets": [{"expr": "up"}]}]}],
              "templating": {"list": []}}
    assert exprs(nested) == ["up"]


def test_the_dashboard_shows_every_kind_of_series() -> None:
    used = {name for expr in exprs(dashboard()) for name in METRIC.findall(expr)}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    wanted = {"dlhub_replies_total", "dlhub_errors_total", "dlhub_refused_total",
              "dlhub_request_latency_seconds", "dlhub_queue_wait_seconds",
              "dlhub_batch_wait_seconds", "dlhub_inference_seconds", "dlhub_batch_size",
              "dlhub_memo_hits_total", "dlhub_memo_misses_total", "dlhub_memo_evictions_total",
              "dlhub_queue_depth", "dlhub_workers", "dlhub_pilot_blocks",
              "dlhub_received_bytes_total", "dlhub_sent_bytes_total", "dlhub_loop_lag_max_seconds"}
    assert wanted <= families, sorted(wanted - families)


def test_panels_have_unique_ids_and_a_templated_datasource() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert [t["refId"] for t in panel["targets"]] == [
            chr(65 + i) for i in range(len(panel["targets"]))]


def test_a_misspelt_metric_would_be_caught() -> None:
    assert metric_names("rate(dlhub_replys_total[1m])") - exposed() == {"dlhub_replys_total"}
