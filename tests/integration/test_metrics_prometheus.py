"""A real Prometheus server (Debian's ``prometheus``) scrapes a hub's /metrics every second;
its HTTP API shows the hub's series change as requests flow."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.metrics.exporter import METRICS_TOKEN_FILE
from tests.integration.conftest import wait_for
from tests.unit.test_grafana_dashboard import dashboard, exprs

EXAMPLES = Path(__file__).resolve().parents[2] / "dlhub_hpc" / "examples"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read()
    except OSError:
        return 0, b""


class Prometheus:
    """A Prometheus server on a free loopback port, scraping ``target`` every second."""

    def __init__(self, target: str, root: Path, token_file: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("needs the Prometheus server: apt-get install prometheus "
                        "(scripts/install-system-deps.sh)")
        self.url = f"http://127.0.0.1:{free_port()}"
        config = root / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: dlhub\n    static_configs: [{{targets: ['{target}']}}]\n"
            f"    authorization: {{type: Bearer, credentials_file: '{token_file}'}}\n")
        self.log = (root / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or get(f"{self.url}/-/ready")[0] == 200,
                 timeout=60, what="Prometheus ready")
        assert self.proc.poll() is None, (root / "prometheus.log").read_text()

    def query(self, expr: str) -> list[dict[str, Any]]:
        status, body = get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        assert status == 200, (expr, body)
        return list(json.loads(body)["data"]["result"])

    def value(self, expr: str) -> float:
        """The sum over the series ``expr`` selects now (0 when it selects none)."""
        return sum(float(r["value"][1]) for r in self.query(expr))

    def target_up(self) -> bool:
        return self.value('up{job="dlhub"}') == 1

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def prometheus(tmp_path: Path, metered_hub: Hub) -> Iterator[Prometheus]:
    assert metered_hub.metrics is not None
    target = metered_hub.metrics.url.removeprefix("http://").removesuffix("/metrics")
    server = Prometheus(target, tmp_path / "prometheus",
                        metered_hub.config.home / METRICS_TOKEN_FILE)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def metered_hub(make_hub: Callable[..., Hub], tmp_path: Path) -> Hub:
    (tmp_path / "prometheus").mkdir()
    return make_hub(metrics_port=0)


def test_prometheus_sees_the_hub_series_change_as_requests_flow(
    metered_hub: Hub, prometheus: Prometheus,
) -> None:
    wait_for(prometheus.target_up, timeout=60, what="Prometheus scraped the hub")
    with Client(metered_hub.client_address, timeout=60) as client:
        name = str(client.publish(EXAMPLES / "noop")["name"])
        client.start_workers(name, 1)
        client.wait_for_workers(name, 1, timeout=60)
        wait_for(lambda: prometheus.value(f'dlhub_workers{{servable="{name}",state="idle"}}')
                 == 1, timeout=30, what="the idle worker in Prometheus")
        assert prometheus.value(f'dlhub_replies_total{{servable="{name}"}}') == 0
        for i in range(5):
            assert client.run(name, [i]) == [i]
        with pytest.raises(Exception, match="no servable"):
            client.run("demo/there-is-none", [1])
    ok = f'dlhub_replies_total{{servable="{name}",outcome="ok"}}'
    refused = 'dlhub_refused_total{type="ServableNotFound"}'
    # one scrape may fall between the fifth reply and the refusal: wait for one after both
    wait_for(lambda: prometheus.value(ok) == 5 and prometheus.value(refused) == 1,
             timeout=30, what="5 replies and the refusal in Prometheus")
    count = f'dlhub_request_latency_seconds_count{{servable="{name}",method="run"}}'
    assert prometheus.value(count) == 5
    assert prometheus.value(f'dlhub_batch_size_count{{servable="{name}"}}') >= 1
    assert prometheus.value("dlhub_requests_total") == 6
    assert prometheus.value("dlhub_received_bytes_total") > 0
    assert prometheus.value("dlhub_sent_bytes_total") > 0
    # A histogram quantile over the scraped buckets, as a dashboard computes it.
    p50 = prometheus.query(
        f'histogram_quantile(0.5, sum by (le) (dlhub_request_latency_seconds_bucket'
        f'{{servable="{name}"}}))')
    assert p50 and float(p50[0]["value"][1]) > 0


def test_every_dashboard_query_runs_on_prometheus(metered_hub: Hub, prometheus: Prometheus,
                                                  ) -> None:
    wait_for(prometheus.target_up, timeout=60, what="Prometheus scraped the hub")
    with Client(metered_hub.client_address, timeout=60) as client, \
            pytest.raises(Exception, match="no servable"):
        client.run("demo/there-is-none", [1])
    wait_for(lambda: prometheus.value("dlhub_requests_total") == 1, timeout=30,
             what="the request in Prometheus")
    for expr in exprs(dashboard()):
        promql = expr.replace("$__rate_interval", "1m").replace("$servable", ".*")
        if promql.startswith("label_values("):  # Grafana's own function: ask for the series
            promql = promql.removeprefix("label_values(").split(",")[0]
        prometheus.query(promql)  # a query Prometheus refuses fails here (400)
    refused = prometheus.query("sum by (type) (dlhub_refused_total)")
    assert [r["metric"]["type"] for r in refused] == ["ServableNotFound"]
