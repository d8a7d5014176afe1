"""DLHub records: real ones import and behave as on DLHub; exports validate against DLHub's
schema; export then import gives back the same spec; bad records name the field to fix."""

from __future__ import annotations

import json
import pickle
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from dlhub_hpc.cli import cli
from dlhub_hpc.errors import RecordError, ServableLoadError
from dlhub_hpc.registry.dlhub_export import to_dlhub_json
from dlhub_hpc.registry.dlhub_json import EXTENSION, from_dlhub_json
from dlhub_hpc.servable.shims import load_servable
from dlhub_hpc.servable.spec import SPEC_FILENAMES, ServableSpec
from tests.dlhub_schema import DLHUB_DATA, errors, real_records

REPO = Path(__file__).parents[2]
EXAMPLES = sorted(p for root in ("dlhub_hpc/examples", "benchmarks/servables")
                  for p in (REPO / root).rglob("servable.*") if p.name in SPEC_FILENAMES)
GROUP = "8b5dc2c6-5a1e-11ea-a0c3-0e5b2b3b4e7d"


def record(name: str) -> dict[str, Any]:
    found = [p for p in real_records() if p.stem == name]
    return json.loads(found[0].read_text())


def imported(name: str, **options: Any) -> ServableSpec:
    return from_dlhub_json(record(name), **({"owner": "alice"} | options))


@pytest.mark.parametrize("path", real_records(), ids=lambda p: p.stem)
def test_every_real_record_imports_with_the_owner_given_and_keeps_its_meaning(path: Path) -> None:
    data = json.loads(path.read_text())
    spec = from_dlhub_json(data, owner="alice", group_map={GROUP: "chem"})
    assert spec.dlhub.owner == "alice"
    assert spec.dlhub.version == str(data["datacite"].get("version", ""))  # not the SDK's
    assert spec.dlhub.version != data["dlhub"]["version"]
    assert spec.datacite.doi is None or spec.datacite.doi == "10.1109/tgrs.2021.3098008"
    assert "public" not in spec.dlhub.visible_to or data["dlhub"]["visible_to"] == ["public"]
    assert set(spec.servable.methods) == set(data["servable"]["methods"])
    assert not errors(to_dlhub_json(spec))


def test_sdk_settings_survive_import() -> None:
    assert imported("static_sqrt_autobatch").servable.methods["run"].autobatch
    pow_run = imported("static_pow_unpack").servable.methods["run"]
    assert pow_run.unpack and pow_run.function == "math:pow"
    assert imported("static_numpy_max").servable.methods["run"].parameters == {"axis": 0}
    sk = imported("sklearn_joblib").servable
    assert sk.options["serialization_method"] == "joblib" and sk.model == "reg.joblib"
    tf = imported("takglobus_dlhub_cloud_models")
    assert tf.servable.type == "tensorflow" and tf.servable.model == "encoder-10021600"
    run = tf.servable.methods["run"]
    assert (run.input.shape, run.input.dtype) == ([None, 128, 128, 6], "float")
    tup = imported("torch_tuple").servable.methods["run"]
    assert tup.unpack and [e.dtype for e in tup.input.element_types or []] == [
        "float", "integer"]
    obj = imported("maxtuecke_basset_kipoi").servable.methods["run"].input
    assert (obj.type, obj.python_type) == ("python object", "collections.OrderedDict")
    noop = imported("ericblau_dlhub_noop_publish").dlhub.files
    assert noop == ["noop.py", "dlhub.json"]  # absolute paths, relative to their folder


def test_a_globus_group_is_mapped_by_option_or_refused_never_made_public() -> None:
    with pytest.raises(RecordError, match=r"dlhub\.visible_to\[0\].*--map-group") as err:
        imported("static_globus_group")
    assert err.value.details["field"] == "dlhub.visible_to[0]"
    spec = imported("static_globus_group", group_map={GROUP: "chem"})
    assert spec.dlhub.visible_to == ["group:chem"]
    data = record("static_globus_group")
    data["dlhub"]["visible_to"] = ["urn:globus:auth:identity:" + GROUP]
    with pytest.raises(RecordError, match="--map-user"):
        from_dlhub_json(data, owner="alice")
    assert from_dlhub_json(data, owner="a", user_map={GROUP: "bob"}).dlhub.visible_to == [
        "user:bob"]


