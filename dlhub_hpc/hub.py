"""The hub process: the broker, the registry and the pilots, put together.

``Hub(config).start()`` runs the broker loop in a thread and returns once it listens;
``serve_forever()`` does the same in the foreground until SIGINT or SIGTERM. A running hub
writes ``hub.json`` in its home so that clients and the CLI find it. Its control
operations are in ``dlhub_hpc.hubops``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from parsl.providers.base import ExecutionProvider

from dlhub_hpc.broker.config import STATE_FILE, HubConfig, read_hub_file
from dlhub_hpc.broker.events import ServableKey
from dlhub_hpc.broker.ondemand import OnDemand
from dlhub_hpc.broker.server import BrokerServer
from dlhub_hpc.broker.state import BrokerState, ServableInfo
from dlhub_hpc.client import Client
from dlhub_hpc.container.launch import recorded_images
from dlhub_hpc.errors import ConfigError, DlhubHpcError
from dlhub_hpc.hubops import HubParts, OnDemandStarter, Recovery, control_operations
from dlhub_hpc.hubops.default_pools import check_default_pools, start_default_pools
from dlhub_hpc.hubops.gateway import GatewayProcess
from dlhub_hpc.hubops.ondemand import check_servable_profiles, has_profile
from dlhub_hpc.metrics import BrokerMetrics, LoopMetrics
from dlhub_hpc.metrics.exporter import METRICS_TOKEN_FILE, MetricsServer, metrics_token
from dlhub_hpc.metrics.hub import block_states, serve_hub_metrics
from dlhub_hpc.pilot.local import local_provider
from dlhub_hpc.pilot.service import PilotService, WorkersSetup
from dlhub_hpc.registry.store import Registry
from dlhub_hpc.security.client import listening
from dlhub_hpc.security.home import private_home
from dlhub_hpc.security.hub import HubSecurity
from dlhub_hpc.security.tokens import TokenStore

logger = logging.getLogger(__name__)


def _refuse_a_running_hub(home: Path) -> None:
    """Two hubs on one home would share its registry and overwrite each other's hub.json."""
    state = read_hub_file(home) or {}
    pid, address = state.get("pid"), str(state.get("client_address") or "")
    if not isinstance(pid, int) or pid <= 0 or not listening(address):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # another user's process: alive
    raise ConfigError(
        f"a hub (pid {pid}) already runs from {home} at {address}; reach it with Client(), "
        "stop it with 'dlhub-hpc hub stop', or give this hub a home of its own: "
        "Hub(HubConfig(home=...))"
    )


