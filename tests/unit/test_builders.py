"""Builders fill the spec by inspecting the model; what they write publishes and loads."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dlhub_hpc.errors import SpecError
from dlhub_hpc.servable.builders import PythonFunctionServable, ScikitLearnServable
from dlhub_hpc.servable.bundle import make_bundle
from dlhub_hpc.servable.shims import load_servable
from dlhub_hpc.servable.spec import ServableSpec


def test_a_scikit_learn_model_fills_types_summary_and_dependencies(tmp_path: Path) -> None:
    sklearn = pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(30, 5))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    builder = ScikitLearnServable.from_file(tmp_path / "model.pkl", owner="ada", name="logreg")
    builder.add_creator("Lovelace, Ada", ["Analytical Engines"], "0000-0002-1825-0097")
    builder.add_related_identifier("10.1000/paper").set_domains("testing")
    spec = builder.to_spec()
    methods = spec.servable.methods
    assert methods["predict"].input.shape == [None, 5]
    assert methods["predict_proba"].output.shape == [None, 2]
    assert spec.servable.model_summary.startswith("LogisticRegression")
    assert spec.dlhub.dependencies == {"scikit-learn": f"=={sklearn.__version__}"}
    assert spec.datacite.dois() == ["10.1000/paper"]

    out = builder.write(tmp_path / "servable")
    bundle = make_bundle(out)
    assert bundle.spec == spec
    shim = load_servable(bundle.spec, out)
    [proba] = shim.run("predict_proba", [x[:3]])
    assert np.asarray(proba).shape == (3, 2)


def test_a_file_without_a_model_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "junk.pkl").write_bytes(pickle.dumps({"not": "a model"}))
    with pytest.raises(SpecError, match="has no predict"):
        ScikitLearnServable.from_file(tmp_path / "junk.pkl", owner="ada", name="junk")
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    with pytest.raises(SpecError, match="cannot load the model"):
        ScikitLearnServable.from_file(tmp_path / "bad.pkl", owner="ada", name="bad")


def test_a_python_function_brings_its_module_docstring_and_defaults(
    tmp_path: Path, clean_imports: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "scaler.py").write_text(textwrap.dedent('''
        def scale(values, factor=2.0, label="x"):
            """Multiply each value by a factor.

            Longer notes here.
            """
            return [v * factor for v in values]
    '''))
    monkeypatch.syspath_prepend(str(src))
    import scaler  # type: ignore[import-not-found]

    builder = PythonFunctionServable(
        scaler.scale, owner="ada", input_type={"type": "list", "item_type": {"type": "float"}},
        output_type={"type": "list"},
    )
    spec = builder.set_title("Scaler").to_spec()
    method = spec.servable.methods["run"]
    assert spec.full_name == "ada/scale"
    assert method.function == "scaler:scale"
    assert method.parameters == {"factor": 2.0, "label": "x"}
    assert method.description == "Multiply each value by a factor."
    assert spec.datacite.description.endswith("Longer notes here.")
    out = builder.write(tmp_path / "servable")
    assert (out / "scaler.py").is_file()
    assert ServableSpec.from_file(out / "servable.yaml") == spec


def test_a_lambda_cannot_be_a_servable() -> None:
    with pytest.raises(SpecError, match="top-level function of an importable module"):
        PythonFunctionServable(lambda x: x, owner="ada", name="anon")
