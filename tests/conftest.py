"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test gets its own DLHUB_HPC_HOME, so no test sees a hub or registry of another."""
    home = tmp_path_factory.mktemp("dlhub-home")
    monkeypatch.setenv("DLHUB_HPC_HOME", str(home))
    monkeypatch.delenv("DLHUB_HPC_HUB", raising=False)
    return home


def pytest_report_header(config: pytest.Config) -> str:
    return f"dlhub-hpc tests; pid {os.getpid()}"
