"""Servables whose calls wait at a gate (a FIFO) until the test opens it, so a test reads
the hub's state while it holds still: no sleeps, no timing."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks.servables.floats import write_float_servable

Gate = tuple[Path, Callable[[], None]]  # the FIFO, and the call that opens it for good


def gate_line(gate: Path) -> str:
    """model.py source that blocks until ``gate`` has a writer (then passes at once)."""
    return f"os.close(os.open({str(gate)!r}, os.O_RDONLY))  # blocks until the test opens it"


def write_gated(root: Path, gate: Path, *, name: str = "gated", tag: str = "pooltest",
                max_batch_size: int | None = 4, answer: str = "float(sum(x))") -> Path:
    """A servable ``test/name`` (tagged ``tag``) whose calls wait at ``gate``, then answer
    ``answer`` (an expression of ``x``, the list of floats, and ``os``)."""
    return write_float_servable(root, name, title=f"Gated {name}", tag=tag, owner="test",
                                max_batch_size=max_batch_size, model=f"""\
        import os


        def run(x):
            {gate_line(gate)}
            return {answer}
        """)


def open_gates(root: Path) -> Iterator[Callable[[str], Gate]]:
    """FIFOs under ``root`` by name; each gate's opener holds it open until the end."""
    fds: list[int] = []

    def make(name: str) -> Gate:
        path = root / f"gate-{name}"
        os.mkfifo(path)
        return path, lambda: fds.append(os.open(path, os.O_RDWR))

    yield make
    for fd in fds:
        os.close(fd)


def busy_workers(status: dict[str, object]) -> int:
    """Workers the hub's ``status`` shows running a batch (held at a gate, say)."""
    workers = status.get("workers", [])
    assert isinstance(workers, list)
    return sum(w.get("state") == "busy" for w in workers)


def write_gated_pids(root: Path, gate: Path, name: str = "gated-pid") -> Path:
    """A gated servable answering the pid of the worker that ran the call."""
    return write_gated(root, gate, name=name, answer="float(os.getpid())")
