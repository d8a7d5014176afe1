"""Run a worker confined, on the node where it starts: ``python -m dlhub_hpc.security.confine``.

``--sandbox``: inside bubblewrap, which sees the system's programs and libraries, this
Python and the dlhub_hpc package (read-only), a private /tmp, and nothing of the hub's home,
its keys, the registry or any user's home. ``--user NAME``: as that Unix user (the hub
must run as root), with its own groups and home. Either way the environment is rebuilt
from an allow-list (scheduler, MPI and GPU variables), because the hub's environment may
hold secrets (tokens, client secrets) that the servable's code must not read.

The worker's credential arrives on an inherited file descriptor (``3<FILE`` in the job's
shell), so it is never on a path the servable can open; the worker reads it and closes it.
This launcher only execs: it costs one Python start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pwd
import shutil
import stat
import sys
import tempfile
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path

from dlhub_hpc._version import PACKAGE_DIR

logger = logging.getLogger(__name__)

# What a worker may inherit from the job's environment: the launcher's rank and the
# scheduler's GPU binding, locale, thread counts. Everything else is dropped.
KEEP_PREFIXES = ("SLURM_", "PMI_", "PMIX_", "OMPI_", "PALS_", "MPI_", "PBS_", "FLUX_",
                 "CUDA_", "ROCR_", "HIP_", "ZE_", "GPU_DEVICE_", "LC_", "OMP_", "MKL_",
                 "OPENBLAS_", "DLHUB_HPC_MPI", "I_MPI_", "HYDRA_", "MPICH_")
KEEP_NAMES = frozenset({"LANG", "TZ", "TERM"})
DROP_NAMES = frozenset({"DLHUB_HPC_WORKER_KEY", "DLHUB_HPC_KEYS", "DLHUB_HPC_HOME"})
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "hosts",
             "host.conf", "resolv.conf", "nsswitch.conf", "gai.conf", "localtime",
             "ssl", "ca-certificates", "alternatives", "mime.types", "os-release",
             "openmpi", "nvidia", "OpenCL", "vulkan")
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# The sandbox's pid as the node sees it: inside its own pid namespace the worker's pid is
# another number, useless to whoever reads it in status to signal the worker.
HOST_PID_ENV = "DLHUB_HPC_HOST_PID"


def kept_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The variables a confined worker keeps (see ``KEEP_PREFIXES``)."""
    return {k: v for k, v in env.items()
            if k not in DROP_NAMES and (k in KEEP_NAMES or k.startswith(KEEP_PREFIXES))}


def host_pid(environ: MutableMapping[str, str] | None = None) -> int:
    """This worker's pid as the node sees it, taking ``HOST_PID_ENV`` out of the
    environment (the servable's code has no use for it): bwrap's pid inside a sandbox,
    else this process's."""
    env = os.environ if environ is None else environ
    given = env.pop(HOST_PID_ENV, "")
    return int(given) if given.isdigit() and int(given) > 0 else os.getpid()


def python_paths() -> list[str]:
    """This interpreter's prefixes and the dlhub_hpc package: what a worker imports.

    Not ``sys.path`` as a whole: it holds the job's working folder (in the hub's home) and
    the user's site-packages.
    """
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(PACKAGE_DIR),
             str(Path(sys.executable).resolve().parent.parent)}
    return sorted(p for p in paths if p not in ("", "/") and Path(p).is_dir())


