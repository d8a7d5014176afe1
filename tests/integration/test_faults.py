"""Faults: killed workers, malformed frames, deadlines, full queues."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
import zmq

from dlhub_hpc import Client, Hub, Overloaded, Timeout, WorkerLost

from .conftest import SERVABLES, curve_dealer, wait_for


def _busy_worker_pid(client: Client) -> int:
    busy = wait_for(lambda: [w for w in client.status()["workers"] if w["state"] == "busy"],
                    timeout=10, interval=0.02, what="a worker picked up the request")
    return int(busy[0]["pid"])


def test_killed_worker_request_is_retried_on_another(
    client: Client, serve: Callable[..., str]
) -> None:
    serve(SERVABLES / "sleepy", n=2)
    future = client.submit("test/sleepy", 1.0)
    victim = _busy_worker_pid(client)
    os.kill(victim, signal.SIGKILL)
    result = future.result(timeout=20)
    assert result["slept"] == 1.0
    assert result["pid"] != victim, "the retry ran on the other worker"
    stats = client.status()["stats"]
    assert stats["retries"] == 1
    assert stats["workers_lost"] == 1


def test_killed_only_worker_gives_worker_lost(client: Client, serve: Callable[..., str]) -> None:
    serve(SERVABLES / "sleepy", n=1)
    future = client.submit("test/sleepy", 5.0)
    os.kill(_busy_worker_pid(client), signal.SIGKILL)
    with pytest.raises(WorkerLost, match=r"test/sleepy@1\.run died .* no other worker serves it"):
        future.result(timeout=20)


def test_malformed_frames_are_dropped_and_counted(
    hub: Hub, client: Client, serve: Callable[..., str]
) -> None:
    serve(SERVABLES / "flaky")
    ctx = zmq.Context.instance()
    for address in (hub.client_address, hub.worker_address):
        sock = curve_dealer(ctx, address)
        sock.send_multipart([b"\xc1 not msgpack"])
        sock.send_multipart([b"\x93\x63\x01\xc0"])  # [99, 1, nil]: wrong protocol version
        sock.send(b"")
        sock.close(linger=10_000)  # the frames still go out, after the handshake
    wait_for(lambda: client.status()["stats"].get("malformed_frames", 0) >= 6,
             what="the six bad frames reached the hub")
    assert client.status()["stats"]["malformed_frames"] == 6
    assert client.run("test/flaky", 4) == 8


def test_a_client_posing_as_the_pipeline_runner_is_dropped(
    hub: Hub, client: Client, serve: Callable[..., str]
) -> None:
    """A peer may pick its own routing id; the pipeline runner's must stay the hub's."""
    from dlhub_hpc.broker.pipeline import PIPELINE_IDENTITY
    from dlhub_hpc.protocol import Request, encode
    from dlhub_hpc.security.keys import curve_client, hub_public_key, user_keypair

    serve(SERVABLES / "flaky")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, PIPELINE_IDENTITY)
    server = hub_public_key(hub.client_address)
    if server is not None:
        curve_client(sock, server, user_keypair())
    sock.connect(hub.client_address)
    before = client.status()["stats"].get("malformed_frames", 0)
    sock.send_multipart(encode(Request("p1/1.0", "test/flaky", None, "run", 2)))
    wait_for(lambda: client.status()["stats"].get("malformed_frames", 0) > before,
             what="the hub dropped the forged step")
    assert client.status()["stats"]["malformed_frames"] == before + 1
    assert client.run("test/flaky", 4) == 8  # served after the forged step was handled
    assert not sock.poll(0), "the hub answered a forged pipeline step"
    sock.close(linger=0)

def test_deadline_gives_timeout(client: Client, serve: Callable[..., str]) -> None:
    serve(SERVABLES / "sleepy")
    with pytest.raises(Timeout, match=r"test/sleepy@1\.run did not answer in time"):
        client.run("test/sleepy", 3.0, timeout=0.3)
    assert client.run("test/sleepy", 0.0)["slept"] == 0.0


def test_request_with_no_worker_times_out_with_a_hint(client: Client) -> None:
    client.publish(SERVABLES / "flaky")
    with pytest.raises(Timeout, match="no worker serves test/flaky@1; start one with"):
        client.run("test/flaky", 1, timeout=0.3)


def test_full_queue_is_overloaded_at_once(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(max_queue_length=2)
    with Client(hub.client_address) as client:
        client.publish(SERVABLES / "flaky")
        queued = [client.submit("test/flaky", i, timeout=60) for i in range(2)]
        wait_for(lambda: client.status()["servables"].get("test/flaky@1", {}).get("queued")
                 == 2, timeout=10, interval=0.02, what="the two requests reach the queue")
        # Refused by the hub at once: waiting would end in Timeout, after 60 s, not this.
        with pytest.raises(Overloaded, match="2 requests queued"):
            client.run("test/flaky", 3, timeout=60)
        stats = client.status()["stats"]
        assert stats["overloaded"] == 1 and stats.get("timeouts", 0) == 0, stats
        assert not any(f.done() for f in queued)
