"""Fixtures shared by the unit tests: servable directories written to tmp_path, and the
broker's books checked after every event it handles."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dlhub_hpc.broker.state import BrokerState

WriteServable = Callable[..., Path]


def spec_data(name: str = "fn", methods: dict[str, Any] | None = None,
              **servable: Any) -> dict[str, Any]:
    """A valid spec as plain data; ``methods`` defaults to one ``run`` taking anything."""
    return {
        "datacite": {"title": f"Test servable {name}", "creators": ["Test, T"]},
        "dlhub": {"owner": "test", "name": name},
        "servable": {
            "type": "python_function",
            "methods": methods or {"run": {"function": "mod:run", "input": {"type": "any"}}},
            **servable,
        },
    }


@pytest.fixture(autouse=True)
def validated_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``BrokerState`` a unit test drives checks its books (``validate()``) after
    each event, shutdown and failed assignment, as dask's worker state machine does."""
    for name in ("handle", "shutdown", "assign_failed"):
        original = getattr(BrokerState, name)

        def checked(self: BrokerState, *args: Any, _original: Any = original) -> Any:
            out = _original(self, *args)
            self.validate()
            return out

        monkeypatch.setattr(BrokerState, name, checked)


@pytest.fixture
def keys_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CurveZMQ keys in tmp_path, whatever the environment points at."""
    monkeypatch.setenv("DLHUB_HPC_KEYS", str(tmp_path / "keys"))
    monkeypatch.delenv("DLHUB_HPC_HUB_KEY", raising=False)
    monkeypatch.delenv("DLHUB_HPC_WORKER_KEY", raising=False)
    return tmp_path / "keys"


@pytest.fixture
def clean_imports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Undo what loading a servable does to sys.path and sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def write_servable(tmp_path: Path, clean_imports: None) -> WriteServable:
    """Write a python_function servable: ``code`` in a module of a unique name.

    ``methods`` maps method name to (function name, extra method fields); the module name
    is unique per call, so tests never see each other's modules in ``sys.modules``.
    """

    def write(code: str, methods: dict[str, tuple[str, dict[str, Any]]] | None = None,
              name: str = "fn", **servable: Any) -> Path:
        module = f"mod_{uuid.uuid4().hex[:10]}"
        root = tmp_path / f"{name}-{module}"
        root.mkdir()
        (root / f"{module}.py").write_text(textwrap.dedent(code))
        methods = methods or {"run": ("run", {})}
        declared = {
            method: {"function": f"{module}:{func}", "input": {"type": "any"}, **extra}
            for method, (func, extra) in methods.items()
        }
        (root / "servable.yaml").write_text(yaml.safe_dump(spec_data(name, declared,
                                                                     **servable)))
        return root

    return write


@pytest.fixture
def make_spec() -> Callable[..., dict[str, Any]]:
    """``spec_data``: a valid spec as plain data, to break one field at a time."""
    return spec_data
