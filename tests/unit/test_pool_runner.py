"""A pooled worker's models (worker/models.py): several loaded at once, the least recently
used evicted past the budget, each servable with its own bundle modules."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from dlhub_hpc.protocol import Assign
from dlhub_hpc.servable.bundle import make_bundle
from dlhub_hpc.worker.models import PoolRunner, own_modules

MIB = 1 << 20


def scaled(root: Path, i: int, nbytes: int = MIB) -> Assign:
    """A servable whose ``model.run`` answers ``(i + 1) * sum(x)``; ``nbytes`` of weights."""
    d = root / f"s{i}"
    d.mkdir(parents=True)
    (d / "servable.yaml").write_text(textwrap.dedent(f"""\
        datacite: {{title: Scaled {i}, creators: ["Test, T"]}}
        dlhub: {{owner: test, name: s{i}}}
        servable:
          type: python_function
          methods:
            run: {{function: "model:run", input: {{type: any}}}}
        """))
    (d / "model.py").write_text(
        "import pathlib\nimport numpy as np\n"
        "_W = np.load(pathlib.Path(__file__).with_name('w.npy'))\n"
        "def run(x):\n    return float(_W[0] * sum(x))\n")
    np.save(d / "w.npy", np.full(nbytes // 8, float(i + 1)))
    bundle = make_bundle(d)
    return Assign(f"test/s{i}", 1, bundle.digest, bundle.spec.model_dump(mode="json"),
                  bundle.data)


def answer(runner: PoolRunner, ref: str, x: list[float]) -> object:
    runner.select(ref)
    ((ok, value),) = runner.run("run", [x])
    assert ok, value
    return value


def test_same_code_different_weights_each_answer_with_their_own(tmp_path: Path) -> None:
    runner = PoolRunner(tmp_path / "cache", budget=64 * MIB)
    for i in range(4):
        runner.load(scaled(tmp_path, i))
    assert [answer(runner, f"test/s{i}@1", [1.0, 1.0]) for i in range(4)] == [2.0, 4.0, 6.0,
                                                                               8.0]


def test_the_least_recently_used_goes_past_the_budget(tmp_path: Path) -> None:
    runner = PoolRunner(tmp_path / "cache", budget=int(2.5 * MIB))
    assigns = [scaled(tmp_path, i) for i in range(3)]
    runner.load(assigns[0])
    runner.load(assigns[1])
    assert answer(runner, "test/s0@1", [1.0]) == 1.0  # s0 is now the most recent
    runner.load(assigns[2])
    report = runner.last_report
    assert report["evicted"] == ["test/s1@1"]
    assert [r for r, _ in report["holds"]] == ["test/s0@1", "test/s2@1"]
    assert all(n >= MIB for _, n in report["holds"])  # measured: at least its weights
    runner.select("test/s1@1")
    ((ok, error),) = runner.run("run", [[1.0]])
    assert not ok and error["type"] == "ServableLoadError" and "not loaded" in error["message"]


def test_a_model_larger_than_the_budget_is_held_alone(tmp_path: Path) -> None:
    runner = PoolRunner(tmp_path / "cache", budget=MIB // 2)
    runner.load(scaled(tmp_path, 0))
    runner.load(scaled(tmp_path, 1))
    assert [r for r, _ in runner.last_report["holds"]] == ["test/s1@1"]
    assert answer(runner, "test/s1@1", [3.0]) == 6.0


def test_loading_one_held_again_only_makes_it_recent(tmp_path: Path) -> None:
    runner = PoolRunner(tmp_path / "cache", budget=64 * MIB)
    a, b = scaled(tmp_path, 0), scaled(tmp_path, 1)
    runner.load(a)
    runner.load(b)
    runner.load(a)
    assert runner.last_report["evicted"] == []
    assert [r for r, _ in runner.last_report["holds"]] == ["test/s1@1", "test/s0@1"]


def test_own_modules_forgets_what_a_bundle_imported(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    (tmp_path / "pool_probe_mod.py").write_text("VALUE = 1\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    with own_modules():
        sys.path.insert(0, str(tmp_path))
        import pool_probe_mod  # type: ignore[import-not-found]

        assert pool_probe_mod.VALUE == 1
    assert "pool_probe_mod" not in sys.modules and str(tmp_path) not in sys.path


def test_an_evicted_models_weights_go_without_a_full_garbage_collection(
        tmp_path: Path) -> None:
    import gc
    import weakref

    runner = PoolRunner(tmp_path / "cache", budget=int(1.5 * MIB))
    runner.load(scaled(tmp_path, 0))
    weights = weakref.ref(runner.models["test/s0@1"].modules[0]._W)
    full: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    gc.disable()
    gc.callbacks.append(seen)
    try:
        runner.load(scaled(tmp_path, 1))  # evicts s0
    finally:
        gc.callbacks.remove(seen)
        gc.enable()
    assert runner.last_report["evicted"] == ["test/s0@1"]
    assert weights() is None  # freed at eviction
    assert full == []  # was: a full collection per eviction, tens of ms in a worker
    assert answer(runner, "test/s1@1", [1.0]) == 2.0
