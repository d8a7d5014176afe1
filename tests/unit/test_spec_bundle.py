"""Servable specs, bundles and shims, on servables written to tmp_path and the examples."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from dlhub_hpc.errors import (
    ExecutionError,
    InvalidInput,
    MethodNotFound,
    ServableLoadError,
    SpecError,
)
from dlhub_hpc.examples import example_dir, prepare_iris
from dlhub_hpc.servable.bundle import make_bundle, read_bundle, unpack_bundle
from dlhub_hpc.servable.shims import load_servable
from dlhub_hpc.servable.spec import ServableSpec, find_spec_file, parse_ref
from dlhub_hpc.servable.types import ArgType

MakeSpec = Callable[..., dict[str, Any]]


def tar_of(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def copy_example(name: str, dest: Path) -> Path:
    return Path(shutil.copytree(example_dir(name), dest / name,
                                ignore=shutil.ignore_patterns("__pycache__")))


# ---- specs ---------------------------------------------------------------------------------

def test_a_valid_spec_parses_with_its_defaults(make_spec: MakeSpec) -> None:
    spec = ServableSpec.from_data(make_spec("adder"))
    assert spec.full_name == "test/adder"
    assert spec.method("run").input == ArgType(type="any")
    assert spec.method("run").output == ArgType(type="any")
    assert (spec.servable.max_batch_size, spec.method("run").takes_batch) == (16, False)
    assert (spec.servable.max_batch_delay, spec.servable.deterministic) == (None, False)


def test_an_unknown_method_lists_the_known_ones(make_spec: MakeSpec) -> None:
    spec = ServableSpec.from_data(make_spec())
    with pytest.raises(MethodNotFound, match=r"test/fn has no method 'fit'; it has \['run'\]"):
        spec.method("fit")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def apply(data: dict[str, Any]) -> None:
        for key in parents:
            data = data[key]
        if value is _DELETE:
            del data[last]
        else:
            data[last] = value

    return apply


_DELETE = object()


@pytest.mark.parametrize(("change", "words"), [
    (_set("datacite.title", _DELETE), "datacite.title: Field required"),
    (_set("dlhub.owner", "Alice"), "dlhub.owner: String should match pattern"),
    (_set("dlhub.files", ["../secret.txt"]), "file '../secret.txt' must be a relative path"),
    (_set("dlhub.files", ["/etc/passwd"]), "file '/etc/passwd' must be a relative path"),
    (_set("servable.type", "pytorch"), "servable.type: Input should be 'python_function'"),
    (_set("servable.methods", {}), "a servable needs at least one method"),
    (_set("servable.methods.run.function", None), "method 'run' needs 'function: module:fu"),
    (_set("servable.methods", {"not-ok": {"function": "m:f", "input": {"type": "any"}}}),
     "method name 'not-ok' is not an identifier"),
    (_set("servable.type", "sklearn"), "an sklearn servable needs 'model: FILE'"),
    (_set("servable.max_batch_size", 0), "servable.max_batch_size: Input should be greater"),
    (_set("servable.methods.run.input", {"type": "tensor"}), "servable.methods.run.input.type"),
    (_set("colour", "blue"), "colour: Extra inputs are not permitted"),
], ids=[
    "no-title", "bad-owner", "files-escape", "files-absolute", "unknown-shim", "no-methods",
    "no-function", "method-name", "sklearn-no-model", "batch-size", "input-type", "extra-key",
])
def test_invalid_specs_raise_spec_error_naming_the_field(
    make_spec: MakeSpec, change: Callable[[dict[str, Any]], None], words: str,
) -> None:
    data = make_spec()
    change(data)
    with pytest.raises(SpecError) as info:
        ServableSpec.from_data(data, "my/servable.yaml")
    assert info.value.message.startswith("my/servable.yaml is not a valid servable spec: ")
    assert words in info.value.message


def test_an_empty_spec_file_is_reported_at_the_top() -> None:
    with pytest.raises(SpecError, match=r"\(top\): "):
        ServableSpec.from_data(None)


def test_an_unknown_dtype_in_a_spec_is_a_spec_error(make_spec: MakeSpec) -> None:
    data = make_spec()
    data["servable"]["methods"]["run"]["input"] = {"type": "ndarray", "dtype": "floot"}
    with pytest.raises(SpecError, match="floot"):
        ServableSpec.from_data(data)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_specs_are_read_from_yaml_or_json(
    tmp_path: Path, make_spec: MakeSpec, suffix: str,
) -> None:
    path = tmp_path / f"servable{suffix}"
    dump = json.dumps if suffix == ".json" else yaml.safe_dump
    path.write_text(dump(make_spec("fromfile")))
    assert ServableSpec.from_file(path).full_name == "test/fromfile"
    assert find_spec_file(tmp_path) == path


def test_unreadable_spec_files_raise_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "servable.yaml"
    path.write_text("datacite: [unclosed\n")
    with pytest.raises(SpecError, match="cannot read servable spec"):
        ServableSpec.from_file(path)
    with pytest.raises(SpecError, match="cannot read servable spec"):
        ServableSpec.from_file(tmp_path / "servable.json")


def test_a_directory_without_a_spec_says_what_to_add(tmp_path: Path) -> None:
    names = "servable.yaml, servable.yml, servable.json"
    with pytest.raises(SpecError, match=re.escape(f"add one of {names}")):
        find_spec_file(tmp_path)


@pytest.mark.parametrize(("ref", "parsed"), [
    ("alice/oqmd", ("alice/oqmd", None)),
    ("alice/oqmd@3", ("alice/oqmd", 3)),
    ("demo/add@12", ("demo/add", 12)),
])
def test_parse_ref(ref: str, parsed: tuple[str, int | None]) -> None:
    assert parse_ref(ref) == parsed


@pytest.mark.parametrize(("ref", "words"), [
    ("oqmd", "should look like owner/name[@version]"),
    ("/oqmd", "should look like owner/name[@version]"),
    ("alice/", "should look like owner/name[@version]"),
    ("@3", "should look like owner/name[@version]"),
    ("alice/oqmd@latest", "should be a positive integer"),
    ("alice/oqmd@-1", "should be a positive integer"),
])
def test_parse_ref_rejects_malformed_references(ref: str, words: str) -> None:
    with pytest.raises(SpecError, match=words.replace("[", r"\[")):
        parse_ref(ref)


@pytest.mark.parametrize("ref", ["alice/oqmd@0", "alice/oqmd@²"])
def test_parse_ref_rejects_versions_that_are_not_positive_integers(ref: str) -> None:
    with pytest.raises(SpecError, match="should be a positive integer"):
        parse_ref(ref)


# ---- bundles -------------------------------------------------------------------------------

def test_bundles_are_deterministic(tmp_path: Path) -> None:
    first = make_bundle(example_dir("add"))
    assert make_bundle(example_dir("add")).digest == first.digest
    copy = copy_example("add", tmp_path)
    for path in copy.iterdir():
        os.utime(path, (1_000_000, 1_000_000))  # other times, other directory
    assert make_bundle(copy).digest == first.digest
    (copy / "arith.py").write_text("def add(numbers):\n    return 0.0\n")
    assert make_bundle(copy).digest != first.digest


def test_bundle_members_are_sorted_with_zeroed_metadata() -> None:
    found = members(make_bundle(example_dir("add")).data)
    assert [m.name for m in found] == ["arith.py", "servable.yaml"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in found} == {(0, 0, 0, "", 0o644)}


def test_bundles_leave_out_caches_and_dotfiles(tmp_path: Path) -> None:
    root = copy_example("add", tmp_path)
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "arith.cpython-310.pyc").write_bytes(b"\x00")
    (root / ".env").write_text("SECRET=1")
    (root / "data").mkdir()
    (root / "data" / "table.csv").write_text("a,b\n")
    names = [m.name for m in members(make_bundle(root).data)]
    assert names == ["arith.py", "data/table.csv", "servable.yaml"]


def test_bundles_leave_out_hidden_directories(tmp_path: Path) -> None:
    root = copy_example("add", tmp_path)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    assert [m.name for m in members(make_bundle(root).data)] == ["arith.py", "servable.yaml"]


def test_a_files_list_limits_the_bundle(write_servable: Callable[..., Path]) -> None:
    root = write_servable("def run(x):\n    return x\n")
    module = next(root.glob("mod_*.py")).name
    (root / "notes.txt").write_text("not shipped")
    spec = yaml.safe_load((root / "servable.yaml").read_text())
    spec["dlhub"]["files"] = [module]
    (root / "servable.yaml").write_text(yaml.safe_dump(spec))
    assert [m.name for m in members(make_bundle(root).data)] == [module, "servable.yaml"]
    spec["dlhub"]["files"] = [module, "weights.bin"]
    (root / "servable.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=r"missing: \['weights.bin'\]"):
        make_bundle(root)


def test_make_bundle_refuses_what_it_cannot_pack(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is not a directory"):
        make_bundle(tmp_path / "nowhere")
    with pytest.raises(SpecError, match="has no servable spec"):
        make_bundle(tmp_path)
    iris = Path(shutil.copytree(example_dir("iris"), tmp_path / "iris"))
    with pytest.raises(SpecError, match=re.escape("model file 'model.pkl' is not in")):
        make_bundle(iris)


def test_read_bundle_accepts_what_make_bundle_made() -> None:
    made = make_bundle(example_dir("add"))
    read = read_bundle(made.data)
    assert read.digest == made.digest and read.spec == made.spec


@pytest.mark.parametrize(("data", "words"), [
    (b"certainly not a tar archive" * 40, "the bundle is not a tar archive"),
    (tar_of({"arith.py": b""}), "the bundle has no spec file"),
    (tar_of({"servable.yaml": (example_dir("iris") / "servable.yaml").read_bytes()}),
     r"the bundle lacks files its spec names: \['model.pkl'\]"),
], ids=["garbage", "no-spec", "missing-model"])
def test_read_bundle_refuses_bad_bundles(data: bytes, words: str) -> None:
    with pytest.raises(SpecError, match=words):
        read_bundle(data)


@pytest.mark.parametrize("name", ["servable.yaml", "servable.json"])
def test_read_bundle_reports_an_unparsable_spec_as_spec_error(name: str) -> None:
    with pytest.raises(SpecError):
        read_bundle(tar_of({name: b"datacite: [unclosed\n"}))


def test_unpack_bundle_restores_the_files(tmp_path: Path) -> None:
    unpack_bundle(make_bundle(example_dir("add")).data, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["arith.py", "servable.yaml"]
    assert (tmp_path / "out" / "arith.py").read_bytes() == (
        example_dir("add") / "arith.py").read_bytes()


@pytest.mark.parametrize("data", [
    tar_of({"../evil.py": b"x"}),
    tar_of({"ok.py": b"", "sub/../../evil.py": b"x"}),
    tar_of({"/tmp/evil.py": b"x"}),
    tar_of({}, symlinks={"link": "/etc/passwd"}),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink"])
def test_unpack_bundle_refuses_members_outside_or_not_files(tmp_path: Path, data: bytes) -> None:
    dest = tmp_path / "a" / "dest"
    with pytest.raises(SpecError, match="is not a plain file inside it"):
        unpack_bundle(data, dest)
    assert list(tmp_path.rglob("*.py")) == [] and not (dest / "link").exists()


# ---- shims ---------------------------------------------------------------------------------

def load(root: Path) -> Any:
    return load_servable(ServableSpec.from_file(find_spec_file(root)), root)


def module_of(root: Path) -> Any:
    return sys.modules[next(root.glob("mod_*.py")).stem]


def test_the_add_example_loads_from_an_unpacked_bundle(
    tmp_path: Path, clean_imports: None,
) -> None:
    root = tmp_path / "unpacked"
    unpack_bundle(make_bundle(example_dir("add")).data, root)
    assert load(root).run("run", [[1.0, 2.0], [], [0.5]]) == [3.0, 0.0, 0.5]


def test_one_failing_item_does_not_fail_its_neighbours(
    write_servable: Callable[..., Path],
) -> None:
    shim = load(write_servable("""
        from dlhub_hpc.errors import InvalidInput

        def run(x):
            if isinstance(x, str):
                raise InvalidInput("strings are not numbers", path="input")
            if x < 0:
                raise ValueError(f"negative: {x}")
            return x * 2
    """))
    ok1, bad, invalid, ok2 = shim.run("run", [1, -2, "s", 3])
    assert (ok1, ok2) == (2, 6)
    assert isinstance(bad, ExecutionError)
    assert bad.message.endswith("run raised ValueError: negative: -2")
    assert bad.details["exception"] == "ValueError" and bad.details["method"] == "run"
    assert isinstance(invalid, InvalidInput) and invalid.message == "strings are not numbers"


BATCH_CODE = """
    CALLS = []

    def run(xs):
        CALLS.append(list(xs))
        if any(x < 0 for x in xs):
            raise ValueError("negative")
        return [x * 10 for x in xs]

    def short(xs):
        CALLS.append(list(xs))
        return list(xs)[:1]
