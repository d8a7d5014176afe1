"""The same-node fast path against a real hub and real workers: large arrays go as sealed
memfds over the hub's AF_UNIX socket, bit-exact; nobody but the identity a ticket was
issued to can use it; a sandboxed worker gets its input the same way."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import yaml
import zmq

from dlhub_hpc import Client, Hub
from dlhub_hpc.localpath.link import LocalLink
from dlhub_hpc.localpath.memfd import seal_array
from dlhub_hpc.protocol import Control, Request, decode, encode
from tests.integration.conftest import curve_dealer, wait_for
from tests.integration.test_isolation import needs_bwrap

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE")
EXAMPLES = Path(__file__).resolve().parents[2] / "dlhub_hpc" / "examples"
MIB = 2**20


def _stats(client: Client) -> dict[str, int]:
    return dict(client.status()["stats"])


def _published(client: Client, key: str, at_least: int) -> dict[str, int]:
    """The hub's counters once ``key`` reached ``at_least`` (the snapshot lags a little)."""
    return wait_for(lambda: (s := _stats(client)).get(key, 0) >= at_least and s,
                    timeout=10, what=f"{key} >= {at_least}")


@pytest.fixture
def noop(serve: Callable[..., str]) -> str:
    return serve(EXAMPLES / "noop")


def test_a_large_array_echoes_bit_exact_through_the_fast_path(
        client: Client, noop: str) -> None:
    x = np.random.default_rng(1).standard_normal((1024, 1024 + 7))  # 8 MiB and a bit
    x[0, :4] = [np.nan, np.inf, -0.0, 5e-324]
    y = client.run(noop, x, cache=False)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.tobytes() == x.tobytes()
    # in: the request, and the worker's result; out: the batch, and the reply
    stats = _published(client, "local_path_out", 2)
    assert stats["local_path_in"] >= 2
    assert not y.flags.writeable  # a read-only map of the worker's sealed memfd