def test_an_sdk_record_without_owner_asks_for_one() -> None:
    with pytest.raises(RecordError, match="--owner") as err:
        from_dlhub_json(record("static_numpy_max"))
    assert err.value.details["field"] == "dlhub.owner"


def test_static_methods_behave_as_on_dlhub(tmp_path: Path) -> None:
    sqrt = load_servable(imported("static_sqrt_autobatch"), tmp_path)
    assert sqrt.run("run", [[4.0, 9.0], [16.0]]) == [[2.0, 3.0], [4.0]]  # once per element
    npmax = load_servable(imported("static_numpy_max"), tmp_path)
    x = np.array([[1, 5], [7, 2]])
    (out,) = npmax.run("run", [x])
    assert np.array_equal(out, np.max(x, axis=0))  # the default parameters: axis=0
    assert load_servable(imported("static_pow_unpack"), tmp_path).run("run", [[2.0, 3.0]]) == [
        8.0]
    hypot = load_servable(imported("static_hypot_autobatch_unpack"), tmp_path)
    assert hypot.run("run", [[[3.0, 4.0], [5.0, 12.0]]]) == [[5.0, 13.0]]
    (bad,) = hypot.run("run", [7.0])
    assert "list" in str(bad)


def test_class_method_sklearn_and_torch_records_load_their_files(tmp_path: Path) -> None:
    (tmp_path / "fraction.pkl").write_bytes(pickle.dumps(Fraction(355, 113)))
    frac = load_servable(imported("class_method"), tmp_path)
    assert frac.run("run", [10]) == [Fraction(22, 7)]
    import joblib
    import torch
    from sklearn.linear_model import LinearRegression

    reg = LinearRegression().fit([[0, 1], [1, 0], [1, 1]], [1.0, 2.0, 3.0])
    joblib.dump(reg, tmp_path / "reg.joblib")
    rows = np.array([[2.0, 2.0]])
    (pred,) = load_servable(imported("sklearn_joblib"), tmp_path).run("run", [rows])
    assert np.allclose(pred, reg.predict(rows))
    net = torch.nn.Linear(4, 2)
    torch.save(net, tmp_path / "linear.pt")  # a whole pickled module, as DLHub's records hold
    x = np.ones((1, 4), dtype=np.float32)
    (y,) = load_servable(imported("torch"), tmp_path).run("run", [x])
    assert np.allclose(y, net(torch.as_tensor(x)).detach().numpy())


def test_a_tensorflow_servable_without_tensorflow_names_the_extra(tmp_path: Path) -> None:
    try:
        import tensorflow  # noqa: F401
        pytest.skip("tensorflow is installed here")
    except ImportError:
        pass
    (tmp_path / "encoder-10021600").mkdir()
    (tmp_path / "encoder-10021600" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ServableLoadError, match=r"dlhub-hpc\[tensorflow\]"):
        load_servable(imported("takglobus_dlhub_cloud_models"), tmp_path)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.parent.relative_to(REPO)))
def test_every_example_exports_valid_and_imports_back_the_same(path: Path) -> None:
    spec = ServableSpec.from_file(path)
    out = json.loads(json.dumps(to_dlhub_json(spec)))
    assert errors(out) == []
    assert "shorthand_name" not in out["dlhub"] and "language" not in out.get("servable", {})
    assert "run" in out.get("servable", {"methods": {"run": 1}})["methods"]
    assert out["datacite"]["publicationYear"].isdigit()
    assert from_dlhub_json(out) == spec


def test_a_restricted_servable_exports_without_widening_and_comes_back_restricted() -> None:
    spec = imported("static_globus_group", group_map={GROUP: "chem"})
    spec = spec.model_copy(update={"servable": spec.servable.model_copy(update={
        "deterministic": True, "max_batch_size": 64, "ranks": 4})})
    out = json.loads(json.dumps(to_dlhub_json(spec, visible_to=["user:bob"])))
    assert errors(out) == [] and "visible_to" not in out["dlhub"]
    back = from_dlhub_json(out)
    assert back.dlhub.visible_to == ["user:bob"]
    assert (back.servable.deterministic, back.servable.max_batch_size, back.servable.ranks) == (
        True, 64, 4)


