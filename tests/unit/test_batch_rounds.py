"""Batches formed per read of a caller socket (``begin_round``/``end_round``), and the
shell's reply sends."""

from __future__ import annotations

import pytest
import zmq

from dlhub_hpc.broker.server import _send_frames
from dlhub_hpc.broker.state import ServableInfo
from tests.unit.test_broker_state import FLOATS, Catalog, Hub, batches, only_batch

EAGER = ServableInfo("demo/eager", 1, "digest-eager", {"run": FLOATS}, max_batch_size=3)


@pytest.fixture
def hub() -> Hub:
    hub = Hub(Catalog(EAGER), heartbeat_interval=50.0, heartbeat_timeout=100.0)
    hub.tick(0.0)
    for wid in ("w1", "w2"):
        assert hub.start(wid, "demo/eager") == []
    hub.now = 1.0
    return hub


def test_requests_read_together_go_to_a_free_worker_as_one_batch(hub: Hub) -> None:
    hub.state.begin_round()
    for i in range(2):
        assert hub.request(f"r{i}", [float(i)], servable="demo/eager") == []
    identity, batch = only_batch(hub.state.end_round(hub.now))
    assert identity == b"w1" and batch.payloads == [[0.0], [1.0]]
    hub.state.validate()


def test_a_full_batch_goes_at_once_within_a_round(hub: Hub) -> None:
    hub.state.begin_round()
    assert hub.request("r0", [0.0], servable="demo/eager") == []
    assert hub.request("r1", [1.0], servable="demo/eager") == []
    identity, batch = only_batch(hub.request("r2", [2.0], servable="demo/eager"))
    assert identity == b"w1" and len(batch.payloads) == 3  # max_batch_size
    assert hub.request("r3", [3.0], servable="demo/eager") == []
    identity, batch = only_batch(hub.state.end_round(hub.now))
    assert identity == b"w2" and batch.payloads == [[3.0]]


def test_a_lone_request_in_a_round_waits_for_nothing_more(hub: Hub) -> None:
    hub.state.begin_round()
    assert hub.request("r0", [0.0], servable="demo/eager") == []
    assert only_batch(hub.state.end_round(hub.now))[0] == b"w1"
    assert hub.state.next_wakeup(hub.now) == pytest.approx(49.0)  # nothing held
    hub.state.begin_round()
    assert hub.state.end_round(hub.now) == []  # an empty read dispatches nothing


def test_outside_a_round_each_request_is_dispatched_as_it_comes(hub: Hub) -> None:
    assert only_batch(hub.request("r0", [0.0], servable="demo/eager"))[0] == b"w1"
    assert batches(hub.request("r1", [1.0], servable="demo/eager"))[0][0] == b"w2"


@pytest.mark.parametrize("frames", [[b"header"], [b"h" * 70_000], [b"header", b"array"]])
def test_send_frames_delivers_every_frame_after_the_identity(frames: list[bytes]) -> None:
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.bind("inproc://send-frames")
        dealer.setsockopt(zmq.ROUTING_ID, b"peer")
        dealer.connect("inproc://send-frames")
        dealer.send(b"hello")
        assert router.recv_multipart() == [b"peer", b"hello"]
        _send_frames(router, b"peer", frames, 0)
        assert dealer.recv_multipart() == frames
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


def test_send_frames_to_an_unknown_peer_refuses_the_whole_message() -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    try:
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.bind("inproc://send-frames-mandatory")
        with pytest.raises(zmq.ZMQError) as caught:
            _send_frames(router, b"nobody", [b"header"], zmq.NOBLOCK)
        assert caught.value.errno == zmq.EHOSTUNREACH
        # Nothing half-sent is left: the next message to a real peer arrives whole.
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.ROUTING_ID, b"peer")
        dealer.connect("inproc://send-frames-mandatory")
        dealer.send(b"hello")
        router.recv_multipart()
        _send_frames(router, b"peer", [b"header"], 0)
        assert dealer.recv_multipart() == [b"header"]
        dealer.close(0)
    finally:
        router.close(0)
        ctx.term()
