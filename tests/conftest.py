"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import marker_report


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test gets its own DLHUB_HPC_HOME, so no test sees a hub or registry of another."""
    home = tmp_path_factory.mktemp("dlhub-home")
    monkeypatch.setenv("DLHUB_HPC_HOME", str(home))
    monkeypatch.delenv("DLHUB_HPC_HUB", raising=False)
    return home


def pytest_configure(config: pytest.Config) -> None:
    # Per-marker counts at the end of each run; under CI=true, skips for missing tools fail.
    marker_report.register(config)


def pytest_report_header(config: pytest.Config) -> str:
    return f"dlhub-hpc tests; pid {os.getpid()}"
