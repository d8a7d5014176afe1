"""Hub settings, validated when made; ``repr`` reads like the call that made it."""

from __future__ import annotations

import ipaddress
import logging
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dlhub_hpc.errors import ConfigError
from dlhub_hpc.hubfile import STATE_FILE, default_home, read_hub_file
from dlhub_hpc.protocol import DEFAULT_CLIENT_PORT, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_WORKER_PORT
from dlhub_hpc.servable.pools import DEFAULT_BUDGET, PoolSpec
from dlhub_hpc.servable.spec import PROFILE_NAME_PATTERN
from dlhub_hpc.transfer import DEFAULT_CHUNK_BYTES, DEFAULT_WINDOW_BYTES

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "STATE_FILE", "BatchPolicy", "DefaultPool",
           "GatewaySettings", "HubConfig", "default_home", "read_hub_file"]


class BatchPolicy(BaseModel):
    """A hub's override of a servable's own batching settings (None keeps the spec's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int | None = Field(default=None, ge=1, le=4096)
    max_batch_delay: float | None = Field(default=None, ge=0, le=1.0)


class DefaultPool(BaseModel):
    """A pool the hub starts a pilot of when it starts (``pilot start --pool POOL --profile
    PROFILE``), unless one of a previous run already serves it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool: str = Field(description="owner:NAME, tag:TAG, public, or owner/name[,owner/name...]")
    profile: str = Field(description="the site profile, by name or YAML path")
    memory_budget: int | None = Field(
        default=None, ge=1, description="bytes of loaded models one worker keeps (default 2 GiB)")
    nodes: int | None = Field(default=None, ge=1, description="nodes per block")

    @field_validator("pool")
    @classmethod
    def _pool_parses(cls, text: str) -> str:
        try:
            PoolSpec.parse(text)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return text

    def spec(self) -> PoolSpec:
        """The pool as ``pilot start --pool`` names it (its ref is the pilot's servable)."""
        return PoolSpec.parse(self.pool, self.memory_budget or DEFAULT_BUDGET)


