"""The hub process: the broker, the registry and the pilot manager, put together.

``Hub(config).start()`` runs the broker loop in a thread and returns once it listens;
``serve_forever()`` does the same in the foreground until SIGINT or SIGTERM. A running hub
writes ``hub.json`` in its home so that clients and the CLI find it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType
from typing import Any

from parsl.providers.base import ExecutionProvider

from dlhub_hpc.broker.config import STATE_FILE, HubConfig, read_hub_file
from dlhub_hpc.broker.pipeline import check_steps, refuse_workers
from dlhub_hpc.broker.server import BrokerServer, ControlHandler
from dlhub_hpc.broker.state import BrokerState, ServableInfo
from dlhub_hpc.client import Client
from dlhub_hpc.errors import ConfigError, DlhubHpcError, PilotError
from dlhub_hpc.pilot.local import local_provider
from dlhub_hpc.pilot.manager import Block, PilotManager
from dlhub_hpc.pilot.pilots import Pilot, PilotBlock, PilotService, hub_address_for_workers
from dlhub_hpc.pilot.profiles import build_provider, load_profile, parse_profile
from dlhub_hpc.pilot.recovery import LIVE, Journal, adopt_job, cancel_job, skip_ids, skip_pilot_ids
from dlhub_hpc.registry.pilots import BlockRecord, PilotRecord, PilotRecords
from dlhub_hpc.registry.store import Registry
from dlhub_hpc.security.hub import HubSecurity
from dlhub_hpc.servable.bundle import read_bundle
from dlhub_hpc.servable.spec import parse_ref

logger = logging.getLogger(__name__)

class Hub:
    """One hub: serves clients and workers until stopped."""

    def __init__(
        self, config: HubConfig | None = None, provider: ExecutionProvider | None = None
    ) -> None:
        self.config = config or HubConfig()
        self._provider = provider
        self.registry = Registry(self.config.home)
        self.state = BrokerState(self._resolve, self.config)
        self.security = HubSecurity(self.config.home, self.registry, self.state.invalidate,
                                    isolation=self.config.worker_isolation,
                                    user_map=self.config.user_map)
        self.server = BrokerServer(self.state, self.config, self._servable_files, self._ops())
        self.pilot: PilotManager | None = None
        self.pilots = PilotService(self._live_snapshot)
        self.state.replacement_expected = self.pilots.replaces
        self._thread: threading.Thread | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-pilot")
        self._started_at = 0.0
        self._stopped = threading.Event()

    def __repr__(self) -> str:
        return f"Hub({self.config!r})"

    @property
    def client_address(self) -> str:
        return self.server.client_endpoint

    @property
    def worker_address(self) -> str:
        return self.server.worker_endpoint

    @property
    def local_address(self) -> str:
        """The ``inproc://`` address that callers in this process reach the hub on."""
        return self.server.local_endpoint

    def client(self, **kwargs: Any) -> Client:
        """A client in this process, on the hub's ``inproc://`` address: no TCP stack, no
        encryption, no hop through ZeroMQ's I/O threads. It acts as the hub's admin."""
        kwargs.setdefault("max_message_bytes", self.config.max_message_bytes)
        return Client(self.local_address, context=self.server.context, **kwargs)

    # -- lifecycle --

    def start(self, timeout: float = 10.0) -> Hub:
        """Start the broker loop in a thread; return once it listens."""
        self.config.home.mkdir(parents=True, exist_ok=True)
        self.server.auth = self.security.setup()  # CurveZMQ on both sockets
        self.state.authorize = self.security.authorize
        self.state.may_see = lambda user, name: self.security.access.can_see(user, name)
        self.state.may_serve = self.security.may_serve  # worker credentials per owner
        self.state.credential_live = self.security.credential_live
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.server.run()
            except BaseException as exc:
                errors.append(exc)
                logger.exception("the hub's loop failed")
            finally:
                self._stopped.set()

        self._thread = threading.Thread(target=run, name="hub-broker", daemon=True)
        self._thread.start()
        if not self.server.wait_bound(timeout):
            self._thread.join(timeout=1)
            if errors and isinstance(errors[0], DlhubHpcError):
                raise errors[0]
            raise ConfigError(f"the hub did not start listening within {timeout}s: {errors}")
        self._started_at = time.time()
        if self.server.auth is not None:
            self.security.record(self.client_address, self.worker_address)
        self.pilot = PilotManager(
            self._provider or local_provider(),
            self.worker_address,
            self.config.home / "pilot",
            heartbeat_interval=self.config.heartbeat_interval,
            hub_timeout=max(30.0, 3 * self.config.heartbeat_timeout),
        )
        self._recover_blocks()  # what a crashed hub on this home left running
        self._write_state_file()
        return self

    def serve_forever(self) -> None:
        """Run in the foreground until SIGINT/SIGTERM or a ``shutdown`` request."""
        self.start()

        def handler(signum: int, frame: FrameType | None) -> None:
            self.server.stop(f"signal {signal.Signals(signum).name}")

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        while not self._stopped.wait(0.5):
            pass
        self.stop()

    def stop(self) -> None:
        """Stop workers and pilot blocks, the loop, and the registry; idempotent."""
        self.security.forget()
        self.server.stop("the hub was stopped")
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.pilots.shutdown()
        except Exception:
            logger.exception("could not stop every pilot")
        if self.pilot is not None:
            try:
                self.pilot.stop()
            except Exception:
                logger.exception("could not cancel every pilot block")
        self._executor.shutdown(wait=True)
        self.registry.close()
        state = read_hub_file(self.config.home)
        if state is not None and state.get("pid") == os.getpid():
            (self.config.home / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_state_file(self) -> None:
        data = {
            "client_address": self.client_address,
            "worker_address": self.worker_address,
            "pid": os.getpid(),
            "started_at": self._started_at,
            "max_message_bytes": self.config.max_message_bytes,
            "server_key": self.security.credentials.server.public
            if self.security.credentials else None,
        }
        tmp = self.config.home / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.config.home / STATE_FILE)

    # -- what the broker asks of the registry --

    def _resolve(self, name: str, version: int | None) -> ServableInfo:
        info = ServableInfo.from_record(self.registry.resolve(name, version))
        policy = self.config.batching.get(name)
        if policy is None:
            return info
        return dataclasses.replace(
            info,
            max_batch_size=policy.max_batch_size or info.max_batch_size,
            max_batch_delay=(info.max_batch_delay if policy.max_batch_delay is None
                             else policy.max_batch_delay),
        )

    def _servable_files(self, name: str, version: int) -> tuple[dict[str, Any], bytes]:
        record = self.registry.get(name, version)
        return record.spec.model_dump(mode="json"), self.registry.bundle_bytes(record.digest)

    # -- control operations (run in the broker's thread; slow ones return futures) --

    def _ops(self) -> dict[str, ControlHandler]:
        return {
            "publish": self._op_publish,
            "status": self._op_status,
            "start_workers": self._op_start_workers,
            "stop_workers": self._op_stop_workers,
            "pilot_start": self._op_pilot_start,
            "pilot_status": self._op_pilot_status,
            "pilot_stop": self._op_pilot_stop,
            "shutdown": self._op_shutdown,
            **self.security.operations(),
        }

    def _op_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        bundle = read_bundle(bytes(args["bundle"]))
        if bundle.spec.servable.steps is not None:  # a pipeline: its steps must exist
            check_steps(bundle.spec, lambda name, version: self.registry.get(name, version).spec)
        record = self.security.publication.publish(bundle, str(args.get("caller", "")))
        return {"name": record.name, "version": record.version, "digest": record.digest,
                "pid": record.pid}

    def _op_status(self, args: dict[str, Any]) -> Future[dict[str, Any]]:
        caller = str(args.get("caller", ""))
        snapshot = self._visible_snapshot(caller, self.state.snapshot())
        records = self.security.publication.visible(caller, self.registry.list())

        def finish() -> dict[str, Any]:
            blocks = [b.to_dict() for b in self.pilot.blocks()] if self.pilot else []
            blocks += [b for p in self.pilots.all() for b in p.to_dict()["blocks"]]
            return {
                "hub": {
                    "client_address": self.client_address,
                    "worker_address": self.worker_address,
                    "uptime": time.time() - self._started_at,
                    "pid": os.getpid(),
                },
                "published": [
                    {"name": r.name, "version": r.version, "digest": r.digest,
                     "type": r.spec.servable.type, "methods": sorted(r.spec.servable.methods),
                     "title": r.spec.datacite.title}
                    for r in records
                ],
                "blocks": blocks,
                **snapshot,
            }

        return self._executor.submit(finish)

    def _visible_snapshot(self, caller: str, snapshot: dict[str, Any]) -> dict[str, Any]:
        """The broker's queues and workers, less those of servables ``caller`` may not see."""
        def sees(ref: str) -> bool:
            return self.security.access.can_see(caller, ref.split("@")[0])

        return {
            **snapshot,
            "servables": {ref: q for ref, q in snapshot["servables"].items() if sees(ref)},
            "workers": [w for w in snapshot["workers"] if sees(str(w.get("servable", "")))],
        }

    def _pilot(self) -> PilotManager:
        if self.pilot is None:
            raise PilotError("the hub has not started its pilot manager yet")
        return self.pilot

    def _op_start_workers(self, args: dict[str, Any]) -> Future[dict[str, Any]]:
        ref = str(args.get("servable", ""))
        name, version = parse_ref(ref)
        self.security.access.check_see(str(args.get("caller", "")), name)  # before versions
        record = self.registry.get(name, version)  # fail now, with the versions, if unknown
        refuse_workers(record.spec)  # a pipeline has none: its steps do
        # Workers run on the hub's allocation: the owner or the admin decides.
        self.security.access.check_manage(str(args.get("caller", "")), name)
        count = int(args.get("workers", 1))
        launch = self.security.worker_launch(name)  # confined unless the admin's own
        return self._executor.submit(
            lambda: self._pilot().start_workers(ref, count, launch).to_dict())

    def _op_stop_workers(self, args: dict[str, Any]) -> Future[list[dict[str, Any]]]:
        blocks = args.get("blocks")
        servable = args.get("servable")
        self._check_stop(args, [servable] if servable else None)
        return self._executor.submit(
            lambda: [b.to_dict() for b in self._pilot().stop(blocks, servable)]
        )

    # -- pilots from site profiles (dlhub_hpc/pilot/pilots.py) --

    def _live_snapshot(self) -> dict[str, Any]:
        # Read from the scaling thread while the broker loop mutates its dicts: a rare
        # "changed size during iteration" is retried rather than locking the hot path.
        for _ in range(20):
            try:
                return self.state.snapshot()
            except RuntimeError:
                time.sleep(0.005)
        return self.state.snapshot()

    def _op_pilot_start(self, args: dict[str, Any]) -> Future[dict[str, Any]]:
        name, version = parse_ref(str(args.get("servable", "")))
        self.security.access.check_see(str(args.get("caller", "")), name)  # before versions
        record = self.registry.get(name, version)  # fail now, with the published versions
        refuse_workers(record.spec)  # a pipeline has none: its steps do
        self.security.access.check_manage(str(args.get("caller", "")), name)
        given = args.get("profile") or "local"
        self.security.check_profile_source(str(args.get("caller", "")), given)
        profile = (parse_profile(given, "the profile sent") if isinstance(given, dict)
                   else load_profile(str(given)))
        nodes = args.get("nodes")
        launch = self.security.worker_launch(name, profile.container.runtime != "none")

        def start() -> dict[str, Any]:
            # Off the broker thread: some Parsl providers run commands when constructed.
            from dlhub_hpc.container.launch import check_recorded, image_for

            image = None
            if profile.container.runtime != "none" and not profile.container.image:
                # The image 'dlhub-hpc build' made, refused if its digest no longer matches.
                image = image_for(self.registry.root, record.name, record.version,
                                  profile.container.runtime)

            def check_image(path: str) -> None:
                check_recorded(self.registry.root, record.name, record.version, path)

            pilot = Pilot(
                profile, f"{record.name}@{record.version}",
                hub_address_for_workers(self.worker_address, profile),
                self.config.home / "pilots", nodes=None if nodes is None else int(nodes),
                ranks=int(getattr(record.spec.servable, "ranks", 1) or 1),
                heartbeat_interval=self.config.heartbeat_interval,
                hub_timeout=max(30.0, 3 * self.config.heartbeat_timeout),
                image=image, check_image=check_image, launch=launch,
            )
            return self.pilots.add(pilot).to_dict()

        return self._executor.submit(start)

    # -- after a crash: the blocks and pilots a previous hub on this home left --

    def _recover_blocks(self) -> None:
        """Re-adopt the recorded jobs still queued or running, cancel those that cannot be."""
        assert self.pilot is not None
        records = PilotRecords(self.registry)
        journal = self.pilot.journal = self.pilots.journal = Journal(records)
        manager = self.pilot
        for rec in records.blocks(""):
            if rec.provider != type(manager.provider).__name__:
                self._cancel_recorded(rec, None)
            elif (state := adopt_job(manager.provider, rec)) in LIVE:
                manager.adopt(Block(rec.block_id, rec.job_id, rec.servable, rec.workers,
                                    rec.submitted_at, state))
                logger.info("adopted %s (job %s) of %s", rec.block_id, rec.job_id, rec.servable)
                continue
            journal.blocks_ended([rec.block_id])
        pilots = records.pilots()
        skip_pilot_ids([p.pilot_id for p in pilots])
        for prec in pilots:
            self._recover_pilot(prec, records.blocks(prec.pilot_id), journal)

    def _recover_pilot(self, prec: PilotRecord, blocks: list[BlockRecord],
                       journal: Journal) -> None:
        try:
            pilot = self._rebuild_pilot(prec)
        except Exception as exc:  # the servable or the profile is gone: nothing to resume
            logger.warning("cannot resume %s of %s (%s); cancelling its %d jobs",
                           prec.pilot_id, prec.servable, exc, len(blocks))
            provider = None
            with contextlib.suppress(Exception):  # a profile that still parses cancels best
                provider = build_provider(parse_profile(prec.profile, prec.pilot_id))
            for rec in blocks:
                self._cancel_recorded(rec, provider)
            journal.pilot_ended(prec.pilot_id)
            return
        live = []
        for rec in blocks:
            state = adopt_job(pilot.provider, rec)
            if state in LIVE:
                live.append(PilotBlock(rec.block_id, rec.job_id, rec.servable, rec.workers,
                                       rec.submitted_at, prec.pilot_id, pilot.profile.name,
                                       state=state, reason="adopted after a hub restart"))
            else:
                journal.blocks_ended([rec.block_id])
        skip_ids(pilot._ids, [rec.block_id for rec in blocks])
        self.pilots.adopt(pilot, live)

    def _rebuild_pilot(self, prec: PilotRecord) -> Pilot:
        """The recorded pilot, as ``pilot start`` would make it now, under its old id."""
        from dlhub_hpc.container.launch import check_recorded, image_for

        name, version = parse_ref(prec.servable)
        record = self.registry.get(name, version)
        profile = parse_profile(prec.profile, f"the recorded profile of {prec.pilot_id}")
        runtime = profile.container.runtime
        launch = self.security.worker_launch(name, runtime != "none")
        image = (image_for(self.registry.root, name, record.version, runtime)
                 if runtime != "none" and not profile.container.image else None)

        def check_image(path: str) -> None:
            check_recorded(self.registry.root, record.name, record.version, path)

        pilot = Pilot(
            profile, prec.servable, hub_address_for_workers(self.worker_address, profile),
            self.config.home / "pilots", nodes=prec.nodes,
            ranks=int(getattr(record.spec.servable, "ranks", 1) or 1),
            heartbeat_interval=self.config.heartbeat_interval,
            hub_timeout=max(30.0, 3 * self.config.heartbeat_timeout),
            image=image, check_image=check_image, launch=launch,
        )
        pilot.pilot_id, pilot.run_dir = prec.pilot_id, self.config.home / "pilots" / prec.pilot_id
        return pilot

    def _cancel_recorded(self, rec: BlockRecord, provider: ExecutionProvider | None) -> None:
        """Cancel a recorded job no pilot takes back (a LocalProvider's by its pid)."""
        if provider is None and rec.provider == "LocalProvider":
            provider = local_provider()
        if provider is None:
            logger.error("job %s (%s of %s) may still run on %s: cancel it by hand",
                         rec.job_id, rec.block_id, rec.servable, rec.provider)
            return
        cancel_job(provider, rec)

    def _op_pilot_status(self, args: dict[str, Any]) -> Future[list[dict[str, Any]]]:
        def finish() -> list[dict[str, Any]]:
            pilots = self.pilots.all()
            snap = self._live_snapshot()
            for p in pilots:
                p.refresh([w for w in snap["workers"] if w["servable"] == p.servable],
                          time.time())
            return [p.to_dict() for p in pilots]

        return self._executor.submit(finish)

    def _op_pilot_stop(self, args: dict[str, Any]) -> Future[list[dict[str, Any]]]:
        ids = args.get("pilots") or None
        servable = args.get("servable")
        chosen = [servable] if servable else (
            [self.pilots.get(i).servable for i in ids] if ids else None)
        self._check_stop(args, chosen)
        return self._executor.submit(
            lambda: [p.to_dict() for p in self.pilots.stop(ids, servable)])

    def _check_stop(self, args: dict[str, Any], servables: list[str] | None) -> None:
        """Stopping needs the admin, or (for named servables) their owner."""
        if servables is None:
            self.security.require_admin(args, "stop every servable's workers")
            return
        for ref in servables:
            self.security.access.check_manage(str(args.get("caller", "")),
                                              parse_ref(str(ref))[0])

    def _op_shutdown(self, args: dict[str, Any]) -> dict[str, Any]:
        self.security.require_admin(args, "shut the hub down")
        # Reply first: the loop sends this reply, then notices the stop on its next turn.
        threading.Timer(0.05, self.server.stop, args=("shutdown requested",)).start()
        return {"stopping": True}
