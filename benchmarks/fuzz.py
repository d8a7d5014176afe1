"""Fuzz a real hub from legitimate identities, then check it still answers right.

    python benchmarks/fuzz.py [--messages 100000] [--seed 1] [--checks 500]

Starts a hub (``dlhub_hpc.Hub``, CurveZMQ on, a temporary home) with one worker for the
example servable ``demo/add``; then, from a registered client key on the client socket
and the hub's worker credential on the worker socket, sends ``--messages`` mutated
messages (bit flips, truncations, fields swapped for values of other types, huge integers,
deep nesting, invalid UTF-8, random tags, extra frames), split across both sockets; then
sends ``--checks`` valid requests and checks every answer. Prints the messages sent, hub
deaths (0 expected), the hub's drop and error counters, and the check's result; exits
non-zero if the hub died or any answer was wrong or missing.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlhub_hpc import Client, Hub, HubConfig
from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.protocol import (
    NDARRAY_EXT,
    NDARRAY_INLINE_EXT,
    STREAM_EXT,
    Abort,
    BatchResult,
    Bye,
    Chunk,
    Control,
    Credit,
    Drain,
    Heartbeat,
    Hello,
    LoadFailed,
    Message,
    Ready,
    Request,
    StreamRef,
    decode,
    encode,
)
from dlhub_hpc.protocol.bundle import bundle, parts
from dlhub_hpc.security.keys import curve_client, hub_public_key, user_keypair, worker_credential

logger = logging.getLogger(__name__)

ADD = Path(__file__).resolve().parents[1] / "dlhub_hpc" / "examples" / "add"
SAFE_OPS = {"status"}  # a fuzzed control may only ever be this one: others start or stop things
CHUNK = 500  # messages between liveness checks


@dataclass
class Raw:
    """Bytes spliced into a header as they are: what msgpack itself would never write."""

    data: bytes


def _deep(depth: int) -> Raw:
    return Raw(b"\x91" * depth + b"\x90")


# Values a field may be swapped for: other types, range edges, what cannot be carried.
POOL: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 1e308,
    float("nan"), float("inf"), -0.0, "", "x" * 5000, "demo/add", "run", b"\x00" * 9,
    [], {}, [1.0, 2.0], {"a": {"b": [1]}}, {1: 2}, {(1, 2): 3}, {b"k": 1},
    msgpack.ExtType(NDARRAY_INLINE_EXT, b"<i8;2;" + bytes(16)),
    msgpack.ExtType(NDARRAY_INLINE_EXT, b"<f8;1000000000;"),
    msgpack.ExtType(NDARRAY_INLINE_EXT, b"|O;1;" + bytes(8)),
    msgpack.ExtType(NDARRAY_EXT, b"<f8;4;1"), msgpack.ExtType(NDARRAY_EXT, b"<f8;2;7"),
    msgpack.ExtType(NDARRAY_EXT, b"<f8;-1;1"), msgpack.ExtType(99, b"?"),
    msgpack.Timestamp(2**33, 0),
    Raw(b"\xa2\xed\xa0"),  # a string that is not UTF-8 (a lone surrogate)
    Raw(b"\x81\xa2\xed\xa0\x01"),  # the same as a map key
    _deep(65), _deep(100), _deep(1000), _deep(1100), _deep(5000),
    Raw(b"\xdd\xff\xff\xff\xff"),  # an array that claims 4 billion elements
    Raw(b"\xc1"),  # never used in msgpack
    # chunked transfers (dlhub_hpc.transfer): refs to arrays that follow, valid or not
    msgpack.ExtType(STREAM_EXT, b"fuzz1;<f8;1000"), msgpack.ExtType(STREAM_EXT, b"fuzz1;|O;3"),
    msgpack.ExtType(STREAM_EXT, b"fuzz2;<f8;99999999999,99999999999"),
    msgpack.ExtType(STREAM_EXT, b"bad id;<f8;3"), msgpack.ExtType(STREAM_EXT, b";;"),
]


def seeds(worker_id: str) -> dict[str, list[Message]]:
    """Valid messages to start from, per socket."""
    worker = [
        Hello(worker_id, "demo/add", None, "fuzz", 1), Hello(worker_id, "demo/add", 1, "f", 2),
        Ready(worker_id), Heartbeat(worker_id), Drain(worker_id, "fuzz"), Bye(worker_id, "f"),
        LoadFailed(worker_id, {"type": "ServableLoadError", "message": "fuzz"}),
        *[BatchResult(i, [[True, 1.0], [False, {"type": "X"}]], 0.1) for i in range(1, 4)],
        BatchResult(1, [[True, StreamRef("fuzz3", "<f8", (4096,))]], 0.1),
        *transfer_steps(),
    ]
    caller = [
        Request("f1", "demo/add", None, "run", [1.0, 2.0], 5.0),
        Request("f2", "demo/add", 1, "", [3.0], None, False),
        Request("f3", "demo/none", None, "run", {"a": 1}),
        Control("f4", "status", {}),
        Request("f5", "demo/add", None, "run", StreamRef("fuzz1", "<f8", (1000,)), 5.0, False),
        *transfer_steps(),
    ]
    return {"worker": worker, "client": caller + worker[:3]}


def transfer_steps() -> list[Message]:
    """A chunked transfer's messages, for transfers that exist (fuzz1) and that do not."""
    return [
        Credit("fuzz1", 0), Credit("fuzz1", 2**40, 4096), Credit("nope", 8),
        Chunk("fuzz1", 0, np.zeros(20_000, dtype=np.uint8)),  # a raw frame of its own
        Chunk("fuzz1", 4096, np.zeros(8000, dtype=np.uint8)),  # inside the header
        Abort("fuzz1", {"type": "TransferFailed", "message": "fuzz"}),
    ]


