"""A servable's image, built for real, runs warm workers under bwrap and ch-run.

The image is built once per test session (mmdebstrap base, squashfs, SIF) into a cache
that outlives the session, so a rerun on the same machine builds nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

import dlhub_hpc.examples
from dlhub_hpc import Client, Hub
from dlhub_hpc.cli import cli
from dlhub_hpc.container.build import BuildResult, ImageBuilder
from dlhub_hpc.container.definition import PREFIX, build_options
from dlhub_hpc.container.launch import pick_image, runnable_image
from dlhub_hpc.container.runtimes import get_runtime
from dlhub_hpc.errors import ImageBuildError, ServableNotFound
from dlhub_hpc.pilot.command import Container, worker_command
from dlhub_hpc.registry.store import Registry
from dlhub_hpc.servable.bundle import make_bundle

from .conftest import wait_for, worker_processes

# The first test's setup may build the base with mmdebstrap (about a minute, from the network).
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(600)]

ADD = Path(dlhub_hpc.examples.__file__).parent / "add"
BUILD_TOOLS = ("mmdebstrap", "mksquashfs", "siftool")


def _skip_without(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {missing} (see scripts/system-packages.txt)")


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Outside pytest's per-session folder, so reruns reuse the base and the image."""
    env = os.environ.get("DLHUB_HPC_IMAGE_CACHE")
    return Path(env) if env else tmp_path_factory.getbasetemp().parent / "dlhub-hpc-image-cache"


@pytest.fixture(scope="session")
def add_image(tmp_path_factory: pytest.TempPathFactory, image_cache: Path) -> BuildResult:
    _skip_without(*BUILD_TOOLS)
    root = tmp_path_factory.mktemp("image-registry")
    registry = Registry(root)
    registry.publish(make_bundle(ADD))
    registry.close()
    builder = ImageBuilder(root, image_cache, backend="local")
    result = builder.build("demo/add")
    builder.prune(keep=4)  # images of older code would pile up in the lasting cache
    return result


