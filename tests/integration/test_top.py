"""``dlhub-hpc top --once``: one frame of a live hub, from its status and its /metrics."""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlhub_hpc import Client, Hub
from dlhub_hpc.cli import cli
from dlhub_hpc.cli.common import console
from dlhub_hpc.errors import PermissionDenied
from dlhub_hpc.examples import example_dir
from dlhub_hpc.metrics.exporter import METRICS_TOKEN_FILE
from dlhub_hpc.metrics.reading import read_token, scrape
from tests.integration.conftest import wait_for


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's console was made before COLUMNS was set: give it room for every column."""
    monkeypatch.setattr(console, "width", 220)


def test_top_once_shows_queues_latencies_batches_and_workers(
    make_hub: Callable[..., Hub],
) -> None:
    hub = make_hub(metrics_port=0)
    assert hub.metrics is not None
    with Client(hub.client_address, timeout=60) as client:
        name = str(client.publish(example_dir("noop"))["name"])
        client.start_workers(name, 1)
        client.wait_for_workers(name, 1, timeout=60)
        for i in range(4):
            assert client.run(name, [i]) == [i]
    ref = f"{name}@1"
    token_file = hub.config.home / METRICS_TOKEN_FILE
    token = read_token(token_file)
    wait_for(lambda: scrape(hub.metrics.url, token=token).get(ref) is not None
             and scrape(hub.metrics.url, token=token)[ref].ok == 4, timeout=30,
             what="4 replies counted")
    result = CliRunner().invoke(
        cli, ["--hub", hub.client_address, "top", "--once", "--metrics", hub.metrics.url,
              "--metrics-token-file", str(token_file)],
        env={"COLUMNS": "220"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [row] = [line for line in result.output.splitlines() if ref in line and "busy" in line]
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[0] == ref and cells[3] == "1 (0 busy)"  # one worker, idle
    assert cells[5] == "0" and cells[9] == "1.0"  # no errors; batches of one
    assert all(float(c) > 0 for c in cells[6:9])  # p50, p95, p99 in ms
    assert "Workers" in result.output and "q or Ctrl-C quits" in result.output


def test_top_without_metrics_says_how_to_get_them(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub()
    result = CliRunner().invoke(cli, ["--hub", hub.client_address, "top", "--once"],
                                env={"COLUMNS": "220"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "start the hub with --metrics-port" in result.output


def test_metrics_answer_only_the_holder_of_the_hubs_token(make_hub: Callable[..., Hub],
                                                         tmp_path: Path) -> None:
    """Every user of a login node reaches loopback; the series name private servables."""
    hub = make_hub(metrics_port=0)
    assert hub.metrics is not None
    token_file = hub.config.home / METRICS_TOKEN_FILE
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    with Client(hub.client_address, timeout=60) as client:
        name = str(client.publish(example_dir("noop"))["name"])
    for wrong in (None, "not-the-token", f"{read_token(token_file)}x"):
        with pytest.raises(PermissionDenied, match="metrics token"):
            scrape(hub.metrics.url, token=wrong)
    request = urllib.request.Request(hub.metrics.url)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401 and name.encode() not in refused.value.read()
    assert json.loads((hub.config.home / "hub.json").read_text())["metrics_token_file"] == str(
        token_file)
    # top run by someone who cannot read the token: queues and workers, and why no rates
    elsewhere = tmp_path / "not-the-admins"
    elsewhere.write_text("wrong\n")
    result = CliRunner().invoke(
        cli, ["--hub", hub.client_address, "top", "--once", "--metrics", hub.metrics.url,
              "--metrics-token-file", str(elsewhere)],
        env={"COLUMNS": "220"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "metrics token" in result.output and "Workers" in result.output
