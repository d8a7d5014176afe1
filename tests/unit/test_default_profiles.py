"""A servable's own default profile and the hub's default pools, as settings and as the
broker's state decides (broker/ondemand.py): which profile a start uses, in order; a
refused one starts nothing and says why, in status, request status and the deadline error.
No sockets, no clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from dlhub_hpc.broker.config import DefaultPool, HubConfig
from dlhub_hpc.broker.events import ServableKey, StartServable
from dlhub_hpc.broker.ondemand import NOT_STARTED, OnDemand
from dlhub_hpc.broker.state import BrokerState, FromClient, FromWorker, ServableInfo, Tick, ToClient
from dlhub_hpc.errors import ConfigError, ServableNotStarted, SpecError, Timeout, error_from_wire
from dlhub_hpc.examples import example_dir
from dlhub_hpc.hubops.default_pools import check_default_pools
from dlhub_hpc.hubops.ondemand import check_servable_profiles
from dlhub_hpc.protocol import Hello, Ready, Request
from dlhub_hpc.servable.spec import ServableSpec, find_spec_file
from dlhub_hpc.servable.types import ArgType

FLOATS = ArgType(type="list", item_type=ArgType(type="float"))
INFOS = {name: ServableInfo(name, 1, f"digest-{name}", {"run": FLOATS})
         for name in ("alice/a", "alice/b", "bob/c")}
OWN = {"alice/a": "slurm-local", "alice/b": "gpu-big"}  # what each spec's default_profile names


class Hub:
    def __init__(self, installed: list[str] | None = None, **config: Any) -> None:
        settings = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5, **config}
        cfg = HubConfig(**settings)
        self.looked_up: list[ServableKey] = []

        def own(key: ServableKey) -> str | None:
            self.looked_up.append(key)
            return OWN.get(key[0])

        self.installed = ["local", "slurm-local"] if installed is None else installed
        board = OnDemand.from_config(cfg, own, lambda name: name in self.installed)
        self.state = BrokerState(lambda name, version: INFOS[name], cfg, ondemand=board)

    def request(self, rid: str, servable: str = "alice/a", timeout: float | None = None,
                now: float = 0.0) -> list[Any]:
        msg = Request(rid, servable, None, "run", [1.0], timeout, False)
        return self.state.handle(FromClient(b"c-alice", msg, "alice"), now)


def starts(actions: list[Any]) -> list[StartServable]:
    return [a for a in actions if isinstance(a, StartServable)]


def errors(actions: list[Any]) -> dict[str, Any]:
    return {a.message.request_id: error_from_wire(a.message.error) for a in actions
            if isinstance(a, ToClient) and not a.message.ok}


def test_the_hubs_profile_for_the_servable_comes_before_its_own() -> None:
    hub = Hub(start_on_demand={"alice/a": "local", "*": "local"},
              servable_profiles=["slurm-local"])
    assert starts(hub.request("r1")) == [StartServable(("alice/a", 1), "local")]
    assert hub.looked_up == []  # the hub's choice needs no look at the spec


def test_an_allowed_own_profile_comes_before_the_hubs_star() -> None:
    hub = Hub(start_on_demand={"*": "local"}, servable_profiles=["slurm-local"])
    assert starts(hub.request("r1")) == [StartServable(("alice/a", 1), "slurm-local")]
    assert starts(hub.request("r2", servable="bob/c")) == [StartServable(("bob/c", 1), "local")]


def test_star_in_servable_profiles_allows_any_installed_profile() -> None:
    hub = Hub(servable_profiles=["*"])
    assert starts(hub.request("r1")) == [StartServable(("alice/a", 1), "slurm-local")]
    assert starts(hub.request("r2", servable="bob/c")) == []  # names none, and no '*' start


def test_own_profiles_start_nothing_unless_the_admin_allows_them() -> None:
    hub = Hub()  # servable_profiles empty: the default
    assert starts(hub.request("r1", timeout=1.0)) == []
    status = hub.state.request_status("alice", "r1")
    assert status is not None and status["stage"] == NOT_STARTED
    assert "does not let servables choose" in status["reason"]
    view = hub.state.starting()["alice/a@1"]
    assert view["stage"] == NOT_STARTED and view["profile"] == "slurm-local"
    assert view["since"] == 0.0  # when its oldest waiting request came
    assert "servable_profiles: none" in view["reason"]
    error = errors(hub.state.handle(Tick(), 1.0))["r1"]
    assert isinstance(error, ServableNotStarted) and isinstance(error, Timeout)
    assert error.details["profile"] == "slurm-local" and error.details["allowed"] == []
    assert "does not let servables choose" in error.message
    assert "servable_profiles" in error.message  # what to change


def test_an_own_profile_the_hub_does_not_have_starts_nothing() -> None:
    hub = Hub(servable_profiles=["*"])
    assert starts(hub.request("r1", servable="alice/b", timeout=1.0)) == []
    error = errors(hub.state.handle(Tick(), 1.0))["r1"]
    assert isinstance(error, ServableNotStarted)
    assert "does not have" in error.message and error.details["profile"] == "gpu-big"


def test_a_profile_installed_meanwhile_starts_once_nothing_waits_on_its_refusal() -> None:
    hub = Hub(servable_profiles=["*"])
    assert starts(hub.request("r1", servable="alice/b", timeout=1.0)) == []  # no gpu-big
    hub.installed.append("gpu-big")  # the admin installs it
    assert starts(hub.request("r2", servable="alice/b", timeout=1.0)) == []  # still waiting
    hub.state.handle(Tick(), 2.0)  # both timed out: nothing waits on the refusal now
    assert starts(hub.request("r3", servable="alice/b")) == [
        StartServable(("alice/b", 1), "gpu-big")]
    assert hub.looked_up == [("alice/b", 1)]  # its spec read once all the same


def test_a_refused_own_profile_falls_back_to_the_hubs_star_and_says_so() -> None:
    hub = Hub(start_on_demand={"*": "local"}, servable_profiles=["local"])
    assert starts(hub.request("r1")) == [StartServable(("alice/a", 1), "local")]
    view = hub.state.starting()["alice/a@1"]
    assert view["stage"] == "requested" and view["profile"] == "local"
    assert "slurm-local" in view["reason"]


def test_a_refused_servable_is_not_started_no_more_once_a_worker_serves() -> None:
    hub = Hub()
    hub.request("r1")
    state = hub.state
    assert state.start_stage(("alice/a", 1)) == NOT_STARTED
    state.handle(FromWorker(b"w1", Hello("w1", "alice/a", None, "h", 1, None)), 0.1)
    state.handle(FromWorker(b"w1", Ready("alice/a", 1)), 0.2)
    state.handle(Tick(), 0.5)
    assert state.start_stage(("alice/a", 1)) is None
    assert state.starting() == {}


def test_a_hub_that_starts_nothing_looks_at_no_profile_per_request() -> None:
    hub = Hub()  # neither start_on_demand nor servable_profiles: nothing starts on demand
    assert not hub.state.ondemand.active
    for i in range(5):
        hub.request(f"r{i}", timeout=10.0)
    assert hub.looked_up == []  # requests pay nothing for a refusal they cannot change
    for i in range(5):  # asked for (status, request status): looked up once
        status = hub.state.request_status("alice", f"r{i}")
        assert status is not None and status["stage"] == NOT_STARTED
    assert "alice/a@1" in hub.state.starting()
    assert hub.looked_up == [("alice/a", 1)]


def test_a_refusal_is_looked_up_anew_once_the_servable_changes() -> None:
    hub = Hub(servable_profiles=["local"])
    assert starts(hub.request("r1", timeout=10.0) + hub.request("r2", timeout=10.0)) == []
    assert hub.looked_up == [("alice/a", 1)]  # once per version, not per request
    assert hub.state.start_stage(("alice/a", 1)) == NOT_STARTED
    OWN["alice/a"] = "local"  # published again, naming a profile the hub has and allows
    try:
        hub.state.invalidate("alice/a")
        assert starts(hub.request("r3")) == [StartServable(("alice/a", 1), "local")]
        assert hub.looked_up == [("alice/a", 1)] * 2
    finally:
        OWN["alice/a"] = "slurm-local"


def test_a_spec_may_name_a_default_profile_by_name_only() -> None:
    path = find_spec_file(example_dir("add"))
    base: dict[str, Any] = yaml.safe_load(path.read_text())
    assert ServableSpec.from_data(base).servable.default_profile is None  # optional, absent
    base["servable"]["default_profile"] = "slurm-local"
    assert ServableSpec.from_data(base).servable.default_profile == "slurm-local"
    for bad in ("../x", "x.yaml", "/etc/profile.yaml", ""):
        base["servable"]["default_profile"] = bad
        with pytest.raises(SpecError, match="default_profile"):
            ServableSpec.from_data(base)


def test_servable_profiles_are_names_and_must_exist() -> None:
    with pytest.raises(ValidationError, match="servable_profiles"):
        HubConfig(servable_profiles=["site_profiles/polaris.yaml"])
    check_servable_profiles(HubConfig(servable_profiles=["*", "local"]))
    with pytest.raises(ConfigError, match="servable_profiles: no site profile named nope"):
        check_servable_profiles(HubConfig(servable_profiles=["local", "nope"]))


def test_default_pools_parse_and_name_the_bad_setting(tmp_path: Path) -> None:
    cfg = HubConfig(default_pools=[{"pool": "public", "profile": "local",
                                    "memory_budget": 2_000_000_000}])
    (entry,) = cfg.default_pools
    assert entry == DefaultPool(pool="public", profile="local", memory_budget=2_000_000_000)
    assert entry.spec().ref() == "pool:public,budget=2000000000"
    (checked,) = check_default_pools(cfg)
    assert checked.pool.ref() == entry.spec().ref() and checked.profile.name == "local"
    with pytest.raises(ValidationError, match=r"default_pools\.0\.pool"):
        HubConfig(default_pools=[{"pool": "alice/a@1", "profile": "local"}])
    with pytest.raises(ValidationError, match="default_pools"):
        HubConfig(default_pools=[{"pool": "public"}])  # no profile
    bad = HubConfig(default_pools=[{"pool": "public", "profile": "local"},
                                   {"pool": "tag:x", "profile": "no-such-profile"}])
    with pytest.raises(ConfigError, match=r"default_pools\[1\]\.profile") as caught:
        check_default_pools(bad)
    assert "no-such-profile" in caught.value.message
    assert caught.value.details["setting"] == "default_pools[1].profile"
