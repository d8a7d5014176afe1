"""The CLI imports a command's module only when that command runs; ``--help`` imports none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from dlhub_hpc.cli import COMMANDS, cli, load_command
from dlhub_hpc.examples import example_dir
from dlhub_hpc.registry.store import Registry
from dlhub_hpc.servable import make_bundle

# Dumps the modules a `dlhub-hpc ARGS...` process ended with, as JSON, on exit.
DRIVER = """
import atexit, json, os, sys
def dump():
    with open(os.environ["MODULES_OUT"], "w") as fh:
        json.dump(sorted(sys.modules), fh)
atexit.register(dump)
sys.argv = ["dlhub-hpc", *sys.argv[1:]]
from dlhub_hpc.cli import main
main()
"""
HEAVY = {"parsl", "globus_compute_sdk", "globus_compute_endpoint", "globus_sdk"}


def modules_after(tmp_path: Path, *args: str, env: dict[str, str] | None = None
                  ) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules loaded by ``dlhub-hpc ARGS`` run in a fresh interpreter."""
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {}), "MODULES_OUT": str(out)})
    return set(json.loads(out.read_text())), done


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_every_command_is_listed_with_its_own_short_help() -> None:
    for name, (_, _, short) in COMMANDS.items():
        command = load_command(name)
        assert command.name == name
        assert command.get_short_help_str(limit=1000) == short, name


def test_help_lists_every_command() -> None:
    shown = CliRunner().invoke(cli, ["--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    listed = shown.output.split("Commands:")[1].split()
    assert set(COMMANDS) <= set(listed)


def test_an_unknown_command_is_a_usage_error() -> None:
    shown = CliRunner().invoke(cli, ["frobnicate"])
    assert shown.exit_code == 2
    assert "No such command 'frobnicate'" in shown.output


def test_help_imports_no_command_and_no_heavy_library(tmp_path: Path) -> None:
    modules, done = modules_after(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    assert "workers" in done.stdout
    commands = {m for m in modules if m.startswith("dlhub_hpc.cli.")}
    assert commands == set(), commands
    assert not top_level(modules) & (HEAVY | {"numpy", "zmq", "pydantic", "yaml"})


def test_run_help_imports_neither_parsl_nor_globus(tmp_path: Path) -> None:
    modules, done = modules_after(tmp_path, "run", "--help")
    assert done.returncode == 0, done.stderr
    assert "SERVABLE" in done.stdout
    assert not top_level(modules) & HEAVY


def test_status_without_a_hub_says_so_without_importing_parsl(tmp_path: Path) -> None:
    modules, done = modules_after(tmp_path, "--hub", "tcp://127.0.0.1:9", "status",
                                  "--timeout", "0.5")
    assert done.returncode == 1
    assert "HubUnavailable" in done.stderr
    assert not top_level(modules) & HEAVY


def test_build_definition_prints_the_definition_unwrapped(tmp_path: Path) -> None:
    from dlhub_hpc.container.build import ImageBuilder
    from dlhub_hpc.container.definition import build_options, render_definition

    registry = Registry(tmp_path / "home")
    registry.publish(make_bundle(example_dir("add")))
    registry.close()
    # Long enough that an 80-column console would wrap it.
    pip = "numpy>=1.26,<3  # and a comment long enough to run past eighty columns, surely"
    done = subprocess.run(
        [sys.executable, "-m", "dlhub_hpc.cli", "build", "demo/add", "--home",
         str(tmp_path / "home"), "--cache-dir", str(tmp_path / "cache"), "--pip", pip,
         "--definition"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"},
    )
    assert done.returncode == 0, done.stderr
    builder = ImageBuilder(tmp_path / "home", tmp_path / "cache")
    recipe = builder.recipe("demo/add", build_options(pip=(pip,)))
    assert done.stdout == render_definition(recipe, Path("bundle.tar"), Path("dlhub_hpc"))
    assert any(len(line) > 80 for line in done.stdout.splitlines())


def test_the_group_is_a_click_group() -> None:
    assert isinstance(cli, click.Group)
    assert set(cli.list_commands(click.Context(cli))) == set(COMMANDS)
