"""Identities, access control and publication at their edges (no processes)."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
import zmq

from dlhub_hpc.errors import AuthenticationError, PermissionDenied, SpecError
from dlhub_hpc.examples import example_dir
from dlhub_hpc.registry import Registry
from dlhub_hpc.registry.access import AccessControl
from dlhub_hpc.registry.dlhub_json import from_dlhub_json
from dlhub_hpc.registry.search import SearchQuery, match_expression
from dlhub_hpc.registry.search import run as run_search
from dlhub_hpc.registry.service import PublicationService
from dlhub_hpc.security.keys import KeyPair, curve_client, secure_worker, trust_hub
from dlhub_hpc.servable.bundle import make_bundle

pytestmark = pytest.mark.usefixtures("keys_dir")  # keys in tmp_path, not the user's


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry")
    yield reg
    reg.close()


def _publish_private(registry: Registry, tmp_path: Path, times: int) -> str:
    root = Path(shutil.copytree(example_dir("add"), tmp_path / "add",
                                ignore=shutil.ignore_patterns("__pycache__")))
    name = ""
    for i in range(times):
        spec = yaml.safe_load((root / "servable.yaml").read_text())
        spec["dlhub"]["visible_to"] = []
        spec["datacite"]["title"] = f"Private adder {i}"  # a new digest: a new version
        (root / "servable.yaml").write_text(yaml.safe_dump(spec))
        name = registry.publish(make_bundle(root), publisher="alice").name
    return name


def test_describing_a_missing_version_of_a_hidden_servable_lists_no_versions(
    registry: Registry, tmp_path: Path,
) -> None:
    name = _publish_private(registry, tmp_path, times=2)
    access = AccessControl(registry, admin="root")
    service = PublicationService(registry, access, lambda _name: None)
    for op in (service.describe, service.export):
        # Not ServableNotFound "... published versions: [1, 2]", which would tell anyone.
        with pytest.raises(PermissionDenied):
            op({"servable": f"{name}@99", "caller": "bob"})
    assert service.describe({"servable": f"{name}@2", "caller": "alice"})["version"] == 2


def test_a_nul_in_search_text_is_not_an_fts5_syntax_error(registry: Registry) -> None:
    assert "\0" not in match_expression("ab\0cd e\0")
    with registry.transaction() as db:  # not SpecError "... unterminated string"
        assert run_search(db, SearchQuery(text="adder\0 \0")) == []


def test_trusting_a_malformed_hub_key_says_what_to_fix(keys_dir: Path) -> None:
    with pytest.raises(AuthenticationError, match="not a CurveZMQ public key"):
        trust_hub("tcp://hub:5000", "not-a-key")
    assert not (keys_dir / "hubs").exists() or not any((keys_dir / "hubs").iterdir())


def test_a_malformed_hub_key_from_the_environment_is_an_authentication_error() -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        with pytest.raises(AuthenticationError, match="DLHUB_HPC_HUB_KEY"):
            curve_client(sock, "garbage", KeyPair.generate())  # not a bare zmq.ZMQError
    finally:
        sock.close(linger=0)
        ctx.term()


def test_a_worker_without_a_credential_cannot_block_for_ever_on_send() -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        assert secure_worker(sock, "tcp://127.0.0.1:1") is False
        # A CURVE hub drops the plain handshake; with no peer, an unbounded send never returns.
        assert sock.getsockopt(zmq.SNDTIMEO) > 0
    finally:
        sock.close(linger=0)
        ctx.term()


def test_key_directories_made_on_the_way_are_0700(keys_dir: Path) -> None:
    old = os.umask(0o022)
    try:
        trust_hub("tcp://hub:5000", KeyPair.generate().public)
    finally:
        os.umask(old)
    for d in (keys_dir, keys_dir / "hubs"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


@pytest.mark.parametrize("record", [
    [],
    {"datacite": {}, "dlhub": [], "servable": {"shim": "sklearn.ScikitLearnServable"}},
    {"datacite": {"publicationYear": "circa 2019"}, "dlhub": {"name": "x"},
     "servable": {"shim": "sklearn.ScikitLearnServable"}},
    {"datacite": {}, "dlhub": {"owner": 7, "name": "x"},
     "servable": {"shim": "sklearn.ScikitLearnServable"}},
])
def test_a_malformed_dlhub_record_is_a_spec_error(record: object) -> None:
    with pytest.raises(SpecError):
        from_dlhub_json(record)  # type: ignore[arg-type]


def test_a_memo_hit_or_a_single_flight_join_is_no_way_around_the_access_check() -> None:
    from tests.unit.test_pipeline import STRING, Authorizing, Harness, step

    def authorize(user: str, info: object) -> None:
        if user != "alice":
            raise PermissionDenied(f"{user!r} may not use demo/parse")

    h = Harness(step("parse", STRING, deterministic=True), gate=Authorizing(authorize))
    h.worker("parse")
    h.call("a1", "Fe", servable="demo/parse", client=b"alice", user="alice")
    h.call("b1", "Fe", servable="demo/parse", client=b"bob", user="bob")  # would join a1
    h.run_step("parse", str.upper)
    h.call("b2", "Fe", servable="demo/parse", client=b"bob", user="bob")  # would hit memo
    h.call("a2", "Fe", servable="demo/parse", client=b"alice", user="alice")
    got = {r.request_id: (who, r.ok, r.value) for who, r in h.replies}
    assert got["a1"] == (b"alice", True, "FE") and got["a2"] == (b"alice", True, "FE")
    assert got["b1"][:2] == (b"bob", False) and got["b2"][:2] == (b"bob", False)
    assert h.state.memo.stats()["memo_hits"] >= 1  # a2 was a hit: the cache was in play


def test_an_export_carries_the_visibility_in_force_not_the_one_published(
    registry: Registry, tmp_path: Path,
) -> None:
    root = Path(shutil.copytree(example_dir("add"), tmp_path / "pub",
                                ignore=shutil.ignore_patterns("__pycache__")))
    access = AccessControl(registry, admin="root")
    service = PublicationService(registry, access, lambda _name: None)
    name = service.publish(make_bundle(root), "demo").name  # its owner: the spec says demo
    service.set_visibility({"servable": name, "caller": "demo", "visible_to": ["user:bob"]})
    record = service.export({"servable": name, "caller": "bob"})
    # not the spec's ["public"]; DLHub's block takes Globus URNs only, so the hub's rule
    # travels in the dlhub_hpc block and DLHub's is left out rather than widened
    assert record["dlhub_hpc"]["spec"]["dlhub"]["visible_to"] == ["user:bob"]
    assert "visible_to" not in record["dlhub"]


def test_the_cli_shows_titles_and_shapes_with_brackets_as_written() -> None:
    from rich.console import Console

    from dlhub_hpc.cli.publication import _describe_panel, _methods_table, _results_table

    row = {"ref": "demo/gap@1", "title": "Band gaps [eV] [/x]", "creators": ["Ada"],
           "type": "sklearn", "domains": [], "dois": [], "status": "active"}
    method = {"input": {"type": "ndarray", "shape": [None, 3]}, "output": {"type": "any"},
              "description": "gap [eV]"}
    rec = {"ref": "demo/gap@1", "pid": "demo/gap@1#sha256:0", "status": "deprecated",
           "reason": "use [bold]v2", "replacement": None, "owner": "ada",
           "visible_to": ["public"], "dois": [],
           "spec": {"datacite": {"title": row["title"], "creators": [], "subjects": [],
                                 "description": ""},
                    "dlhub": {"domains": []},
                    "servable": {"type": "sklearn", "methods": {"predict": method}}}}
    console = Console(record=True, width=200)
    for part in (_results_table([row]), _methods_table(rec), _describe_panel(rec)):
        console.print(part)  # "[/x]" raised rich's MarkupError
    text = console.export_text()
    assert "Band gaps [eV] [/x]" in text and '"shape": [null, 3]' in text
    assert "use [bold]v2" in text


def test_a_group_name_no_visibility_entry_can_name_is_refused(registry: Registry) -> None:
    from dlhub_hpc.errors import ConfigError

    access = AccessControl(registry, admin="root")
    with pytest.raises(ConfigError, match="group:NAME"):
        access.set_group("chem@lab", ["alice"])  # no visibility entry could name it
    access.set_group("chem.lab", ["alice"])
    assert access.groups() == {"chem.lab": ["alice"]}


def _refusal_with(server: KeyPair, used: str, lookup: dict[str, str]) -> AuthenticationError:
    """Connect a ClientCurve that believes the hub's key is ``used`` to a CURVE hub."""
    import time

    from dlhub_hpc.security.client import ClientCurve
    from dlhub_hpc.security.zap import CLIENT_DOMAIN, ZapHandler, make_curve_server

    ctx = zmq.Context()
    zap = ZapHandler(ctx, lambda _domain, key: lookup.get(key))
    hub = ctx.socket(zmq.ROUTER)
    hub.setsockopt(zmq.LINGER, 0)
    make_curve_server(hub, server, CLIENT_DOMAIN)
    port = hub.bind_to_random_port("tcp://127.0.0.1")
    address = f"tcp://127.0.0.1:{port}"
    curve = ClientCurve(keys=KeyPair.generate(), server_key=used)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = curve.secure(sock, address)
    sock.connect(address)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            zap.handle()
            refused = curve.refusal(monitor, address)
            if refused is not None:
                return refused
            time.sleep(0.02)
        raise AssertionError("no handshake failure seen")
    finally:
        ClientCurve.close(sock, monitor)
        sock.close(linger=0)
        hub.close(linger=0)
        zap.close()
        ctx.term()


def test_a_wrong_hub_key_is_not_reported_as_an_unknown_client_key() -> None:
    server, stale = KeyPair.generate(), KeyPair.generate()
    refused = _refusal_with(server, stale.public, {})
    # Was: "... refused this client's key ...: it does not know it. Ask the hub's admin ..."
    assert "probably not that hub's public key" in refused.message
    assert refused.details["server_key"] == stale.public


def test_an_unknown_client_key_still_says_ask_the_admin() -> None:
    server = KeyPair.generate()
    refused = _refusal_with(server, server.public, {})
    assert "does not know it" in refused.message
