"""``dlhub-hpc run`` and ``status`` against a hub load neither Parsl nor Globus Compute."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from dlhub_hpc.examples import example_dir
from dlhub_hpc.hub import Hub
from tests.unit.test_cli_lazy import HEAVY, modules_after, top_level


def test_run_and_status_import_neither_parsl_nor_globus(
    hub: Hub, serve: Callable[..., str], tmp_path: Path
) -> None:
    name = serve(example_dir("add"))
    modules, done = modules_after(tmp_path, "--hub", hub.client_address, "run", name, "[1, 2]")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 3.0
    assert not top_level(modules) & HEAVY, top_level(modules) & HEAVY
    assert {m for m in modules if m.startswith("dlhub_hpc.cli.")} == {  # starting: the spinner
        "dlhub_hpc.cli.common", "dlhub_hpc.cli.serving", "dlhub_hpc.cli.starting"}

    modules, done = modules_after(tmp_path, "--hub", hub.client_address, "status")
    assert done.returncode == 0, done.stderr
    assert f"{name}@1" in done.stdout
    assert not top_level(modules) & HEAVY, top_level(modules) & HEAVY