def _pack(values: list[Any]) -> bytes:
    packer = msgpack.Packer(use_bin_type=True)
    out = [packer.pack_array_header(len(values))]
    for value in values:
        out.append(value.data if isinstance(value, Raw) else packer.pack(value))
    return b"".join(out)


def mutate(msg: Message, rng: random.Random) -> list[bytes]:
    """One mutated message (its frames) made from the valid ``msg``."""
    frames = [bytes(memoryview(f)) for f in encode(msg)]
    values: list[Any] = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    how = rng.choice(["flip", "truncate", "swap", "swap", "tag", "frames", "bytes", "grow",
                      "bundle"])
    if how == "bundle":  # a few of its mutations in one frame, the envelope sometimes broken
        inner = [mutate(msg, rng)[0] for _ in range(rng.randint(1, 4))]
        whole = bytearray(bundle(inner))
        if rng.random() < 0.3:
            whole[rng.randrange(len(whole))] ^= 1 << rng.randrange(8)
        return [bytes(whole)]
    if how == "swap":
        for _ in range(rng.randint(1, 2)):
            values[rng.randrange(len(values))] = rng.choice(POOL)
        return [_pack(values), *frames[1:]]
    if how == "tag":
        values[1] = rng.choice([*range(0, 25), 30, 31, 32, 255, 2**16, -1])
        return [_pack(values), *frames[1:]]
    if how == "grow":  # fields added or taken away
        values = [*values, rng.choice(POOL)] if rng.random() < 0.5 else values[:-1]
        return [_pack(values), *frames[1:]]
    head = bytearray(frames[0])
    if how == "flip":
        for _ in range(rng.randint(1, 4)):
            head[rng.randrange(len(head))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        del head[rng.randrange(len(head)):]
    elif how == "bytes":
        head = bytearray(rng.randbytes(rng.randint(0, 64)))
    else:  # extra frames, some of them empty
        return [bytes(head), *frames[1:],
                *[rng.randbytes(rng.choice([0, 1, 32, 4096])) for _ in range(rng.randint(1, 3))]]
    return [bytes(head), *frames[1:]]


def allowed(frames: list[bytes]) -> bool:
    """Never send a control that would start or stop things (the key is the hub's admin),
    alone or in a bundle."""
    try:
        inner = parts(frames[0]) if len(frames) == 1 else None
    except DlhubHpcError:
        return True  # a broken envelope: the hub drops it whole
    if inner is not None:
        return all(allowed([part.bytes]) for part in inner)
    try:
        msg = decode(frames)
    except DlhubHpcError:
        return True
    return not isinstance(msg, Control) or msg.op in SAFE_OPS


@dataclass
class Fuzzed:
    sent: Counter[str] = field(default_factory=Counter)
    hub_deaths: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    checks_ok: int = 0
    checks_wrong: list[str] = field(default_factory=list)


def dealer(ctx: zmq.Context[Any], address: str, worker: bool) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    server = hub_public_key(address)
    pair = worker_credential(address) if worker else user_keypair()
    if server is None or pair is None:
        raise SystemExit(f"no CurveZMQ keys recorded for {address}")
    curve_client(sock, server, pair)
    sock.connect(address)
    return sock


def start_hub(home: Path) -> tuple[Hub, Client]:
    """A hub on loopback with one warm worker for demo/add."""
    hub = Hub(HubConfig(home=home, client_address="tcp://127.0.0.1:0",
                        worker_address="tcp://127.0.0.1:0",
                        heartbeat_interval=0.2, heartbeat_timeout=1.5)).start()
    client = Client(hub.client_address, timeout=30)
    client.publish(ADD)
    client.start_workers("demo/add", 1)
    client.wait_for_workers("demo/add", 1, timeout=120)
    return hub, client


def alive(hub: Hub, client: Client) -> bool:
    if hub._stopped.is_set():  # the broker loop's thread has ended
        return False
    try:
        client.status(timeout=30)
    except DlhubHpcError:
        return False
    return True


def fuzz(hub: Hub, client: Client, messages: int, seed: int, result: Fuzzed) -> None:
    """Send ``messages`` mutated messages, half on each socket, checking the hub lives."""
    rng = random.Random(seed)
    ctx = zmq.Context.instance()
    socks = {"client": dealer(ctx, hub.client_address, False),
             "worker": dealer(ctx, hub.worker_address, True)}
    pool = seeds(f"fuzz-{seed}")
    try:
        for start in range(0, messages, CHUNK):
            for _ in range(min(CHUNK, messages - start)):
                kind = rng.choice(("client", "worker"))
                frames = mutate(rng.choice(pool[kind]), rng)
                while not allowed(frames):
                    frames = mutate(rng.choice(pool[kind]), rng)
                socks[kind].send_multipart(frames)
                result.sent[kind] += 1
            for sock in socks.values():  # answers to the fuzz: read and let go
                while sock.poll(0):
                    sock.recv_multipart()
            if not alive(hub, client):
                result.hub_deaths += 1
                return
    finally:
        for sock in socks.values():
            sock.close(linger=0)


def check_answers(client: Client, checks: int, result: Fuzzed) -> None:
    """Once the fuzz's own workers are gone, ``checks`` valid requests, all answered right."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = client.status()["workers"]
        if len(workers) == 1 and workers[0]["state"] in ("idle", "busy"):
            break
        time.sleep(0.2)
    inputs = [[float(i), 0.5] for i in range(checks)]
    answers = client.run_batch("demo/add", inputs, timeout=60, return_exceptions=True)
    for x, answer in zip(inputs, answers, strict=True):
        if answer == sum(x):
            result.checks_ok += 1
        else:
            result.checks_wrong.append(f"{x} -> {answer!r}")


def run(messages: int, seed: int = 1, checks: int = 500, home: Path | None = None) -> Fuzzed:
    """The whole fuzz: a hub, the mutated messages, the checks; the hub is always stopped."""
    result = Fuzzed()
    with tempfile.TemporaryDirectory(prefix="dlhub-fuzz-") as tmp:
        hub, client = start_hub(home or Path(tmp) / "hub")
        try:
            before = Counter(client.status()["stats"])
            fuzz(hub, client, messages, seed, result)
            if result.hub_deaths == 0:
                check_answers(client, checks, result)
                after = Counter(client.status()["stats"])
                result.stats = {k: after[k] - before[k] for k in sorted(after)
                                if after[k] != before[k]}
        finally:
            client.close()
            hub.stop()
    return result


def report(result: Fuzzed, checks: int) -> bool:
    print(f"messages sent: {sum(result.sent.values())} "
          f"(client socket {result.sent['client']}, worker socket {result.sent['worker']})")
    print(f"hub deaths: {result.hub_deaths}")
    print("hub counters during the run:")
    for name, value in result.stats.items():
        print(f"  {name:28} {value}")
    print(f"check: {result.checks_ok}/{checks} answers right")
    for wrong in result.checks_wrong[:10]:
        print(f"  wrong: {wrong}")
    return result.hub_deaths == 0 and result.checks_ok == checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="mutated messages to send")
    parser.add_argument("--checks", type=int, default=500, help="valid requests afterwards")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-v", "--verbose", action="store_true", help="show the hub's log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dlhub-fuzz-keys-") as keys:
        os.environ.setdefault("DLHUB_HPC_KEYS", keys)  # not the user's own key folder
        result = run(args.messages, args.seed, args.checks)
    ok = report(result, args.checks)
    print(f"took {time.monotonic() - started:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
