"""HubConfig.benchmark_without_curve: a hub without CurveZMQ listens on loopback only."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dlhub_hpc import HubConfig


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:0", "tcp://127.0.0.2:5555",
                                     "tcp://localhost:0", "tcp://[::1]:0",
                                     "ipc:///tmp/hub.sock"])
def test_loopback_addresses_are_allowed_without_curve(tmp_path: Path, address: str) -> None:
    config = HubConfig(home=tmp_path, client_address=address, worker_address=address,
                       benchmark_without_curve=True)
    assert config.benchmark_without_curve
    assert "benchmark_without_curve=True" in repr(config)


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:0", "tcp://*:5555", "tcp://10.1.2.3:0",
                                     "tcp://eth0:0", "tcp://127.evil.example:0",
                                     "tcp://[::]:0"])
def test_other_addresses_are_refused_without_curve(tmp_path: Path, address: str) -> None:
    with pytest.raises(ValidationError, match="benchmark_without_curve needs loopback"):
        HubConfig(home=tmp_path, client_address="tcp://127.0.0.1:0", worker_address=address,
                  benchmark_without_curve=True)
    with pytest.raises(ValidationError, match="benchmark_without_curve needs loopback"):
        HubConfig(home=tmp_path, client_address=address, benchmark_without_curve=True)


def test_curve_is_on_by_default(tmp_path: Path) -> None:
    assert HubConfig(home=tmp_path, client_address="tcp://0.0.0.0:0").benchmark_without_curve \
        is False


def test_its_metrics_stay_on_loopback(tmp_path: Path) -> None:
    """Such a hub serves /metrics without the token: not to other machines."""
    HubConfig(home=tmp_path, benchmark_without_curve=True, metrics_port=0)
    with pytest.raises(ValidationError, match="metrics on loopback only"):
        HubConfig(home=tmp_path, benchmark_without_curve=True, metrics_port=0,
                  metrics_address="0.0.0.0")
