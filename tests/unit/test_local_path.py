"""The same-node fast path's pieces, with real memfds and a real AF_UNIX socket."""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from dlhub_hpc.errors import LocalPathRefused, ProtocolError
from dlhub_hpc.localpath import wire
from dlhub_hpc.localpath.caller import large_array_in
from dlhub_hpc.localpath.exchange import FdExchange
from dlhub_hpc.localpath.link import LocalLink, open_link
from dlhub_hpc.localpath.memfd import Memfd, check_sealed, map_array, seal_array, whole_memfd
from dlhub_hpc.protocol import (
    Assign,
    Batch,
    BatchResult,
    Bye,
    Heartbeat,
    Hello,
    LocalOffer,
    Ready,
    Request,
    decode,
    encode,
)
from dlhub_hpc.servable.spec import ServableSpec
from dlhub_hpc.worker import Worker, WorkerOptions
from dlhub_hpc.worker.runner import Runner, WireResult
from tests.unit.test_worker_drain import SPEC, FakeHub

MIB = 2**20


@pytest.fixture
def exchange() -> Iterator[FdExchange]:
    ex = FdExchange()
    ex.start()
    yield ex
    ex.close()


def _link(exchange: FdExchange, principal: str) -> LocalLink:
    token, proof = exchange.offer(principal)
    return LocalLink.connect({"socket": exchange.name, "token": token, "proof": proof,
                              "min_bytes": MIB})


def test_a_sealed_memfd_maps_back_read_only_and_bit_exact() -> None:
    x = np.random.default_rng(0).standard_normal((300, 7)).astype(">f4")
    memfd = seal_array(x)
    assert check_sealed(memfd.fd) == x.nbytes
    y = map_array(memfd, x.dtype, x.shape)
    assert y.tobytes() == x.tobytes() and y.dtype == x.dtype and not y.flags.writeable
    with pytest.raises(ValueError):
        y[0, 0] = 1.0
    with pytest.raises(OSError):  # sealed: not even its writer can change it
        os.pwrite(memfd.fd, b"x", 0)
    assert whole_memfd(y) is memfd and whole_memfd(y.reshape(-1)) is memfd
    assert whole_memfd(y[1:]) is None and whole_memfd(y + 0) is None and whole_memfd(x) is None


