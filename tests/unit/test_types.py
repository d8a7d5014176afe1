"""Declared types: the check of a value against one, and the validation of the declaration."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from dlhub_hpc.errors import InvalidInput
from dlhub_hpc.servable.types import ArgType, check_value


def t(**kwargs: Any) -> ArgType:
    return ArgType.model_validate(kwargs)


def rejects(expected: ArgType, value: Any, path: str = "input") -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        check_value(expected, value, path)
    return info.value


# ---- scalars -------------------------------------------------------------------------------

@pytest.mark.parametrize(("type_name", "value", "checked"), [
    ("integer", 3, 3),
    ("integer", np.int64(3), 3),
    ("float", 2, 2.0),
    ("float", np.float32(0.5), 0.5),
    ("string", "hi", "hi"),
    ("boolean", True, True),
    ("bytes", b"\x00", b"\x00"),
    ("bytes", bytearray(b"ab"), bytearray(b"ab")),
    ("any", {"x": [None]}, {"x": [None]}),
])
def test_scalars_are_accepted_and_coerced(type_name: str, value: Any, checked: Any) -> None:
    out = check_value(t(type=type_name), value)
    assert out == checked and type(out) is type(checked)


@pytest.mark.parametrize(("type_name", "value", "got"), [
    ("integer", True, "bool"),
    ("integer", 1.5, "float"),
    ("integer", "3", "str"),
    ("float", False, "bool"),
    ("float", "1.0", "str"),
    ("string", 5, "int"),
    ("boolean", 1, "int"),
    ("bytes", "text", "str"),
])
def test_scalars_of_the_wrong_type_are_rejected(type_name: str, value: Any, got: str) -> None:
    error = rejects(t(type=type_name), value)
    assert error.message == f"input should be {type_name}, got {got}"
    assert error.details == {"path": "input", "expected": type_name, "got": got}


# ---- containers ----------------------------------------------------------------------------

def test_list_items_are_checked_and_the_bad_one_named() -> None:
    floats = t(type="list", item_type={"type": "float"})
    assert check_value(floats, (1, 2.5)) == [1.0, 2.5]
    error = rejects(floats, [1.0, 2.0, "three"])
    assert error.message == "input[2] should be float, got str"
    assert rejects(floats, {"a": 1}).message == "input should be list of float, got dict"


def test_untyped_lists_and_tuples_only_need_to_be_sequences() -> None:
    assert check_value(t(type="list"), ("a", 1)) == ["a", 1]
    assert check_value(t(type="tuple"), ["a", 1]) == ["a", 1]
    assert rejects(t(type="tuple"), "ab").details["got"] == "str"


def test_tuple_elements_are_checked_by_position() -> None:
    pair = t(type="tuple", element_types=[{"type": "string"}, {"type": "float"}])
    assert check_value(pair, ("x", 1)) == ["x", 1.0]
    assert "3 elements, expected 2" in rejects(pair, ["x", 1.0, 2.0]).message
    assert rejects(pair, [1, 1.0]).details["path"] == "input[0]"


def test_dict_properties_are_required_and_checked() -> None:
    point = t(type="dict", properties={"x": {"type": "float"}, "tag": {"type": "string"}})
    assert check_value(point, {"x": 1, "tag": "a", "extra": None}) == {
        "x": 1.0, "tag": "a", "extra": None}
    assert "missing keys ['tag', 'x']" in rejects(point, {}).message
    assert rejects(point, {"x": "far", "tag": "a"}).message == (
        "input['x'] should be float, got str")
    assert check_value(t(type="dict"), {"any": "thing"}) == {"any": "thing"}


def test_errors_in_nested_values_carry_the_full_path() -> None:
    nested = t(type="dict", properties={"rows": {
        "type": "list", "item_type": {"type": "list", "item_type": {"type": "integer"}}}})
    error = rejects(nested, {"rows": [[1, 2], [3, "4"]]})
    assert error.details["path"] == "input['rows'][1][1]"


# ---- ndarrays ------------------------------------------------------------------------------

ROWS4 = {"type": "ndarray", "shape": [None, 4], "dtype": "float"}


def test_nested_lists_become_arrays_of_the_declared_shape() -> None:
    out = check_value(t(**ROWS4), [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]])
    assert isinstance(out, np.ndarray) and out.shape == (2, 4)


def test_arrays_pass_through_without_a_copy() -> None:
    arr = np.zeros((3, 4))
    assert check_value(t(**ROWS4), arr) is arr


@pytest.mark.parametrize(("value", "words"), [
    (np.zeros((2, 3)), "input.shape: expected (None, 4), got (2, 3)"),
    (np.zeros(4), "input.shape: expected (None, 4), got (4,)"),
    (np.array([["a"] * 4]), "dtype <U1 is not float"),
    (np.zeros((1, 4), dtype=complex), "dtype complex128 is not float"),
    ([[1, 2], [3]], "input should be ndarray shape=[None, 4] dtype=float, got list"),
    ("1,2,3,4", "input should be ndarray shape=[None, 4] dtype=float, got str"),
])
def test_arrays_of_the_wrong_shape_or_dtype_are_rejected(value: Any, words: str) -> None:
    assert words in rejects(t(**ROWS4), value).message


def test_a_concrete_dtype_is_cast_when_the_kind_allows() -> None:
    f32 = t(type="ndarray", dtype="float32")
    out = check_value(f32, np.arange(3, dtype=np.float64))
    assert out.dtype == np.float32 and out.tolist() == [0.0, 1.0, 2.0]
    assert check_value(f32, [1, 2]).dtype == np.float32
    assert "cannot be cast to float32" in rejects(f32, np.array([1j])).message


def test_dtype_families_accept_every_narrower_kind() -> None:
    assert check_value(t(type="ndarray", dtype="float"), np.arange(2)).dtype.kind == "i"
    assert "is not integer" in rejects(t(type="ndarray", dtype="integer"), np.ones(2)).message
    assert check_value(t(type="ndarray", dtype="boolean"), [True]).dtype == np.bool_


def test_an_object_payload_is_no_ndarray() -> None:
    error = rejects(t(type="ndarray"), [{"a": 1}])
    assert "ragged or mixed" in error.message


def test_a_list_of_floats_is_not_truncated_into_an_integer_array() -> None:
    ints = t(type="ndarray", dtype="int32")
    assert "cannot be cast" in rejects(ints, np.array([1.5])).message  # arrays: refused
    rejects(ints, [1.5, 2.7])  # lists must be refused the same way


# ---- the declaration itself ----------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "words"), [
    ({"type": "list", "shape": [3]}, "'shape' is only for type ndarray"),
    ({"type": "float", "dtype": "float32"}, "'dtype' is only for type ndarray"),
    ({"type": "dict", "item_type": {"type": "any"}}, "'item_type' is only for type list"),
    ({"type": "list", "element_types": []}, "'element_types' is only for type tuple"),
    ({"type": "list", "properties": {}}, "'properties' is only for type dict"),
    ({"type": "matrix"}, "Input should be 'any', 'string'"),
    ({"type": "any", "units": "cm"}, "Extra inputs are not permitted"),
])
def test_inconsistent_declarations_are_rejected(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        ArgType.model_validate(kwargs)


def test_an_unknown_dtype_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="floot"):
        ArgType(type="ndarray", dtype="floot")


def test_describe_reads_like_the_declaration() -> None:
    assert t(**ROWS4).describe() == "ndarray shape=[None, 4] dtype=float"
    assert t(type="list", item_type={"type": "integer"}).describe() == "list of integer"
    assert t(type="ndarray").describe() == "ndarray"
    assert t(type="dict").describe() == "dict"


def test_declarations_are_frozen() -> None:
    with pytest.raises(ValidationError):
        t(type="any").type = "string"  # type: ignore[misc]


def test_a_shape_mismatch_names_the_path_and_both_shapes() -> None:
    rows = t(type="list", item_type={"type": "ndarray", "shape": [None, 132]})
    value = [np.zeros((2, 132))] * 3 + [np.zeros((4, 131))]
    err = rejects(rows, value, path="inputs")
    assert err.message.startswith("inputs[3].shape: expected (None, 132), got (4, 131)")
    assert err.details == {"path": "inputs[3].shape", "expected": "(None, 132)",
                           "got": "(4, 131)"}


@pytest.mark.parametrize("declared, value, checked", [
    ({"type": "number"}, 3, 3),
    ({"type": "number"}, 2.5, 2.5),
    ({"type": "file"}, "/data/x.cif", "/data/x.cif"),
    ({"type": "file"}, b"raw bytes", b"raw bytes"),
    ({"type": "python object", "python_type": "ase.Atoms"}, {"any": "thing"}, {"any": "thing"}),
])
def test_the_other_dlhub_types_accept_their_values(
    declared: dict[str, Any], value: Any, checked: Any
) -> None:
    assert check_value(t(**declared), value) == checked


@pytest.mark.parametrize("declared, value, words", [
    ({"type": "number"}, True, "input should be number, got bool"),
    ({"type": "number"}, "3", "input should be number, got str"),
    ({"type": "file"}, "", "send a path or URL string"),
    ({"type": "file"}, 12, "send a path or URL string"),
])
def test_the_other_dlhub_types_reject_wrong_values(
    declared: dict[str, Any], value: Any, words: str
) -> None:
    assert words in rejects(t(**declared), value).message


def test_python_type_belongs_to_python_objects_only() -> None:
    with pytest.raises(ValueError, match="'python_type' is only for type 'python object'"):
        t(type="dict", python_type="x.Y")
    assert t(type="python object", python_type="ase.Atoms").describe() == (
        "python object ase.Atoms")
