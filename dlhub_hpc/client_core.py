"""What a client is before it has sockets, and what becomes of a reply.

``ClientCore`` (shared by ``Client`` and ``AsyncClient``) finds the hub, holds the caller's
keys and size limit, and builds and checks requests; every reply becomes a value or a typed
error in ``reply_value``, and a reply that never comes one of the errors built here.
"""

from __future__ import annotations

import itertools
import logging
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import zmq

from dlhub_hpc.errors import (
    ConfigError,
    DlhubHpcError,
    HubUnavailable,
    InvalidInput,
    PayloadTooLarge,
    ProtocolError,
    ServableDeprecated,
    error_from_wire,
)
from dlhub_hpc.hubfile import default_home, read_hub_file
from dlhub_hpc.localpath.caller import CallerPath
from dlhub_hpc.protocol import (
    DEFAULT_CLIENT_PORT,
    DEFAULT_MAX_MESSAGE_BYTES,
    Control,
    Fetch,
    Reply,
    Request,
    check_carriable,
    decode,
    encode,
)
from dlhub_hpc.references import ResultTo, result_path
from dlhub_hpc.security.client import ClientCurve, hint
from dlhub_hpc.security.keys import KeyPair
from dlhub_hpc.servable.bundle import make_bundle
from dlhub_hpc.servable.spec import parse_ref
from dlhub_hpc.transfer import call as streamed

logger = logging.getLogger(__name__)

_SLICE = 0.25  # seconds a waiting call sleeps between looks at a refused handshake or close()
_GRACE = 5.0  # seconds past a request's own timeout before the client gives up on the hub


class UseClientDefault:
    """The type of ``USE_CLIENT_DEFAULT``: take the client's own setting (as httpx does)."""

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT = UseClientDefault()


def find_hub_address(home: Path | None = None) -> str:
    """``$DLHUB_HPC_HUB``, else the address a running hub wrote in its home, else the default."""
    env = os.environ.get("DLHUB_HPC_HUB")
    if env:
        return env
    state = read_hub_file(home or default_home())
    if state and state.get("client_address"):
        return str(state["client_address"])
    return f"tcp://127.0.0.1:{DEFAULT_CLIENT_PORT}"


def recorded_message_limit(address: str, home: Path | None = None) -> int | None:
    """The request size limit the hub at ``address`` recorded in its ``hub.json``, if any."""
    state = read_hub_file(home or default_home())
    if not state or state.get("client_address") != address:
        return None
    limit = state.get("max_message_bytes")
    return limit if isinstance(limit, int) and limit > 0 else None


# -- the one reply path, and the errors of a reply that never comes --

def reply_value(reply: Reply, stacklevel: int = 2) -> Any:
    """The value a ``Reply`` carries, or its error raised as the typed ``DlhubHpcError``.

    A deprecation notice on the reply becomes a ``ServableDeprecated`` warning.
    """
    if reply.warning:
        warnings.warn(reply.warning, ServableDeprecated, stacklevel=stacklevel + 1)
    if reply.ok:
        return streamed.plain(reply.value)  # a streamed output no call here received
    raise error_from_wire(reply.error or {})


def settle(future: Any, reply: Reply) -> None:
    """Resolve ``future`` (concurrent or asyncio) with what ``reply`` says."""
    try:
        value = reply_value(reply, stacklevel=1)
    except DlhubHpcError as exc:
        future.set_exception(exc)
    else:
        future.set_result(value)


def decode_reply(frames: list[Any], fetch: Fetch | None = None) -> Reply | None:
    """``frames`` as a ``Reply``; None (logged) for anything else the socket received.
    ``fetch`` takes arrays that came by the same-node fast path."""
    try:
        reply = decode(frames, fetch=fetch)
    except ProtocolError as exc:
        logger.warning("dropped a malformed reply: %s", exc)
        return None
    return reply if isinstance(reply, Reply) else None


def no_reply(address: str, curve: ClientCurve) -> DlhubHpcError:
    """Why a request went unanswered: a refused handshake if one was seen, else no hub."""
    return curve.last_refusal or HubUnavailable(
        f"no reply from the hub at {address}; is it running? "
        f"Start one with 'dlhub-hpc hub start'{hint(address, curve)}",
        address=address,
    )


def hub_gone(address: str) -> HubUnavailable:
    return HubUnavailable(f"the hub at {address} has stopped; its in-process address went with "
                          "it", address=address)


def connect_dealer(address: str, curve: ClientCurve, context: zmq.Context[Any] | None,
                   ) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes] | None]:
    """A DEALER connected to the hub at ``address`` (CurveZMQ where its key is known), and
    the monitor of its handshake's failures; ``context``: an embedded hub's."""
    try:
        sock: zmq.Socket[bytes] = (context or zmq.Context.instance()).socket(zmq.DEALER)
    except zmq.ZMQError:  # the context of an embedded hub that has stopped
        raise hub_gone(address) from None
    sock.setsockopt(zmq.LINGER, 0)
    monitor = curve.secure(sock, address)
    sock.connect(address)
    return sock, monitor


def client_closed() -> DlhubHpcError:
    return DlhubHpcError("the client is closed")


def asked_version(status: dict[str, Any], servable: str) -> str:
    """``name@version`` as asked, or with the latest published version when none is."""
    name, version = parse_ref(servable)
    if version is None:
        versions = [int(p["version"]) for p in status.get("published", []) if p["name"] == name]
        version = max(versions, default=None)
    return name if version is None else f"{name}@{version}"


