"""The local image build: what ``apptainer build`` would make, from Debian's own tools.

Steps (each logged to ``build.log``; a failure raises ImageBuildError with its tail):

- base: mmdebstrap, cached and shared by every servable with the same packages; or a
  site's base SIF (``localimage://``), unpacked once,
- rootfs: a hard-linked copy of the base; later steps write new files only, never
  through a link into the base,
- python: dlhub_hpc and the worker's pure dependencies, copied from this interpreter
  (which matches Debian bookworm's Python 3.11),
- bundle, metadata (``/.singularity.d``, ``/ch/environment``), test (the %test, run
  with bubblewrap), squashfs (mksquashfs, zstd) and sif (siftool: definition, labels,
  squashfs partition).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata as md
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dlhub_hpc._version import PACKAGE_DIR
from dlhub_hpc.container.definition import (
    BUNDLES_DIR,
    LIB_DIR,
    WORKER_PYTHON_DEPS,
    Recipe,
    labels_json,
)
from dlhub_hpc.container.runtimes import BubblewrapRuntime
from dlhub_hpc.errors import ImageBuildError, RuntimeNotFound
from dlhub_hpc.servable.bundle import unpack_bundle

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 25
# Debian ships these compiled modules itself (python3-zmq, -msgpack, -numpy).
FROM_DEBIAN = {"pyzmq", "msgpack", "numpy"}
TOOLS = {
    "mmdebstrap": "apt-get install mmdebstrap",
    "mksquashfs": "apt-get install squashfs-tools",
    "unsquashfs": "apt-get install squashfs-tools",
    "siftool": "apt-get install siftool",
}


def require_tool(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise RuntimeNotFound(
            f"the local image build needs {tool!r}, which is not on PATH; install it: "
            f"{TOOLS.get(tool, tool)} (see scripts/system-packages.txt)", tool=tool,
        )
    return found


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_step(step: str, argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
             timeout: float = 1800) -> None:
    """Run one build command, appending its output to ``log``; fail with the step's tail.

    The command gets a process group of its own; if the build is interrupted, the whole
    group is stopped (SIGTERM first, so mmdebstrap unmounts what it mounted in the chroot).
    """
    logger.info("build step %s: %s", step, " ".join(argv))
    with log.open("ab") as fh:
        fh.write(f"\n$ {' '.join(argv)}\n".encode())
        fh.flush()
        try:
            proc = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            fh.write(f"{exc}\n".encode())
            raise build_error(step, log, str(exc)) from exc
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _stop_group(proc)
            fh.write(f"{exc}\n".encode())
            raise build_error(step, log, f"no result after {timeout:.0f} s") from exc
        except BaseException:
            _stop_group(proc)
            raise
    if returncode != 0:
        raise build_error(step, log, f"exit status {returncode}")


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (a killed chroot build can leave /proc, /dev)."""
    root = str(path.resolve())
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1].replace("\\040", " ") for line in lines if len(line.split()) > 1]
    prefix = root.rstrip("/") + "/"
    return [p for p in points if p == root or p.startswith(prefix)]


def remove_tree(path: Path) -> None:
    """rmtree, but never through a mount point (it could be the host's /dev)."""
    mounted = mounts_under(path) if path.exists() else []
    if mounted:
        raise ImageBuildError(
            f"{path} has file systems mounted inside it ({', '.join(mounted)}), left by an "
            f"interrupted build; unmount them ('umount -R {mounted[0]}') and build again",
            step="base", mounts=mounted,
        )
    shutil.rmtree(path, ignore_errors=True)


def build_error(step: str, log: Path, why: str) -> ImageBuildError:
    tail = log_tail(log)
    return ImageBuildError(
        f"image build step {step!r} failed ({why}); the end of {log}:\n{tail}",
        step=step, log=str(log), tail=tail,
    )


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock file, so concurrent builds of one thing wait rather than collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def try_remove_locked(path: Path, lock: Path) -> bool:
    """Remove ``path`` if nobody holds ``lock`` (a build in progress); True if removed."""
    with lock.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            remove_tree(path)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    lock.unlink(missing_ok=True)
    return True


def base_key(suite: str, mirror: str, packages: Sequence[str]) -> str:
    data = json.dumps({"suite": suite, "mirror": mirror, "packages": sorted(packages)})
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def ensure_base(cache: Path, suite: str, mirror: str, packages: Sequence[str]) -> Path:
    """The cached Debian root filesystem for these packages, made once with mmdebstrap."""
    key = base_key(suite, mirror, packages)
    root = cache / "base" / key
    with locked(cache / "base" / f"{key}.lock"):
        if (root / "rootfs" / "usr" / "bin" / "python3").exists():
            logger.info("base %s is cached", key)
            return root / "rootfs"
        remove_tree(root)
        root.mkdir(parents=True)
        tmp = root / "rootfs.tmp"
        argv = [require_tool("mmdebstrap"), "--variant=minbase",
                f"--include={','.join(packages)}", suite, str(tmp), mirror]
        run_step("base", argv, root / "mmdebstrap.log")
        tmp.rename(root / "rootfs")
    return root / "rootfs"


