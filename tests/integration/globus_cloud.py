"""An in-process stand-in for the Globus Compute web service: the one part that cannot run here.

The SDK's real ``Executor`` runs as it does on a laptop: it serializes the arguments with the
serializer it was given, coalesces tasks into batches and builds the SDK's own ``Batch``.
Only its two calls to the cloud land here: ``batch_run`` (an HTTPS POST) and the result
stream (AMQP). Each task then goes, as the service would send it, to a real endpoint
engine running in-process (``GlobusComputeEngine`` or ``ThreadPoolEngine``): the registered
function's code buffer followed by the submitted arguments, packed in a ``Task``. The
engine's ``Result`` comes back through the SDK's own handling (``TaskExecutionFailed`` for
an error, the executor's serializer for data).

Everything the Executor would have sent is kept (``submissions``, ``registrations``), so
tests can check what would leave the laptop.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_endpoint.engines.base import GCFuture, GlobusComputeEngineBase
from globus_compute_sdk import Executor
from globus_compute_sdk.errors import TaskExecutionFailed
from globus_compute_sdk.sdk.batch import Batch, create_user_runtime
from globus_compute_sdk.sdk.client import FunctionRegistrationData, FunctionRegistrationMetadata
from globus_compute_sdk.serialize import ComputeSerializer, PureSourceTextInspect
from globus_compute_sdk.version import __version__ as sdk_version

TASK_LIMIT = 10 * 1024 * 1024


class ServiceError(Exception):
    """What the service answers with an HTTP error (as globus_sdk's errors carry it)."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status


class _ResultStream:
    """Matches results to the Executor's futures, as the SDK's result watcher does."""

    ShuttingDownError = RuntimeError

    def __init__(self, client: SdkClient) -> None:
        self._client = client
        self._futures: dict[str, Future[Any]] = {}
        self._results: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def watch_for_task_results(self, executor: Executor, futures: list[Any]) -> int:
        for future in futures:
            with self._lock:
                packed = self._results.pop(future.task_id, None)
                if packed is None:
                    self._futures[future.task_id] = future
            if packed is not None:
                self._complete(future, packed)
        return len(futures)

    def deliver(self, task_id: str, packed: bytes) -> None:
        with self._lock:
            future = self._futures.pop(task_id, None)
            if future is None:
                self._results[task_id] = packed
        if future is not None:
            self._complete(future, packed)

    def _complete(self, future: Future[Any], packed: bytes) -> None:
        result = messagepack.unpack(packed)
        assert isinstance(result, Result)
        if result.is_error:
            future.set_exception(TaskExecutionFailed(result.data, "0"))
            return
        try:
            future.set_result(self._client.fx_serializer.deserialize(result.data))
        except Exception as exc:
            future.set_exception(exc)


class LocalCloud:
    """The service, for one endpoint whose engine runs in this process."""

    def __init__(self, engine: GlobusComputeEngineBase, endpoint_id: uuid.UUID) -> None:
        self.engine = engine
        self.endpoint_id = endpoint_id
        self.functions: dict[str, str] = {}  # function id -> packed code buffer
        self.registrations: list[dict[str, Any]] = []
        self.submissions: list[dict[str, Any]] = []  # the prepared body of each batch_run

    # -- function registration (also what an admin's SDK Client calls) --

    def _store(self, data: FunctionRegistrationData) -> str:
        body = data.to_dict()
        self.registrations.append(body)
        function_id = str(uuid.uuid4())
        if body["serialized"]:
            self.functions[function_id] = body["function_code"]
        else:  # source text: the service stores it as PureSourceTextInspect would
            code = (PureSourceTextInspect.identifier + body["function_name"] + ":"
                    + body["function_code"])
            self.functions[function_id] = ComputeSerializer.pack_buffers([code])
        return function_id

    def register_source_code(self, source: str, function_name: str,
                             description: str | None = None, public: bool = False,
                             group: str | None = None, **_: Any) -> str:
        return self._store(FunctionRegistrationData(
            function_code=source, function_name=function_name, description=description,
            metadata=FunctionRegistrationMetadata(python_version="3", sdk_version=sdk_version),
            public=public, group=group, serialized=False,
        ))

    def register_function(self, function: Any, serializer: ComputeSerializer | None = None,
                          **_: Any) -> str:
        return self._store(FunctionRegistrationData(function=function,
                                                    serializer=serializer))

    # -- task submission --

    def batch_run(self, endpoint_id: Any, body: dict[str, Any],
                  deliver: Callable[[str, bytes], None]) -> dict[str, Any]:
        self.submissions.append(body)
        if str(endpoint_id) != str(self.endpoint_id):
            raise ServiceError(404, f"no endpoint {endpoint_id}")
        tasks: dict[str, list[str]] = {}
        for function_id, payloads in body["tasks"].items():
            if function_id not in self.functions:
                raise ServiceError(404, f"Function {function_id} not found")
            for payload in payloads:
                if len(payload) > TASK_LIMIT:
                    raise ServiceError(413, "task payload too large")
                tasks.setdefault(function_id, []).append(
                    self._run(function_id, payload, body.get("result_serializers"), deliver))
        return {"tasks": tasks, "task_group_id": str(uuid.uuid4()),
                "request_id": str(uuid.uuid4()), "endpoint_id": str(self.endpoint_id)}

    def _run(self, function_id: str, payload: str, result_serializers: Any,
             deliver: Callable[[str, bytes], None]) -> str:
        task_id = uuid.uuid4()
        task = Task(task_id=task_id, task_buffer=self.functions[function_id] + payload)
        future = GCFuture(task_id)
        future.add_done_callback(lambda f: deliver(str(task_id), f.result()))
        self.engine.submit(future, messagepack.pack(task), resource_specification={},
                           result_serializers=result_serializers)
        return str(task_id)

    def task_payloads(self) -> list[str]:
        """Every task's submitted arguments, in order."""
        return [p for body in self.submissions for ps in body["tasks"].values() for p in ps]


class SdkClient:
    """The part of ``globus_compute_sdk.Client`` that the Executor calls, on the LocalCloud."""

    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud = cloud
        self.fx_serializer = ComputeSerializer()  # an Executor given a serializer sets its own
        self.stream = _ResultStream(self)

    def register_source_code(self, source: str, function_name: str, **kwargs: Any) -> str:
        return self.cloud.register_source_code(source, function_name, **kwargs)

    def register_function(self, function: Any, **kwargs: Any) -> str:
        return self.cloud.register_function(function, self.fx_serializer, **kwargs)

    def create_batch(self, task_group_id: Any = None, resource_specification: Any = None,
                     user_endpoint_config: Any = None, create_websocket_queue: bool = False,
                     result_serializers: list[str] | None = None) -> Batch:
        return Batch(task_group_id, resource_specification, user_endpoint_config,
                     create_websocket_queue, result_serializers=result_serializers,
                     serializer=self.fx_serializer, user_runtime=create_user_runtime())

    def batch_run(self, endpoint_id: Any, batch: Batch) -> dict[str, Any]:
        return self.cloud.batch_run(endpoint_id, batch.prepare(), self.stream.deliver)


class LocalExecutor(Executor):
    """The SDK's Executor, with its own SDK client on the LocalCloud, results streamed
    from there instead of AMQP."""

    def __init__(self, cloud: LocalCloud, **kwargs: Any) -> None:
        self.sdk_client = SdkClient(cloud)
        super().__init__(client=self.sdk_client, **kwargs)  # type: ignore[arg-type]

    def _get_result_watcher(self) -> Any:
        return self.sdk_client.stream
