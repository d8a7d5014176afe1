"""Every command in README.md's fenced blocks runs as written, in order, on a fresh home.

The blocks run from a directory that looks like a fresh clone (the repository's top-level
entries linked into it, so nothing is written into the repository), with a fresh
``DLHUB_HPC_HOME`` and key directory, and this venv first on ``PATH``. Shell blocks run
line by line through bash; Python blocks run as scripts. What needs a site, the Globus
cloud, other Unix users or a GPU is skipped, each with its reason in ``SKIPPED``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

# The start of a shell line or a text in a Python block -> why it does not run here.
SKIPPED: dict[str, str] = {
    "make demo": "installs the venv with pip first; tests/integration/test_demo.py runs the "
                 "demo itself",
    "make test": "runs every test, this one included, and installs Debian packages as root",
    "dlhub-hpc endpoint register": "needs the Globus cloud (a login and the web service)",
    "dlhub-hpc --hub tcp://HOST:PORT endpoint configure": "needs a Globus function id from "
                                                          "the cloud; HOST:PORT are the reader's",
    "globus-compute-endpoint start": "needs the Globus cloud",
    "RemoteClient(": "needs the Globus cloud and a registered endpoint",
    "alice$": "needs other Unix users (alice, an admin) on the login node",
    "admin$": "needs other Unix users (alice, an admin) on the login node",
    'eval "$(scripts/slurm/start.sh)"': "needs root and Slurm installed (a site's scheduler)",
    "dlhub-hpc pilot start --profile slurm-local": "needs the Slurm started above",
    "dlhub-hpc run alice/seg @ref:": "needs a shared filesystem and the reader's servable; "
                                     "tests/integration/test_references.py runs these",
    'FileRef("/lus/': "needs a shared filesystem and the reader's servable; "
                      "tests/integration/test_references.py runs these",
    "collection_ref(": "needs the Globus cloud (tokens and a collection); "
                       "tests/unit/test_globus_collections.py checks its request",
}
TIMEOUT = 300  # one command or block, on a loaded machine


@dataclass(frozen=True)
class Block:
    language: str
    line: int
    text: str


def blocks(markdown: str) -> Iterator[Block]:
    """The fenced code blocks of ``markdown``, in order."""
    for found in re.finditer(r"^```(\w*)\n(.*?)^```$", markdown, flags=re.M | re.S):
        yield Block(found.group(1) or "sh", markdown[:found.start()].count("\n") + 1,
                    found.group(2))


def skipped_as(text: str, python: bool) -> str | None:
    """The entry of ``SKIPPED`` that a shell line starts with, or a Python block holds."""
    text = text.lstrip()
    return next((start for start in SKIPPED
                 if (start in text if python else text.startswith(start))), None)


def fresh_clone(root: Path) -> Path:
    """A directory that reads like a fresh clone of the repository."""
    clone = root / "clone"
    clone.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git", ".venv", "iris", "iris-copy", "dlhub.json"):
            (clone / entry.name).symlink_to(entry)
    return clone


def run(argv: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    if done.returncode != 0:
        raise AssertionError(f"README {what} failed ({done.returncode}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


@pytest.fixture
def readme_env(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    env = {**os.environ, "DLHUB_HPC_HOME": str(tmp_path / "home"),
           "DLHUB_HPC_KEYS": str(tmp_path / "keys"), "COLUMNS": "200",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DLHUB_HPC_HUB", None)
    yield fresh_clone(tmp_path), env
    # Whatever the README left running, if a step failed before its stop.
    subprocess.run([sys.executable, "-m", "dlhub_hpc.cli", "hub", "stop"], env=env,
                   capture_output=True, timeout=60, check=False)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_every_readme_command_runs_in_order(readme_env: tuple[Path, dict[str, str]]) -> None:
    clone, env = readme_env
    ran, skipped = 0, set()
    for block in blocks(README.read_text()):
        python = block.language == "python"
        assert python or block.language in ("sh", "bash"), f"README line {block.line}"
        pieces = [(0, block.text)] if python else list(enumerate(block.text.splitlines()))
        for offset, text in pieces:
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            why = skipped_as(text, python)
            if why is not None:
                skipped.add(why)
                continue
            argv = [sys.executable, "-c", text] if python else ["bash", "-c", text]
            where = f"line {block.line + 1 + offset}: {text.splitlines()[0]}"
            run(argv, clone, env, where)
            ran += 1
    assert ran >= 20, ran
    assert skipped == set(SKIPPED), set(SKIPPED) - skipped  # each reason still applies