"""
BATCH_METHODS = {"run": ("run", {"takes_batch": True}),
                 "short": ("short", {"takes_batch": True})}


def test_takes_batch_functions_get_the_whole_batch_in_one_call(
    write_servable: Callable[..., Path],
) -> None:
    root = write_servable(BATCH_CODE, BATCH_METHODS)
    assert load(root).run("run", [1, 2, 3]) == [10, 20, 30]
    assert module_of(root).CALLS == [[1, 2, 3]]


def test_a_failing_batch_is_rerun_item_by_item(write_servable: Callable[..., Path]) -> None:
    root = write_servable(BATCH_CODE, BATCH_METHODS)
    first, bad, last = load(root).run("run", [1, -1, 2])
    assert (first, last) == (10, 20) and isinstance(bad, ExecutionError)
    assert module_of(root).CALLS == [[1, -1, 2], [1], [-1], [2]]


def test_a_batch_with_too_few_outputs_is_rerun_item_by_item(
    write_servable: Callable[..., Path],
) -> None:
    root = write_servable(BATCH_CODE, BATCH_METHODS)
    assert load(root).run("short", ["a", "b"]) == ["a", "b"]
    assert module_of(root).CALLS == [["a", "b"], ["a"], ["b"]]


@pytest.mark.parametrize(("function", "words"), [
    ("no_colon_here", "should look like 'module:function'"),
    ("no_such_module_xyz:run", "cannot import no_such_module_xyz:run from the bundle"),
    ("MODULE:missing", "cannot import"),
    ("MODULE:VALUE", "is not callable"),
], ids=["no-colon", "no-module", "no-function", "not-callable"])
def test_python_functions_that_cannot_load_raise_servable_load_error(
    write_servable: Callable[..., Path], function: str, words: str,
) -> None:
    root = write_servable("VALUE = 3\n")
    module = next(root.glob("mod_*.py")).stem
    spec = yaml.safe_load((root / "servable.yaml").read_text())
    spec["servable"]["methods"]["run"]["function"] = function.replace("MODULE", module)
    (root / "servable.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ServableLoadError, match=words):
        load(root)


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_iris(tmp_path_factory.mktemp("iris"))


SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]


def test_the_iris_example_predicts_per_item(iris: Path) -> None:
    shim = load(iris)
    setosa, bad, both = shim.run("predict", [
        np.array([SETOSA]), np.zeros((1, 3)), np.array([SETOSA, VIRGINICA]),
    ])
    assert setosa.tolist() == [0] and both.tolist() == [0, 2]
    assert isinstance(bad, ExecutionError) and "demo/iris.predict raised" in bad.message
    [proba] = shim.run("predict_proba", [np.array([VIRGINICA])])
    assert proba.shape == (1, 3) and proba.sum() == pytest.approx(1.0)


def test_the_iris_bundle_carries_the_model(iris: Path) -> None:
    bundle = make_bundle(iris)
    assert {m.name for m in members(bundle.data)} == {"model.pkl", "servable.yaml"}
    assert read_bundle(bundle.data).spec.full_name == "demo/iris"


def test_sklearn_models_that_cannot_load_raise_servable_load_error(
    iris: Path, tmp_path: Path,
) -> None:
    root = Path(shutil.copytree(iris, tmp_path / "iris"))
    spec = ServableSpec.from_file(root / "servable.yaml")
    broken = spec.model_copy(deep=True)
    broken.servable.methods["predict"].function = "no_such_method"
    with pytest.raises(ServableLoadError, match="has no method 'no_such_method'"):
        load_servable(broken, root)
    (root / "model.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ServableLoadError, match=re.escape("cannot unpickle model.pkl")):
        load_servable(spec, root)


def test_a_cache_that_cannot_be_written_falls_back_to_the_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tempfile

    from dlhub_hpc.worker.runner import cached_bundle

    bundle = make_bundle(example_dir("add"))
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a cache under a file cannot be made, as in a read-only image
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    root = cached_bundle(blocked / "bundles", bundle.digest, bundle.data)
    assert root == tmp_path / "tmp" / "dlhub-hpc" / bundle.digest
    assert ServableSpec.from_file(find_spec_file(root)).full_name == "demo/add"
    # Files are unpacked by hand (no tar filters on older Pythons): contents match the bundle.
    with tarfile.open(fileobj=io.BytesIO(bundle.data)) as tar:
        for member in tar.getmembers():
            source = tar.extractfile(member)
            assert source is not None
            assert (root / member.name).read_bytes() == source.read()
