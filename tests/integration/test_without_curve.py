"""A loopback benchmark hub without CurveZMQ (HubConfig.benchmark_without_curve)."""

from __future__ import annotations

import getpass
from collections.abc import Callable

import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.examples import example_dir
from dlhub_hpc.security.keys import KeyPair


def test_a_hub_without_curve_serves_plain_callers_and_workers(
    make_hub: Callable[..., Hub]
) -> None:
    hub = make_hub(benchmark_without_curve=True)
    # A key the hub never heard of, and no hub key: the connection is in the clear.
    with Client(hub.client_address, timeout=30, keys=KeyPair.generate()) as plain:
        assert plain.whoami() == {"identity": getpass.getuser(), "admin": True, "groups": []}
        name = str(plain.publish(example_dir("add"))["name"])
        plain.start_workers(name, 1)
        plain.wait_for_workers(name, 1, timeout=60)
        assert plain.run(name, [1.0, 2.5]) == 3.5


def test_a_default_hub_refuses_a_caller_without_curve(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub()
    with Client(hub.client_address, timeout=3, server_key=None,
                keys=KeyPair.generate()) as stranger, pytest.raises(DlhubHpcError):
        stranger.whoami()
