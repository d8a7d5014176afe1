"""A servable none of whose workers could load it: callers get the load's own error at once."""

from __future__ import annotations

from dlhub_hpc.broker.load_failures import load_error
from dlhub_hpc.errors import (
    BundleDigestMismatch,
    PermissionDenied,
    ServableLoadError,
    Timeout,
    error_from_wire,
)
from dlhub_hpc.protocol import LoadFailed, Ready

from .test_broker_state import ADD, Catalog, Hub, error_of, replies

CORRUPT = BundleDigestMismatch("bundle /reg/x.tar hashes to sha256 aaa, not the recorded bbb",
                               expected="bbb", actual="aaa")


def test_queued_requests_fail_with_the_loads_own_type_when_the_hub_cannot_send_it() -> None:
    hub = Hub(Catalog(ADD))
    hub.request("r1", timeout=40)
    hub.hello("w1")
    # What the hub's shell does when the stored bundle no longer matches its digest.
    got = replies(hub.state.assign_failed(b"w1", CORRUPT, hub.now))
    error = error_of(got["r1"])
    # Was: ServableLoadError here, and (through the shell, which only told the worker to
    # exit) nothing at all until the request's deadline: a 40 s Timeout.
    assert isinstance(error, BundleDigestMismatch)
    assert "demo/add@1 could not be loaded" in error.message and "not the recorded" in error.message
    assert error.details["expected"] == "bbb" and error.details["servable"] == "demo/add"
    assert hub.state.snapshot()["workers"] == []


def test_a_request_after_the_failure_is_answered_at_once_not_at_its_deadline() -> None:
    hub = Hub(Catalog(ADD))
    hub.hello("w1")
    hub.send("w1", LoadFailed("w1", CORRUPT.to_wire()))
    got = replies(hub.request("late", timeout=40))
    assert isinstance(error_of(got["late"]), BundleDigestMismatch)
    assert "late" not in replies(hub.tick(41.0))  # answered once, not again at its deadline


def test_a_new_worker_makes_requests_wait_for_it_again() -> None:
    hub = Hub(Catalog(ADD))
    hub.hello("w1")
    hub.send("w1", LoadFailed("w1", CORRUPT.to_wire()))
    hub.hello("w2")  # e.g. a pilot's replacement, after the bundle was published again
    assert replies(hub.request("r1", timeout=5)) == {}
    hub.send("w2", Ready("w2"))
    got = replies(hub.tick(6.0))
    assert isinstance(error_of(got["r1"]), Timeout)


def test_publishing_again_forgets_the_failure() -> None:
    hub = Hub(Catalog(ADD))
    hub.hello("w1")
    hub.send("w1", LoadFailed("w1", CORRUPT.to_wire()))
    hub.state.invalidate("demo/add")
    assert replies(hub.request("r1", timeout=5)) == {}


def test_requests_wait_while_another_worker_still_loads() -> None:
    hub = Hub(Catalog(ADD))
    hub.request("r1")
    hub.hello("w1")
    hub.hello("w2")
    assert replies(hub.send("w1", LoadFailed("w1", CORRUPT.to_wire()))) == {}
    assert replies(hub.request("r2")) == {}


def test_a_worker_cannot_name_a_non_servable_error_type() -> None:
    record = PermissionDenied("you are not admin").to_wire()
    error = error_from_wire(load_error("demo/add", 1, record))
    assert type(error) is ServableLoadError and "you are not admin" in error.message
    odd = error_from_wire(load_error("demo/add", 1, {"type": 3, "details": "x"}))
    assert type(odd) is ServableLoadError and odd.details["version"] == 1