def test_submit_and_several_arrays_in_one_input_take_the_path_too(
        client: Client, noop: str) -> None:
    parts = [np.arange(MIB // 8, dtype=np.float64) + i for i in range(3)]
    out = client.submit(noop, {"a": parts[0], "b": parts[1]}, cache=False).result(timeout=30)
    assert np.array_equal(out["a"], parts[0]) and np.array_equal(out["b"], parts[1])
    small = client.run(noop, np.arange(100.0), cache=False)  # under the threshold: frames
    assert np.array_equal(small, np.arange(100.0))


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def _ask(sock: zmq.Socket[bytes], frames: list[Any], fetch: Any = None) -> Any:
    sock.send_multipart(frames)
    assert sock.poll(30_000), "no answer from the hub"
    return decode(sock.recv_multipart(), fetch=fetch)


def test_a_forged_or_replayed_ticket_is_refused_with_a_typed_error(
        hub: Hub, noop: str, ctx: zmq.Context[Any]) -> None:
    sock = curve_dealer(ctx, hub.client_address)
    offer = _ask(sock, encode(Control("o", "local_path", {}))).value
    link = LocalLink.connect(offer)
    x = np.arange(MIB // 4, dtype=np.float64)
    forged = _ask(sock, encode(Request("f", noop, None, "", x, None, False), lambda a: "0" * 32))
    assert not forged.ok and forged.error["type"] == "LocalPathRefused", forged.error
    ticket = link.share(x)
    assert ticket is not None
    first = _ask(sock, encode(Request("a", noop, None, "", x, None, False), lambda a: ticket),
                 fetch=link.fetch)
    assert first.ok and np.array_equal(first.value, x)
    replay = _ask(sock, encode(Request("b", noop, None, "", x, None, False), lambda a: ticket))
    assert not replay.ok and replay.error["type"] == "LocalPathRefused", replay.error
    with Client(hub.client_address, timeout=30) as client:  # the hub serves on
        assert np.array_equal(client.run(noop, x, cache=False), x)
    link.close()
    sock.close(linger=0)


ATTACKER = r"""
import json, os, socket, sys
pid, ticket, hub = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def pack(items):  # msgpack of a short list of short strings
    out = bytes([0x90 | len(items)])
    for item in items:
        raw = item.encode()
        out += (bytes([0xA0 | len(raw)]) if len(raw) < 32 else bytes([0xD9, len(raw)])) + raw
    return out

names = [line.split()[-1] for line in open("/proc/net/unix") if "@dlhub-hpc-" in line]
answers, fds = [], 0
for name in {n for n in names if n == "@" + hub}:  # other hubs on this node are not ours
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(20)
    s.connect("\0" + name[1:])
    for msg in (["get", ticket], ["register", "0" * 32], ["get", ticket]):
        s.sendmsg([pack(msg)])
        data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(4))
        fds += len(anc)
        answers.append("error" if data[1:7] == b"\xa5error" else data.hex())
opened = []
for where in (f"/proc/{pid}/fd", f"/proc/{pid}/map_files"):
    try:
        for entry in os.listdir(where):
            try:
                os.close(os.open(os.path.join(where, entry), os.O_RDONLY))
                opened.append(entry)
            except OSError:
                pass
    except OSError:
        pass
print(json.dumps({"names": names, "answers": answers, "fds": fds, "opened": opened}))
"""


@pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                    reason="needs root, to act as a second Unix user (nobody)")
def test_another_local_user_cannot_obtain_a_callers_array(
        hub: Hub, client: Client, noop: str) -> None:
    x = np.random.default_rng(2).standard_normal(MIB // 8)
    assert np.array_equal(client.run(noop, x, cache=False), x)  # the caller's link is open
    link = client._fast.link
    assert link is not None
    # Even a leaked ticket: another user's connection holds no token, so it gets nothing.
    ticket = hub.server.fast.exchange.issue(seal_array(x), "caller:" + client.whoami()[
        "identity"])
    nobody = pwd.getpwnam("nobody")

    def become_nobody() -> None:
        os.setgid(nobody.pw_gid)
        os.setgroups([])
        os.setuid(nobody.pw_uid)

    # A Python that user can run (this one may sit in a home only its owner can enter).
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    name = hub.server.fast.exchange.name[1:]
    out = subprocess.run([python, "-I", "-c", ATTACKER, str(os.getpid()), ticket, name],
                         preexec_fn=become_nobody, capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert "@" + name in found["names"]  # listed in /proc/net/unix: that is no help
    assert found["fds"] == 0 and found["answers"] == ["error"] * 3, found
    assert found["opened"] == [], found  # nor the hub's or caller's descriptors and maps
    assert np.array_equal(link.fetch(ticket, x.dtype, x.shape), x)  # still the caller's


def _echo_of(owner: str, root: Path, deterministic: bool = False) -> Path:
    target = Path(shutil.copytree(EXAMPLES / "noop", root / f"{owner}-echo",
                                  ignore=shutil.ignore_patterns("__pycache__")))
    spec = yaml.safe_load((target / "servable.yaml").read_text())
    spec["dlhub"].update(owner=owner, name="echo")
    spec["servable"]["deterministic"] = deterministic
    (target / "servable.yaml").write_text(yaml.safe_dump(spec))
    return target


@needs_bwrap
def test_a_sandboxed_workers_input_comes_by_the_path(
        tmp_path: Path, hub: Hub, people: dict[str, Client]) -> None:
    alice = people["alice"]
    alice.publish(_echo_of("alice", tmp_path))
    alice.start_workers("alice/echo", 1)
    alice.wait_for_workers("alice/echo", 1, timeout=60)
    sandboxes = [p for p in psutil.process_iter(["cmdline"])
                 if (p.info["cmdline"] or [""])[0].endswith("bwrap")
                 and hub.worker_address in p.info["cmdline"]]
    assert sandboxes, "alice's worker runs in bubblewrap"
    before = _stats(alice).get("local_path_out", 0)
    x = np.random.default_rng(3).integers(0, 2**60, size=(512, 1024))
    y = alice.run("alice/echo", x, cache=False)
    assert y.tobytes() == x.tobytes()
    _published(alice, "local_path_out", before + 2)  # the batch to the worker, the reply


def test_without_the_path_large_arrays_still_travel_and_it_is_said_once(
        make_hub: Callable[..., Hub], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dlhub_hpc.localpath import link

    monkeypatch.setattr(link, "_told", set())  # once per process: another test may have said it
    hub = make_hub(local_fast_path=False)
    with Client(hub.client_address, timeout=60) as client:
        name = str(client.publish(EXAMPLES / "noop")["name"])
        client.start_workers(name, 1)
        client.wait_for_workers(name, 1, timeout=60)
        x = np.arange(MIB // 4, dtype=np.float64)
        with caplog.at_level("INFO", logger="dlhub_hpc.localpath"):
            for _ in range(2):
                assert np.array_equal(client.run(name, x, cache=False), x)
        said = [r for r in caplog.records if "fast path not used" in r.getMessage()]
        assert len(said) == 1, said
        assert "local_path_in" not in _stats(client)


def test_a_fast_path_request_is_never_hashed_for_the_memo_on_the_hubs_loop(
        tmp_path: Path, client: Client, serve: Callable[..., str]) -> None:
    echo = serve(_echo_of("demo", tmp_path, deterministic=True))
    x = np.random.default_rng(4).standard_normal(MIB // 4)
    before = _stats(client)
    for _ in range(2):  # memoizable as far as the servable and the caller say
        assert np.array_equal(client.run(echo, x), x)
    after = _published(client, "local_path_in", before.get("local_path_in", 0) + 4)
    assert after.get("memo_hits", 0) == before.get("memo_hits", 0)
    assert after.get("memo_misses", 0) == before.get("memo_misses", 0)  # not even looked up
    assert after.get("memo_entries", 0) == before.get("memo_entries", 0)  # no descriptors kept


def test_more_arrays_in_flight_than_the_hub_holds_all_get_their_answers(
        client: Client, noop: str) -> None:
    """``map`` keeps 128 arrays of 512 KiB in flight: past the 64 the hub holds for one
    caller, arrays ride in their messages instead, and every call is answered right."""
    xs = [np.full(2**16, float(i)) for i in range(200)]
    ys = list(client.map(noop, xs, in_flight=128, cache=False))
    assert all(np.array_equal(y, x) for x, y in zip(xs, ys, strict=True))
    assert _published(client, "local_path_in", 1)["local_path_in"] >= 1