def sif_squashfs_offset(sif: Path) -> int:
    """Where the SIF's SquashFS system partition starts (from ``siftool list``)."""
    proc = subprocess.run([require_tool("siftool"), "list", str(sif)], capture_output=True,
                          text=True, check=False)
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 5 and cells[4].startswith("FS (Squashfs"):
            return int(cells[3].split("-")[0])
    raise ImageBuildError(
        f"{sif} has no SquashFS partition, so it cannot be a base image "
        f"(siftool list said: {(proc.stdout + proc.stderr).strip()[-500:]})", step="base",
    )


def ensure_base_from_sif(cache: Path, sif: Path, digest: str) -> Path:
    """A site's base SIF (``localimage://``) unpacked once, keyed by its sha256."""
    root = cache / "base" / f"sif-{digest[:16]}"
    with locked(cache / "base" / f"sif-{digest[:16]}.lock"):
        if (root / "rootfs" / "usr" / "bin" / "python3").exists():
            logger.info("base %s is cached", root.name)
            os.utime(root)  # last use, for ImageBuilder.prune()
            return root / "rootfs"
        remove_tree(root)
        root.mkdir(parents=True)
        tmp = root / "rootfs.tmp"
        offset = sif_squashfs_offset(sif)
        run_step("base", [require_tool("unsquashfs"), "-o", str(offset), "-no-progress",
                          "-d", str(tmp), str(sif)], root / "unsquashfs.log")
        if not (tmp / "usr" / "bin" / "python3").exists():
            raise ImageBuildError(
                f"the base image {sif} has no /usr/bin/python3; the worker needs Python 3 "
                "with pyzmq, msgpack and numpy in the base", step="base",
            )
        tmp.rename(root / "rootfs")
    return root / "rootfs"


_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _requirement(text: str) -> tuple[str, str]:
    """(name, marker) of a requirement string such as ``'x>=1; extra == "y"'``."""
    spec, _, marker = text.partition(";")
    match = _REQ_NAME.match(spec)
    if match is None:
        raise ImageBuildError(f"cannot read the requirement {text!r}", step="python")
    return match.group(1), marker.strip()


def worker_distributions(roots: Sequence[str] = WORKER_PYTHON_DEPS) -> list[md.Distribution]:
    """The installed distributions the worker needs beyond Debian's, with their deps.

    Requirements behind an ``extra`` are left out; other conditional ones (an old Python's
    backports) are copied when installed here and skipped when not.
    """
    found: dict[str, md.Distribution] = {}
    pending = [(_requirement(r)[0], "") for r in roots]
    while pending:
        name, marker = pending.pop()
        key = name.lower().replace("_", "-")
        if key in found or key in FROM_DEBIAN:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            if marker:
                continue
            raise ImageBuildError(
                f"the worker needs the Python package {name!r}, which is not installed here; "
                f"pip install {name}", step="python",
            ) from None
        found[key] = dist
        for req in dist.requires or []:
            dep, dep_marker = _requirement(req)
            if "extra" not in dep_marker:
                pending.append((dep, dep_marker))
    return list(found.values())


def copy_distribution(dist: md.Distribution, target: Path) -> None:
    for file in dist.files or []:
        if file.parts[0] == ".." or "__pycache__" in file.parts:
            continue
        src = Path(str(dist.locate_file(file)))
        if src.is_file():
            dest = target / file
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)