def test_exports_of_types_dlhub_lacks_stay_valid() -> None:
    spec = ServableSpec.from_data({
        "datacite": {"title": "t"}, "dlhub": {"owner": "a", "name": "b"},
        "servable": {"type": "python_function", "methods": {"predict": {
            "function": "m:f", "input": {"type": "dict"},
            "output": {"type": "list", "item_type": {"type": "ndarray", "dtype": "float32"}}},
            "raw": {"function": "m:g", "input": {"type": "bytes"}, "output": {"type": "any"},
                    "takes_batch": True}}}})
    out = to_dlhub_json(spec)
    assert errors(out) == []
    assert out["servable"]["methods"]["run"] == out["servable"]["methods"]["predict"]
    assert from_dlhub_json(out) == spec


def _nested(depth: int) -> dict[str, Any]:
    t: dict[str, Any] = {"type": "float"}
    for _ in range(depth):
        t = {"type": "list", "item_type": t}
    return t


@pytest.mark.parametrize(("edit", "field"), [
    (lambda r: r.pop("datacite"), "datacite"),
    (lambda r: r["servable"]["methods"]["run"].update(input={"type": "tensor"}),
     "servable.methods.run.input.type"),
    (lambda r: r["servable"]["methods"]["run"].update(input=_nested(200)),
     "servable.methods.run.input" + ".item_type" * 33),
    (lambda r: r["servable"]["methods"]["run"]["input"].update(shape=[None, -1]),
     "servable.methods.run.input.shape[1]"),
    (lambda r: r["servable"].update(shim="r.RServable"), "servable.shim"),
    (lambda r: r["dlhub"].update(files={"other": ["../../etc/passwd"]}), "dlhub.files"),
    (lambda r: r["datacite"].update(publicationYear="soon"), "datacite.publicationYear"),
    (lambda r: r["datacite"].update(identifier={"identifier": "nope"}),
     "datacite.identifier.identifier"),
    (lambda r: r["dlhub"].update(visible_to=["everyone"]), "dlhub.visible_to[0]"),
    (lambda r: r["dlhub"].update(type="dataset"), "dlhub.type"),
    (lambda r: r["servable"]["methods"]["run"]["method_details"].pop("module"),
     "servable.methods.run.method_details"),
])
def test_a_bad_record_names_the_field_to_fix(edit: Any, field: str) -> None:
    data = record("static_numpy_max")
    edit(data)
    with pytest.raises(RecordError) as err:
        from_dlhub_json(data, owner="alice")
    assert err.value.details["field"] == field
    assert str(err.value).startswith(field + ":")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(path=st.sampled_from(["datacite", "dlhub", "servable", "servable.methods",
                             "servable.methods.run", "servable.methods.run.input",
                             "servable.methods.run.method_details", "dlhub.files",
                             "dlhub.visible_to", "datacite.creators", EXTENSION]),
       value=json_values)
def test_any_value_anywhere_imports_or_is_a_record_error(path: str, value: Any) -> None:
    data = record("static_numpy_max")
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    try:
        from_dlhub_json(data, owner="alice")
    except RecordError as exc:
        assert exc.details["field"]


def test_import_dlhub_cli_maps_groups_and_refuses_bad_maps(tmp_path: Path) -> None:
    src = DLHUB_DATA / "sdk" / "static_globus_group.json"
    runner = CliRunner()
    ok = runner.invoke(cli, ["import-dlhub", str(src), str(tmp_path / "s"), "--owner", "alice",
                             "--map-group", f"{GROUP}=chem"])
    assert ok.exit_code == 0, ok.output
    spec = ServableSpec.from_file(tmp_path / "s" / "servable.yaml")
    assert spec.dlhub.visible_to == ["group:chem"] and spec.dlhub.owner == "alice"
    refused = runner.invoke(cli, ["import-dlhub", str(src), str(tmp_path / "t"), "--owner", "a"])
    assert refused.exit_code != 0 and not (tmp_path / "t" / "servable.yaml").exists()
    bad = runner.invoke(cli, ["import-dlhub", str(src), str(tmp_path / "u"), "--map-group", "x"])
    assert bad.exit_code == 2


