"""The built wheel, installed (not editable) into a fresh venv, carries every site profile,
config template and example: the commands an admin runs first work from that install."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILES = {"local", "slurm-local", "polaris", "aurora", "frontier", "perlmutter", "slurm", "pbs"}
# Never copied into the build: environments, caches, earlier builds.
_SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                               ".*_cache", ".dlhub-hpc", "results")

pytestmark = pytest.mark.slow


@dataclass
class Install:
    venv: Path
    home: Path  # a working directory outside the source tree
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 120,
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(args, cwd=self.home, env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def dlhub(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "dlhub-hpc"), *args, check=check)

    def python(self, code: str) -> str:
        return self.run(str(self.venv / "bin" / "python"), "-c", code).stdout.strip()


def _build_wheel(dest: Path) -> Path:
    # From a copy, so that a build here leaves nothing in the shared checkout.
    source = dest / "src"
    shutil.copytree(ROOT, source, ignore=_SKIP)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dest / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (dest / "dist").glob("dlhub_hpc-*.whl")
    return wheel


def _fresh_venv(path: Path) -> Path:
    """A venv without dlhub_hpc that sees this one's dependencies (offline, and fast)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   timeout=120)
    purelib = subprocess.run([str(path / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # A path line in a .pth: its own .pth files (this checkout's editable finder) are not read.
    Path(purelib, "_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return Path(purelib)


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    base = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(base)
    venv = base / "venv"
    purelib = _fresh_venv(venv)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--ignore-installed", str(wheel)], check=True, timeout=300)
    home = base / "work"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DLHUB_HPC_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(DLHUB_HPC_HOME=str(home / "hub"), COLUMNS="200",
               PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}")
    made = Install(venv, home, env)
    located = made.python("import dlhub_hpc; print(dlhub_hpc.__file__)")
    assert Path(located).is_relative_to(purelib), f"imported {located}, not the installed copy"
    yield made


def test_the_wheel_ships_every_profile(install: Install) -> None:
    listed = install.dlhub("profiles", "list").stdout
    for name in PROFILES:
        assert name in listed
    assert "_shipped/site_profiles" in listed  # the installed copy, not the checkout
    checked = install.dlhub("profiles", "check")
    assert checked.stdout.count(" ok ") >= len(PROFILES), checked.stdout
    shown = install.dlhub("profiles", "show", "polaris").stdout
    assert "type: PBSProProvider" in shown
    rendered = install.dlhub("profiles", "render", "frontier", "--servable", "alice/m@1").stdout
    assert "sbatch " in rendered and "#SBATCH" in rendered and "--servable alice/m@1" in rendered


def test_the_wheel_ships_the_configs(install: Install) -> None:
    configs = Path(install.python(
        "from dlhub_hpc.shipped import shipped_dir; print(shipped_dir('configs'))"))
    assert configs.is_relative_to(install.venv)
    for name in ("hub.yaml", "globus_compute/engine.yaml.tmpl", "servables/README.md"):
        assert (configs / name).is_file(), name
    # the documented hub settings start a hub from the install
    settings = yaml.safe_load((configs / "hub.yaml").read_text())
    settings.update(client_address="tcp://127.0.0.1:0", worker_address="tcp://127.0.0.1:0")
    hub_file = install.home / "hub.yaml"
    hub_file.write_text(yaml.safe_dump(settings))
    install.dlhub("hub", "start", "--config", str(hub_file), "--background")
    state = json.loads((install.home / "hub" / "hub.json").read_text())
    try:
        assert install.dlhub("status").returncode == 0
    finally:
        install.dlhub("hub", "stop", check=False)
        if psutil.pid_exists(state["pid"]):
            psutil.Process(state["pid"]).wait(timeout=30)


def test_endpoint_configure_from_the_install(install: Install) -> None:
    root = install.home / "endpoints"
    function_id = str(uuid.uuid4())
    install.dlhub("--hub", "tcp://10.1.2.3:47650", "endpoint", "configure", "site",
                  "--multi-user", "--function-id", function_id, "--endpoint-dir", str(root))
    directory = root / "site"
    assert function_id in (directory / "config.yaml").read_text()
    user = (directory / "user_config_template.yaml.j2").read_text()
    assert "idle_heartbeats_soft: 10" in user and "DLHUB_HPC_HUB=tcp://10.1.2.3:47650" in user
    assert json.loads((directory / "user_config_schema.json").read_text())["properties"] == {}


def test_the_demo_runs_from_the_install(install: Install) -> None:
    located = install.python("from dlhub_hpc.examples import EXAMPLES; print(EXAMPLES)")
    assert Path(located).is_relative_to(install.venv)
    out = install.run(str(install.venv / "bin" / "python"), "-m", "dlhub_hpc.demo",
                      "--requests", "8", timeout=180).stdout
    assert "published demo/add@1" in out and "published demo/iris@1" in out
    assert "demo/add [1.5, 2.5, 3.0] -> 7.0" in out and "hub and workers stopped" in out