def workers_ready(status: dict[str, Any], servable: str) -> int:
    """How many workers of ``servable`` (the version asked, else the latest) are serving."""
    ref = asked_version(status, servable)
    return sum(1 for w in status["workers"]
               if (w["servable"] == ref or w["servable"].split("@")[0] == ref)
               and w["state"] != "loading")


def raise_load_failure(status: dict[str, Any], servable: str) -> None:
    """Raise the load error the hub holds for the asked version, if its workers all failed."""
    error = status.get("load_failures", {}).get(asked_version(status, servable))
    if error is not None:
        raise error_from_wire(error)


def workers_missing(servable: str, ready: int, count: int, timeout: float) -> HubUnavailable:
    return HubUnavailable(f"{ready} of {count} workers for {servable} are ready after "
                          f"{timeout}s; see 'dlhub-hpc status' and the pilot logs",
                          servable=servable)


def checked_parameters(parameters: Any) -> dict[str, Any] | None:
    """``parameters`` as a request carries them: None when there are none to override
    (so such requests batch and memoize with the plain ones); ``InvalidInput`` unless a
    dict keyed by the method's parameter names."""
    if parameters is None:
        return None
    if not isinstance(parameters, dict) or not all(isinstance(k, str) for k in parameters):
        raise InvalidInput("parameters should be a dict of the method's parameter names to "
                           f"values, not {type(parameters).__name__}", path="parameters")
    return dict(parameters) or None


class ClientCore:
    """What a client is before it has sockets: where the hub is, its keys and limits, and
    the building and checking of requests (``Client`` and ``AsyncClient`` share it)."""

    def __init__(
        self, address: str | None = None, *, timeout: float | None = 60.0,
        keys: KeyPair | None = None, server_key: str | None = None,
        context: zmq.Context[Any] | None = None, max_message_bytes: int | None = None,
    ) -> None:
        """``keys``: this caller's CurveZMQ key pair (default: the user's own, made on
        first use); ``server_key``: the hub's public key (default: as the hub recorded it);
        ``context``: the ZeroMQ context of an ``inproc://`` hub in this process (what
        ``Hub.client()`` passes); ``max_message_bytes``: the largest request to send
        (default: the limit the hub recorded in its ``hub.json``, else the hubs' default)."""
        if max_message_bytes is not None and max_message_bytes < 1:
            raise ConfigError(f"max_message_bytes must be positive, not {max_message_bytes}")
        if address is not None and address.startswith("inproc://") and context is None:
            raise ConfigError(f"{address} is reachable only with the context of the hub that "
                              "bound it: use Hub.client()", address=address)
        self._address = address
        self._context = context
        self.timeout = timeout
        self._max_message_bytes = max_message_bytes
        self._curve = ClientCurve(keys, server_key)
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        # Large arrays to and from a hub on this node: sealed memfds, not CurveZMQ.
        self._fast = CallerPath()

    @property
    def address(self) -> str:
        if self._address is None:
            self._address = find_hub_address()
        return self._address

    @property
    def local_fast_path(self) -> bool:
        """Whether large arrays go as sealed memfds when the hub runs on this node (the
        default); False sends them through the hub's encrypted connection."""
        return self._fast.enabled

    @local_fast_path.setter
    def local_fast_path(self, on: bool) -> None:
        self._fast.enabled = on

    @property
    def max_message_bytes(self) -> int:
        """The largest request this client sends; larger ones raise ``PayloadTooLarge``."""
        if self._max_message_bytes is None:
            self._max_message_bytes = (recorded_message_limit(self.address)
                                       or DEFAULT_MAX_MESSAGE_BYTES)
        return self._max_message_bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(address={self._address!r}, timeout={self.timeout!r})"

    def _request(self, servable: str, inputs: Any, method: str,
                 timeout: float | UseClientDefault | None, cache: bool,
                 parameters: dict[str, Any] | None = None,
                 result_to: ResultTo = None,
                 ) -> tuple[str, list[Any], float | None]:
        """A request's id, its checked frames, and how long to wait for its reply."""
        name, version = parse_ref(servable)
        seconds = self.timeout if isinstance(timeout, UseClientDefault) else timeout
        request_id = self._new_id()
        frames = self._frames(Request(request_id, name, version, method, inputs, seconds, cache,
                                      checked_parameters(parameters),
                                      result_to=result_path(result_to)))
        # The hub answers Timeout at the deadline; past it plus a grace, the hub is gone.
        return request_id, frames, None if seconds is None else seconds + _GRACE

    def _control(self, op: str, args: dict[str, Any]) -> tuple[str, list[Any]]:
        request_id = self._new_id()
        return request_id, self._frames(Control(request_id, op, args))

    def _new_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _frames(self, msg: Request | Control) -> list[Any]:
        """``msg`` encoded, after refusing what the hub could not carry (``InvalidInput``)
        or would refuse for its size (``PayloadTooLarge``): before anything is sent."""
        if isinstance(msg, Request):
            check_carriable(msg.payload, "the input")
            if msg.parameters:
                check_carriable(msg.parameters, "the parameters")
        else:
            check_carriable(msg.args, f"the arguments of {msg.op}")
        frames = encode(msg, self._fast.share() if isinstance(msg, Request) else None)
        size = sum(memoryview(f).nbytes for f in frames)
        limit = self.max_message_bytes
        if size > limit:
            raise PayloadTooLarge(
                f"the request is {size} bytes, over the limit of {limit} bytes; send a "
                "smaller input (or a file path the servable can read), or raise the hub's "
                "HubConfig.max_message_bytes (and Client(max_message_bytes=...) to match)",
                size=size, limit=limit, setting="HubConfig.max_message_bytes",
            )
        return frames

    @staticmethod
    def _bundle(directory: str | Path) -> bytes:
        return make_bundle(Path(directory)).data