@pytest.mark.parametrize(("flag", "value"), [("autobatch", "false"), ("unpack", "no"),
                                             ("autobatch", 0), ("unpack", None)])
def test_batching_flags_are_json_booleans_only(flag: str, value: Any) -> None:
    data = record("static_sqrt_autobatch")
    data["servable"]["methods"]["run"]["method_details"][flag] = value
    field = f"servable.methods.run.method_details.{flag}"
    with pytest.raises(RecordError) as err:
        from_dlhub_json(data, owner="alice")
    assert err.value.details["field"] == field


def _with_public_block(visible_to: list[str]) -> dict[str, Any]:
    data = to_dlhub_json(imported("static_numpy_max"))  # its block says public
    data["dlhub"]["visible_to"] = visible_to
    return json.loads(json.dumps(data))


def test_the_extension_block_never_widens_a_restricted_dlhub_part() -> None:
    urn = f"urn:globus:groups:id:{GROUP}"
    with pytest.raises(RecordError) as err:
        from_dlhub_json(_with_public_block([urn]), group_map={GROUP: "chem"})
    assert "dlhub.visible_to" in str(err.value)
    assert err.value.details["field"] == f"{EXTENSION}.spec.dlhub.visible_to"
    with pytest.raises(RecordError, match="--map-group"):  # DLHub's part is mapped first
        from_dlhub_json(_with_public_block([urn]))
    narrow = _with_public_block([urn])
    narrow[EXTENSION]["spec"]["dlhub"]["visible_to"] = ["group:chem"]
    assert from_dlhub_json(narrow, group_map={GROUP: "chem"}).dlhub.visible_to == [
        "group:chem"]
    assert from_dlhub_json(_with_public_block(["public"])).dlhub.visible_to == ["public"]


def test_sklearn_records_of_older_sdks_call_the_public_methods(tmp_path: Path) -> None:
    from sklearn.svm import SVC

    x = np.array([[0.0, 0.0], [1.0, 1.0], [0.1, 0.0], [0.9, 1.0], [0.0, 0.1], [1.0, 0.9]])
    model = SVC(probability=True, kernel="linear", random_state=0).fit(x, [0, 1] * 3)
    (tmp_path / "clf.pkl").write_bytes(pickle.dumps(model))
    for old, new in (("_predict_proba", "predict_proba"), ("_predict", "predict")):
        data = record("sklearn_pickle")
        data["servable"]["methods"]["run"]["method_details"]["method_name"] = old
        spec = from_dlhub_json(data, owner="alice")
        assert spec.servable.methods["run"].function == new
        (answer,) = load_servable(spec, tmp_path).run("run", [x[:2]])
        assert np.allclose(answer, getattr(model, new)(x[:2]))


@pytest.mark.parametrize("ident", ["https://doi.org/10.YET/UNASSIGNED",
                                   "doi:10.yet/unassigned", {"identifier": "https://doi.org/"
                                                             "10.datacite/placeholder"}])
def test_placeholder_dois_in_any_spelling_mean_none(ident: Any) -> None:
    data = record("static_numpy_max")
    data["datacite"]["identifier"] = ident
    assert from_dlhub_json(data, owner="alice").datacite.doi is None


def test_identifiers_and_affiliations_given_as_strings() -> None:
    data = record("static_numpy_max")
    data["datacite"]["identifier"] = "https://doi.org/10.1234/ABC"
    data["datacite"]["creators"] = [{"creatorName": "Ward, Logan", "affiliations": "ANL"}]
    spec = from_dlhub_json(data, owner="alice")
    assert spec.datacite.doi == "10.1234/abc"
    assert spec.datacite.creators[0].affiliations == ["ANL"]
    data["datacite"]["identifier"] = "not a doi"
    with pytest.raises(RecordError) as err:
        from_dlhub_json(data, owner="alice")
    assert err.value.details["field"] == "datacite.identifier"


def test_import_dlhub_cli_refuses_deeply_nested_json_in_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    out = CliRunner().invoke(cli, ["import-dlhub", str(deep), str(tmp_path / "s"),
                                   "--owner", "alice"])
    assert out.exit_code == 2 and "nests too deeply" in out.output
    assert not isinstance(out.exception, RecursionError)
