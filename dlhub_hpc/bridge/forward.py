"""The endpoint's side: run one call against the site's hub and pack the reply.

:func:`forward` is what the registered function (:mod:`dlhub_hpc.bridge.function`) calls on
a Globus Compute endpoint. It talks to the hub with an ordinary :class:`~dlhub_hpc.Client`
as the local user the endpoint process runs as: on a multi-user endpoint, the user that the
endpoint's identity mapping chose for the caller's Globus identity. Nothing here changes
user or claims another identity, so the hub's access rules apply to that local user.

The hub is the one named by ``DLHUB_HPC_HUB`` in the endpoint's environment (the endpoint
templates set it), else the one in that user's ``DLHUB_HPC_HOME``/``~/.dlhub-hpc``.
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import msgpack

from dlhub_hpc.bridge.codec import (
    BRIDGE_VERSION,
    DEFERRED,
    ERROR,
    OK,
    decode_envelope,
    encode_envelope,
    max_raw_size,
    pack_value,
    unpack_value,
)
from dlhub_hpc.bridge.limits import RESULT_OVERHEAD, megabytes, result_size
from dlhub_hpc.client import Client, find_hub_address
from dlhub_hpc.errors import DlhubHpcError, LimitExceeded, ProtocolError

logger = logging.getLogger(__name__)

_clients: dict[str, Client] = {}
_clients_lock = threading.Lock()
_DEFERRED_RECORD = len(msgpack.packb([DEFERRED, None]))


@dataclass(frozen=True)
class RunCall:
    """A decoded ``run`` call."""

    servable: str
    method: str
    timeout: float | None
    cache: bool
    result_limit: int
    items: list[bytes]


def local_identity(hub: str | None = None) -> dict[str, Any]:
    """Who this process is: the local user whose identity the hub sees."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return {"user": user, "uid": uid, "host": socket.gethostname(), "pid": os.getpid(),
            "hub": hub}


def _client(address: str) -> Client:
    # One client per hub for the life of the worker process: its sockets stay connected.
    with _clients_lock:
        client = _clients.get(address)
        if client is None:
            client = _clients[address] = Client(address)
        return client


def close_clients() -> None:
    """Close the clients this process opened (an endpoint worker calls this at exit)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


def _parse_run(data: dict[str, Any]) -> RunCall:
    servable, method = data.get("servable"), data.get("method", "")
    timeout, cache = data.get("timeout"), data.get("cache", True)
    limit, items = data.get("result_limit"), data.get("items")
    if not isinstance(servable, str) or not isinstance(method, str):
        raise ProtocolError("a call names its servable and method as strings")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or timeout <= 0):
        raise ProtocolError(f"a call's timeout is a positive number or null, got {timeout!r}")
    if not isinstance(cache, bool):
        raise ProtocolError("a call's cache flag is a boolean")
    if not isinstance(limit, int) or limit <= 2 * RESULT_OVERHEAD:
        raise ProtocolError(f"a call's result_limit is a byte count, got {limit!r}")
    if not isinstance(items, list) or not all(isinstance(i, bytes) for i in items):
        raise ProtocolError("a call's items are a list of packed values")
    return RunCall(servable, method, None if timeout is None else float(timeout), cache,
                   limit, items)


def _run_items(client: Client, call: RunCall) -> list[tuple[str, Any]]:
    """Each item's (OK, output) or (ERROR, error record); one bad item fails alone."""
    options: dict[str, Any] = {"method": call.method, "timeout": call.timeout,
                               "cache": call.cache}
    if len(call.items) == 1:  # the blocking path: no hand-off between threads
        try:
            return [(OK, client.run(call.servable, unpack_value(call.items[0]), **options))]
        except DlhubHpcError as exc:
            return [(ERROR, exc.to_wire())]
    pending: list[Future[Any] | DlhubHpcError] = []
    for raw in call.items:
        try:
            pending.append(client.submit(call.servable, unpack_value(raw), **options))
        except DlhubHpcError as exc:
            pending.append(exc)
    outcomes: list[tuple[str, Any]] = []
    for item in pending:
        try:
            if isinstance(item, DlhubHpcError):
                raise item
            outcomes.append((OK, item.result()))
        except DlhubHpcError as exc:
            outcomes.append((ERROR, exc.to_wire()))
    return outcomes


def _fit_results(outcomes: list[tuple[str, Any]], call: RunCall,
                 header: int) -> list[list[Any]]:
    """Pack outputs; defer those that do not fit in this reply, fail those that never will."""
    budget = max_raw_size(call.result_limit - RESULT_OVERHEAD)
    # room for every item's record at its smallest (deferred), reserved up front
    used = header + _DEFERRED_RECORD * len(outcomes)
    records: list[list[Any]] = []
    for status, payload in outcomes:
        record: list[Any] = [status, payload]
        if status == OK:
            try:
                record = [OK, pack_value(payload)]
            except DlhubHpcError as exc:
                record = [ERROR, exc.to_wire()]
        size = len(msgpack.packb(record, use_bin_type=True))
        if header + size + _DEFERRED_RECORD * len(outcomes) > budget:
            record = [ERROR, LimitExceeded(
                f"the output of {call.servable} is {megabytes(result_size(header + size))} "
                f"encoded, over Globus Compute's {megabytes(call.result_limit)} per "
                "result; ask for less per call, or call the hub from the site with "
                "dlhub_hpc.Client",
                servable=call.servable, size=size, limit=call.result_limit,
            ).to_wire()]
            size = len(msgpack.packb(record, use_bin_type=True))
        if used + size - _DEFERRED_RECORD > budget:
            record, size = [DEFERRED, None], _DEFERRED_RECORD
        used += size - _DEFERRED_RECORD
        records.append(record)
    return records


def _reply(who: dict[str, Any], results: list[list[Any]] | None = None,
           error: DlhubHpcError | None = None) -> dict[str, Any]:
    return {"v": BRIDGE_VERSION, "who": who, "results": results or [],
            "error": None if error is None else error.to_wire()}


def forward(call: str) -> str:
    """Run one encoded call against the hub; return the encoded reply (never raises for
    a dlhub-hpc error: those travel in the reply, so the caller rebuilds the same class)."""
    try:
        data = decode_envelope(call, "call")
        op = data.get("op")
        address = find_hub_address()
        who = local_identity(address)
        if op == "whoami":
            return encode_envelope(_reply(who))
        if op != "run":
            raise ProtocolError(f"unknown call op {op!r}; this endpoint knows run and whoami")
        run = _parse_run(data)
    except DlhubHpcError as exc:
        return encode_envelope(_reply(local_identity(), error=exc))
    logger.info("forwarding %d item(s) for %s to %s as %s", len(run.items), run.servable,
                address, who["user"])
    outcomes = _run_items(_client(address), run)
    header = len(msgpack.packb(_reply(who), use_bin_type=True)) + 5
    return encode_envelope(_reply(who, _fit_results(outcomes, run, header)))
