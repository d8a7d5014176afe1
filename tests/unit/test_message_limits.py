"""Size limits: a client refuses an oversized request before sending, the hub learns the
limit from its config, a worker turns an oversized output into an item error, and the
hub reads a request id without decoding the payload."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub_hpc import Client, HubConfig, PayloadTooLarge
from dlhub_hpc.broker.config import DEFAULT_MAX_MESSAGE_BYTES, STATE_FILE
from dlhub_hpc.broker.lane import LargeLane, message_size
from dlhub_hpc.protocol import (
    Assign,
    Batch,
    BatchResult,
    Bye,
    Hello,
    Ready,
    Request,
    Tag,
    encode,
    peek,
)
from dlhub_hpc.servable.spec import ServableSpec
from dlhub_hpc.worker import Worker, WorkerOptions
from dlhub_hpc.worker.runner import Runner, WireResult
from tests.unit.test_worker_drain import SPEC, FakeHub

# Nothing listens here: a request that got as far as sending would wait, not fail at once.
NOWHERE = "tcp://127.0.0.1:9"


def test_a_request_over_the_clients_limit_fails_before_it_is_sent() -> None:
    with Client(NOWHERE, timeout=None, max_message_bytes=4096) as client:
        with pytest.raises(PayloadTooLarge) as info:
            client.run("demo/add", [1.0] * 1000)
        assert info.value.details["limit"] == 4096
        assert info.value.details["size"] > 4096
        assert info.value.details["setting"] == "HubConfig.max_message_bytes"
        assert "4096" in info.value.message
        with pytest.raises(PayloadTooLarge):
            client.submit("demo/add", np.zeros(1000))  # an array frame counts too
        with pytest.raises(PayloadTooLarge):
            client.control("publish", bundle=b"x" * 5000)


def test_a_client_takes_the_limit_its_hub_recorded(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / STATE_FILE).write_text(
        '{"client_address": "tcp://127.0.0.1:5555", "max_message_bytes": 8192}')
    monkeypatch.setenv("DLHUB_HPC_HOME", str(tmp_path))
    assert Client("tcp://127.0.0.1:5555").max_message_bytes == 8192
    assert Client("tcp://127.0.0.1:5556").max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert Client("tcp://127.0.0.1:5555", max_message_bytes=100).max_message_bytes == 100


def test_hub_limits_are_settings_with_sane_bounds() -> None:
    config = HubConfig(max_message_bytes=2**20, client_send_hwm=10)
    assert config.max_message_bytes == 2**20
    assert "max_message_bytes=1048576" in repr(config)
    with pytest.raises(ValueError, match="max_message_bytes"):
        HubConfig(max_message_bytes=10)
    with pytest.raises(ValueError, match="client_send_hwm"):
        HubConfig(client_send_hwm=0)


def test_a_request_id_is_read_without_the_payload() -> None:
    frames = encode(Request("r-42", "demo/add", None, "", [1.0] * 100_000))
    assert peek(frames) == (Tag.REQUEST, "r-42")
    assert peek([b"\xc1garbage"]) is None
    assert message_size([b"identity", *frames]) == len(frames[0])


def test_the_lane_always_takes_one_message_and_more_only_within_its_budget() -> None:
    lane = LargeLane(lambda: None, backlog_bytes=100)
    assert lane.has_room(1000)  # one message of any (allowed) size
    lane.reserve(1000)
    assert not lane.has_room(1)
    lane.release(1000)
    assert lane.has_room(60)


def test_lane_work_comes_back_on_the_thread_that_runs_the_finished_queue() -> None:
    woken = threading.Event()
    lane = LargeLane(woken.set, backlog_bytes=100)
    seen: list[Any] = []
    lane.submit(lambda: threading.current_thread().name, seen.append)
    lane.submit(lambda: 1 // 0, seen.append)
    assert woken.wait(10)
    while len(seen) < 2:
        woken.wait(10)
        woken.clear()
        lane.run_finished()
    lane.close()
    assert seen[0].startswith("hub-large-messages")
    assert isinstance(seen[1], ZeroDivisionError)


class BigOutputRunner(Runner):
    """Returns an output of ``len(x)`` bytes for each payload ``x``."""

    def load(self, assign: Assign) -> ServableSpec:
        return SPEC

    def run(self, method: str, payloads: list[Any],
            parameters: list[Any] | None = None) -> list[WireResult]:
        return [[True, b"y" * len(p)] for p in payloads]


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    yield hub
    hub.close()


def test_an_output_too_large_to_send_becomes_an_item_error(fake_hub: FakeHub) -> None:
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", heartbeat_interval=0.1,
                         max_message_bytes=64 * 1024)
    worker = Worker(opts, BigOutputRunner())
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    identity, _ = fake_hub.expect(Hello)
    fake_hub.send(identity, Assign("demo/add", 1, "d" * 64, {}, b""))
    fake_hub.expect(Ready)
    fake_hub.send(identity, Batch(1, "run", ["a" * 10, "b" * 200_000, "c" * 20]))
    _, result = fake_hub.expect(BatchResult)
    assert result.results[0] == [True, b"y" * 10]
    assert result.results[2] == [True, b"y" * 20]
    ok, error = result.results[1]
    assert not ok and error["type"] == "PayloadTooLarge"
    assert error["details"]["limit"] == 64 * 1024
    assert error["details"]["setting"] == "HubConfig.worker_max_message_bytes"
    assert thread.is_alive()
    worker.request_stop("test over")
    fake_hub.expect(Bye)
    thread.join(5)
