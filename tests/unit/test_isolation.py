"""How an owner's workers are started: the policy, and the exact commands it sends."""

from __future__ import annotations

import itertools
import os
import shlex
import sys
from pathlib import Path

import pytest

from dlhub_hpc.errors import IsolationUnavailable
from dlhub_hpc.pilot.command import Container, worker_command
from dlhub_hpc.registry.store import Registry
from dlhub_hpc.security.confine import HOST_PID_ENV, bwrap_argv, host_pid, kept_environment
from dlhub_hpc.security.credentials import WorkerCredentials
from dlhub_hpc.security.isolation import Confinement, IsolationPolicy, WorkerLaunch
from dlhub_hpc.security.keys import KeyPair, load_keypair
from tests.unit.test_pilot_scripts import render

HUB_HOME = Path("/home/hubadmin/.dlhub-hpc")


def policy(mode: str = "auto", *, root: bool = False, bwrap: str | None = "/usr/bin/bwrap",
           user_map: dict[str, str] | None = None) -> IsolationPolicy:
    return IsolationPolicy(mode, "hubadmin", [HUB_HOME], user_map,  # type: ignore[arg-type]
                           can_switch=root, bwrap=bwrap)


def test_the_admins_workers_run_as_the_hub_and_others_are_confined() -> None:
    assert policy().confinement("hubadmin").kind == "bare"
    assert policy().confinement("alice").kind == "sandbox"
    assert policy().confinement("alice", container=True).kind == "container"
    # The admin's workers in an image get the credential as a bound file too: inside a
    # container, descriptor 3 is not the job shell's.
    assert policy().confinement("hubadmin", container=True).kind == "container"
    # A hub running as root switches to a real account; 'nobody' exists on every Debian.
    as_root = policy(root=True, user_map={"alice": "nobody"}).confinement("alice")
    assert (as_root.kind, as_root.unix_user) == ("user", "nobody")
    # Never to root nor to an unknown account: then the sandbox.
    assert policy(root=True, user_map={"alice": "root"}).confinement("alice").kind == "sandbox"
    assert policy(root=True).confinement("no-such-user-here").kind == "sandbox"


def test_a_hub_that_can_neither_switch_nor_sandbox_refuses_unless_off() -> None:
    with pytest.raises(IsolationUnavailable, match=r"install bubblewrap|worker_isolation: off"):
        policy(bwrap=None).confinement("alice")
    with pytest.raises(IsolationUnavailable, match="does not run as root"):
        policy("user").confinement("alice")
    assert policy("off", bwrap=None).confinement("alice").kind == "bare"
    with pytest.raises(IsolationUnavailable):
        policy("sandbox", root=True, bwrap=None).confinement("alice")


def test_the_local_worker_command_is_sandboxed_with_the_credential_on_fd_3() -> None:
    launch = WorkerLaunch(Confinement("alice", "sandbox", hide=(str(HUB_HOME),)),
                          HUB_HOME / "credentials" / "alice" / "worker.key")
    command = worker_command("tcp://127.0.0.1:5", "alice/snoop@1", python="/opt/py/bin/python",
                             block="block-1", heartbeat_interval=1.0, hub_timeout=30.0,
                             launch=launch).shell()
    argv = shlex.split(command.rsplit(" 3<", 1)[0])
    assert argv[:7] == ["/opt/py/bin/python", "-m", "dlhub_hpc.security.confine", "--sandbox",
                        "--hide", str(HUB_HOME), "--"]
    assert argv[7:10] == ["/opt/py/bin/python", "-m", "dlhub_hpc.worker"]
    assert argv[-2:] == ["--credential", "/dev/fd/3"]
    assert command.endswith(f" 3<{HUB_HOME}/credentials/alice/worker.key")


