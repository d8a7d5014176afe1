"""Key pairs on disk: 0600 secrets, races, hub records, and the ZAP handler's verdicts."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import pytest
import zmq

from dlhub_hpc.errors import AuthenticationError
from dlhub_hpc.security.keys import (
    KeyPair,
    address_aliases,
    container_worker_access,
    curve_client,
    forget_hub,
    hub_public_key,
    load_keypair,
    load_or_create,
    record_hub,
    secure_worker,
    user_keypair,
    worker_credential,
)
from dlhub_hpc.security.zap import ZapHandler, make_curve_server, user_id

pytestmark = pytest.mark.usefixtures("keys_dir")  # keys in tmp_path, not the user's


def test_the_user_key_pair_is_made_once_with_a_0600_secret(keys_dir: Path) -> None:
    first = user_keypair()
    assert user_keypair() == first
    assert len(first.public) == 40 and first.secret is not None
    assert stat.S_IMODE((keys_dir / "id.key").stat().st_mode) == 0o600
    assert load_keypair(keys_dir / "id.pub") == KeyPair(first.public)
    assert first.secret not in repr(first)


def test_racing_processes_end_up_with_one_key_pair(keys_dir: Path) -> None:
    found: list[KeyPair] = []
    threads = [threading.Thread(target=lambda: found.append(user_keypair())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.public for p in found}) == 1


def test_a_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    load_or_create(path, "me")
    path.chmod(0o644)
    with pytest.raises(AuthenticationError, match="chmod 600"):
        load_keypair(path)


def test_a_client_address_drops_a_worker_credential_an_earlier_hub_left_on_its_port(
        keys_dir: Path) -> None:
    record_hub("tcp://127.0.0.1:5002", KeyPair.generate(), KeyPair.generate())  # never forgotten
    server = KeyPair.generate()
    record_hub("tcp://127.0.0.1:5002", server)  # the port is a later hub's client address
    assert hub_public_key("tcp://127.0.0.1:5002") == server.public
    assert worker_credential("tcp://127.0.0.1:5002") is None


def test_a_hub_records_its_key_and_worker_credential_and_forgets_them(keys_dir: Path) -> None:
    server, worker = KeyPair.generate(), KeyPair.generate()
    written = record_hub("tcp://127.0.0.1:5000", server, worker)
    assert hub_public_key("tcp://localhost:5000") == server.public
    assert worker_credential("tcp://127.0.0.1:5000") == worker
    binds, env = container_worker_access("tcp://127.0.0.1:5000")
    assert binds == [f"{keys_dir / 'hubs'}:/mnt:ro"]
    assert env == {"DLHUB_HPC_WORKER_KEY": "/mnt/tcp_127.0.0.1_5000.worker"}
    assert container_worker_access("tcp://127.0.0.1:5000", read_only=False)[0][0].endswith(
        ":/mnt")
    forget_hub(written)
    assert hub_public_key("tcp://127.0.0.1:5000") is None
    with pytest.raises(AuthenticationError, match="no worker credential"):
        container_worker_access("tcp://127.0.0.1:5000")


def test_wildcard_binds_are_recorded_for_local_names() -> None:
    aliases = address_aliases("tcp://0.0.0.0:6000")
    assert {"tcp://127.0.0.1:6000", "tcp://localhost:6000"} <= set(aliases)
    assert address_aliases("ipc:///tmp/x") == ["ipc:///tmp/x"]


def _exchange(server: KeyPair, allowed: dict[str, str], client_pair: KeyPair | None,
              worker_file: Path | None = None, wait: float = 30.0) -> tuple[bytes, str] | None:
    """One message from a client with ``client_pair`` to a CurveZMQ ROUTER; what arrived
    within ``wait`` seconds (a refused one never does: those cases pass a short wait)."""
    ctx = zmq.Context()
    zap = ZapHandler(ctx, lambda domain, key: allowed.get(key))
    router = ctx.socket(zmq.ROUTER)
    make_curve_server(router, server, "clients")
    router.bind("tcp://127.0.0.1:0")
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    dealer = ctx.socket(zmq.DEALER)
    if worker_file is not None:
        assert secure_worker(dealer, address, worker_file)
    elif client_pair is not None:
        curve_client(dealer, server.public, client_pair)
    dealer.connect(address)
    dealer.send(b"hello")
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(zap.sock, zmq.POLLIN)
    got = None
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            ready = dict(poller.poll(50))
            if zap.sock in ready:
                zap.handle()
            if router in ready:
                frames = router.recv_multipart(copy=False)
                got = (frames[1].bytes, user_id(frames[1]))
                break
    finally:
        for s in (dealer, router):
            s.close(linger=0)
        zap.close()
        ctx.term()
    return got


def test_zap_lets_known_keys_in_under_their_identity() -> None:
    server, alice = KeyPair.generate(), KeyPair.generate()
    assert _exchange(server, {alice.public: "alice"}, alice) == (b"hello", "alice")


def test_zap_refuses_unknown_keys_and_plain_connections() -> None:
    server, alice, eve = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    assert _exchange(server, {alice.public: "alice"}, eve, wait=1.0) is None
    assert _exchange(server, {alice.public: "alice"}, None, wait=1.0) is None


def test_a_worker_credential_file_carries_the_hub_key(tmp_path: Path) -> None:
    server, worker = KeyPair.generate(), KeyPair.generate()
    [_, worker_file, _, *_] = record_hub("tcp://127.0.0.1:5001", server, worker,
                                         directory=tmp_path)
    got = _exchange(server, {worker.public: "worker"}, None, worker_file=worker_file)
    assert got == (b"hello", "worker")


@pytest.mark.parametrize("first", ["-", "-h"])
def test_keys_trust_takes_a_key_that_starts_with_a_dash(keys_dir: Path, first: str) -> None:
    # Z85 has "-" in its alphabet: about one key in 85 starts with it.
    from click.testing import CliRunner

    from dlhub_hpc.cli import cli
    from dlhub_hpc.security.keys import hub_public_key

    while not (key := KeyPair.generate().public).startswith(first):
        pass
    result = CliRunner().invoke(cli, ["keys", "trust", "tcp://10.1.2.3:47650", key])
    assert result.exit_code == 0, result.output
    assert hub_public_key("tcp://10.1.2.3:47650") == key
