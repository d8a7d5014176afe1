"""The bridge's msgpack call and reply, and the endpoint side's handling of bad calls and
outputs too big for one result (no hub, no Globus Compute)."""

from __future__ import annotations

import base64
import os
import pwd
import uuid
from typing import Any

import msgpack
import numpy as np
import pytest

from dlhub_hpc.bridge.codec import (
    BRIDGE_VERSION,
    DEFERRED,
    ERROR,
    OK,
    decode_envelope,
    encode_envelope,
    pack_value,
    unpack_value,
)
from dlhub_hpc.bridge.forward import RunCall, _fit_results, forward
from dlhub_hpc.bridge.limits import ComputeLimits
from dlhub_hpc.bridge.remote import RemoteClient
from dlhub_hpc.errors import (
    ConfigError,
    EndpointError,
    InvalidInput,
    LimitExceeded,
    ProtocolError,
    RateLimited,
    error_from_wire,
)


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array(7, dtype=np.int64),
    np.array([True, False]),
    np.array(["a", "bc"]),
    np.arange(6, dtype=">i2").reshape(2, 3),
    np.arange(12.0).reshape(3, 4)[:, 1],  # not contiguous
], ids=["2d-float32", "0d", "bool", "str", "big-endian", "strided"])
def test_arrays_round_trip_with_dtype_and_shape(array: np.ndarray) -> None:
    back = unpack_value(pack_value({"x": array}))["x"]
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_plain_values_round_trip_as_msgpack_does() -> None:
    value = {"a": (1, 2.5, "s", b"raw", None, True), 3: [np.float64(1.5), np.int32(2)]}
    assert unpack_value(pack_value(value)) == {"a": [1, 2.5, "s", b"raw", None, True],
                                               3: [1.5, 2]}


def test_values_that_cannot_travel_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="dtype object"):
        pack_value(np.array([object()]))
    with pytest.raises(InvalidInput, match="values of type complex"):
        pack_value([1j])
    with pytest.raises(ProtocolError, match="extension code 9"):
        unpack_value(msgpack.packb(msgpack.ExtType(9, b"")))


def test_envelopes_are_strings_of_one_version() -> None:
    text = encode_envelope({"v": BRIDGE_VERSION, "op": "whoami"})
    assert isinstance(text, str) and decode_envelope(text, "call")["op"] == "whoami"
    with pytest.raises(ProtocolError, match="is a string"):
        decode_envelope(b"abc", "call")
    with pytest.raises(ProtocolError, match="undecodable"):
        decode_envelope("not base64!", "call")
    with pytest.raises(ProtocolError, match="is a map"):
        decode_envelope(base64.b64encode(msgpack.packb([1])).decode(), "reply")
    with pytest.raises(ProtocolError, match="same dlhub-hpc version"):
        decode_envelope(encode_envelope({"v": 99}), "reply")


def _reply(call: dict[str, Any]) -> dict[str, Any]:
    return decode_envelope(forward(encode_envelope(call)), "reply")


@pytest.mark.parametrize("call, message", [
    ({"v": BRIDGE_VERSION, "op": "fly"}, "unknown call op 'fly'"),
    ({"v": 2, "op": "run"}, "bridge version 2"),
    ({"v": BRIDGE_VERSION, "op": "run", "servable": "a/b", "timeout": -1,
      "result_limit": 10**7, "items": []}, "timeout is a positive number"),
    ({"v": BRIDGE_VERSION, "op": "run", "servable": "a/b", "result_limit": 10**7,
      "items": [1]}, "items are a list of packed values"),
    ({"v": BRIDGE_VERSION, "op": "run", "servable": "a/b", "items": []}, "result_limit"),
])
def test_a_bad_call_gets_a_protocol_error_reply(call: dict[str, Any], message: str) -> None:
    reply = _reply(call)
    error = error_from_wire(reply["error"])
    assert isinstance(error, ProtocolError) and message in error.message
    assert reply["results"] == []


def test_whoami_names_the_local_user_and_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLHUB_HPC_HUB", "tcp://127.0.0.1:1")
    who = _reply({"v": BRIDGE_VERSION, "op": "whoami"})["who"]
    assert who["user"] == pwd.getpwuid(os.geteuid()).pw_name
    assert (who["uid"], who["pid"], who["hub"]) == (os.geteuid(), os.getpid(),
                                                   "tcp://127.0.0.1:1")


def _call(limit: int, n: int) -> RunCall:
    return RunCall("a/b", "", 10.0, True, limit, [b""] * n)


def test_outputs_that_do_not_fit_the_result_are_deferred() -> None:
    outcomes = [(OK, np.zeros(1000)) for _ in range(5)]  # 8 kB each
    records = _fit_results(outcomes, _call(30_000, 5), header=100)
    statuses = [r[0] for r in records]
    assert statuses[:2] == [OK, OK] and DEFERRED in statuses
    kept = sum(len(msgpack.packb(r, use_bin_type=True)) for r in records)
    assert kept + 100 <= 3 * (30_000 - 1024) // 4
    np.testing.assert_array_equal(unpack_value(records[0][1]), np.zeros(1000))


def test_an_output_too_big_for_any_result_is_limit_exceeded() -> None:
    outcomes = [(OK, 1), (OK, np.zeros(5000)), (ERROR, {"type": "Timeout", "message": "x"})]
    records = _fit_results(outcomes, _call(30_000, 3), header=100)
    assert records[0] == [OK, pack_value(1)]
    error = error_from_wire(records[1][1])
    assert records[1][0] == ERROR and isinstance(error, LimitExceeded)
    assert "per result" in error.message and error.details["limit"] == 30_000
    assert records[2] == [ERROR, {"type": "Timeout", "message": "x"}]


def test_outputs_that_cannot_travel_become_invalid_input_records() -> None:
    (record,) = _fit_results([(OK, np.array([object()]))], _call(30_000, 1), header=100)
    assert record[0] == ERROR and record[1]["type"] == "InvalidInput"


class HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.http_status = status


def test_the_services_refusals_become_typed_errors() -> None:
    remote = RemoteClient(uuid.uuid4(), uuid.uuid4())
    assert isinstance(remote._remote_failure(HTTPError(429)), RateLimited)
    assert isinstance(remote._remote_failure(HTTPError(413)), LimitExceeded)
    other = remote._remote_failure(HTTPError(500))
    assert type(other) is EndpointError and "HTTPError: HTTP 500" in other.message
    assert other.details["endpoint"] == str(remote.endpoint_id)


def test_bad_remote_settings_fail_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="endpoint_id"):
        RemoteClient("not-a-uuid")
    with pytest.raises(ConfigError, match="on_rate_limit"):
        RemoteClient(uuid.uuid4(), on_rate_limit="later")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timeout"):
        RemoteClient(uuid.uuid4(), timeout=-1)
    with pytest.raises(ValueError, match="max_requests"):
        ComputeLimits(max_requests=0)
    function_id = uuid.uuid4()
    monkeypatch.setenv("DLHUB_HPC_FUNCTION_ID", str(function_id))
    remote = RemoteClient("00000000-0000-0000-0000-00000000000a")
    assert remote.function_id == function_id
    assert repr(remote) == ("RemoteClient(endpoint_id='00000000-0000-0000-0000-00000000000a', "
                            f"function_id='{function_id}', timeout=60.0)")
