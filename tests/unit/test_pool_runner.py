"""A pooled worker's models (worker/models.py): several loaded at once, the least recently
used evicted past the budget, each servable with its own bundle modules."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import cast

import numpy as np
import pytest

from dlhub_hpc.protocol import Assign
from dlhub_hpc.servable.bundle import make_bundle
from dlhub_hpc.worker import bundle_imports
from dlhub_hpc.worker.models import PoolRunner

MIB = 1 << 20
Pool = Callable[[int], PoolRunner]  # a budget in, a runner closed after the test out


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


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    """PoolRunners with that budget, closed afterwards: the bundle modules in place then
    would be other tests' ``model`` and ``helper``."""
    runners: list[PoolRunner] = []

    def make(budget: int) -> PoolRunner:
        runners.append(PoolRunner(tmp_path / "cache", budget=budget))
        return runners[-1]

    yield make
    for runner in runners:
        runner.close()


def with_helper(root: Path, i: int, lazy: bool = True, model: str = "") -> Assign:
    """A servable ``h{i}`` whose ``run`` answers ``(i + 1) * sum(x)`` from ``helper.K``, a
    module of its bundle that each of these has (different code, one name): imported inside
    the call if ``lazy``, else at load. ``where`` names the first folder on ``sys.path`` and
    the helper's file, as the call sees them. ``model``: other code for model.py."""
    d = root / f"h{i}"
    d.mkdir(parents=True)
    (d / "servable.yaml").write_text(textwrap.dedent(f"""\
        datacite: {{title: Helped {i}, creators: ["Test, T"]}}
        dlhub: {{owner: test, name: h{i}}}
        servable:
          type: python_function
          methods:
            run: {{function: "model:run", input: {{type: any}}}}
            where: {{function: "model:where", input: {{type: any}}}}
        """))
    (d / "helper.py").write_text(f"K = {i + 1}\n")
    (d / "model.py").write_text(model or ("" if lazy else "import helper\n") + textwrap.dedent("""\
        def run(x):
            import helper
            return float(helper.K * sum(x))

        def where(x):
            import sys
            import helper
            return [sys.path[0], helper.__file__]
        """))
    bundle = make_bundle(d)
    return Assign(f"test/h{i}", 1, bundle.digest, bundle.spec.model_dump(mode="json"),
                  bundle.data)


def answer(runner: PoolRunner, ref: str, x: object, method: str = "run") -> object:
    runner.select(ref)
    ((ok, value),) = runner.run(method, [x])
    assert ok, value
    return value


def test_same_code_different_weights_each_answer_with_their_own(tmp_path: Path,
                                                                pool: Pool) -> None:
    runner = pool(64 * MIB)
    for i in range(4):
        runner.load(scaled(tmp_path, i))
    assert [answer(runner, f"test/s{i}@1", [1.0, 1.0]) for i in range(4)] == [2.0, 4.0, 6.0,
                                                                               8.0]


def test_the_least_recently_used_goes_past_the_budget(tmp_path: Path, pool: Pool) -> None:
    runner = pool(int(2.5 * MIB))
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


