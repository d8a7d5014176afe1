"""The Open Inference Protocol's tensors <-> servable values, and the model metadata."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("aiohttp", reason="pip install dlhub-hpc[gateway] (aiohttp)")

from dlhub_hpc.errors import InvalidInput, MethodNotFound
from dlhub_hpc.gateway.names import servable_of, version_of
from dlhub_hpc.gateway.service import (
    HEADER_LENGTH,
    model_config,
    model_metadata,
    pick_method,
    read_inputs,
    respond,
    split_body,
)
from dlhub_hpc.gateway.tensors import (
    DATATYPES,
    as_input,
    as_tensors,
    decode_tensor,
    encode_output,
    tensor_metadata,
)


def tensor(data: Any, shape: list[int], datatype: str = "FP32") -> dict[str, Any]:
    return {"name": "input", "shape": shape, "datatype": datatype, "data": data}


def test_json_data_flat_or_nested_becomes_an_array_of_its_datatype_and_shape() -> None:
    for data in ([1, 2, 3, 4], [[1, 2], [3, 4]]):
        t = decode_tensor(tensor(data, [2, 2]), None, "inputs[0]")
        assert t.array.dtype == np.float32 and t.array.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_binary_data_is_read_little_endian_in_every_numeric_datatype(datatype: str) -> None:
    values = np.array([0, 1, 1, 0], dtype=DATATYPES[datatype])
    t = decode_tensor(tensor(None, [4], datatype), memoryview(values.tobytes()), "x")
    assert t.array.tolist() == values.tolist()
    out, raw = encode_output("output", t.array, binary=True)
    assert out["datatype"] == datatype and raw == values.tobytes()
    assert out["parameters"] == {"binary_data_size": len(raw)}


def test_binary_bytes_elements_carry_a_four_byte_length() -> None:
    raw = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"", b"xyz"))
    t = decode_tensor(tensor(None, [3], "BYTES"), memoryview(raw), "x")
    assert t.array.tolist() == [b"ab", b"", b"xyz"]
    assert encode_output("o", t.array, binary=True)[1] == raw
    with pytest.raises(InvalidInput, match="runs past"):
        decode_tensor(tensor(None, [3], "BYTES"), memoryview(raw[:-1]), "x")


@pytest.mark.parametrize(("spec", "binary", "match"), [
    (tensor([1, 2, 3], [4]), None, "needs 4 elements"),
    (tensor(["a"], [1]), None, "must hold numbers"),
    (tensor([1], [1], "FP128"), None, "not one of"),
    (tensor([1], [-1]), None, "non-negative"),
    (tensor([1], "1"), None, "shape"),
    (tensor([300], [1], "UINT8"), None, "does not fit"),
    (tensor(None, [2]), memoryview(b"\0" * 7), "binary data is 7 bytes"),
    ("input", None, "JSON object"),
])
def test_a_bad_tensor_is_an_input_error_that_says_what_is_wrong(
        spec: Any, binary: memoryview | None, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        decode_tensor(spec, binary, "inputs[0]")


def test_the_declared_input_type_shapes_the_value() -> None:
    floats = [decode_tensor(tensor([1.5, 2.5], [2], "FP64"), None, "x")]
    assert as_input(floats, {"type": "list", "item_type": {"type": "float"}}) == [1.5, 2.5]
    assert isinstance(as_input(floats, {"type": "ndarray"}), np.ndarray)
    one = [decode_tensor(tensor([3], [1], "INT64"), None, "x")]
    assert as_input(one, {"type": "integer"}) == 3
    assert type(as_input(one, {"type": "integer"})) is int
    text = [decode_tensor(tensor(["Ada"], [1], "BYTES"), None, "x")]
    assert as_input(text, {"type": "string"}) == "Ada"
    assert as_input(text, {"type": "bytes"}) == b"Ada"
    with pytest.raises(InvalidInput, match="single float"):
        as_input(floats, {"type": "float"})
    with pytest.raises(InvalidInput, match="no inputs"):
        as_input([], {"type": "any"})


def test_several_input_tensors_are_a_dict_by_name() -> None:
    a = decode_tensor({**tensor([1], [1], "INT64"), "name": "a"}, None, "x")
    b = decode_tensor({**tensor(["s"], [1], "BYTES"), "name": "b"}, None, "x")
    got = as_input([a, b], {"type": "dict", "properties": {"a": {"type": "integer"},
                                                           "b": {"type": "string"}}})
    assert got == {"a": 1, "b": "s"}


def test_two_inputs_of_one_name_are_refused_rather_than_one_dropped() -> None:
    a = decode_tensor({**tensor([1], [1], "INT64"), "name": "a"}, None, "x")
    b = decode_tensor({**tensor([2], [1], "INT64"), "name": "a"}, None, "x")
    with pytest.raises(InvalidInput, match="'a' more than once"):
        as_input([a, b], {"type": "any"})


def test_outputs_become_tensors_and_a_dict_one_per_key() -> None:
    assert [(n, a.tolist()) for n, a in as_tensors(2.5)] == [("output", [2.5])]
    pairs = as_tensors({"mean": np.float32(1), "label": "cat"})
    assert [(n, a.tolist()) for n, a in pairs] == [("mean", [1.0]), ("label", ["cat"])]
    assert encode_output("label", pairs[1][1], binary=False)[0]["datatype"] == "BYTES"
    with pytest.raises(InvalidInput, match="not a tensor"):
        as_tensors([{"nested": 1}])


@given(st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=50),
       st.sampled_from(["FP32", "FP64"]), st.booleans())
def test_a_tensor_survives_the_round_trip(values: list[float], datatype: str,
                                          binary: bool) -> None:
    array = np.array(values, dtype=DATATYPES[datatype])
    out, raw = encode_output("output", array, binary)
    back = decode_tensor({**out, "name": "input"}, memoryview(raw) if binary else None, "x")
    assert back.array.dtype == array.dtype and back.array.tobytes() == array.tobytes()


def test_declared_types_as_tensor_metadata() -> None:
    assert tensor_metadata({"type": "ndarray", "dtype": "float32", "shape": [None, 4]},
                           "input") == {"name": "input", "datatype": "FP32", "shape": [-1, 4]}
    assert tensor_metadata({"type": "ndarray"}, "x")["datatype"] == "FP64"
    assert tensor_metadata({"type": "list", "item_type": {"type": "integer"}}, "x") == {
        "name": "x", "datatype": "INT64", "shape": [-1]}
    assert tensor_metadata({"type": "string"}, "x")["datatype"] == "BYTES"
    assert tensor_metadata({"type": "boolean"}, "x") == {"name": "x", "datatype": "BOOL",
                                                          "shape": [1]}


def test_model_names_versions_and_methods() -> None:
    assert servable_of({"owner": "alice", "name": "add"}) == "alice/add"
    assert servable_of({"model": "alice/add"}) == "alice/add"
    with pytest.raises(InvalidInput, match="owner/name"):
        servable_of({"model": "add"})
    assert version_of({}) is None and version_of({"version": "3"}) == 3
    with pytest.raises(InvalidInput, match="positive integer"):
        version_of({"version": "0"})
    spec = {"servable": {"methods": {"b": {}, "run": {}}}}
    assert pick_method(spec, "")[0] == "run" and pick_method(spec, "b")[0] == "b"
    with pytest.raises(MethodNotFound, match="b, run"):
        pick_method(spec, "c")


def test_model_metadata_lists_every_method_and_live_version() -> None:
    record = {"name": "a/b", "version": 2, "spec": {"servable": {"type": "python_function",
              "methods": {"run": {"input": {"type": "float"}, "output": {"type": "float"}},
                          "other": {"input": {"type": "string"}}}}},
              "versions": [{"version": 1, "status": "withdrawn"},
                           {"version": 2, "status": "active"}]}
    meta = model_metadata(record)
    assert meta["versions"] == ["2"] and meta["platform"] == "dlhub_python_function"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [1]}]
    assert set(meta["parameters"]["methods"]) == {"run", "other"}


def test_model_config_is_tritons_form_of_the_default_methods_tensors() -> None:
    record = {"name": "a/b", "version": 1, "spec": {"servable": {"methods": {"run": {
        "input": {"type": "string"}, "output": {"type": "ndarray", "dtype": "int32",
                                                "shape": [None, 3]}}}}}}
    config = model_config(record)
    assert config["max_batch_size"] == 0 and config["name"] == "a/b"
    assert config["input"] == [{"name": "input", "data_type": "TYPE_STRING", "dims": [1]}]
    assert config["output"] == [{"name": "output", "data_type": "TYPE_INT32", "dims": [-1, 3]}]


def test_the_binary_extension_splits_the_body_at_the_header_length() -> None:
    head = b'{"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", ' \
           b'"parameters": {"binary_data_size": 8}}]}'
    raw = np.array([7, 9], dtype="<i4").tobytes()
    header, binary = split_body(head + raw, str(len(head)))
    assert read_inputs(header, binary)[0].array.tolist() == [7, 9]
    with pytest.raises(InvalidInput, match="belong to no input"):
        read_inputs(header, memoryview(raw + b"x"))
    with pytest.raises(InvalidInput, match="within the body"):
        split_body(head, str(len(head) + 1))
    with pytest.raises(InvalidInput, match="cannot be read"):
        split_body(b"{", None)


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_a_header_nested_past_what_json_reads_is_an_input_error(depth: int) -> None:
    head = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ' + \
        b"[" * depth + b"1" + b"]" * depth + b"}]}"
    with pytest.raises(InvalidInput, match="nests too deep"):
        split_body(head, None)


def test_nan_in_a_json_header_is_read_and_written_as_pythons_json_does() -> None:
    header, binary = split_body(b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", '
                                b'"data": [NaN, 1.5]}]}', None)
    values = read_inputs(header, binary)[0].array
    assert np.isnan(values[0]) and values[1] == 1.5
    record = {"name": "a/b", "version": 1}
    answer = respond({"id": "r1"}, record, np.array([np.nan, 2.0]), False)
    assert answer.body == (b'{"model_name": "a/b", "model_version": "1", "outputs": [{"name": '
                           b'"output", "datatype": "FP64", "shape": [2], "data": [NaN, 2.0]}], '
                           b'"id": "r1"}')


def test_a_binary_answer_is_its_json_header_then_the_raw_tensor() -> None:
    value = np.array([1.0, np.nan], dtype=np.float32)
    answer = respond({"id": "r2", "outputs": [{"name": "output"}]}, {"name": "a/b", "version": 3},
                     value, True)
    body = answer.body
    assert isinstance(body, bytes)
    size = int(answer.headers[HEADER_LENGTH])
    assert json.loads(body[:size]) == {
        "model_name": "a/b", "model_version": "3", "id": "r2",
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [2],
                     "parameters": {"binary_data_size": 8}}]}
    assert np.array_equal(np.frombuffer(body[size:], "<f4"), value, equal_nan=True)