def install_python(rootfs: Path, recipe: Recipe, log: Path) -> None:
    """dlhub_hpc, its worker's dependencies and any extra pip requirements into the image."""
    lib = rootfs / LIB_DIR.lstrip("/")
    # The rootfs is hard-linked to the shared base: never write into a file it may hold.
    shutil.rmtree(lib, ignore_errors=True)
    lib.mkdir(parents=True)
    if sys.version_info[:2] != (3, 11):
        logger.warning("copying Python %s packages into a Python 3.11 image",
                       ".".join(map(str, sys.version_info[:2])))
    for dist in worker_distributions():
        copy_distribution(dist, lib)
    source = PACKAGE_DIR
    shutil.copytree(source, lib / "dlhub_hpc", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if recipe.options.pip:
        run_step("python", [sys.executable, "-m", "pip", "install", "--no-cache-dir",
                            "--target", str(lib), *recipe.options.pip], log)
    pth = rootfs / "usr" / "lib" / "python3" / "dist-packages" / "dlhub-hpc.pth"
    pth.parent.mkdir(parents=True, exist_ok=True)
    pth.unlink(missing_ok=True)
    pth.write_text(f"{LIB_DIR}\n")
    # A read-only image cannot cache bytecode at run time; compile it now (same 3.11 magic).
    run_step("python", [sys.executable, "-m", "compileall", "-q", "-j", "0", "-d", LIB_DIR,
                        str(lib)], log)


def install_bundle(rootfs: Path, recipe: Recipe, bundle: bytes) -> None:
    bundles = rootfs / BUNDLES_DIR.lstrip("/")
    shutil.rmtree(bundles, ignore_errors=True)  # unlink, never overwrite, base files
    unpack_bundle(bundle, bundles / recipe.bundle_digest)


def _write_fresh(path: Path, text: str, *, append: bool = False, mode: int = 0o644) -> None:
    """Write a new file at ``path``: never through a hard link into the shared base.

    With ``append``, what the base had there comes first (Apptainer appends a derived
    image's %environment to its base's the same way).
    """
    old = path.read_text() if append and path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(old + text)
    path.chmod(mode)


def write_metadata(rootfs: Path, recipe: Recipe, definition: str) -> None:
    """The files Apptainer and Charliecloud read inside an image."""
    sd = rootfs / ".singularity.d"
    (sd / "actions").mkdir(parents=True, exist_ok=True)
    _write_fresh(sd / "Singularity", definition)
    _write_fresh(sd / "labels.json", labels_json(recipe).decode())
    env_lines = "".join(f"export {k}={v!s}\n" for k, v in recipe.environment().items())
    env_file = sd / "env" / "90-environment.sh"
    had_env = env_file.is_file()
    _write_fresh(env_file, env_lines if had_env else "#!/bin/sh\n" + env_lines, append=True,
                 mode=0o755)
    scripts = {"runscript": recipe.runscript(), "test": recipe.test_command()}
    for name, body in scripts.items():
        _write_fresh(sd / name, f"#!/bin/sh\n. /.singularity.d/env/90-environment.sh\n{body}\n",
                     mode=0o755)
    link = rootfs / "singularity"
    if not link.is_symlink():
        link.symlink_to(".singularity.d/runscript")
    # ch-run --set-env (no argument) reads this file.
    _write_fresh(rootfs / "ch" / "environment",
                 "".join(f"{k}={v}\n" for k, v in recipe.environment().items()), append=True)


def run_test(rootfs: Path, recipe: Recipe, log: Path) -> None:
    """The image's %test: load the model inside the image, as a worker will."""
    argv = ["python3", "-m", "dlhub_hpc.container.selftest"]
    runtime = BubblewrapRuntime()
    if runtime.available():
        cmd = runtime.command(str(rootfs), argv, env=recipe.environment())
    else:  # chroot works as root and needs no namespaces
        cmd = ["chroot", str(rootfs), "env", "-i", "PATH=/usr/bin:/bin",
               *(f"{k}={v}" for k, v in recipe.environment().items()), *argv]
    run_step("test", cmd, log, timeout=300)


def make_squashfs(rootfs: Path, out: Path, log: Path, level: int = 3) -> None:
    argv = [require_tool("mksquashfs"), str(rootfs), str(out), "-noappend", "-all-root",
            "-comp", "zstd", "-Xcompression-level", str(level), "-no-progress",
            "-processors", str(max(1, os.cpu_count() or 1))]
    run_step("squashfs", argv, log)


def make_sif(squashfs: Path, definition: Path, labels: Path, out: Path, log: Path,
             arch: str = "2") -> None:
    """A real SIF: definition (type 1), labels JSON (type 3), squashfs system partition."""
    siftool = require_tool("siftool")
    out.unlink(missing_ok=True)
    run_step("sif", [siftool, "new", str(out)], log)
    run_step("sif", [siftool, "add", str(out), str(definition), "--datatype", "1"], log)
    run_step("sif", [siftool, "add", str(out), str(labels), "--datatype", "3"], log)
    run_step("sif", [siftool, "add", str(out), str(squashfs), "--datatype", "4",
                     "--parttype", "2", "--partfs", "1", "--partarch", arch], log)


__all__ = [
    "ensure_base",
    "ensure_base_from_sif",
    "install_bundle",
    "install_python",
    "make_sif",
    "make_squashfs",
    "remove_tree",
    "require_tool",
    "run_step",
    "run_test",
    "write_metadata",
]