def test_a_memfd_of_the_wrong_size_or_unsealed_or_a_file_is_refused(tmp_path) -> None:
    memfd = seal_array(np.zeros(10))
    with pytest.raises(LocalPathRefused, match="80 bytes"):
        map_array(memfd, np.dtype(np.float64), (11,))
    open_fd = os.memfd_create("open", os.MFD_ALLOW_SEALING)
    os.ftruncate(open_fd, 64)
    with pytest.raises(LocalPathRefused, match="not sealed"):
        check_sealed(open_fd)
    fcntl.fcntl(open_fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
    with pytest.raises(LocalPathRefused, match="not sealed"):  # still writable
        check_sealed(open_fd)
    os.close(open_fd)
    with open(tmp_path / "f", "wb+") as f, pytest.raises(LocalPathRefused, match="not a memfd"):
        check_sealed(f.fileno())


def test_arrays_travel_as_tickets_through_the_protocol_hooks() -> None:
    held: dict[str, Memfd] = {}

    def share(arr: np.ndarray) -> str:
        held[f"t{len(held)}"] = seal_array(arr)
        return f"t{len(held) - 1}"

    x = np.arange(MIB // 8, dtype=np.float64)
    frames = encode(Batch(1, "run", [x, x[:10], {"k": x}]), share)
    assert len(frames) == 1 and len(frames[0]) < 1024  # the arrays are not in the message
    msg = decode(frames, fetch=lambda t, dt, shape: map_array(held.pop(t), dt, shape))
    assert isinstance(msg, Batch)
    assert np.array_equal(msg.payloads[0], x) and np.array_equal(msg.payloads[2]["k"], x)
    assert np.array_equal(msg.payloads[1], x[:10])  # small: inline, as always
    with pytest.raises(ProtocolError, match="local path is not open"):
        decode(encode(Request("r", "a/b", None, "", x), share))


def test_a_ticket_goes_only_to_its_identity_and_only_once(exchange: FdExchange) -> None:
    alice, bob = _link(exchange, "caller:alice"), _link(exchange, "caller:bob")
    x = np.arange(MIB // 4, dtype=np.float32)
    ticket = alice.share(x)
    assert ticket is not None
    with pytest.raises(LocalPathRefused):  # bob's message cannot name alice's array
        exchange.take(ticket, "caller:bob")
    with pytest.raises(LocalPathRefused):  # and the attempt spent it
        exchange.take(ticket, "caller:alice")
    ticket = alice.share(x)
    assert ticket is not None
    memfd = exchange.take(ticket, "caller:alice")
    with pytest.raises(LocalPathRefused):  # replayed
        exchange.take(ticket, "caller:alice")
    out = exchange.issue(memfd, "caller:alice")
    with pytest.raises(LocalPathRefused, match="another caller's"):
        bob.get(out)
    with pytest.raises(LocalPathRefused):  # spent by bob's try
        alice.get(out)
    out = exchange.issue(memfd, "caller:alice")
    assert np.array_equal(alice.fetch(out, x.dtype, x.shape), x)
    assert exchange.held() == 0
    alice.close()
    bob.close()


def test_a_connection_without_a_valid_token_gets_nothing(exchange: FdExchange) -> None:
    memfd = seal_array(np.ones(MIB // 8))
    ticket = exchange.issue(memfd, "caller:alice")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(exchange.name)
    wire.send(sock, ["get", ticket])  # knowing the ticket is not enough
    got = wire.receive(sock)
    assert got is not None and got[0][0] == "error" and got[1] is None
    wire.send(sock, ["register", "0" * 32])
    got = wire.receive(sock)
    assert got is not None and got[0][0] == "error"
    token, proof = exchange.offer("caller:alice")
    wire.send(sock, ["register", token])
    assert wire.receive(sock) == (["ok", proof], None)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    second.connect(exchange.name)
    wire.send(second, ["register", token])  # a token registers one connection only
    got = wire.receive(second)
    assert got is not None and got[0][0] == "error"
    unsealed = os.memfd_create("open")
    os.ftruncate(unsealed, 8)
    wire.send(sock, ["put"], unsealed)
    got = wire.receive(sock)
    assert got is not None and got[0][0] == "error" and "memfd" in got[0][1]
    for s in (sock, second):
        s.close()
    os.close(unsealed)


def test_a_socket_that_does_not_prove_it_is_the_hubs_is_not_used(
        exchange: FdExchange) -> None:
    token, _ = exchange.offer("caller:alice")
    with pytest.raises(LocalPathRefused, match="did not prove"):
        LocalLink.connect({"socket": exchange.name, "token": token, "proof": "f" * 32})
    offer = {"socket": exchange.name, "token": token, "proof": "x", "boot_id": "another"}
    assert open_link(offer) is None  # another node: the normal path
    assert open_link(None) is None
    assert open_link({**offer, "boot_id": wire.boot_id(), "socket": "\0nobody-here"}) is None


def test_an_offer_reaches_a_worker_as_a_message() -> None:
    offer = {"socket": "\0x", "token": "t", "proof": "p", "boot_id": "b", "min_bytes": MIB}
    assert decode(encode(LocalOffer(offer))) == LocalOffer(offer)


def test_what_counts_as_a_large_input() -> None:
    big = np.zeros(MIB // 8)
    assert large_array_in(big, MIB) and large_array_in([big], MIB)
    assert large_array_in({"a": big}, MIB)
    assert not large_array_in(big[:-1], MIB) and not large_array_in([[big]], MIB)
    assert not large_array_in("text", MIB)


def test_an_issued_array_outlives_every_other_reference_until_it_is_taken(
        exchange: FdExchange) -> None:
    link = _link(exchange, "caller:alice")
    x = np.arange(MIB // 8, dtype=np.float64)
    ticket = exchange.issue(seal_array(x), "caller:alice")  # the ticket holds the only one
    assert np.array_equal(link.fetch(ticket, x.dtype, x.shape), x)
    link.close()


class EchoRunner(Runner):
    def load(self, assign: Assign) -> ServableSpec:
        return SPEC

    def run(self, method: str, payloads: list[Any],
            parameters: list[Any] | None = None) -> list[WireResult]:
        return [[True, p] for p in payloads]


def _result(hub: FakeHub, fetch: Any, timeout: float = 10.0) -> BatchResult:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hub.sock.poll(100):
            _, *frames = hub.sock.recv_multipart()
            msg = decode(frames, fetch=fetch)
            if isinstance(msg, BatchResult):
                return msg
            assert isinstance(msg, Heartbeat), msg
    raise AssertionError("no BatchResult")


def test_a_linked_worker_echoes_the_same_memfd_and_answers_a_dead_ticket_at_once(
        exchange: FdExchange) -> None:
    hub = FakeHub()
    worker = Worker(WorkerOptions(hub=hub.address, servable="demo/add",
                                  heartbeat_interval=0.1), EchoRunner())
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        identity, _ = hub.expect(Hello)
        token, proof = exchange.offer("worker:w")
        hub.send(identity, LocalOffer({"socket": exchange.name, "token": token,
                                       "proof": proof, "boot_id": wire.boot_id(),
                                       "min_bytes": MIB}))
        hub.send(identity, Assign("demo/add", 1, "d" * 64, {}, b""))
        hub.expect(Ready)
        assert exchange.linked("worker:w")  # it linked before it said Ready
        x = np.arange(MIB // 8, dtype=np.float64)
        sent = seal_array(x)
        ticket = exchange.issue(sent, "worker:w")
        hub.sock.send_multipart([identity, *encode(Batch(1, "run", [x]), lambda a: ticket)])
        taken: list[Memfd] = []

        def fetch(t: str, dt: np.dtype[Any], shape: tuple[int, ...]) -> Any:
            taken.append(exchange.take(t, "worker:w"))
            return map_array(taken[-1], dt, shape)

        result = _result(hub, fetch)
        assert result.results[0][0] is True and np.array_equal(result.results[0][1], x)
        assert os.path.samestat(os.fstat(taken[0].fd), os.fstat(sent.fd))  # no copy made
        hub.sock.send_multipart([identity, *encode(Batch(2, "run", [x]), lambda a: "0" * 32)])
        refused = _result(hub, fetch)
        assert refused.batch_id == 2 and refused.results[0][1]["type"] == "LocalPathRefused"
        assert thread.is_alive()
        worker.request_stop("test over")
        hub.expect(Bye)
    finally:
        worker.request_stop("test over")
        thread.join(5)
        hub.close()


def test_arrays_past_what_the_hub_holds_go_in_their_message_instead() -> None:
    """Many in flight: the hub holds at most ``max_held`` of one caller's arrays until their
    messages come; the next goes inline (through CurveZMQ) rather than failing its call."""
    ex = FdExchange(max_held=2)
    ex.start()
    try:
        link = _link(ex, "caller:alice")
        xs = [np.full(MIB // 4, float(i), dtype=np.float32) for i in range(3)]
        tickets = [link.share(x) for x in xs]
        assert tickets[0] is not None and tickets[1] is not None and tickets[2] is None
        msg = decode(encode(Request("r", "a/b", None, "", xs[2]), link.share))
        assert np.array_equal(msg.payload, xs[2])  # the third went in the message whole
        ex.take(tickets[0], "caller:alice")  # a message came: there is room again
        assert link.share(xs[2]) is not None
    finally:
        ex.close()


def test_after_the_hubs_end_goes_away_arrays_ride_in_their_messages() -> None:
    """A restarted hub leaves a client's link dead while its ZeroMQ socket reconnects:
    large inputs then go in their messages, not fail their calls."""
    ex = FdExchange()
    ex.start()
    link = _link(ex, "caller:alice")
    x = np.arange(MIB // 4, dtype=np.float32)
    assert link.share(x) is not None
    ex.close()
    assert link.share(x) is None and link.gone
    msg = decode(encode(Request("r", "a/b", None, "", x), link.share))
    assert np.array_equal(msg.payload, x)
    link.close()
