"""``RemoteClient``: call a site's servables from anywhere, through Globus Compute.

The client packs each call as msgpack (:mod:`dlhub_hpc.bridge.codec`), checks it against
Globus Compute's limits (:mod:`dlhub_hpc.bridge.limits`), and submits it with a
``globus_compute_sdk.Executor`` to the forwarding function registered on the site's
endpoint (:mod:`dlhub_hpc.bridge.function`). The endpoint forwards it to the hub as its
local user and returns the outputs, or error records that become the same typed errors a
:class:`~dlhub_hpc.Client` raises on the site.

Only strings cross Globus Compute: the argument and the result use the ``JSONData``
serializer, and the executor's serializer refuses to deserialize anything else, so neither
side unpickles what the other sent. Nothing is imported from Globus Compute, and nothing
touches the network, until the first call.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import threading
import uuid
from concurrent.futures import Future
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlhub_hpc.bridge.codec import (
    BRIDGE_VERSION,
    DEFERRED,
    ERROR,
    OK,
    decode_envelope,
    encode_envelope,
    envelope_size,
    pack_value,
    unpack_value,
)
from dlhub_hpc.bridge.function import (
    ALLOWED_SERIALIZERS,
    DATA_SERIALIZER,
    DESCRIPTION,
    FUNCTION_NAME,
    function_source,
)
from dlhub_hpc.bridge.limits import ComputeLimits, RateLimiter, check_submission, plan_chunks
from dlhub_hpc.client import USE_CLIENT_DEFAULT, UseClientDefault
from dlhub_hpc.errors import (
    ConfigError,
    DlhubHpcError,
    EndpointError,
    InvalidInput,
    LimitExceeded,
    ProtocolError,
    RateLimited,
    error_from_wire,
)
from dlhub_hpc.servable.spec import parse_ref

logger = logging.getLogger(__name__)

FUNCTION_ID_ENV = "DLHUB_HPC_FUNCTION_ID"


class RemoteSettings(BaseModel):
    """A RemoteClient's settings, checked when it is made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_id: uuid.UUID
    function_id: uuid.UUID | None = None
    timeout: float | None = Field(default=60.0, gt=0)
    wait: float | None = Field(default=600.0, gt=0)
    on_rate_limit: Literal["raise", "wait"] = "raise"
    limits: ComputeLimits = Field(default_factory=ComputeLimits)


def make_serializer() -> Any:
    """The serializer RemoteClient gives its executor: source code and JSON, nothing else."""
    from globus_compute_sdk.serialize import ComputeSerializer, JSONData, PureSourceTextInspect

    return ComputeSerializer(
        strategy_code=PureSourceTextInspect(),
        strategy_data=JSONData(),
        allowed_deserializer_types=list(ALLOWED_SERIALIZERS),
    )


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*\.)?([A-Za-z_]\w*)(: |$)")


def _summary(text: str, limit: int = 400) -> str:
    """The exception at the end of a traceback, on one line (else the last line)."""
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i][:1].isspace() or not _EXCEPTION_LINE.match(lines[i]):
            continue
        head = _EXCEPTION_LINE.sub(lambda m: m.group(2) + m.group(3), lines[i], count=1)
        return " ".join([head.strip(), *(line.strip() for line in lines[i + 1:])])[:limit]
    return lines[-1][:limit] if lines else ""


