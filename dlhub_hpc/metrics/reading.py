"""Reading a hub's /metrics back: per-servable counts, latency percentiles, batch sizes.

For ``dlhub-hpc top`` and tests: parses the text exposition with prometheus-client's
parser and estimates quantiles from cumulative buckets the way Prometheus's
``histogram_quantile`` does (linear within the bucket the rank falls in).
"""

from __future__ import annotations

import logging
import math
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dlhub_hpc.errors import DlhubHpcError, PermissionDenied

logger = logging.getLogger(__name__)

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram; None when it holds nothing."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bound: its value is all we know
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


@dataclass
class ServableMetrics:
    """One servable (``name@version``), all its methods together."""

    ok: float = 0.0
    errors: float = 0.0
    latency: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    batch_size_sum: float = 0.0
    batch_count: float = 0.0

    def latency_buckets(self) -> Buckets:
        return sorted(self.latency.items())

    @property
    def mean_batch(self) -> float | None:
        return self.batch_size_sum / self.batch_count if self.batch_count else None


def parse(text: str) -> dict[str, ServableMetrics]:
    """``name@version`` -> its counts and latency buckets, from a /metrics page."""
    found: dict[str, ServableMetrics] = defaultdict(ServableMetrics)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "servable" not in s.labels or "version" not in s.labels:
                continue
            m = found[f"{s.labels['servable']}@{s.labels['version']}"]
            if s.name == "dlhub_replies_total":
                if s.labels.get("outcome") == "ok":
                    m.ok += s.value
                else:
                    m.errors += s.value
            elif s.name == "dlhub_request_latency_seconds_bucket":
                m.latency[float(s.labels["le"])] += s.value
            elif s.name == "dlhub_batch_size_sum":
                m.batch_size_sum += s.value
            elif s.name == "dlhub_batch_size_count":
                m.batch_count += s.value
    return dict(found)


def read_token(path: str | Path | None) -> str | None:
    """The hub's metrics token from ``path``; None where there is none or it is not ours
    to read (the hub's home is its admin's)."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def scrape(url: str, timeout: float = 5.0, token: str | None = None
           ) -> dict[str, ServableMetrics]:
    """Fetch and parse the hub's /metrics at ``url``, with the hub's metrics ``token``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=timeout) as reply:
            text = reply.read().decode()
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            raise DlhubHpcError(f"cannot read metrics at {url}: {exc}", url=url) from exc
        raise PermissionDenied(
            f"the metrics at {url} answer only the holder of the hub's metrics token "
            "(metrics.token in the hub's home, which its admin reads): they name every "
            "servable, private ones too", url=url) from None
    except OSError as exc:
        raise DlhubHpcError(f"cannot read metrics at {url}: {exc}; is the hub started with "
                            "--metrics-port?", url=url) from exc
    return parse(text)


def since(now: Buckets, before: Buckets) -> Buckets:
    """The buckets of observations made between two scrapes (a window, not all time)."""
    old = dict(before)
    return [(bound, count - old.get(bound, 0.0)) for bound, count in now]