def bwrap_argv(argv: Sequence[str], env: Mapping[str, str], *, hide: Sequence[str] = (),
               extra: Sequence[str] = (), bwrap: str = "bwrap",
               paths: Sequence[str] | None = None) -> list[str]:
    """The bubblewrap command that runs ``argv`` sandboxed (see the module's docstring)."""
    cmd = [bwrap, "--unshare-all", "--share-net", "--die-with-parent", "--new-session",
           "--cap-drop", "ALL",
           # The private /tmp first: binds under /tmp (a venv there) must land on top of it.
           "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in SYSTEM_PATHS:
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    for name in ETC_FILES:
        if os.path.exists(f"/etc/{name}"):
            cmd += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    bound = [*(python_paths() if paths is None else paths), *extra]
    for path in bound:
        cmd += ["--ro-bind", path, path]
    for path in hide:  # the hub's home, were it under a bound path: an empty folder
        if Path(path).is_dir() and any(Path(path).is_relative_to(p) for p in bound):
            cmd += ["--tmpfs", path]
    cmd += ["--chdir", "/tmp", "--clearenv"]
    clean = {**env, "PATH": SANDBOX_PATH, "HOME": "/tmp", "PYTHONNOUSERSITE": "1"}
    for key, value in sorted(clean.items()):
        cmd += ["--setenv", key, value]
    return [*cmd, "--", *argv]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dlhub_hpc.security.confine")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--sandbox", action="store_true", help="run argv inside bubblewrap")
    how.add_argument("--user", help="run argv as this Unix user (needs root)")
    p.add_argument("--hide", action="append", default=[], help="a path never to show")
    p.add_argument("--ro", action="append", default=[], help="one more read-only path")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- the worker's command")
    return p


def main(args: list[str] | None = None) -> int:
    opts = _parser().parse_args(args)
    argv = opts.argv[1:] if opts.argv[:1] == ["--"] else opts.argv
    if not argv:
        print("confine: no command given after --", file=sys.stderr)
        return 2
    env = kept_environment(os.environ)
    # Resolved with the job's PATH: the confined PATH is the system's, where 'python3' is
    # another interpreter than the one these binds are for.
    argv[0] = shutil.which(argv[0]) or argv[0]
    if opts.sandbox:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            print("confine: bubblewrap (bwrap) is not installed on this node; install it "
                  "('apt-get install bubblewrap') or run the hub as root with user switching",
                  file=sys.stderr)
            return 2
        # exec keeps this pid for bwrap, whose --die-with-parent ends the worker with it
        env[HOST_PID_ENV] = str(os.getpid())
        full = bwrap_argv(argv, env, hide=opts.hide, extra=opts.ro, bwrap=bwrap)
        os.execve(bwrap, full, {"PATH": SANDBOX_PATH})
    return _switch_user(opts.user, argv, env)


def private_tmp(root: Path, uid: int) -> Path:
    """``root/dlhub-hpc-UID``, made 0700 by this (already switched) user; if another user
    made it first, or opened it to others, a fresh private directory instead: a planted one
    could feed the worker files or read what it writes."""
    tmp = root / f"dlhub-hpc-{uid}"
    with contextlib.suppress(FileExistsError):
        tmp.mkdir(mode=0o700)
    try:
        st = tmp.lstat()  # lstat: a symlink planted there is not followed
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == uid \
            and not stat.S_IMODE(st.st_mode) & 0o077:
        return tmp
    print(f"confine: {tmp} is not this user's private directory; using a fresh one",
          file=sys.stderr)
    return Path(tempfile.mkdtemp(prefix=f"dlhub-hpc-{uid}-", dir=root))


def _switch_user(name: str, argv: list[str], env: dict[str, str]) -> int:
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        print(f"confine: no Unix user {name!r} on this node", file=sys.stderr)
        return 2
    if account.pw_uid == 0:
        print("confine: refusing to run a servable's worker as root", file=sys.stderr)
        return 2
    # A bundle cache of its own: a shared one could be planted with code by another user.
    os.initgroups(name, account.pw_gid)
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    tmp = private_tmp(Path("/tmp"), account.pw_uid)
    env.update(HOME=account.pw_dir, USER=name, LOGNAME=name, TMPDIR=str(tmp),
               PATH=SANDBOX_PATH, PYTHONNOUSERSITE="1")
    os.execve(argv[0], argv, env)
    return 2  # not reached


if __name__ == "__main__":
    sys.exit(main())