class RemoteClient:
    """Calls servables on a site's hub through that site's Globus Compute endpoint.

    ``endpoint_id`` is the site's endpoint; ``function_id`` the forwarding function its
    admin registered and allowed (default ``$DLHUB_HPC_FUNCTION_ID``; if neither is set,
    the function is registered on first use, which only endpoints without
    ``allowed_functions`` accept). ``timeout`` is the hub's deadline per request, ``wait``
    how long ``run``, ``run_batch`` and ``whoami`` wait for the endpoint's answer.
    ``on_rate_limit='wait'`` paces calls over Globus Compute's rate instead of raising
    ``RateLimited``. ``executor`` is a ``globus_compute_sdk.Executor`` of your own (with
    your own SDK ``Client``, say); the RemoteClient sets its endpoint and serializers.
    """

    def __init__(
        self,
        endpoint_id: str | uuid.UUID,
        function_id: str | uuid.UUID | None = None,
        *,
        timeout: float | None = 60.0,
        wait: float | None = 600.0,
        on_rate_limit: Literal["raise", "wait"] = "raise",
        limits: ComputeLimits | None = None,
        executor: Any = None,
    ) -> None:
        if function_id is None:
            function_id = os.environ.get(FUNCTION_ID_ENV) or None
        try:
            self.settings = RemoteSettings(
                endpoint_id=endpoint_id,  # type: ignore[arg-type]
                function_id=function_id,  # type: ignore[arg-type]
                timeout=timeout, wait=wait, on_rate_limit=on_rate_limit,
                limits=limits or ComputeLimits(),
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"invalid RemoteClient settings: {problems}") from None
        self._function_id = self.settings.function_id
        self._executor = executor
        self._owns_executor = executor is None
        self._configured = False
        self._closed = False
        self._lock = threading.Lock()
        self._limiter = RateLimiter(self.settings.limits.max_requests, self.settings.limits.window)

    @property
    def endpoint_id(self) -> uuid.UUID:
        return self.settings.endpoint_id

    @property
    def function_id(self) -> uuid.UUID | None:
        return self._function_id

    @property
    def limits(self) -> ComputeLimits:
        return self.settings.limits

    def __repr__(self) -> str:
        return (f"RemoteClient(endpoint_id={str(self.endpoint_id)!r}, "
                f"function_id={None if self._function_id is None else str(self._function_id)!r},"
                f" timeout={self.settings.timeout!r})")

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls --

    def submit(
        self,
        servable: str,
        inputs: Any,
        *,
        method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        cache: bool = True,
    ) -> Future[Any]:
        """Send one request; the future holds the output or a ``DlhubHpcError``.

        Inputs that cannot travel, a call over the size limit, and (unless the client
        paces) a call over the rate limit raise here, before anything is sent.
        """
        parse_ref(servable)
        envelope = self._run_envelope(servable, method, timeout, cache, [pack_value(inputs)])
        replies = self._call(envelope, servable, pace=False)
        result: Future[Any] = Future()
        result.set_running_or_notify_cancel()

        def finish(done: Future[dict[str, Any]]) -> None:
            try:
                records = self._records(done.result(), 1)
                outcome = self._outcome(records[0])
            except BaseException as exc:
                result.set_exception(exc)
                return
            if isinstance(outcome, DlhubHpcError):
                result.set_exception(outcome)
            else:
                result.set_result(outcome)

        replies.add_done_callback(finish)
        return result

    def run(
        self,
        servable: str,
        inputs: Any,
        *,
        method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        cache: bool = True,
    ) -> Any:
        """Run ``servable`` on ``inputs`` at the site and return its output."""
        future = self.submit(servable, inputs, method=method, timeout=timeout, cache=cache)
        return self._wait(future)

    def run_batch(
        self,
        servable: str,
        inputs: list[Any],
        *,
        method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        cache: bool = True,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run ``servable`` on each of ``inputs``; outputs come back in the same order.

        Inputs are cut into as few calls as fit Globus Compute's limits, and the calls are
        paced to its rate. Outputs that did not fit in one result come back in another
        call. A failed item raises its error, or with ``return_exceptions=True`` stands in
        the list in place of its output.
        """
        parse_ref(servable)
        packed = []
        for i, value in enumerate(inputs):
            try:
                packed.append(pack_value(value))
            except InvalidInput as exc:
                raise InvalidInput(f"inputs[{i}]: {exc.message}", index=i, **exc.details) from None
        outcomes: list[Any] = [None] * len(packed)
        pending = list(range(len(packed)))
        while pending:
            # + 4: the items array's header grows from 1 byte (empty) to at most 5
            header = envelope_size(self._run_envelope(servable, method, timeout, cache, [])) + 4
            chunks = plan_chunks([len(packed[i]) for i in pending], header=header,
                                 limits=self.limits, servable=servable, positions=pending)
            calls = [
                (chunk, self._call(self._run_envelope(servable, method, timeout, cache,
                                                      [packed[i] for i in chunk]),
                                   servable, pace=True))
                for chunk in chunks
            ]
            pending = []
            for chunk, future in calls:
                try:
                    records = self._records(self._wait(future), len(chunk))
                except DlhubHpcError as exc:
                    records = [[ERROR, exc] for _ in chunk]
                for i, record in zip(chunk, records, strict=True):
                    if record[0] == DEFERRED:
                        pending.append(i)
                    else:
                        outcomes[i] = record[1] if isinstance(record[1], DlhubHpcError) \
                            else self._outcome(record)
            if pending:
                logger.info("%d output(s) did not fit in their results; asking again",
                            len(pending))
        if not return_exceptions:
            for outcome in outcomes:
                if isinstance(outcome, DlhubHpcError):
                    raise outcome
        return outcomes

    def whoami(self) -> dict[str, Any]:
        """The endpoint's side of a call: its local user (the one the hub sees), host, hub."""
        reply = self._wait(self._call({"v": BRIDGE_VERSION, "op": "whoami"}, "whoami",
                                      pace=False))
        who: dict[str, Any] = reply.get("who") or {}
        return who

    def close(self) -> None:
        """Shut down the executor this client made (one passed in is left running)."""
        with self._lock:
            executor, self._executor = self._executor, None
            self._closed = True
        if executor is not None and self._owns_executor:
            executor.shutdown(wait=False, cancel_futures=True)

    # -- plumbing --

    def _run_envelope(self, servable: str, method: str,
                      timeout: float | UseClientDefault | None, cache: bool,
                      items: list[bytes]) -> dict[str, Any]:
        seconds = self.settings.timeout if isinstance(timeout, UseClientDefault) else timeout
        return {"v": BRIDGE_VERSION, "op": "run", "servable": servable, "method": method,
                "timeout": seconds, "cache": cache,
                "result_limit": self.limits.max_result_bytes, "items": items}

    def _call(self, envelope: dict[str, Any], servable: str, pace: bool) -> Future[dict[str, Any]]:
        """Check, submit and decode one call; the future holds the reply map."""
        text = encode_envelope(envelope)
        check_submission(len(text), self.limits, servable)
        executor, function_id = self._ready()
        self._limiter.acquire(wait=pace or self.settings.on_rate_limit == "wait")
        sdk_future = executor.submit_to_registered_function(function_id, args=(text,))
        replies: Future[dict[str, Any]] = Future()
        replies.set_running_or_notify_cancel()

        def finish(done: Future[Any]) -> None:
            try:
                reply = decode_envelope(done.result(), "reply")
            except BaseException as exc:
                replies.set_exception(self._remote_failure(exc))
                return
            if reply.get("error"):
                replies.set_exception(error_from_wire(reply["error"]))
            else:
                replies.set_result(reply)

        sdk_future.add_done_callback(finish)
        return replies

    def _ready(self) -> tuple[Any, str]:
        with self._lock:
            if self._closed:
                raise DlhubHpcError("the remote client is closed")
            if self._executor is None:
                self._executor = self._make_executor()
            if not self._configured:
                self._configure(self._executor)
            if self._function_id is None:
                logger.warning(
                    "no function id given: registering %s now; an endpoint with "
                    "allowed_functions runs only the id its admin registered (ask for it, "
                    "and pass it as function_id or $%s)", FUNCTION_NAME, FUNCTION_ID_ENV)
                self._function_id = uuid.UUID(str(self._executor.register_source_code(
                    function_source(), FUNCTION_NAME, description=DESCRIPTION)))
            return self._executor, str(self._function_id)

    def _make_executor(self) -> Any:
        try:
            from globus_compute_sdk import Executor
        except ImportError:
            raise ConfigError(
                "RemoteClient needs the Globus Compute SDK: pip install 'dlhub-hpc[globus]'"
            ) from None
        return Executor(endpoint_id=str(self.endpoint_id))

    def _configure(self, executor: Any) -> None:
        current = getattr(executor, "endpoint_id", None)
        if current is None:
            executor.endpoint_id = str(self.endpoint_id)
        elif str(current) != str(self.endpoint_id):
            raise ConfigError(
                f"the executor sends to endpoint {current}, this client to {self.endpoint_id}"
            )
        executor.serializer = make_serializer()
        executor.result_serializers = [DATA_SERIALIZER]
        self._configured = True

    def _wait(self, future: Future[Any]) -> Any:
        try:
            return future.result(timeout=self.settings.wait)
        except concurrent.futures.TimeoutError:
            raise EndpointError(
                f"no answer from Globus Compute endpoint {self.endpoint_id} within "
                f"{self.settings.wait:g} s; is the endpoint running (globus-compute-endpoint "
                "list, on the site)? Raise wait= for endpoints that start slowly",
                endpoint=str(self.endpoint_id),
            ) from None

    def _records(self, reply: dict[str, Any], expected: int) -> list[list[Any]]:
        records = reply.get("results")
        if not isinstance(records, list) or len(records) != expected or not all(
            isinstance(r, list) and len(r) == 2 and r[0] in (OK, ERROR, DEFERRED) for r in records
        ):
            raise ProtocolError(f"the endpoint's reply does not hold {expected} result(s)")
        return records

    def _outcome(self, record: list[Any]) -> Any:
        """A reply record as the output, or as the error to raise."""
        status, payload = record
        if status == OK:
            return unpack_value(payload)
        if status == ERROR:
            return error_from_wire(payload if isinstance(payload, dict) else {})
        raise ProtocolError("the endpoint deferred the only output of a call")

    def _remote_failure(self, exc: BaseException) -> DlhubHpcError:
        """An exception from the SDK (task failed, service refused) as a dlhub-hpc error."""
        if isinstance(exc, DlhubHpcError):
            return exc
        where = {"endpoint": str(self.endpoint_id), "function": str(self._function_id)}
        status = getattr(exc, "http_status", None)
        if status == 429:
            return RateLimited(
                "Globus Compute refused the call: too many requests (HTTP 429); send many "
                "inputs per call with run_batch, or use on_rate_limit='wait'", **where)
        if status == 413:
            return LimitExceeded(
                "Globus Compute refused the call as too large (HTTP 413); send fewer inputs "
                "per call", **where)
        remote = str(getattr(exc, "remote_data", "") or exc)
        if type(exc).__name__ == "TaskExecutionFailed":
            return EndpointError(
                f"the forwarding function failed on endpoint {self.endpoint_id}: "
                f"{_summary(remote)}. Check that dlhub-hpc (the version here) is installed "
                f"in the endpoint's Python and that its allowed_functions lists "
                f"{self._function_id}", remote=remote[-4000:], **where)
        return EndpointError(
            f"Globus Compute could not run the call on endpoint {self.endpoint_id}: "
            f"{type(exc).__name__}: {_summary(remote)}", **where)
