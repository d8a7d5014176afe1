"""Write the records of tests/data/dlhub/sdk/ with the DLHub SDK (dlhub_sdk 2.1.0).

The SDK is not a dependency of this project (it pulls in the Globus clients), so these
records are made once and committed. To make them again:

    pip download dlhub_sdk==2.1.0 --no-deps -d /tmp/sdk && \
    pip install --no-deps --target /tmp/sdktarget /tmp/sdk/*.whl six && \
    PYTHONPATH=/tmp/sdktarget python tests/data/dlhub/make_sdk_records.py

The SDK's models are written for pydantic 1; pydantic 2 carries that API as pydantic.v1.
Its package __init__ imports the Globus client, so only dlhub_sdk.models is loaded.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).parent / "sdk"


def _load_sdk() -> types.ModuleType:
    import pydantic.v1

    sys.modules["pydantic"] = pydantic.v1
    if importlib.util.find_spec("pkg_resources") is None:  # gone from new setuptools
        from importlib import metadata

        stub = types.ModuleType("pkg_resources")
        stub.get_distribution = metadata.distribution  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stub
    spec = importlib.util.find_spec("dlhub_sdk")
    assert spec is not None and spec.submodule_search_locations, "put dlhub_sdk on PYTHONPATH"
    package = types.ModuleType("dlhub_sdk")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["dlhub_sdk"] = package
    import dlhub_sdk.models.servables.python as python

    return python


def _named(model, name: str, title: str):  # type: ignore[no-untyped-def]
    model.set_title(title).set_name(name).set_creators(["Ward, Logan"], [["Argonne"]])
    return model


def static_methods(python: types.ModuleType) -> dict[str, object]:
    static = python.PythonStaticMethodModel
    sqrt = static.create_model("math", "sqrt", autobatch=True)
    sqrt.set_inputs("list", "numbers", item_type="float")
    sqrt.set_outputs("list", "square roots", item_type="float")
    npmax = static.create_model("numpy", "max", autobatch=False, function_kwargs={"axis": 0})
    npmax.set_inputs("ndarray", "Matrix", shape=[None, None])
    npmax.set_outputs("ndarray", "Max of a certain axis", shape=[None])
    power = static.create_model("math", "pow")
    power.set_inputs("tuple", "base and exponent",
                     element_types=[{"type": "float"}, {"type": "float"}])
    power.set_outputs("float", "base ** exponent")
    power.set_unpack_inputs(True)
    hypot = static.create_model("math", "hypot", autobatch=True)
    hypot.set_inputs("list", "pairs", item_type={"type": "tuple", "element_types": [
        {"type": "float"}, {"type": "float"}]})
    hypot.set_outputs("list", "lengths", item_type="float")
    hypot.set_unpack_inputs(True)
    return {"static_sqrt_autobatch": _named(sqrt, "sqrt", "Square root, per item"),
            "static_numpy_max": _named(npmax, "numpy_max", "numpy.max along axis 0"),
            "static_pow_unpack": _named(power, "pow", "Power of two numbers"),
            "static_hypot_autobatch_unpack": _named(hypot, "hypot", "Lengths of pairs")}


def class_method(python: types.ModuleType, tmp: Path) -> dict[str, object]:
    from fractions import Fraction

    path = tmp / "fraction.pkl"
    path.write_bytes(pickle.dumps(Fraction(355, 113)))
    model = python.PythonClassMethodModel.create_model(str(path), "limit_denominator")
    model.set_inputs("integer", "the largest denominator")
    model.set_outputs("python object", "a fraction", python_type="fractions.Fraction")
    return {"class_method": _named(model, "fraction", "A fraction, limited")}


def sklearn_models(tmp: Path) -> dict[str, object]:
    import joblib
    from dlhub_sdk.models.servables.sklearn import ScikitLearnModel
    from sklearn.linear_model import LinearRegression, LogisticRegression

    x = [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    clf = LogisticRegression().fit(x, [0, 1, 1, 0])
    (tmp / "clf.pkl").write_bytes(pickle.dumps(clf))
    joblib.dump(LinearRegression().fit(x, [1.0, 2.0, 3.0, 0.0]), tmp / "reg.joblib")
    pkl = ScikitLearnModel.create_model(str(tmp / "clf.pkl"), 2, classes=["no", "yes"])
    job = ScikitLearnModel.create_model(str(tmp / "reg.joblib"), 2,
                                        serialization_method="joblib")
    return {"sklearn_pickle": _named(pkl, "clf", "A logistic regression"),
            "sklearn_joblib": _named(job, "reg", "A linear regression")}


def deep_models(tmp: Path) -> dict[str, object]:
    import torch
    from dlhub_sdk.models.servables.pytorch import TorchModel

    torch.save(torch.nn.Linear(4, 2), tmp / "linear.pt")
    torch.serialization.add_safe_globals([torch.nn.Linear])  # our own file, made just above
    single = TorchModel.create_model(str(tmp / "linear.pt"), (None, 4), (None, 2))
    multi = TorchModel.create_model(str(tmp / "linear.pt"), [(None, 4), (None, 3)], (None, 2),
                                    input_type=["float", "integer"])
    out = {"torch": _named(single, "linear", "A linear layer"),
           "torch_tuple": _named(multi, "linear_pair", "Two inputs, one output")}
    try:
        import keras
        from dlhub_sdk.models.servables.keras import KerasModel
    except ImportError:
        return out
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    net.save(tmp / "dense.keras")
    model = KerasModel.create_model(str(tmp / "dense.keras"), output_names=["a", "b"])
    out["keras"] = _named(model, "dense", "A dense layer")
    return out


def main() -> None:
    python = _load_sdk()
    HERE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        models = {**static_methods(python), **class_method(python, Path(tmp)),
                  **sklearn_models(Path(tmp)), **deep_models(Path(tmp))}
        restricted = python.PythonStaticMethodModel.create_model("math", "sqrt")
        restricted.set_inputs("float", "x").set_outputs("float", "sqrt(x)")
        restricted.set_visibility(groups=["8b5dc2c6-5a1e-11ea-a0c3-0e5b2b3b4e7d"])
        models["static_globus_group"] = _named(restricted, "sqrt_group", "Square root, a group")
        for name, model in models.items():
            record = model.to_dict(simplify_paths=True)  # type: ignore[attr-defined]
            (HERE / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
            print("wrote", name)


if __name__ == "__main__":
    main()
