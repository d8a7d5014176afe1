"""DLHub users' code on this hub: ``from dlhub_hpc.compat import DLHubClient`` in place of
``from dlhub_sdk.client import DLHubClient`` (see ``compat.client``)."""

from __future__ import annotations

from dlhub_hpc.compat.client import DLHubClient, DLHubFuture, TaskPending
from dlhub_hpc.compat.records import BadQuery, NoSuchMethod, NoSuchServable

__all__ = ["BadQuery", "DLHubClient", "DLHubFuture", "NoSuchMethod", "NoSuchServable",
           "TaskPending"]
