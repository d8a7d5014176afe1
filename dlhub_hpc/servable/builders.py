"""Builders that fill a servable spec by inspecting the model, as DLHub's SDK did.

::

    b = ScikitLearnServable.from_file("model.pkl", owner="alice", name="iris")
    b.set_title("Iris classifier").add_creator("Ward, Logan", ["Argonne"], "0000-0002-1825-0097")
    b.add_related_identifier("10.1000/paper").write("servables/iris")   # then 'dlhub-hpc publish'

``PythonFunctionServable(func, ...)`` does the same for a plain function: its module file
goes into the bundle, its docstring becomes the description and its keyword defaults the
method's parameters.
"""

from __future__ import annotations

import inspect
import logging
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dlhub_hpc.errors import SpecError
from dlhub_hpc.servable.spec import ServableSpec
from dlhub_hpc.servable.types import ArgType

logger = logging.getLogger(__name__)

TypeLike = ArgType | dict[str, Any]


def _arg(t: TypeLike) -> dict[str, Any]:
    return t.model_dump(exclude_defaults=True) if isinstance(t, ArgType) else dict(t)


class ServableBuilder:
    """The three blocks as plain data, with setters for the citable metadata."""

    def __init__(self, owner: str, name: str, servable: dict[str, Any]) -> None:
        self.datacite: dict[str, Any] = {"title": name, "creators": []}
        self.dlhub: dict[str, Any] = {"owner": owner, "name": name}
        self.servable = servable
        self._files: dict[str, Path] = {}  # name in the bundle -> source file

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(owner={self.dlhub['owner']!r}, "
                f"name={self.dlhub['name']!r})")

    def set_title(self, title: str) -> ServableBuilder:
        self.datacite["title"] = title
        return self

    def set_description(self, text: str) -> ServableBuilder:
        self.datacite["description"] = text
        return self

    def add_creator(self, name: str, affiliations: list[str] | None = None,
                    orcid: str | None = None) -> ServableBuilder:
        self.datacite["creators"].append(
            {"name": name, "affiliations": affiliations or [], "orcid": orcid})
        return self

    def add_related_identifier(self, identifier: str, identifier_type: str = "DOI",
                               relation_type: str = "IsDescribedBy") -> ServableBuilder:
        self.datacite.setdefault("related_identifiers", []).append(
            {"identifier": identifier, "identifier_type": identifier_type,
             "relation_type": relation_type})
        return self

    def set_doi(self, doi: str) -> ServableBuilder:
        self.datacite["doi"] = doi
        return self

    def set_publication_year(self, year: int) -> ServableBuilder:
        self.datacite["publication_year"] = year
        return self

    def add_subjects(self, *subjects: str) -> ServableBuilder:
        self.datacite.setdefault("subjects", []).extend(subjects)
        return self

    def set_domains(self, *domains: str) -> ServableBuilder:
        self.dlhub["domains"] = list(domains)
        return self

    def set_visibility(self, users: list[str] | None = None, groups: list[str] | None = None,
                       public: bool = False) -> ServableBuilder:
        entries = (["public"] if public else []) + [f"user:{u}" for u in users or []]
        self.dlhub["visible_to"] = entries + [f"group:{g}" for g in groups or []]
        return self

    def add_dependency(self, package: str, version: str = "") -> ServableBuilder:
        self.dlhub.setdefault("dependencies", {})[package] = version
        return self

    def add_file(self, path: str | Path, name: str | None = None) -> ServableBuilder:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"{path} is not a file")
        self._files[name or path.name] = path
        return self

    def to_spec(self) -> ServableSpec:
        """The spec, validated: a bad field is a ``SpecError`` naming it."""
        return ServableSpec.from_data(
            {"datacite": self.datacite, "dlhub": self.dlhub, "servable": self.servable},
            f"the {type(self).__name__}",
        )

    def write(self, directory: str | Path) -> Path:
        """Write ``servable.yaml`` and copy the files into ``directory``; returns it."""
        spec = self.to_spec()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, source in self._files.items():
            if source.resolve() != (directory / name).resolve():
                shutil.copyfile(source, directory / name)
        data = spec.model_dump(mode="json", exclude_defaults=True)
        data["datacite"]["title"] = spec.datacite.title  # required, even if it is the default
        (directory / "servable.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        return directory


def _defaults(func: Callable[..., Any]) -> dict[str, Any]:
    params = inspect.signature(func).parameters.values()
    return {p.name: p.default for p in params
            if p.default is not inspect.Parameter.empty
            and isinstance(p.default, str | int | float | bool | type(None))}


class PythonFunctionServable(ServableBuilder):
    """A plain function, from its own module file, as a ``python_function`` servable."""

    def __init__(self, function: Callable[..., Any], *, owner: str, name: str | None = None,
                 input_type: TypeLike | None = None, output_type: TypeLike | None = None,
                 method: str = "run", takes_batch: bool = False) -> None:
        source = inspect.getsourcefile(function)
        module = getattr(function, "__module__", "")
        if source is None or not module or module == "__main__" or "<" in function.__qualname__:
            raise SpecError(f"{function!r} must be a top-level function of an importable "
                            "module file, so that the worker can import it")
        file_module = Path(source).stem
        doc = inspect.getdoc(function) or ""
        super().__init__(owner, name or function.__name__.replace("_", "-"), {
            "type": "python_function",
            "methods": {method: {
                "function": f"{file_module}:{function.__name__}",
                "input": _arg(input_type or {"type": "any"}),
                "output": _arg(output_type or {"type": "any"}),
                "description": doc.split("\n\n")[0],
                "takes_batch": takes_batch,
                "parameters": _defaults(function),
            }},
        })
        if doc:
            self.set_description(doc)
        self.add_file(source, f"{file_module}.py")


def _sklearn_methods(model: Any) -> dict[str, Any]:
    n = getattr(model, "n_features_in_", None)
    rows = {"type": "ndarray", "shape": [None, n] if n else None, "dtype": "float",
            "description": f"one row of {n or 'the'} features per sample"}
    rows = {k: v for k, v in rows.items() if v is not None}
    methods: dict[str, Any] = {"predict": {
        "input": rows, "output": {"type": "ndarray", "shape": [None]},
        "description": "The model's prediction for each row.",
    }}
    classes = getattr(model, "classes_", None)
    if hasattr(model, "predict_proba") and classes is not None:
        methods["predict_proba"] = {
            "input": rows,
            "output": {"type": "ndarray", "shape": [None, len(classes)], "dtype": "float"},
            "description": f"Probability of each of the {len(classes)} classes, per row.",
        }
    return methods


class ScikitLearnServable(ServableBuilder):
    """A pickled (or joblib) scikit-learn estimator as an ``sklearn`` servable."""

    @classmethod
    def from_file(cls, path: str | Path, *, owner: str, name: str,
                  deterministic: bool = True) -> ScikitLearnServable:
        """Load the model once to read its type, feature count and classes."""
        path = Path(path)
        try:
            if path.suffix == ".joblib":
                import joblib

                model = joblib.load(path)
            else:
                with path.open("rb") as fh:
                    model = pickle.load(fh)  # the author's own file, on the author's machine
        except Exception as exc:
            raise SpecError(f"cannot load the model in {path}: {exc}") from exc
        if not hasattr(model, "predict"):
            raise SpecError(f"{path} holds a {type(model).__name__}, which has no predict()")
        builder = cls(owner, name, {
            "type": "sklearn", "model": path.name, "deterministic": deterministic,
            "model_summary": repr(model)[:500], "methods": _sklearn_methods(model),
        })
        builder.set_title(f"{type(model).__name__} model {name}")
        builder.add_file(path)
        try:
            import sklearn

            builder.add_dependency("scikit-learn", f"=={sklearn.__version__}")
        except ImportError:
            logger.debug("scikit-learn is not importable here; no version recorded")
        return builder
