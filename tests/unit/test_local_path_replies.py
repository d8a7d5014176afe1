"""Which replies the hub sends by the same-node path: those to requests whose arrays came
by it, and those to a client that said (on its own channel) that it holds a link."""

from __future__ import annotations

import pytest

from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.localpath.hubside import HubLocalPath
from dlhub_hpc.localpath.link import LocalLink
from dlhub_hpc.localpath.memfd import available
from dlhub_hpc.protocol import Reply, Request

pytestmark = pytest.mark.skipif(not available(), reason="this system has no sealed memfds")


def request(rid: str) -> Request:
    return Request(rid, "test/maker", None, "", {"n": 3})


def test_a_client_without_a_registered_link_cannot_ask_for_replies_by_the_path() -> None:
    fast = HubLocalPath(True, 2**20)
    with pytest.raises(DlhubHpcError, match="no local-path link"):
        fast.caller_offer({"caller": "alice", "linked": "abc123"})
    fast.from_linked_client(b"c1", "alice", request("abc123-1"))
    assert fast.reply_share(b"c1", Reply("abc123-1", True, None, None)) is None


def test_only_the_linked_clients_own_requests_are_answered_by_the_path() -> None:
    fast = HubLocalPath(True, 2**20)
    fast.start()
    link = LocalLink.connect(fast.caller_offer({"caller": "alice"}))
    try:
        assert fast.caller_offer({"caller": "alice", "linked": "abc123"}) == {"replies": True}
    finally:
        link.close()
        fast.close()
    for caller, user, rid in ((b"c1", "alice", "abc123-1"), (b"c2", "alice", "zzz-1"),
                              (b"c3", "bob", "abc123-2")):
        fast.from_linked_client(caller, user, request(rid))
    assert fast.reply_share(b"c1", Reply("abc123-1", True, None, None)) is not None
    assert fast.reply_share(b"c2", Reply("zzz-1", True, None, None)) is None  # another client
    assert fast.reply_share(b"c3", Reply("abc123-2", True, None, None)) is None  # bob's