class Hub:
    """One hub: serves clients and workers until stopped.

    Made whole: ``__init__`` composes the registry, the security (the state's gate from
    the start), the broker state and its loop, the pilots and the control operations
    (``dlhub_hpc.hubops``); ``start()`` only starts them.
    """

    def __init__(
        self, config: HubConfig | None = None, provider: ExecutionProvider | None = None
    ) -> None:
        # Hub() with no config is embedded in a script: free loopback ports, so that it
        # starts beside a CLI hub on the fixed ones; callers find it through hub.json.
        self.config = config or HubConfig(client_address="tcp://127.0.0.1:0",
                                          worker_address="tcp://127.0.0.1:0")
        self._provider = provider
        private_home(self.config.home)  # before the registry makes files in it
        self.registry = Registry(self.config.home)
        # Publishing runs on the loop thread, which owns the state: it may forget lookups.
        self.security = HubSecurity(self.config.home, self.registry,
                                    lambda name: self.state.invalidate(name),
                                    isolation=self.config.worker_isolation,
                                    user_map=self.config.user_map)
        # The scaling thread reads the snapshot the loop publishes, never the state.
        self.pilots = PilotService(lambda: self.server.published.as_dict())
        self.state = BrokerState(self._resolve, self.config, self.security,
                                 replacement_expected=self.pilots.replaces,
                                 ondemand=OnDemand.from_config(
                                     self.config, self._default_profile, has_profile),
                                 pool_pilots=self.pilots.pool_pilots)
        self.state.pools.granted = self.security.pool_granted  # owners' pooling grants
        self._thread: threading.Thread | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-pilot")
        self._started_at = 0.0
        self._stopped = threading.Event()
        parts = HubParts(self.config, self.registry, self.security, self.state, self.pilots,
                         self._executor, worker_address=lambda: self.worker_address,
                         about=self._about, stop=lambda why: self.server.stop(why))
        self.tokens = TokenStore(self.registry, self.security.access)  # bearer tokens
        self.server = BrokerServer(self.state, self.config, self._servable_files,
                                   {**control_operations(parts),
                                    **self.tokens.operations(self.security.require_admin)})
        self.server.tokens = self.tokens
        self.server.on_demand = OnDemandStarter(parts, self.state.ondemand)
        self._parts = parts
        self.default_pools: list[Future[Any]] = []  # the starts of HubConfig default_pools
        self._recovery = Recovery(parts)
        self.gateway: GatewayProcess | None = None  # HubConfig.gateway, once started
        self.metrics: MetricsServer | None = None  # /metrics, when config.metrics_port is set

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
        private_home(self.config.home)
        _refuse_a_running_hub(self.config.home)
        check_servable_profiles(self.config)  # bad settings fail here, before anything runs
        default_pools = check_default_pools(self.config)
        if self.config.benchmark_without_curve:  # loopback only: the config checked it
            logger.warning("the hub runs WITHOUT CurveZMQ (benchmark_without_curve): every "
                           "caller on this machine acts as its admin")
            self.server.unauthenticated = self.security.setup_without_curve()
        else:
            self.server.auth = self.security.setup()  # CurveZMQ on both sockets
        errors: list[BaseException] = []
        self._start_metrics()

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
        # 'workers start' runs fixed pilots on this provider, which needs the bound address.
        self.pilots.workers = WorkersSetup(
            self._provider or local_provider(),
            self.worker_address,
            self.config.home / "pilot",
            heartbeat_interval=self.config.heartbeat_interval,
            hub_timeout=max(30.0, 3 * self.config.heartbeat_timeout),
        )
        self._recovery.run()  # what a crashed hub on this home left running
        self.default_pools = start_default_pools(self._parts, default_pools)  # skips recovered
        self._start_gateway()
        self._write_state_file()
        return self

    def serve_forever(self) -> None:
        """Run in the foreground until SIGINT/SIGTERM or a ``shutdown`` request."""
        self.start()
        # This process is the hub's: what it holds once started lives as long as it does.
        # Frozen, a full collection walks only what came since (about 2 ms, not 70, a pass).
        gc.freeze()

        def handler(signum: int, frame: FrameType | None) -> None:
            self.server.stop(f"signal {signal.Signals(signum).name}")

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        while not self._stopped.wait(0.5):
            pass
        self.stop()

    def stop(self) -> None:
        """Stop workers and pilot blocks, the loop, and the registry; idempotent."""
        if self.gateway is not None:
            self.gateway.stop()
        self.security.forget()
        self.server.stop("the hub was stopped")
        if self.metrics is not None:
            self.metrics.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.pilots.shutdown()  # pilots and 'workers start' blocks
        except Exception:
            logger.exception("could not stop every pilot")
        self._executor.shutdown(wait=True)
        self.registry.close()
        state = read_hub_file(self.config.home)
        started = self._thread is not None  # a hub refused at start wrote no hub.json
        if started and state is not None and state.get("pid") == os.getpid():
            (self.config.home / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_gateway(self) -> None:
        """Start the Open Inference Protocol gateway, where the config asks for one."""
        if self.config.gateway is None:
            return
        self.gateway = GatewayProcess(self.config.gateway, self.client_address)
        try:
            self.gateway.start()
        except DlhubHpcError:
            self.stop()
            raise

    def _write_state_file(self) -> None:
        data = {
            "client_address": self.client_address,
            "worker_address": self.worker_address,
            "pid": os.getpid(),
            "started_at": self._started_at,
            "max_message_bytes": self.config.max_message_bytes,
            "metrics_url": self.metrics.url if self.metrics is not None else None,
            "metrics_token_file": str(self._metrics_token_file)
            if self.metrics is not None and not self.config.benchmark_without_curve else None,
            "server_key": self.security.credentials.server.public
            if self.security.credentials else None,
            "gateway_url": self.gateway.url if self.gateway is not None else None,
            "gateway_grpc_url": self.gateway.grpc_url or None
            if self.gateway is not None else None,
        }
        tmp = self.config.home / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.config.home / STATE_FILE)

    def _start_metrics(self) -> None:
        """Record in the loop and serve /metrics, where the config names a port."""
        if self.config.metrics_port is None:
            return
        self.state.metrics = BrokerMetrics()
        self.server.loop_metrics = LoopMetrics()
        # The series name every servable: on a hub of many users, only the admin reads them.
        token = (None if self.config.benchmark_without_curve
                 else metrics_token(self._metrics_token_file))
        self.metrics = serve_hub_metrics(
            lambda: self.server.published, self.state.metrics, self.server.loop_metrics,
            block_states(lambda: self.pilots.pilots.values()),
            self.config.metrics_address, self.config.metrics_port, token)

    @property
    def _metrics_token_file(self) -> Path:
        return self.config.home / METRICS_TOKEN_FILE

    # -- what the broker asks of the registry --

    def _resolve(self, name: str, version: int | None) -> ServableInfo:
        record = self.registry.resolve(name, version)
        images = recorded_images(self.registry.root, record.name, record.version)
        info = ServableInfo.from_record(record, (i.path for i in images.values()))
        policy = self.config.batching.get(name)
        if policy is None:
            return info
        return dataclasses.replace(
            info,
            max_batch_size=policy.max_batch_size or info.max_batch_size,
            max_batch_delay=(info.max_batch_delay if policy.max_batch_delay is None
                             else policy.max_batch_delay),
        )

    def _default_profile(self, key: ServableKey) -> str | None:
        """The site profile ``key``'s own spec names for its start on demand, if any."""
        return self.registry.get(*key).spec.servable.default_profile

    def _servable_files(self, name: str, version: int) -> tuple[dict[str, Any], bytes]:
        record = self.registry.get(name, version)
        return record.spec.model_dump(mode="json"), self.registry.bundle_bytes(record.digest)

    def _about(self) -> dict[str, Any]:
        """The hub itself, as ``status`` reports it."""
        return {
            "client_address": self.client_address,
            "worker_address": self.worker_address,
            "uptime": time.time() - self._started_at,
            "pid": os.getpid(),
        }