def test_a_model_larger_than_the_budget_is_held_alone(tmp_path: Path, pool: Pool) -> None:
    runner = pool(MIB // 2)
    runner.load(scaled(tmp_path, 0))
    runner.load(scaled(tmp_path, 1))
    assert [r for r, _ in runner.last_report["holds"]] == ["test/s1@1"]
    assert answer(runner, "test/s1@1", [3.0]) == 6.0


def test_loading_one_held_again_only_makes_it_recent(tmp_path: Path, pool: Pool) -> None:
    runner = pool(64 * MIB)
    a, b = scaled(tmp_path, 0), scaled(tmp_path, 1)
    runner.load(a)
    runner.load(b)
    runner.load(a)
    assert runner.last_report["evicted"] == []
    assert [r for r, _ in runner.last_report["holds"]] == ["test/s1@1", "test/s0@1"]


def test_an_evicted_models_weights_go_without_a_full_garbage_collection(
        tmp_path: Path, pool: Pool) -> None:
    import gc
    import weakref

    runner = pool(int(1.5 * MIB))
    runner.load(scaled(tmp_path, 0))
    weights = weakref.ref(runner.models["test/s0@1"].imports.modules["model"]._W)
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


def test_a_call_imports_a_module_of_its_bundle_lazily(tmp_path: Path, pool: Pool) -> None:
    runner = pool(64 * MIB)
    runner.load(with_helper(tmp_path, 0))
    runner.load(with_helper(tmp_path, 1, lazy=False))  # its helper was in sys.modules
    # was: ModuleNotFoundError, its bundle's folder gone from sys.path after its load
    assert answer(runner, "test/h0@1", [1.0, 2.0]) == 3.0
    assert answer(runner, "test/h1@1", [1.0, 2.0]) == 6.0


def test_same_named_bundle_modules_answer_each_with_their_own_interleaved(
        tmp_path: Path, pool: Pool) -> None:
    runner = pool(64 * MIB)
    for i in range(3):
        runner.load(with_helper(tmp_path, i, lazy=i != 2))
    refs = [f"test/h{i}@1" for i in range(3)]
    # Each first call imports its helper after another servable's helper was in place.
    for _ in range(2):
        assert [answer(runner, r, [1.0]) for r in refs] == [1.0, 2.0, 3.0]
    for i, ref in enumerate(refs):
        first, helper = cast(list[str], answer(runner, ref, None, method="where"))
        assert Path(helper).read_text() == f"K = {i + 1}\n"
        assert first == str(Path(helper).parent)  # its bundle first on sys.path


def test_a_batch_of_the_servable_in_place_sweeps_no_modules(
        tmp_path: Path, pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = pool(64 * MIB)
    runner.load(with_helper(tmp_path, 0))
    runner.load(with_helper(tmp_path, 1))
    sweeps: list[bundle_imports.BundleImports] = []
    gather = bundle_imports.gather
    monkeypatch.setattr(bundle_imports, "gather",
                        lambda i, known: (sweeps.append(i), gather(i, known)))
    for _ in range(3):
        assert answer(runner, "test/h1@1", [1.0]) == 2.0  # in place since its load
    assert sweeps == []
    assert answer(runner, "test/h0@1", [1.0]) == 1.0
    assert sweeps == [runner.models["test/h1@1"].imports]  # put aside once, on the switch


def test_an_evicted_servables_lazy_modules_are_emptied_and_a_reload_answers_right(
        tmp_path: Path, pool: Pool) -> None:
    runner = pool(1)  # holds one at a time
    first, second = with_helper(tmp_path, 0), with_helper(tmp_path, 1)
    runner.load(first)
    assert answer(runner, "test/h0@1", [1.0]) == 1.0
    helper = sys.modules["helper"]  # imported by the call, not the load
    runner.load(second)
    assert runner.last_report["evicted"] == ["test/h0@1"]
    assert vars(helper) == {} and "helper" not in sys.modules  # h1 imports its own lazily
    assert answer(runner, "test/h1@1", [1.0]) == 2.0
    runner.load(first)
    assert runner.last_report["evicted"] == ["test/h1@1"]
    assert answer(runner, "test/h0@1", [1.0]) == 1.0
    runner.load(second)
    assert answer(runner, "test/h1@1", [1.0]) == 2.0


def test_a_failed_load_leaves_nothing_of_its_bundle_in_place(tmp_path: Path,
                                                             pool: Pool) -> None:
    from dlhub_hpc.errors import ServableLoadError

    runner = pool(64 * MIB)
    runner.load(with_helper(tmp_path, 0))
    broken = with_helper(tmp_path / "broken", 1,
                         model="import helper\nraise RuntimeError('no weights')\n")
    with pytest.raises(ServableLoadError, match="no weights"):
        runner.load(broken)
    assert not any(broken.digest in p for p in sys.path)
    assert "helper" not in sys.modules and "model" not in sys.modules
    assert answer(runner, "test/h0@1", [2.0]) == 2.0


def test_a_module_its_name_displaced_comes_back_when_the_servable_is_put_aside(
        tmp_path: Path, pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = pool(64 * MIB)
    runner.load(with_helper(tmp_path, 0))
    assert answer(runner, "test/h0@1", [1.0]) == 1.0
    runner.close()  # its modules and folder leave the process
    assert "helper" not in sys.modules and "model" not in sys.modules
    assert not any(p.startswith(str(tmp_path)) for p in sys.path)
    other = ModuleType("helper")  # another ``helper``, imported meanwhile
    monkeypatch.setitem(sys.modules, "helper", other)
    assert answer(runner, "test/h0@1", [1.0]) == 1.0  # its own helper, in place again
    runner.close()
    assert sys.modules["helper"] is other
