"""The publication store: servable versions, bundles and lookups."""

from dlhub_hpc.registry.store import Registry, ServableRecord

__all__ = ["Registry", "ServableRecord"]
