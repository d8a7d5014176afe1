"""The parts of ``benchmarks/scaling.py``: ``fleet`` (simulated workers), ``measure`` (the
hub, the load and the figures per size) and ``report`` (table, JSON, figure)."""
