"""CurveZMQ key pairs: the user's, the hub's and the workers', as ZeroMQ certificate files.

A user's key pair lives in ``$DLHUB_HPC_KEYS`` or ``~/.dlhub-hpc/keys`` (``id.key``, mode
0600, and ``id.pub``); it is made on first use. A hub keeps its server key pair and its
workers' credential in its home (0600). When a hub listens it records its public key for
each of its addresses under ``hubs/`` of its user's key directory (as ``known_hosts`` does
for ssh), together with the worker credential, so that clients and workers of the same
Unix user find them with nothing but the address. Other users get the hub's public key from
the admin (``dlhub-hpc keys trust ADDRESS KEY``).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import re
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from dlhub_hpc.errors import AuthenticationError

logger = logging.getLogger(__name__)

KEYS_ENV = "DLHUB_HPC_KEYS"
HUB_KEY_ENV = "DLHUB_HPC_HUB_KEY"  # the hub's public key, when it is not recorded
WORKER_KEY_ENV = "DLHUB_HPC_WORKER_KEY"  # a worker credential file, when not recorded
USER_KEY = "id"
_WORKER_SEND_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class KeyPair:
    """Z85 public and secret keys (40 characters each); ``secret`` is None for a public one."""

    public: str
    secret: str | None = None

    def __repr__(self) -> str:  # never print a secret
        return f"KeyPair(public={self.public!r}, secret={'...' if self.secret else None})"

    @classmethod
    def generate(cls) -> KeyPair:
        public, secret = zmq.curve_keypair()
        return cls(public.decode(), secret.decode())

    def require_secret(self, what: str) -> str:
        if self.secret is None:
            raise AuthenticationError(f"{what} has only a public key; a secret key is needed")
        return self.secret


def key_dir() -> Path:
    """``$DLHUB_HPC_KEYS``, else ``~/.dlhub-hpc/keys``."""
    return Path(os.environ.get(KEYS_ENV) or Path.home() / ".dlhub-hpc" / "keys")


def _certificate(pair: KeyPair, identity: str, hub_key: str | None = None) -> str:
    secret = f'    secret-key = "{pair.secret}"\n' if pair.secret else ""
    hub = f'    hub-key = "{hub_key}"\n' if hub_key else ""
    return (f"#   dlhub-hpc CurveZMQ certificate for {identity}\nmetadata\n"
            f'    identity = "{identity}"\n{hub}curve\n    public-key = "{pair.public}"\n'
            f"{secret}")


def _private_dirs(directory: Path) -> None:
    """Make ``directory`` and each missing parent 0700 (``mkdir(parents=True)`` leaves the
    parents at the umask's mode, so a first ``keys trust`` made ``keys/`` world-readable)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)


def write_keypair(path: Path, pair: KeyPair, identity: str, *, exclusive: bool = False,
                  hub_key: str | None = None) -> bool:
    """Write ``path`` (0600: it holds the secret) and ``path.pub``; False if ``exclusive``
    and ``path`` exists already (another process made it first)."""
    _private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(_certificate(pair, identity, hub_key))
        os.chmod(tmp, 0o600)
        if exclusive:
            try:
                os.link(tmp, path)  # atomic, and fails if another process won the race
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
            tmp = ""
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    if pair.secret is not None:  # the public half alone, to hand to the hub's admin
        pub = public_path(path)
        pub_tmp = pub.with_name(f".{pub.name}.{os.getpid()}")
        pub_tmp.write_text(_certificate(KeyPair(pair.public), identity))
        pub_tmp.replace(pub)
    return True


def public_path(path: Path) -> Path:
    """``id.key`` -> ``id.pub``; ``x.worker`` -> ``x.worker.pub``."""
    if path.name.endswith(".key"):
        return path.with_name(path.name[:-4] + ".pub")
    return path.with_name(path.name + ".pub")


def load_keypair(path: Path) -> KeyPair:
    """Read a certificate file (``.key`` with both keys, or ``.pub`` with the public one)."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise AuthenticationError(
            f"cannot read the key file {path}: {exc}; make one with 'dlhub-hpc keys create'"
        ) from exc
    if secret is not None and path.stat().st_mode & 0o077:
        raise AuthenticationError(
            f"{path} holds a secret key but others may read it; run 'chmod 600 {path}'",
            path=str(path),
        )
    return KeyPair(public.decode(), secret.decode() if secret else None)


def load_or_create(path: Path, identity: str) -> KeyPair:
    """The key pair in ``path``, made first if missing (safe when processes race)."""
    if not path.exists() and write_keypair(path, KeyPair.generate(), identity, exclusive=True):
        logger.info("made a new key pair for %s in %s", identity, path)
    return load_keypair(path)


def user_keypair(directory: Path | None = None) -> KeyPair:
    """This Unix user's key pair, made on first use."""
    return load_or_create((directory or key_dir()) / f"{USER_KEY}.key", getpass.getuser())


# -- what a hub records about itself for its user's clients and workers --

def _slug(address: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", address).strip("_")


def address_aliases(endpoint: str) -> list[str]:
    """The addresses a client may use for a bound endpoint (a wildcard host is any local one)."""
    m = re.match(r"^tcp://(\*|0\.0\.0\.0|127\.0\.0\.1|localhost):(\d+)$", endpoint)
    if not m:
        return [endpoint]
    port = m.group(2)
    hosts = ["127.0.0.1", "localhost"]
    if m.group(1) in ("*", "0.0.0.0"):
        hosts += ["0.0.0.0", socket.gethostname()]
    return [f"tcp://{h}:{port}" for h in hosts]


def record_hub(endpoint: str, server: KeyPair, worker: KeyPair | None = None,
               directory: Path | None = None) -> list[Path]:
    """Record the hub's public key (and, for its worker address, the worker credential)."""
    hubs = (directory or key_dir()) / "hubs"
    written = []
    for address in address_aliases(endpoint):
        server_file = hubs / f"{_slug(address)}.server"
        write_keypair(server_file, KeyPair(server.public), address)
        written.append(server_file)
        worker_file = hubs / f"{_slug(address)}.worker"
        if worker is not None:  # with the hub's key in it: one file is all a worker needs
            write_keypair(worker_file, worker, address, hub_key=server.public)
            written += [worker_file, public_path(worker_file)]
        else:  # a client address: a credential an earlier hub left on this port misleads
            forget_hub([worker_file, public_path(worker_file)])
    return written


def forget_hub(paths: list[Path]) -> None:
    """Remove what ``record_hub`` wrote (a stopped hub's keys mislead the next one's clients)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def trust_hub(address: str, public_key: str, directory: Path | None = None) -> Path:
    """Record a hub's public key by hand (what the admin gives other users)."""
    if not _is_public_key(public_key):
        raise AuthenticationError(
            f"{public_key!r} is not a CurveZMQ public key (40 Z85 characters): copy the key "
            "'dlhub-hpc keys hub-key' prints on the hub's machine", public_key=public_key)
    path = (directory or key_dir()) / "hubs" / f"{_slug(address)}.server"
    write_keypair(path, KeyPair(public_key), address)
    return path


def _is_public_key(key: str) -> bool:
    try:
        return len(key) == 40 and len(z85.decode(key.encode())) == 32
    except (ValueError, KeyError, UnicodeEncodeError):
        return False


def hub_public_key(address: str, directory: Path | None = None) -> str | None:
    """The recorded public key of the hub at ``address``: ``$DLHUB_HPC_HUB_KEY``, else the
    file its hub (or the admin) wrote; None if unknown."""
    env = os.environ.get(HUB_KEY_ENV)
    if env:
        return env
    path = (directory or key_dir()) / "hubs" / f"{_slug(address)}.server"
    if not path.exists():
        return None
    return load_keypair(path).public


def worker_credential_file(address: str, directory: Path | None = None) -> Path:
    """Where the hub whose worker address is ``address`` recorded its workers' credential
    (or ``$DLHUB_HPC_WORKER_KEY``). Bind it into a container and point the variable at it."""
    env = os.environ.get(WORKER_KEY_ENV)
    return Path(env) if env else (directory or key_dir()) / "hubs" / f"{_slug(address)}.worker"


def worker_credential(address: str, directory: Path | None = None) -> KeyPair | None:
    """The worker key pair for the hub whose worker address is ``address``, if recorded."""
    path = worker_credential_file(address, directory)
    return load_keypair(path) if path.exists() else None


def recorded_hub_key(path: Path) -> str | None:
    """The hub key written into a worker credential file, if there is one."""
    for line in path.read_text().splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == "hub-key":
            return value.strip().strip('"')
    return None


def container_worker_access(
    address: str, inside: str = "/mnt", read_only: bool = True,
) -> tuple[list[str], dict[str, str]]:
    """The bind and environment a containerised worker needs to reach the hub at ``address``.

    The user's ``hubs/`` key folder is bound onto ``inside`` (a directory every image has;
    runtimes cannot make mount points in a read-only image) and ``$DLHUB_HPC_WORKER_KEY``
    names the credential there: ``(["HOSTDIR:/mnt:ro"], {"DLHUB_HPC_WORKER_KEY": ...})``.
    ch-run binds are read-write only: pass ``read_only=False``.
    """
    path = worker_credential_file(address)
    if not path.exists():
        raise AuthenticationError(
            f"no worker credential recorded for the hub at {address} ({path}); start the "
            "hub as this user, or set $DLHUB_HPC_WORKER_KEY to the hub's worker.key")
    bind = f"{path.parent}:{inside}" + (":ro" if read_only else "")
    return [bind], {WORKER_KEY_ENV: f"{inside.rstrip('/')}/{path.name}"}


def curve_client(sock: zmq.Socket[bytes], server_key: str, pair: KeyPair) -> None:
    """Make ``sock`` a CurveZMQ client of the server with ``server_key`` (before connect)."""
    try:
        sock.curve_serverkey = server_key.encode()
    except zmq.ZMQError:
        raise AuthenticationError(
            f"{server_key!r} is not a CurveZMQ public key for the hub (40 Z85 characters): "
            f"check ${HUB_KEY_ENV} or record the key its admin gives with "
            "'dlhub-hpc keys trust ADDRESS KEY'", public_key=server_key) from None
    sock.curve_publickey = pair.public.encode()
    sock.curve_secretkey = pair.require_secret("this key pair").encode()


@dataclass(frozen=True)
class WorkerKey:
    """A worker credential, read: its key pair and the hub key recorded with it."""

    pair: KeyPair
    hub_key: str | None


def read_worker_credential(path: Path) -> WorkerKey:
    """Read a worker credential file once. ``/dev/fd/N`` (the hub hands a worker it starts
    its credential on an inherited descriptor) is closed afterwards, so the servable's code,
    which runs in this process later, cannot read it again."""
    fd = _descriptor(path)
    if fd is not None and not _is_file_descriptor(fd):
        raise AuthenticationError(
            f"{path} is not an open credential file: start the worker through the hub "
            "('workers start' or a pilot), which opens it on that descriptor, or pass "
            "--credential FILE", path=str(path))
    try:
        pair = load_keypair(path)
        return WorkerKey(pair, recorded_hub_key(path))
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _is_file_descriptor(fd: int) -> bool:
    """Is ``fd`` open on a regular file? (Never close a socket or pipe by mistake.)"""
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _descriptor(path: Path) -> int | None:
    m = re.fullmatch(r"/(?:dev/fd|proc/self/fd)/(\d+)", str(path))
    return int(m.group(1)) if m else None


def secure_worker(sock: zmq.Socket[bytes], address: str,
                  credential: WorkerKey | Path | None = None) -> bool:
    """Make a worker's socket a CurveZMQ client with a worker credential.

    The credential is ``credential`` (read already, or a file), or ``$DLHUB_HPC_WORKER_KEY``
    (a file), else what the hub recorded for ``address`` in the key directory. False, and
    a warning, when none is found: the socket then connects in the clear.
    """
    if not isinstance(credential, WorkerKey):
        path = credential or worker_credential_file(address)
        credential = read_worker_credential(path) if path.exists() else None
    server = (credential.hub_key if credential else None) or hub_public_key(address)
    # A refused handshake leaves the socket without a peer, where a send would block for
    # ever: a worker with a wrong credential, or none, must give up and exit, not hang.
    sock.setsockopt(zmq.SNDTIMEO, _WORKER_SEND_TIMEOUT_MS)
    if server is None or credential is None:
        logger.warning(
            "no worker credential for the hub at %s in %s (or $%s); connecting without "
            "CurveZMQ, which an authenticating hub refuses", address, key_dir() / "hubs",
            WORKER_KEY_ENV,
        )
        return False
    curve_client(sock, server, credential.pair)
    return True
