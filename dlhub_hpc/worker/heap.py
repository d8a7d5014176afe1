"""The worker's heap after a load: what the model holds is frozen out of the collector.

A worker process holds its model for its whole life. Frozen (``gc.freeze``), the model's
objects are no longer walked by each full collection, which for a large model takes tens
of milliseconds in the middle of a batch. Before freezing, what earlier loads left (a
pooled worker's evicted model, a replaced version) is unfrozen and collected, so a model
that went is freed, not kept frozen for good.
"""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Collect what is garbage now, then freeze everything still held."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
