"""Each failure reaches the caller as the error that names it, at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.errors import BundleDigestMismatch, HubUnavailable
from dlhub_hpc.examples import example_dir

from .conftest import wait_for

DLHUB = [sys.executable, "-m", "dlhub_hpc.cli"]


def test_a_corrupted_bundle_fails_its_callers_with_bundle_digest_mismatch(
    hub: Hub, client: Client,
) -> None:
    digest = client.publish(example_dir("add"))["digest"]
    bundle = hub.registry.root / "bundles" / f"{digest}.tar"
    bundle.write_bytes(bundle.read_bytes()[:-1] + b"!")  # flipped on disk
    client.start_workers("demo/add", 1)
    # Was: Timeout after the request's 40 s, since the worker was only told to exit.
    with pytest.raises(BundleDigestMismatch, match=r"could not be loaded.*not the recorded"):
        client.run("demo/add", [1, 2], timeout=40)
    assert hub.state.stats["load_failures"] == 1
    with pytest.raises(BundleDigestMismatch):  # the next caller too, without waiting
        client.run("demo/add", [3, 4], timeout=40)


@pytest.fixture
def stopped_hub(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A hub subprocess, frozen (SIGSTOP) once it listens: connections reach its backlog."""
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [*DLHUB, "hub", "start", "--home", str(home), "--client-address", "tcp://127.0.0.1:0",
         "--worker-address", "tcp://127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        state = wait_for(lambda: (home / "hub.json").exists()
                         and json.loads((home / "hub.json").read_text()), timeout=60)
        os.kill(proc.pid, signal.SIGSTOP)
        yield proc, int(state["client_address"].rsplit(":", 1)[1])
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_a_run_as_the_hub_crashes_is_hub_unavailable_not_authentication_error(
    stopped_hub: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = stopped_hub

    def connected() -> bool:
        return any(c.raddr and c.raddr.port == port and c.status == "ESTABLISHED"
                   for c in psutil.Process().net_connections("tcp"))

    def crash() -> None:  # SIGKILL while this client's handshake waits on the hub
        wait_for(connected, timeout=30)
        os.kill(proc.pid, signal.SIGKILL)

    killer = threading.Thread(target=crash)
    killer.start()
    try:
        # Was: AuthenticationError "... is probably not that hub's public key".
        with pytest.raises(HubUnavailable, match=r"hub start.*hub\.json"):
            Client(f"tcp://127.0.0.1:{port}", timeout=20).run("demo/add", [1, 2])
    finally:
        killer.join()


@pytest.mark.parametrize("args, stdin, says", [
    (["run", "demo/add", "@/missing.json"], None, "cannot read /missing.json"),
    (["run", "demo/add", "[1,"], None, "INPUT is not JSON"),
    (["run", "demo/add", "-"], "[1", "INPUT is not JSON on stdin"),
    (["run", "demo/add", "-"], b"\xff\xfe", "on stdin"),
    (["import-dlhub", "{bad}", "out"], None, "is not a readable JSON file"),
])
def test_bad_cli_input_is_one_line_and_status_2(
    tmp_path: Path, args: list[str], stdin: str | bytes | None, says: str,
) -> None:
    if args[0] == "import-dlhub":
        (tmp_path / "bad.json").write_bytes(b"\xff not json")
        args = ["import-dlhub", str(tmp_path / "bad.json"), str(tmp_path / "out")]
    data = stdin.encode() if isinstance(stdin, str) else stdin
    result = subprocess.run([*DLHUB, *args], input=data or b"", capture_output=True,
                            timeout=60, cwd=tmp_path)
    err = result.stderr.decode()
    # Was: a traceback ending in FileNotFoundError (or InvalidInput with status 1).
    assert result.returncode == 2, err
    assert says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
