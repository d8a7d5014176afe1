"""Publication against a real hub: init, publish, search, describe, deprecate, withdraw,
export and import, through the CLI and the Client."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from dlhub_hpc import Client, Hub
from dlhub_hpc.cli import cli
from dlhub_hpc.cli.common import console
from dlhub_hpc.errors import ServableDeprecated, ServableWithdrawn
from dlhub_hpc.examples import example_dir

DOI = "10.1038/npjcompumats.2016.28"


def adder(tmp_path: Path, version: int) -> Path:
    """``demo/add`` with citation metadata; each version adds ``version`` to the sum."""
    root = Path(shutil.copytree(example_dir("add"), tmp_path / f"add-v{version}",
                                ignore=shutil.ignore_patterns("__pycache__")))
    (root / "arith.py").write_text(
        f"def add(numbers):\n    return float(sum(numbers)) + {version - 1}\n")
    spec = yaml.safe_load((root / "servable.yaml").read_text())
    spec["datacite"].update(
        title="Formation enthalpy adder", related_identifiers=[DOI], subjects=["materials"],
        creators=[{"name": "Ward, Logan", "affiliations": ["Argonne"],
                   "orcid": "0000-0002-1825-0097"}])
    spec["dlhub"]["domains"] = ["materials science"]
    (root / "servable.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.fixture
def dlhub(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.setattr(console, "width", 200)  # wide tables: whole words to look for
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True) -> Result:
        result = runner.invoke(cli, ["--hub", hub.client_address, *args],
                               catch_exceptions=not ok, terminal_width=200)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


def test_init_scaffolds_a_servable_that_publishes_and_runs(
    tmp_path: Path, dlhub: Callable[..., Result], client: Client,
) -> None:
    dlhub("init", str(tmp_path / "echo"), "--owner", "ada", "--title", "Echo")
    assert (tmp_path / "echo" / "model.py").is_file()
    again = dlhub("init", str(tmp_path / "echo"), "--owner", "ada", ok=False)
    assert "exists already" in str(again.exception)
    dlhub("publish", str(tmp_path / "echo"))
    client.start_workers("ada/echo", 1)
    client.wait_for_workers("ada/echo", 1, timeout=60)
    assert client.run("ada/echo", {"a": 1}) == {"a": 1}


@pytest.mark.slow
def test_the_life_of_a_published_servable(
    tmp_path: Path, dlhub: Callable[..., Result], client: Client,
) -> None:
    dlhub("publish", str(adder(tmp_path, 1)))
    dlhub("publish", str(adder(tmp_path, 2)))

    found = json.loads(dlhub("search", "enthalpy", "--json").output)
    assert [(r["ref"], r["dois"]) for r in found] == [("demo/add@2", [DOI])]
    assert client.search(doi=f"https://doi.org/{DOI}")[0]["name"] == "demo/add"
    assert client.search("enthalpy", domain="chemistry") == []
    table = dlhub("search", "Ward", "--owner", "demo").output
    assert "demo/add@2" in table and "Formation enthalpy adder" in table

    shown = dlhub("describe", "demo/add").output
    assert "demo/add@2#sha256:" in shown and "orcid:0000-0002-1825-0097" in shown
    record = client.describe("demo/add@1")
    assert record["pid"] == f"demo/add@1#sha256:{record['digest']}"
    assert [v["version"] for v in record["versions"]] == [1, 2]

    client.start_workers("demo/add@1", 1)
    client.wait_for_workers("demo/add@1", 1, timeout=60)  # per version: v2 is the latest
    dlhub("deprecate", "demo/add@1", "--reason", "off by one in v2's favour")
    with pytest.warns(ServableDeprecated, match="demo/add@1 is deprecated: off by one"):
        assert client.run("demo/add@1", [1.0, 2.0]) == 3.0  # deprecated: still runs
    with pytest.warns(ServableDeprecated):
        assert client.submit("demo/add@1", [2.0, 2.0]).result(timeout=30) == 4.0
    assert client.describe("demo/add@1")["status"] == "deprecated"

    dlhub("withdraw", "demo/add@2", "--reason", "adds one too many",
          "--replacement", "demo/add@1")
    with pytest.raises(ServableWithdrawn, match="adds one too many; use demo/add@1 instead"):
        client.run("demo/add@2", [1.0])
    assert "withdrawn" in dlhub("describe", "demo/add@2").output  # still resolvable
    assert client.run("demo/add", [1.0, 2.0]) == 3.0  # the name skips the withdrawn one
    assert [r["ref"] for r in client.search("enthalpy")] == ["demo/add@1"]

    out = tmp_path / "dlhub.json"
    dlhub("export", "demo/add@1", "-o", str(out))
    exported = json.loads(out.read_text())
    assert exported["datacite"]["relatedIdentifiers"][0]["relatedIdentifier"] == DOI
    dlhub("import-dlhub", str(out), str(tmp_path / "imported"))
    imported = yaml.safe_load((tmp_path / "imported" / "servable.yaml").read_text())
    assert imported["dlhub"]["name"] == "add"
    assert imported["servable"]["methods"]["run"]["function"] == "arith:add"
