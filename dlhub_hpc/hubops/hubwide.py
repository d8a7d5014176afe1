"""Operations on the hub as a whole: publish a servable, report status, shut down."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from dlhub_hpc.broker.pipeline import check_steps
from dlhub_hpc.broker.state import BrokerState
from dlhub_hpc.errors import InvalidInput
from dlhub_hpc.hubops.parts import HubParts
from dlhub_hpc.hubops.pools import visible_pools
from dlhub_hpc.hubops.visibility import Viewer, viewer_of
from dlhub_hpc.servable.bundle import read_bundle

logger = logging.getLogger(__name__)


class HubOps:
    """``publish``, ``status`` and ``shutdown``."""

    def __init__(self, parts: HubParts) -> None:
        self.parts = parts
        self.registry = parts.registry
        self.security = parts.security
        self.pilots = parts.pilots
        self._executor = parts.executor

    def __repr__(self) -> str:
        return f"HubOps({self.registry!r})"

    def publish(self, args: dict[str, Any]) -> dict[str, Any]:
        bundle = read_bundle(bytes(args["bundle"]))
        if bundle.spec.servable.steps is not None:  # a pipeline: its steps must exist
            check_steps(bundle.spec, lambda name, version: self.registry.get(name, version).spec)
        record = self.security.publication.publish(bundle, str(args.get("caller", "")))
        return {"name": record.name, "version": record.version, "digest": record.digest,
                "pid": record.pid}

    def status(self, args: dict[str, Any]) -> Future[dict[str, Any]]:
        viewer = viewer_of(self.parts, str(args.get("caller", "")))
        # Taken here, on the loop thread that owns the state; the rest is finished off it.
        state = self.parts.state
        snapshot = visible_snapshot(viewer, {**state.snapshot(), "starting": starting(state)})

        def finish() -> dict[str, Any]:
            # The registry is read here, off the loop: a hub of thousands of servables
            # would hold every caller's requests for as long as the listing takes.
            records = self.security.publication.visible(viewer.caller, self.registry.list())
            blocks = [b.to_dict() for b in self.pilots.worker_blocks()]
            blocks += [b for p in self.pilots.all() for b in p.to_dict()["blocks"]]
            return {
                "hub": self.parts.about(),
                "published": [
                    {"name": r.name, "version": r.version, "digest": r.digest,
                     "type": r.spec.servable.type, "methods": sorted(r.spec.servable.methods),
                     "title": r.spec.datacite.title}
                    for r in records
                ],
                "blocks": [viewer.block(b) for b in blocks if viewer.lists(b["servable"])],
                **snapshot,
            }

        return self._executor.submit(finish)

    def images_changed(self, args: dict[str, Any]) -> dict[str, Any]:
        """``dlhub-hpc build`` recorded an image of ``servable``: forget what the broker
        cached of it, so pools judge it by its image from its next request on."""
        self.security.require_admin(args, "tell the hub of a built image")
        name = str(args.get("servable", "")).partition("@")[0]
        if not name:
            raise InvalidInput("images_changed needs servable: owner/name")
        self.parts.state.invalidate(name)
        return {"servable": name}

    def shutdown(self, args: dict[str, Any]) -> dict[str, Any]:
        self.security.require_admin(args, "shut the hub down")
        # Reply first: the loop sends this reply, then notices the stop on its next turn.
        threading.Timer(0.05, self.parts.stop, args=("shutdown requested",)).start()
        return {"stopping": True}


def starting(state: BrokerState) -> dict[str, dict[str, Any]]:
    """The starts on demand under way; ``since`` is the hub's monotonic clock, so each
    says too how long it has been in its stage (``in_stage_s``), which a caller can show."""
    now = time.monotonic()
    return {ref: {**s, "in_stage_s": max(0.0, now - float(s["since"]))}
            for ref, s in state.starting().items()}


def visible_snapshot(viewer: Viewer, snapshot: dict[str, Any]) -> dict[str, Any]:
    """The broker's queues, workers and pools, less what ``viewer``'s caller may not see."""
    sees = viewer.sees
    workers = [shown for w in snapshot["workers"] if (shown := viewer.worker(w)) is not None]
    return {
        **snapshot,
        "servables": {ref: q for ref, q in snapshot["servables"].items() if sees(ref)},
        "workers": workers,
        "load_failures": {ref: e for ref, e in snapshot.get("load_failures", {}).items()
                          if sees(ref)},
        "starting": {ref: s for ref, s in snapshot.get("starting", {}).items() if sees(ref)},
        "pools": visible_pools(snapshot.get("pools", {}), viewer),
    }