def test_a_user_switched_worker_command() -> None:
    launch = WorkerLaunch(Confinement("alice", "user", unix_user="alice"), Path("/k/w.key"))
    command = worker_command("tcp://h:1", "alice/x", python="py", launch=launch).shell()
    assert command == ("py -m dlhub_hpc.security.confine --user alice -- py -m "
                       "dlhub_hpc.worker --hub tcp://h:1 --servable alice/x --credential "
                       "/dev/fd/3 3</k/w.key")


def test_a_slurm_job_carries_the_sandbox_and_the_redirect_through_its_heredoc(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLHUB_HPC_PARTITION", "debug")
    cred = tmp_path / "home$x" / "credentials" / "alice" / "worker.key"
    launch = WorkerLaunch(Confinement("alice", "sandbox", hide=(str(tmp_path),)), cred)
    script, _, _ = render("slurm", tmp_path, job_id="77", launch=launch,
                          container={"runtime": "none"})
    worker = next(line for line in script.splitlines() if "dlhub_hpc.worker" in line)
    assert "-m dlhub_hpc.security.confine --sandbox --hide" in worker
    assert "--credential /dev/fd/3" in worker
    # The heredoc must not expand the '$' of the path in the batch shell.
    assert worker.endswith(f" 3<'{str(cred).replace('$', chr(92) + '$')}'")


def test_a_container_sees_only_its_owners_credential_folder(tmp_path: Path) -> None:
    cred = tmp_path / "credentials" / "alice" / "worker.key"
    launch = WorkerLaunch(Confinement("alice", "container"), cred)
    script, _, _ = render("polaris", tmp_path, launch=launch)
    worker = next(line for line in script.splitlines() if "dlhub_hpc.worker" in line)
    assert f"--bind {cred.parent}:/mnt:ro" in worker
    assert "--credential /mnt/worker.key" in worker
    assert "DLHUB_HPC_WORKER_KEY" not in worker and " 3<" not in worker


def test_the_admins_containerised_worker_reads_its_credential_on_mnt(tmp_path: Path) -> None:
    # Was: the admin's confinement is "bare", so its worker in a container was told
    # --credential /dev/fd/3, which nothing opens there: the worker read a stray descriptor.
    cred = tmp_path / "credentials" / "hubadmin" / "worker.key"
    launch = WorkerLaunch(policy().confinement("hubadmin", container=True), cred)
    command = worker_command("tcp://h:1", "hubadmin/x@1", launch=launch,
                             container=Container("bubblewrap", "/images/x"))
    assert command.argv[-2:] == ["--credential", "/mnt/worker.key"]
    assert ["--ro-bind", str(cred.parent), "/mnt"] == command.argv[
        command.argv.index(str(cred.parent)) - 1:command.argv.index(str(cred.parent)) + 2]
    assert command.redirect == "" and "confine" not in command.shell()


def test_the_sandbox_binds_python_read_only_and_hides_the_hub(tmp_path: Path) -> None:
    home = tmp_path / "venv" / "hubhome"
    home.mkdir(parents=True)
    argv = bwrap_argv(["python", "-m", "dlhub_hpc.worker"], {"SLURM_LOCALID": "1"},
                      hide=[str(home), "/elsewhere"], paths=[str(tmp_path / "venv")])
    pairs = list(itertools.pairwise(argv))
    assert ("--ro-bind", str(tmp_path / "venv")) in pairs
    assert ("--tmpfs", str(home)) in pairs  # under a bound path: masked
    assert ("--tmpfs", "/elsewhere") not in pairs  # not bound: never visible anyway
    assert "--bind" not in argv and "--dev-bind" not in argv  # nothing writable from the host
    assert {"--unshare-all", "--share-net", "--clearenv", "--die-with-parent"} <= set(argv)
    assert argv[argv.index("--setenv", argv.index("--clearenv")):].count("--setenv") == 4
    assert argv[-4:] == ["--", "python", "-m", "dlhub_hpc.worker"]


def test_the_environment_keeps_the_schedulers_variables_only() -> None:
    env = {"SLURM_LOCALID": "2", "CUDA_VISIBLE_DEVICES": "0", "PATH": "/x", "HOME": "/root",
           "GLOBUS_COMPUTE_CLIENT_SECRET": "s3cret", "DLHUB_HPC_KEYS": "/root/k",
           "AWS_SECRET_ACCESS_KEY": "k", "OMPI_COMM_WORLD_LOCAL_RANK": "0", "LANG": "C"}
    assert kept_environment(env) == {"SLURM_LOCALID": "2", "CUDA_VISIBLE_DEVICES": "0",
                                     "OMPI_COMM_WORLD_LOCAL_RANK": "0", "LANG": "C"}


def test_credentials_are_per_owner_revocable_and_private(tmp_path: Path) -> None:
    admin_pair = KeyPair.generate()
    registry = Registry(tmp_path / "reg")
    try:
        creds = WorkerCredentials(registry, tmp_path / "home" / "credentials",
                                  KeyPair.generate().public, "hubadmin", admin_pair)
        alice = creds.issue("alice")
        assert creds.issue("alice") == alice  # one live pair per owner
        assert creds.owner_of(alice.public_key) == "alice"
        assert creds.owner_of(admin_pair.public) == "hubadmin"
        assert alice.path.stat().st_mode & 0o077 == 0
        assert alice.path.parent.stat().st_mode & 0o077 == 0
        assert creds.issue("hubadmin").public_key == admin_pair.public
        assert load_keypair(creds.issue("hubadmin").path) == admin_pair
        assert creds.revoke("alice") == 1
        assert creds.owner_of(alice.public_key) is None and not alice.path.exists()
        assert creds.issue("alice").public_key != alice.public_key
        reopened = WorkerCredentials(registry, tmp_path / "home" / "credentials",
                                     "x" * 40, "hubadmin", admin_pair)
        assert reopened.owner_of(alice.public_key) is None  # revocation is persistent
    finally:
        registry.close()


@pytest.mark.skipif(sys.platform != "linux", reason="/dev/fd is Linux's")
def test_a_credential_on_a_descriptor_is_read_once_and_closed(tmp_path: Path) -> None:
    from dlhub_hpc.security.keys import read_worker_credential, write_keypair

    pair = KeyPair.generate()
    path = tmp_path / "w.key"
    write_keypair(path, pair, "worker:alice", hub_key="h" * 40)
    fd = os.open(path, os.O_RDONLY)
    key = read_worker_credential(Path(f"/dev/fd/{fd}"))
    assert key.pair == pair and key.hub_key == "h" * 40
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_descriptor_that_is_no_credential_file_is_refused_and_left_open() -> None:
    from dlhub_hpc.errors import AuthenticationError
    from dlhub_hpc.security.keys import read_worker_credential

    r, w = os.pipe()
    try:
        with pytest.raises(AuthenticationError, match="not an open credential file"):
            read_worker_credential(Path(f"/dev/fd/{r}"))
        os.fstat(r)  # still open: it was never ours to close
    finally:
        os.close(r)
        os.close(w)


def test_binds_under_tmp_land_on_top_of_the_private_tmp(tmp_path: Path) -> None:
    venv = tmp_path / "clone" / ".venv"  # a checkout under /tmp, as CI's may be
    venv.mkdir(parents=True)
    argv = bwrap_argv(["python"], {}, paths=[str(venv)])
    assert argv.index("/tmp", argv.index("--tmpfs")) < argv.index(str(venv))


@pytest.mark.parametrize(("given", "expected"), [
    ("4242", 4242), ("", None), ("0", None), ("-5", None), ("12x", None)])
def test_a_worker_reports_the_sandbox_pid_it_was_given_and_keeps_it_from_the_servable(
        given: str, expected: int | None) -> None:
    env = {HOST_PID_ENV: given, "LANG": "C"}
    assert host_pid(env) == (os.getpid() if expected is None else expected)
    assert env == {"LANG": "C"}  # taken out before any servable code could read it
