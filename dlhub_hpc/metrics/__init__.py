"""Prometheus metrics of a hub (and of the gateway): cheap recording, read at scrape time.

``recorder`` holds the tables the broker's loop writes without locks; ``collector`` turns
them, the published snapshot and the pilot blocks into Prometheus series; ``exporter``
serves a registry over HTTP. Only ``collector`` and ``exporter`` import prometheus-client.
"""

from __future__ import annotations

import logging

from dlhub_hpc.metrics.recorder import BrokerMetrics, LoopMetrics, frames_bytes

logger = logging.getLogger(__name__)

__all__ = ["BrokerMetrics", "LoopMetrics", "frames_bytes"]