@pytest.fixture
def start_in_container(hub: Hub) -> Iterator[Callable[[list[str]], psutil.Process]]:
    """Start worker commands; terminate them (and their containers) afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str]) -> psutil.Process:
        env = {**os.environ, "USER": os.environ.get("USER", "root")}  # ch-run needs $USER
        # A session of its own: stopping the group reaches the worker inside the container
        # even where the runtime forks it (ch-run over a .sqfs).
        procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                      start_new_session=True))
        return psutil.Process(procs[-1].pid)

    yield start
    for proc in procs:
        _signal_group(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    deadline = time.monotonic() + 15
    while any(_group_alive(p.pid) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in procs:
        _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _in_image(proc: psutil.Process) -> bool:
    """The worker's python (the process, or bwrap's child) has the image as its root."""
    for p in [proc, *proc.children(recursive=True)]:
        try:
            if "dlhub_hpc.worker" in p.cmdline() and Path(
                f"/proc/{p.pid}/root{PREFIX}/lib/dlhub_hpc"
            ).is_dir():
                return True
        except psutil.Error:
            continue
    return False


@pytest.mark.parametrize(("runtime_name", "fmt"), [
    ("bubblewrap", "dir"), ("charliecloud", "dir"), ("charliecloud", "sqfs"),
])
def test_two_workers_in_the_image_serve_requests(
    runtime_name: str, fmt: str, add_image: BuildResult, hub: Hub, client: Client,
    start_in_container: Callable[[list[str]], psutil.Process],
) -> None:
    runtime = get_runtime(runtime_name)
    if not runtime.available():
        pytest.skip(f"{runtime.executable} is not installed: {runtime.install_hint}")
    if fmt == "sqfs" and not Path("/dev/fuse").exists():
        pytest.skip("ch-run needs /dev/fuse to mount a SquashFS image")
    name = str(client.publish(ADD)["name"])
    image = add_image.image(fmt)
    assert pick_image(runtime, {fmt: image}) == image
    cmd = worker_command(hub.worker_address, name, heartbeat_interval=0.1,
                         container=Container(runtime, runnable_image(runtime, image))).argv
    workers = [start_in_container(cmd) for _ in range(2)]
    client.wait_for_workers(name, 2, timeout=90)

    futures = [client.submit(name, [i, i, 1.5], cache=False) for i in range(60)]
    assert [f.result(timeout=60) for f in futures] == [2 * i + 1.5 for i in range(60)]
    assert client.run(name, [1, 2, 3]) == 6.0
    wait_for(lambda: all(_in_image(w) for w in workers), timeout=10, interval=0.2,
             what="the workers run inside the image")
    ready = [w for w in client.status()["workers"] if w["servable"].startswith(name)]
    assert len(ready) == 2


def test_an_unchanged_servable_is_not_built_again(
    add_image: BuildResult, image_cache: Path, hub: Hub, client: Client,
) -> None:
    client.publish(ADD)
    # Another registry (the hub's), the same bundle: the image in the cache is reused.
    again = ImageBuilder(hub.config.home, image_cache, backend="local").build("demo/add")
    assert again.cached
    assert again.recipe_digest == add_image.recipe_digest
    assert again.steps == {}, "no build step ran"
    assert {f: r.sha256 for f, r in again.images.items()} == {
        f: r.sha256 for f, r in add_image.images.items()
    }


def test_the_sif_holds_definition_labels_and_squashfs(add_image: BuildResult) -> None:
    sif = add_image.image("sif").path

    def siftool(*args: str) -> str:
        return subprocess.run(["siftool", *args], capture_output=True, text=True,
                              check=True).stdout

    listing = siftool("list", sif)
    assert "Def.FILE" in listing
    assert "JSON.Labels" in listing
    assert "FS (Squashfs/*System/" in listing
    assert siftool("dump", "1", sif) == add_image.definition
    labels = json.loads(siftool("dump", "2", sif))
    assert labels["org.dlhub.servable"] == "demo/add@1"
    assert labels["org.dlhub.recipe-digest"] == f"sha256:{add_image.recipe_digest}"
    # The partition is a real SquashFS with Apptainer's layout: read a file out of it.
    offset = re.search(r"Offset:\s+(\d+)", siftool("info", "3", sif))
    assert offset is not None
    runscript = subprocess.run(
        ["unsquashfs", "-o", offset.group(1), "-cat", sif, ".singularity.d/runscript"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "exec python3 -m dlhub_hpc.worker" in runscript
    assert add_image.image("sif").verify() == sif


def test_the_build_command_reports_the_cached_image(
    add_image: BuildResult, image_cache: Path, hub: Hub, client: Client,
) -> None:
    client.publish(ADD)
    home = ["--home", str(hub.config.home), "--cache-dir", str(image_cache)]
    runner = CliRunner()
    shown = runner.invoke(cli, ["build", "demo/add@1", *home, "--definition"])
    assert shown.exit_code == 0, shown.output
    assert "%runscript" in shown.output
    assert "org.dlhub.servable demo/add@1" in shown.output
    built = runner.invoke(cli, ["build", "demo/add", *home, "--backend", "local",
                                "--prune", "4"])
    assert built.exit_code == 0, built.output
    assert "found cached image of demo/add@1" in built.output
    assert add_image.images["sif"].sha256[:16] in built.output
    assert "pruned" in built.output
    missing = runner.invoke(cli, ["build", "demo/nothing", *home])
    assert isinstance(missing.exception, ServableNotFound)


def test_a_failing_step_names_itself_and_shows_its_log_tail(
    add_image: BuildResult, image_cache: Path, tmp_path: Path,
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "servable.yaml").write_text(
        (ADD / "servable.yaml").read_text()
        .replace("name: add", "name: broken").replace("arith:add", "missing_module:add")
    )
    registry = Registry(tmp_path / "reg")
    registry.publish(make_bundle(broken))
    registry.close()
    builder = ImageBuilder(tmp_path / "reg", image_cache, backend="local")
    # The model does not load inside the image: the %test step fails, with the reason.
    with pytest.raises(ImageBuildError) as err:
        builder.build("demo/broken")
    assert err.value.details["step"] == "test"
    assert "missing_module" in str(err.value)
    # An unreachable mirror: mmdebstrap fails in the base step, and apt's error is shown.
    with pytest.raises(ImageBuildError) as err:
        ImageBuilder(tmp_path / "reg", tmp_path / "cache", backend="local").build(
            "demo/broken", build_options(mirror="http://127.0.0.1:9/debian"))
    assert err.value.details["step"] == "base"
    assert "Could not connect to 127.0.0.1:9" in str(err.value)


def test_a_site_base_sif_is_the_base_of_the_local_build(
    add_image: BuildResult, image_cache: Path, tmp_path: Path,
) -> None:
    _skip_without("unsquashfs")
    base_sif = add_image.image("sif").path
    registry = Registry(tmp_path / "reg")
    registry.publish(make_bundle(ADD))
    registry.close()
    result = ImageBuilder(tmp_path / "reg", image_cache, backend="local").build(
        "demo/add", build_options(base=f"localimage://{base_sif}", pip=["six"]))
    assert result.definition.startswith(f"Bootstrap: localimage\nFrom: {base_sif}\n")
    assert result.recipe_digest != add_image.recipe_digest
    # The image's %test passed on the unpacked base; the base's own files stay untouched
    # (the image's environment file extends the base's rather than writing through to it).
    env = ".singularity.d/env/90-environment.sh"
    base = next((image_cache / "base").glob("sif-*/rootfs"))
    assert (base / env).read_text().count("DLHUB_HPC_SERVABLE=") == 1
    assert (Path(result.image("dir").path) / env).read_text().count("DLHUB_HPC_SERVABLE=") == 2
    rootfs = result.image("dir").verify()
    # A --pip extra is importable inside the image.
    bwrap = get_runtime("bubblewrap")
    if bwrap.available():
        probe = bwrap.command(rootfs, ["python3", "-c", "import six; print(six.__file__)"])
        out = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout.startswith(f"{PREFIX}/lib/six")


def test_a_pilot_runs_its_workers_in_the_built_image(
    add_image: BuildResult, image_cache: Path, hub: Hub, client: Client,
) -> None:
    """A profile with a runtime and no image: the pilot takes the image 'build' recorded,
    checked against its digest, and its workers serve from inside it."""
    from dlhub_hpc.pilot.profiles import load_profile

    if not get_runtime("bubblewrap").available():
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    name = str(client.publish(ADD)["name"])
    ImageBuilder(hub.config.home, image_cache, backend="local").build(name)
    profile = load_profile("local").model_dump(mode="json")
    profile["container"] = {"runtime": "bubblewrap"}
    info = client.start_pilot(name, profile)
    try:
        client.wait_for_workers(name, 1, timeout=90)
        assert client.run(name, [1, 2, 3], cache=False) == 6.0
        # Found on the host by command line: inside the container the pid is another one.
        workers = [w for w in worker_processes(hub.worker_address) if "python3" in w.cmdline()]
        assert workers and all(_in_image(w) for w in workers)
    finally:
        client.stop_pilot([info["pilot_id"]])
