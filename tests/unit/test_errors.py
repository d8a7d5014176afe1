"""Errors cross the wire as records and are rebuilt as the same class on the other side."""

from __future__ import annotations

import inspect
import re

import pytest

from dlhub_hpc import errors
from dlhub_hpc.errors import DlhubHpcError, error_from_wire
from dlhub_hpc.protocol import Reply, decode, encode

ERROR_TYPES = sorted(
    (cls for _, cls in inspect.getmembers(errors, inspect.isclass)
     if issubclass(cls, DlhubHpcError)),
    key=lambda cls: cls.__name__,
)


def test_the_docstring_tree_and_the_classes_agree() -> None:
    drawn = set(re.findall(r"── (\w+)", errors.__doc__ or "")) | {"DlhubHpcError"}
    assert drawn == {cls.__name__ for cls in ERROR_TYPES}


@pytest.mark.parametrize("cls", ERROR_TYPES, ids=lambda c: c.__name__)
def test_error_from_wire_rebuilds_class_message_and_details(cls: type[DlhubHpcError]) -> None:
    original = cls(f"{cls.__name__} happened; do something else", servable="demo/add",
                   version=3, methods=["run", "predict"])
    rebuilt = error_from_wire(original.to_wire())
    assert type(rebuilt) is cls
    assert rebuilt.message == original.message == str(rebuilt)
    assert rebuilt.details == {"servable": "demo/add", "version": 3,
                               "methods": ["run", "predict"]}


@pytest.mark.parametrize("cls", ERROR_TYPES, ids=lambda c: c.__name__)
def test_errors_survive_a_reply_on_the_wire(cls: type[DlhubHpcError]) -> None:
    frames = encode(Reply("r1", False, None, cls("nope", path="input[0]").to_wire()))
    rebuilt = error_from_wire(decode(frames).error)  # type: ignore[arg-type]
    assert type(rebuilt) is cls and rebuilt.details == {"path": "input[0]"}


def test_to_wire_is_plain_data() -> None:
    assert errors.Timeout("late", servable="x").to_wire() == {
        "type": "Timeout", "message": "late", "details": {"servable": "x"}}


def test_unknown_error_names_become_the_root_error() -> None:
    rebuilt = error_from_wire({"type": "KeyError", "message": "'x'", "details": {"k": 1}})
    assert type(rebuilt) is DlhubHpcError
    assert (rebuilt.message, rebuilt.details) == ("'x'", {"k": 1})


def test_a_record_missing_fields_still_rebuilds() -> None:
    rebuilt = error_from_wire({"type": "Overloaded", "details": None})
    assert type(rebuilt) is errors.Overloaded
    assert (rebuilt.message, rebuilt.details) == ("", {})


def test_subclasses_are_caught_by_their_family() -> None:
    assert issubclass(errors.WorkerLost, errors.ServingError)
    assert issubclass(errors.InvalidInput, errors.ServableError)
    assert all(issubclass(cls, Exception) for cls in ERROR_TYPES)