class GatewaySettings(BaseModel):
    """The Open Inference Protocol gateway a hub starts beside itself (``dlhub_hpc.gateway``):
    loopback by default; any other host only with TLS, so that tokens never cross a network
    in clear."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="the protocol's gRPC endpoint too, on this port (0: a free one)")
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> GatewaySettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("the gateway's TLS needs both tls_cert and tls_key")
        if self.tls_cert is None and not _loopback(f"tcp://{self.host}:0"):
            raise ValueError(f"the gateway may listen on {self.host!r} only with TLS "
                             "(tls_cert and tls_key): bearer tokens must not cross a "
                             "network in clear")
        return self


class HubConfig(BaseModel):
    """Everything a hub needs. Addresses default to loopback: nothing is exposed by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(default_factory=default_home)
    client_address: str = f"tcp://127.0.0.1:{DEFAULT_CLIENT_PORT}"
    worker_address: str = f"tcp://127.0.0.1:{DEFAULT_WORKER_PORT}"
    gateway: GatewaySettings | None = Field(
        default=None, description="start the Open Inference Protocol gateway with the hub")
    heartbeat_interval: float = Field(default=1.0, gt=0)
    heartbeat_timeout: float = Field(default=10.0, gt=0)
    heartbeats_per_second: float = Field(
        default=256.0, ge=0,
        description="heartbeats a second the hub takes from all its workers together: past "
                    "heartbeat_interval x this many workers, it tells workers to beat further "
                    "apart (up to 10x heartbeat_interval) and waits as much longer before "
                    "it counts one lost; 0: every worker beats every heartbeat_interval",
    )
    max_queue_length: int = Field(default=10_000, ge=1)
    default_timeout: float | None = Field(default=None, gt=0)
    max_retries: int = Field(default=1, ge=0)
    prefetch: bool = Field(
        default=True,
        description="send a busy worker its next batch while it runs the last one, when a "
                    "full batch of at least 64 KiB waits for it: the batch's trip to the "
                    "worker overlaps the model's work (pooled workers and chunked inputs "
                    "never get one ahead); one that waits over 5 s is taken back",
    )
    memo_max_bytes: int = Field(default=256 * 2**20, ge=0, description="0 turns memoization off")
    metrics_address: str = Field(
        default="127.0.0.1", description="where the hub serves Prometheus metrics (loopback)")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="port of the hub's /metrics; None serves none, 0 takes a free one "
                    "(hub.json names it: metrics_url)",
    )
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, ge=4096,
        description="largest request a client may send; larger ones are PayloadTooLarge",
    )
    worker_max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, ge=4096,
        description="largest message a worker may send (start workers with the same "
                    "--max-message-bytes, so that bigger results become per-item errors)",
    )
    client_send_hwm: int = Field(
        default=1000, ge=1,
        description="replies queued for one client that does not read them; past it "
                    "they are dropped and counted (stats: replies_dropped_hwm)",
    )
    large_message_bytes: int = Field(
        default=2**20, ge=0,
        description="requests larger than this are decoded and checked off the hub's loop",
    )
    large_backlog_bytes: int = Field(
        default=2 * DEFAULT_MAX_MESSAGE_BYTES, ge=0,
        description="large requests waiting for their check, in bytes; past it they are "
                    "refused with Overloaded",
    )
    transfer_window_bytes: int = Field(
        default=DEFAULT_WINDOW_BYTES, ge=2**16,
        description="bytes of one chunked transfer (a large array) the hub may hold: its "
                    "sender runs at most this far ahead of its receiver",
    )
    transfer_chunk_bytes: int = Field(
        default=DEFAULT_CHUNK_BYTES, ge=2**16, le=64 * 2**20,
        description="the largest chunk of a chunked transfer (one loop step moves one)",
    )
    transfer_timeout: float = Field(
        default=30.0, gt=0,
        description="seconds a chunked transfer may make no progress before it is dropped "
                    "(TransferStalled to its caller)",
    )
    max_transfer_bytes: int = Field(
        default=64 * 2**30, ge=0, description="the largest array a chunked transfer carries",
    )
    batching: dict[str, BatchPolicy] = Field(
        default_factory=dict, description="per servable (owner/name) batching overrides"
    )
    worker_isolation: Literal["auto", "user", "sandbox", "off"] = Field(
        default="auto",
        description="how workers of owners other than the admin start: as their Unix user "
                    "(user; the hub runs as root), in bubblewrap (sandbox), whichever this "
                    "hub can (auto), or as the hub's own user, able to read its keys (off)",
    )
    user_map: dict[str, str] = Field(
        default_factory=dict, description="identity -> Unix user, where the names differ"
    )
    max_reference_bytes: int = Field(
        default=2**30, ge=0,
        description="bytes the hub reads for one request's FileRef/URLRef inputs together; "
                    "past it they are ReferenceTooLarge",
    )
    reference_ca_file: Path | None = Field(
        default=None,
        description="CA bundle to verify URLRef servers against (default: the system's)",
    )
    reference_fetch_timeout: float = Field(
        default=60.0, gt=0, description="seconds one URLRef download may take in all",
    )
    reference_allow_networks: list[str] = Field(
        default_factory=list,
        description="address ranges (CIDR) URLRefs may be fetched from although they are "
                    "loopback, link-local or private; none by default, so callers cannot "
                    "make the hub reach what only it can reach",
    )
    max_workers_per_owner: int = Field(
        default=16, ge=0,
        description="workers one owner's servables may run through 'workers start' "
                    "(the admin is not limited)",
    )
    max_nodes_per_pilot: int = Field(
        default=8, ge=1,
        description="nodes a pilot a non-admin starts may hold (--nodes times the "
                    "profile's max_blocks)",
    )
    benchmark_without_curve: bool = Field(
        default=False,
        description="loopback benchmarks only: no CurveZMQ on either socket, so every "
                    "caller and worker is unauthenticated and acts as the admin; refused "
                    "unless both addresses are loopback tcp:// or ipc://",
    )

    start_on_demand: dict[str, str] = Field(
        default_factory=dict,
        description="servable (owner/name, or '*' for every one) -> the site profile a "
                    "pilot starts from when a request finds no worker serving it",
    )
    idle_release_after: float | None = Field(
        default=None, gt=0,
        description="seconds without requests after which a servable started on demand "
                    "is stopped, back to zero workers (None: kept until stopped)",
    )
    max_starts_per_minute: int = Field(
        default=6, ge=1, description="on-demand pilot starts per minute, hub-wide",
    )
    servable_profiles: list[str] = Field(
        default_factory=list,
        description="site profiles (by name) a servable's own default_profile may name for "
                    "its start on demand, or ['*'] for any installed one; none by default: a "
                    "profile may charge the site's allocation, so the admin chooses",
    )
    default_pools: list[DefaultPool] = Field(
        default_factory=list,
        description="pools the hub starts a pool pilot of when it starts, after taking back "
                    "a previous run's pilots (skipped where one of them serves the pool)",
    )
    queue_limits: dict[str, int] = Field(
        default_factory=dict,
        description="per servable (owner/name): requests it may queue over all its "
                    "methods, below max_queue_length; a caller alone may use all of it, "
                    "else bound // callers waiting; past it callers get QueueFull",
    )
    local_fast_path: bool = Field(
        default=True,
        description="callers and workers on the hub's node pass large arrays as sealed "
                    "memfds over an AF_UNIX socket, not through CurveZMQ (dlhub_hpc.localpath)",
    )
    local_min_bytes: int = Field(
        # A memfd costs a few system calls and a hand-over; CurveZMQ costs per byte. They
        # cross near 128 KiB, on 2 cores and on 16 (benchmarks/local_threshold.py).
        default=2**18, ge=16385,
        description="arrays at least this large take the same-node fast path",
    )
    io_threads: int = Field(
        default=1, ge=1, le=64,
        description="ZeroMQ I/O threads of the hub's sockets: CurveZMQ encrypts and "
                    "decrypts there, one connection on one thread, so more let callers' and "
                    "workers' traffic use more cores",
    )

    @field_validator("servable_profiles")
    @classmethod
    def _profile_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if name != "*" and not re.match(PROFILE_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not a site profile's name: list installed "
                                 "profiles by name (no paths), or '*' for any of them")
        return names

    @model_validator(mode="after")
    def _networks_parse(self) -> HubConfig:
        for net in self.reference_allow_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"reference_allow_networks: {net!r} is not an address "
                                 "range; write one like 10.1.0.0/16 or ::1/128") from None
        return self

    @model_validator(mode="after")
    def _timeout_covers_heartbeats(self) -> HubConfig:
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(
                "heartbeat_timeout must be longer than heartbeat_interval "
                f"({self.heartbeat_timeout} <= {self.heartbeat_interval})"
            )
        for addr in (self.client_address, self.worker_address):
            if not addr.startswith(("tcp://", "ipc://", "inproc://")):
                raise ValueError(f"address {addr!r} should start with tcp://, ipc:// or inproc://")
        if self.benchmark_without_curve:
            for addr in (self.client_address, self.worker_address):
                if not _loopback(addr):
                    raise ValueError(
                        f"benchmark_without_curve needs loopback addresses (tcp://127.0.0.1, "
                        f"tcp://[::1], tcp://localhost or ipc://), not {addr!r}: without "
                        "CurveZMQ anyone who reaches the hub acts as its admin")
            if self.metrics_port is not None and not _loopback(f"tcp://{self.metrics_address}:0"):
                # such a hub serves /metrics without its token: the series name every servable
                raise ValueError(
                    f"benchmark_without_curve serves metrics on loopback only, not "
                    f"{self.metrics_address!r}: they are served without the metrics token")
        return self

    def __repr__(self) -> str:
        changed = {
            k: v for k, v in self.model_dump().items()
            if k in self.model_fields_set and k != "home"
        }
        args = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"HubConfig(home={str(self.home)!r}{', ' if args else ''}{args})"


def _loopback(address: str) -> bool:
    """Is ``address`` reachable from this machine only (ipc://, or tcp:// on loopback)?"""
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = address.removeprefix("tcp://").rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name or an interface: it may be reachable from elsewhere
        return False
