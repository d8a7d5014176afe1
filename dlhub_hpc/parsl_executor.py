"""Servables as Parsl apps: ``DLHubExecutor`` and ``servable_app``.

A workflow adds a ``DLHubExecutor`` to its Parsl ``Config`` next to its other executors and
turns servables into apps::

    config = Config(executors=[HighThroughputExecutor(label="htex", ...),
                               DLHubExecutor(label="dlhub")])
    parsl.load(config)
    predict = servable_app("alice/oqmd")           # runs on the "dlhub" executor
    best = select(predict(featurize(x)))           # chains like any other app

Parsl resolves the app's input futures, then the executor sends one request to the hub and
hands Parsl the client's future: no thread, process or worker slot per call. The hub
batches requests that arrive together, so many concurrent apps make full batches. Errors
are the hub's typed errors (``ServableNotFound``, ``InvalidInput``, ``ExecutionError``...),
raised by the app's future.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import re
from concurrent.futures import Future
from typing import Any

from parsl.app.python import PythonApp
from parsl.executors.base import ParslExecutor
from parsl.monitoring.radios.multiprocessing import MultiprocessingQueueRadio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlhub_hpc.client import USE_CLIENT_DEFAULT, Client, UseClientDefault
from dlhub_hpc.errors import ConfigError, DlhubHpcError, InvalidInput
from dlhub_hpc.servable.spec import parse_ref

logger = logging.getLogger(__name__)

# keyword arguments Parsl itself may add to a task; a servable call takes none of them
_MONITORING_KWARGS = ("_parsl_monitoring_task_id", "_parsl_monitoring_try_id")


class ServableCall:
    """The function of a servable app: what ``DLHubExecutor`` sends to the hub.

    Called directly (say, on another executor by mistake) it still works, through a
    ``Client`` of its own.
    """

    def __init__(self, servable: str, method: str = "",
                 timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
                 cache: bool = True, parameters: dict[str, Any] | None = None) -> None:
        parse_ref(servable)  # a bad reference fails where the app is made
        self.servable = servable
        self.method = method
        self.timeout = timeout
        self.cache = cache
        self.parameters = parameters
        self.__name__ = re.sub(r"\W", "_", servable)
        self.__qualname__ = self.__name__
        self.__doc__ = f"Run servable {servable} on one input."

    def __repr__(self) -> str:
        return (f"ServableCall({self.servable!r}, method={self.method!r}, "
                f"timeout={self.timeout!r}, cache={self.cache!r}, "
                f"parameters={self.parameters!r})")

    def __call__(self, data: Any) -> Any:
        with Client() as client:
            return client.run(self.servable, data, method=self.method, timeout=self.timeout,
                              cache=self.cache, parameters=self.parameters)


def servable_app(
    servable: str,
    *,
    method: str = "",
    executor: str = "dlhub",
    timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    cache: bool = True,
    parameters: dict[str, Any] | None = None,
    data_flow_kernel: Any = None,
) -> PythonApp:
    """A Parsl app that runs ``servable`` (``owner/name[@version]``) on its one argument.

    ``executor`` is the label of the ``DLHubExecutor`` in the loaded Config; ``timeout``
    (seconds, default: the executor's) is the hub's deadline per call, and a ``walltime=``
    given to one call overrides it; ``cache=False`` skips the hub's memo cache;
    ``parameters`` override the method's default parameters (``parameters=`` given to
    one call overrides them).
    """
    call = ServableCall(servable, method, timeout, cache, parameters)
    return PythonApp(call, data_flow_kernel=data_flow_kernel, executors=[executor])


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1)
    address: str | None = Field(default=None, pattern=r"^(tcp|ipc|inproc)://")
    timeout: float | None = Field(default=60.0, gt=0)


class DLHubExecutor(ParslExecutor):
    """A Parsl executor whose tasks are servable calls made by :func:`servable_app`.

    ``address`` is the hub's client address (default: ``$DLHUB_HPC_HUB``, else the running
    hub's); ``timeout`` the default deadline per call in seconds. The client is made in
    ``start()``, when Parsl loads the Config.
    """

    def __init__(self, label: str = "dlhub", address: str | None = None,
                 timeout: float | None = 60.0) -> None:
        try:
            settings = _Settings(label=label, address=address, timeout=timeout)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid DLHubExecutor settings: {problems}") from None
        super().__init__()
        self.label = settings.label
        self.address = settings.address
        self.timeout = settings.timeout
        # Parsl's monitoring needs a radio from every executor; these tasks never use it.
        self.remote_monitoring_radio = MultiprocessingQueueRadio()
        self._client: Client | None = None
        self._task_ids = itertools.count(1)

    def __repr__(self) -> str:
        return (f"DLHubExecutor(label={self.label!r}, address={self.address!r}, "
                f"timeout={self.timeout!r})")

    @property
    def client(self) -> Client:
        if self._client is None:
            raise ConfigError(f"{self!r} is not started; load it in a Parsl Config first")
        return self._client

    def start(self) -> None:
        self._client = Client(self.address, timeout=self.timeout)
        logger.info("%r sends to the hub at %s", self, self._client.address)

    def monitor_resources(self) -> bool:
        return False  # no process of its own per task to watch

    def submit(self, func: Any, resource_specification: dict[str, Any], *args: Any,
               **kwargs: Any) -> Future[Any]:
        """Send one servable call to the hub; the future is the client's own."""
        try:
            future = self._send(func, resource_specification, args, kwargs)
        except DlhubHpcError as exc:
            future = Future()
            future.set_exception(exc)
        future.parsl_executor_task_id = next(self._task_ids)  # type: ignore[attr-defined]
        return future

    def _send(self, func: Any, resource_specification: dict[str, Any],
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        call = inspect.unwrap(func)  # Parsl wraps the app's function (errors, monitoring)
        if not isinstance(call, ServableCall):
            name = getattr(call, "__name__", repr(call))
            raise ConfigError(
                f"{self.label!r} is a DLHubExecutor: it runs only apps made with "
                f"servable_app, not {name}; give that app another executor "
                "(executors=[...] on its decorator)"
            )
        if resource_specification:
            raise ConfigError("servable apps take no parsl_resource_specification; the "
                              "hub places calls on its warm workers")
        for key in _MONITORING_KWARGS:
            kwargs.pop(key, None)
        timeout = kwargs.pop("walltime", call.timeout)
        parameters = kwargs.pop("parameters", call.parameters)
        if len(args) != 1 or kwargs:
            raise InvalidInput(
                f"a servable app takes exactly one positional input; got {len(args)} "
                f"positional and keyword arguments {sorted(kwargs)}",
                servable=call.servable,
            )
        return self.client.submit(call.servable, args[0], method=call.method, timeout=timeout,
                                  cache=call.cache, parameters=parameters)

    def shutdown(self) -> None:
        if self._client is not None:
            self._client.close()
        super().shutdown()
