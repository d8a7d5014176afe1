"""A hub's metrics, put together: the recording tables, their collector and the server."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry

from dlhub_hpc.metrics.collector import HubCollector, SnapshotLike
from dlhub_hpc.metrics.exporter import MetricsServer
from dlhub_hpc.metrics.recorder import BrokerMetrics, LoopMetrics

logger = logging.getLogger(__name__)


def block_states(pilots: Callable[[], Iterable[Any]]) -> Callable[[], Iterator[tuple[str, str]]]:
    """(servable, state) of every block of the pilots ``pilots()`` returns, as last seen
    (no call to the batch scheduler: a scrape must stay cheap)."""
    def read() -> Iterator[tuple[str, str]]:
        for pilot in list(pilots()):
            for block in list(pilot.blocks.values()):
                yield str(block.servable), str(block.state)
    return read


def hub_registry(snapshot: Callable[[], SnapshotLike], broker: BrokerMetrics,
                 loop: LoopMetrics,
                 blocks: Callable[[], Iterable[tuple[str, str]]] | None = None
                 ) -> CollectorRegistry:
    """A registry holding only the hub's own series (not this process's defaults)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(snapshot, broker, loop, blocks))
    return registry


def serve_hub_metrics(snapshot: Callable[[], SnapshotLike], broker: BrokerMetrics,
                      loop: LoopMetrics, blocks: Callable[[], Iterable[tuple[str, str]]] | None,
                      address: str, port: int, token: str | None = None) -> MetricsServer:
    """Start serving a hub's series on ``address:port`` (to holders of ``token``, if
    given); the caller stops it."""
    return MetricsServer(hub_registry(snapshot, broker, loop, blocks), address, port,
                         token).start()
