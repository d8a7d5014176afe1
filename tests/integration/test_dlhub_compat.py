"""The DLHub SDK's documented usage (its README and docs/client.rst), with the import line
changed to ``dlhub_hpc.compat``, against a real hub; and ``run(..., parameters=)``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.compat import DLHubClient, DLHubFuture, NoSuchMethod, NoSuchServable
from dlhub_hpc.errors import ExecutionError, InvalidInput, NotSupportedHere
from tests.dlhub_schema import DLHUB_DATA

X = np.array([[1.0, 5.0], [7.0, 2.0]])


def _record(name: str) -> dict[str, object]:
    return json.loads((DLHUB_DATA / "sdk" / f"{name}.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def dl(hub: Hub) -> Iterator[DLHubClient]:
    client = DLHubClient(address=hub.client_address, http_timeout=120)
    yield client
    client.close()


@pytest.fixture
def npmax(dl: DLHubClient) -> str:
    """An SDK-made record (numpy.max, axis=0 by default) published as DLHub's README does."""
    ref = dl.publish_servable(_record("static_numpy_max"))
    return ref.partition("@")[0]


def test_run_with_parameters_overrides_the_defaults(dl: DLHubClient, npmax: str,
                                                    client: Client) -> None:
    assert np.array_equal(dl.run(npmax, X), [7.0, 5.0])  # the record's axis=0
    assert np.array_equal(dl.run(npmax, X, parameters={"axis": 1}), [5.0, 7.0])
    futures = [client.submit(npmax, X, parameters=p)  # one batch, each its own parameters
               for p in (None, {"axis": 1}, {"axis": 0}, {"axis": 1})]
    assert [list(f.result()) for f in futures] == [[7.0, 5.0], [5.0, 7.0], [7.0, 5.0],
                                                   [5.0, 7.0]]
    with pytest.raises(ExecutionError, match="axes"):  # passed on, as DLHub did
        dl.run(npmax, X, parameters={"axes": 1})


def test_run_passes_keywords_a_record_does_not_declare(dl: DLHubClient) -> None:
    record = _record("static_numpy_max")
    record["dlhub"]["name"] = "np_max_plain"  # type: ignore[index]
    record["servable"]["methods"]["run"]["parameters"] = {}  # type: ignore[index]
    ref = dl.publish_servable(record).partition("@")[0]
    assert dl.run(ref, X) == 7.0
    assert np.array_equal(dl.run(ref, X, parameters={"axis": 1}), [5.0, 7.0])


def test_the_sdk_discovery_examples(dl: DLHubClient, npmax: str) -> None:
    assert dl.get_username() == npmax.partition("/")[0]
    servables = dl.get_servables()
    assert [r["dlhub"]["shorthand_name"] for r in servables] == [npmax]
    assert dl.list_servables() == [npmax]
    description = dl.describe_servable(npmax)
    assert description["dlhub"]["name"] == "numpy_max"
    assert description["dlhub"]["owner"] == npmax.partition("/")[0]
    methods = dl.describe_methods(npmax)
    assert "method_details" not in methods["run"] and methods["run"]["parameters"] == {
        "axis": 0}
    assert dl.describe_methods(npmax, "run") == methods["run"]
    with pytest.raises(NoSuchMethod, match="No such method"):
        dl.describe_methods(npmax, "notamethod")
    with pytest.raises(AttributeError, match="No such servable"):  # as DLHub's client raised
        dl.describe_servable(npmax + "_nonexistant")
    assert len(dl.search('"axis"')) == 1  # the SDK's quoted free text
    assert len(dl.search('servable.type:"Python static method" AND dlhub.name:numpy_max',
                         advanced=True)) == 1
    assert dl.search("dlhub.name:other", advanced=True) == []
    with pytest.raises(ValueError, match="One of"):
        dl.search_by_servable()
    assert len(dl.search_by_servable(servable_name="numpy_max")) == 1
    assert len(dl.search_by_authors("Ward")) == 1
    assert len(dl.search_by_authors(["Ward, Logan", "Not, Aperson"], match_all=False)) == 1
    assert dl.search_by_authors(["Ward, Logan", "Not, Aperson"], match_all=True) == []
    assert dl.search_by_related_doi("10.1038/s41598-018-34525-1") == []


def test_the_sdk_run_examples(dl: DLHubClient, npmax: str) -> None:
    out, meta = dl.run(npmax, X, debug=True)
    assert np.array_equal(out, [7.0, 5.0]) and meta["success"] is True
    future = dl.run(npmax, X, asynchronous=True, parameters={"axis": 1})
    assert isinstance(future, DLHubFuture)
    assert np.array_equal(future.result(timeout=60), [5.0, 7.0])
    assert dl.get_task_status(future.task_id)["status"] == "success"
    value, meta = dl.get_result(future.task_id)
    assert np.array_equal(value, [5.0, 7.0]) and meta["success"]
    with pytest.raises(InvalidInput):  # checked here, before it is sent
        dl.run(npmax, "not an array", validate_input=True)
    with pytest.raises(NoSuchServable):
        dl.run("nobody/nothing", 1, validate_input=True)


def test_publishing_a_record_with_its_files(dl: DLHubClient, tmp_path: Path) -> None:
    record = _record("static_sqrt_autobatch")
    ref = dl.publish_servable(record)
    assert dl.run(ref.partition("@")[0], [4.0, 9.0]) == [2.0, 3.0]  # autobatch, as on DLHub
    noop = json.loads((DLHUB_DATA / "public" / "ericblau_dlhub_noop_publish.json").read_text())
    (tmp_path / "noop.py").write_text('def run_noop(x):\n    return "Hello world!"\n')
    (tmp_path / "dlhub.json").write_text(json.dumps(noop))
    noop["dlhub"]["files"] = {"other": ["noop.py", "dlhub.json"]}
    name = dl.publish_servable(noop, directory=tmp_path).partition("@")[0]
    assert dl.run(name, True) == "Hello world!"


def test_what_only_dlhub_did_says_what_replaces_it(dl: DLHubClient) -> None:
    with pytest.raises(NotSupportedHere, match="key pair"):
        dl.logout()
    with pytest.raises(NotSupportedHere, match="publish_servable"):
        dl.publish_repository("https://github.com/ericblau/dlhub_noop_publish")
    with pytest.raises(NotSupportedHere, match="key pair"):
        DLHubClient(dlh_authorizer=object())
