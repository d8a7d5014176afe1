"""``CallerPath``: when a client's inputs open the same-node link, and when they take it
(the two questions ``AsyncClient`` asks apart, so that a sync ``submit`` never opens)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import pytest

from dlhub_hpc.errors import HubUnavailable
from dlhub_hpc.localpath.caller import CallerPath
from dlhub_hpc.localpath.link import LocalLink

LARGE = np.zeros(2**18)  # 2 MiB
SMALL = np.zeros(16)


@pytest.fixture
def link() -> Iterator[LocalLink]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    made = LocalLink(ours, min_bytes=2**20)
    yield made
    made.close()
    theirs.close()


def test_only_a_large_array_not_yet_tried_opens_the_link() -> None:
    path = CallerPath()
    assert path.needs_opening(LARGE) and path.needs_opening({"a": LARGE})
    assert not path.needs_opening(SMALL) and not path.needs_opening([1.0, 2.0])
    path.enabled = False
    assert not path.needs_opening(LARGE)


def test_a_refused_offer_is_asked_once_and_inputs_then_go_as_before() -> None:
    asked: list[int] = []

    def ask() -> None:
        asked.append(1)
        raise HubUnavailable("no hub")

    path = CallerPath()
    assert not path.ready_for(LARGE, "tcp://127.0.0.1:1", ask)
    assert not path.ready_for(LARGE, "tcp://127.0.0.1:1", ask)
    assert asked == [1] and not path.needs_opening(LARGE) and path.link is None


def test_an_open_link_takes_arrays_over_its_threshold_while_the_path_is_on(
        link: LocalLink) -> None:
    path = CallerPath()
    path.link = link
    assert path.takes(LARGE) and path.takes([SMALL, LARGE])
    assert not path.takes(np.zeros(2**16))  # 512 KiB: under the link's min_bytes
    assert path.share() is not None
    path.enabled = False  # Client.local_fast_path = False after the link opened
    assert not path.takes(LARGE) and path.share() is None


def test_takes_never_opens_a_link() -> None:
    path = CallerPath()
    assert not path.takes(LARGE) and path.needs_opening(LARGE)


def test_a_link_that_went_away_is_opened_again_once(link: LocalLink) -> None:
    """A restarted hub: the link held is gone, so the next large input asks for a new one;
    a hub that then refuses leaves the client without one, and it asks no more."""
    asked: list[int] = []

    def ask() -> None:
        asked.append(1)
        raise HubUnavailable("the new hub has the path off")

    path = CallerPath()
    path.link, path._tried = link, True
    assert path.takes(LARGE) and not path.needs_opening(LARGE)
    link.gone = True
    assert not path.takes(LARGE) and path.needs_opening(LARGE)
    assert not path.ready_for(LARGE, "tcp://127.0.0.1:1", ask)
    assert not path.ready_for(LARGE, "tcp://127.0.0.1:1", ask)
    assert asked == [1] and path.link is None
