"""A screening loop as a Parsl workflow: generate candidates, score them with a servable on
the hub, keep the best, and generate the next round around them.

Candidate generation and selection are ordinary Parsl apps (here on a thread pool; on a
facility, on whatever executor the site uses); scoring is a servable app on a
``DLHubExecutor``, so each batch of candidates goes to warm workers on the hub. The apps
chain through futures: ``predict(generate(best))`` and ``keep_best(best, ...)``.

With a hub running (``dlhub-hpc hub start --background``)::

    python -m dlhub_hpc.examples.screening.workflow --rounds 5

publishes the example model (``demo/screening``) if the hub lacks it and starts a warm
worker for it if it has none (``--no-setup`` skips both), then runs the loop.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import parsl
from parsl import python_app
from parsl.config import Config
from parsl.executors import ThreadPoolExecutor

from dlhub_hpc.client import Client, find_hub_address
from dlhub_hpc.errors import DlhubHpcError, HubUnavailable, ServableNotFound
from dlhub_hpc.parsl_executor import DLHubExecutor, servable_app
from dlhub_hpc.security.client import listening

logger = logging.getLogger(__name__)

MODEL_DIR = Path(__file__).parent / "model"
SERVABLE = "demo/screening"
ELEMENTS = 4

Ranked = tuple[np.ndarray, np.ndarray]  # candidates (k, ELEMENTS), scores (k,), best first


def make_config(hub_address: str | None = None, run_dir: str = "runinfo") -> Config:
    """Two executors: threads for the workflow's own apps, the hub for the servable."""
    return Config(
        executors=[
            ThreadPoolExecutor(label="local", max_threads=2),
            DLHubExecutor(label="dlhub", address=hub_address),
        ],
        run_dir=run_dir,
        strategy="none",
    )


@python_app(executors=["local"])
def generate(best: Ranked | None, n: int, spread: float, seed: int) -> np.ndarray:
    """``n`` compositions: random at first, then mutations of the best so far."""
    rng = np.random.default_rng(seed)
    if best is None:
        x = rng.dirichlet(np.ones(ELEMENTS), size=n)
    else:
        parents = best[0][rng.integers(len(best[0]), size=n)]
        x = np.abs(parents + rng.normal(0.0, spread, size=parents.shape))
    return x / x.sum(axis=1, keepdims=True)


@python_app(executors=["local"])
def keep_best(best: Ranked | None, k: int, inputs: Sequence[Any] = ()) -> Ranked:
    """The ``k`` best of ``best`` and the new (candidates, scores) pairs in ``inputs``."""
    pairs = list(inputs)
    candidates = [np.asarray(c) for c in pairs[0::2]]
    scores = [np.asarray(s) for s in pairs[1::2]]
    if best is not None:
        candidates.append(best[0])
        scores.append(best[1])
    x, y = np.concatenate(candidates), np.concatenate(scores)
    order = np.argsort(-y, kind="stable")[:k]
    return x[order], y[order]


def screen(rounds: int = 5, batches: int = 4, batch_size: int = 64, keep: int = 8,
           seed: int = 0, servable: str = SERVABLE) -> Ranked:
    """Run the loop in the loaded Parsl config; returns the best candidates and scores."""
    predict = servable_app(servable)
    best: Any = None
    for r in range(rounds):
        spread = 0.2 / (r + 1)
        pairs: list[Any] = []
        for b in range(batches):
            candidates = generate(best, batch_size, spread, seed * 1_000_003 + r * 1009 + b)
            pairs += [candidates, predict(candidates)]
        best = keep_best(best, keep, inputs=pairs)
    result: Ranked = best.result()
    return result


def ensure_served(hub_address: str | None = None, servable: str = SERVABLE,
                  model_dir: Path = MODEL_DIR, timeout: float = 120.0) -> list[str]:
    """Publish ``model_dir`` if the hub lacks ``servable`` and start a worker if it has
    none; returns what was done, one line each."""
    address = hub_address or find_hub_address()
    if not listening(address):  # at once, not after the client's wait for a reply
        raise HubUnavailable(f"nothing listens at {address}")
    done: list[str] = []
    with Client(address, timeout=60) as client:
        try:
            client.describe(servable)
        except ServableNotFound:
            record = client.publish(model_dir)
            done.append(f"published {record['name']}@{record['version']}")
        ready = [w for w in client.status()["workers"]
                 if w["servable"].split("@")[0] == servable]
        if not ready:
            client.start_workers(servable, 1)
            client.wait_for_workers(servable, 1, timeout=timeout)
            done.append(f"started a warm worker for {servable}")
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", default=None, help="the hub's client address")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=4, help="batches per round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--keep", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-setup", dest="setup", action="store_false",
                        help="do not publish the model or start its worker")
    args = parser.parse_args(argv)
    if args.setup:
        try:
            for line in ensure_served(args.hub):
                print(line)
        except HubUnavailable:
            raise SystemExit("no hub is running: start one first with "
                             "'dlhub-hpc hub start --background' (or pass --hub ADDRESS)"
                             ) from None
        except DlhubHpcError as exc:
            raise SystemExit(f"could not set up {SERVABLE}: {type(exc).__name__}: {exc}"
                             ) from None
    # Parsl's run directory (logs, checkpoints) goes to a temporary folder, not the caller's.
    with tempfile.TemporaryDirectory(prefix="dlhub-screening-") as run_dir, \
            parsl.load(make_config(args.hub, str(Path(run_dir) / "runinfo"))):
        candidates, scores = screen(args.rounds, args.batches, args.batch_size, args.keep,
                                    args.seed)
    for x, y in zip(candidates, scores, strict=True):
        print(f"{y:10.6f}  " + "  ".join(f"{v:.3f}" for v in x))


if __name__ == "__main__":
    main()
