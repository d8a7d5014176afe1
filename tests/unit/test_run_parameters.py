"""A request's ``parameters`` override a method's defaults (DLHub's ``run(..., parameters=)``):
on the wire (older peers still decode), in the shims, per item in a worker's batch, and
in the hub's check and memo key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from dlhub_hpc.broker.events import ServableInfo
from dlhub_hpc.broker.parameters import check_parameters, memo_method
from dlhub_hpc.client import checked_parameters
from dlhub_hpc.errors import InvalidInput
from dlhub_hpc.protocol import PROTOCOL_VERSION, Batch, Request, Tag, decode, encode
from dlhub_hpc.registry.dlhub_json import from_dlhub_json
from dlhub_hpc.registry.store import ServableRecord
from dlhub_hpc.servable.shims import load_servable
from dlhub_hpc.servable.types import ArgType
from dlhub_hpc.worker.runner import run_shim
from tests.dlhub_schema import DLHUB_DATA

X = np.array([[1.0, 5.0], [7.0, 2.0]])


def _numpy_max(tmp_path: Path) -> Any:
    record = json.loads((DLHUB_DATA / "sdk" / "static_numpy_max.json").read_text())
    return load_servable(from_dlhub_json(record, owner="dlhub"), tmp_path)


def test_a_request_without_parameters_is_encoded_as_before() -> None:
    frames = encode(Request("r1", "a/b", None, "run", [1], 5.0, True))
    header = msgpack.unpackb(frames[0])
    assert len(header) == 2 + 7  # an older hub decodes it: no trailing field
    old = msgpack.packb([PROTOCOL_VERSION, int(Tag.REQUEST), "r1", "a/b", None, "run", [1]])
    assert decode([old]).parameters is None  # and an older client's request decodes here


def test_parameters_round_trip_and_are_type_checked() -> None:
    msg = decode(encode(Request("r1", "a/b", 2, "run", X, None, True, {"axis": 1})))
    assert isinstance(msg, Request) and msg.parameters == {"axis": 1}
    bad = msgpack.packb([PROTOCOL_VERSION, int(Tag.REQUEST), "r1", "a/b", None, "run", [1],
                         None, True, [1, 2]])
    with pytest.raises(Exception, match="parameters has type list"):
        decode([bad])
    batch = decode(encode(Batch(3, "run", [1, 2], [None, {"axis": 0}])))
    assert isinstance(batch, Batch) and batch.parameters == [None, {"axis": 0}]
    assert len(msgpack.unpackb(encode(Batch(3, "run", [1]))[0])) == 2 + 3


def test_the_client_refuses_parameters_that_are_not_a_dict_of_names() -> None:
    assert checked_parameters(None) is None and checked_parameters({}) is None
    for bad in ([("axis", 1)], {1: 2}):
        with pytest.raises(InvalidInput, match="parameters should be a dict"):
            checked_parameters(bad)


def test_the_shim_calls_with_the_defaults_overridden(tmp_path: Path) -> None:
    shim = _numpy_max(tmp_path)
    (default,) = shim.run("run", [X])
    (rows,) = shim.run("run", [X], {"axis": 1})
    assert np.array_equal(default, [7.0, 5.0]) and np.array_equal(rows, [5.0, 7.0])


def test_a_batch_with_mixed_parameters_answers_each_item_with_its_own(tmp_path: Path) -> None:
    shim = _numpy_max(tmp_path)
    results = run_shim(shim, "run", [X, X, X], [None, {"axis": 1}, {"axis": 0}])
    assert [r[0] for r in results] == [True, True, True]
    assert [list(r[1]) for r in results] == [[7.0, 5.0], [5.0, 7.0], [7.0, 5.0]]


def test_keywords_a_function_does_not_take_fail_per_item_naming_them(tmp_path: Path) -> None:
    record = json.loads((DLHUB_DATA / "sdk" / "static_sqrt_autobatch.json").read_text())
    shim = load_servable(from_dlhub_json(record, owner="dlhub"), tmp_path)
    ok, bad = run_shim(shim, "run", [[4.0], [9.0]], [None, {"x": 1}])
    assert ok == [True, [2.0]]
    assert bad[0] is False and bad[1]["type"] == "ExecutionError"
    assert "parameters x" in bad[1]["message"]


def test_undeclared_keywords_pass_through_as_on_dlhub(tmp_path: Path) -> None:
    record = json.loads((DLHUB_DATA / "sdk" / "static_numpy_max.json").read_text())
    record["servable"]["methods"]["run"]["parameters"] = {}  # a plain numpy.max
    shim = load_servable(from_dlhub_json(record, owner="dlhub"), tmp_path)
    (plain,), (rows,) = shim.run("run", [X]), shim.run("run", [X], {"axis": 1})
    assert plain == 7.0 and np.array_equal(rows, [5.0, 7.0])
    (kept,) = _numpy_max(tmp_path).run("run", [X], {"keepdims": True})  # merged over axis=0
    assert np.array_equal(kept, [[7.0, 5.0]])


def _info(name: str) -> ServableInfo:
    record = json.loads((DLHUB_DATA / "sdk" / f"{name}.json").read_text())
    spec = from_dlhub_json(record, owner="dlhub")
    return ServableInfo.from_record(ServableRecord(spec.full_name, 1, "d", spec, 0.0))


def test_the_hub_passes_any_keyword_for_python_and_sklearn_servables() -> None:
    for name in ("static_sqrt_autobatch", "class_method", "sklearn_pickle"):
        assert check_parameters(_info(name), "run", {"axis": 1}) == {"axis": 1}
    with pytest.raises(InvalidInput, match="declares none"):
        check_parameters(_info("torch"), "run", {"axis": 1})


def test_the_hub_names_unknown_parameters_and_the_allowed_ones() -> None:
    info = ServableInfo("dlhub/torch_net", 1, "d", {"run": ArgType(type="any")},
                        params={"run": ("axis",)})  # a type that takes only what it declares
    assert check_parameters(info, "run", {"axis": 1}) == {"axis": 1}
    assert check_parameters(info, "run", None) is None
    with pytest.raises(InvalidInput) as err:
        check_parameters(info, "run", {"axis": 1, "keepdims": True, "out": None})
    assert err.value.details["unknown"] == ["keepdims", "out"]
    assert err.value.details["allowed"] == ["axis"]
    assert "keepdims, out" in str(err.value) and "it takes axis" in str(err.value)


def test_parameters_are_part_of_the_memo_key_and_the_plain_key_is_unchanged() -> None:
    assert memo_method("run", None) == memo_method("run", {}) == "run"
    one = memo_method("run", {"axis": 1, "k": [1, 2]})
    assert one == memo_method("run", {"k": [1, 2], "axis": 1})  # order does not matter
    assert one != memo_method("run", {"axis": 0, "k": [1, 2]}) and one.startswith("run")
