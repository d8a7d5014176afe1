"""Real DLHub SDK records, imported, published and served by a real hub, answer as on DLHub."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from dlhub_hpc import Client
from dlhub_hpc.registry.dlhub_json import from_dlhub_json
from tests.dlhub_schema import DLHUB_DATA


def _servable_dir(tmp_path: Path, name: str) -> Path:
    spec = from_dlhub_json(json.loads((DLHUB_DATA / "sdk" / f"{name}.json").read_text()),
                           owner="dlhub")
    directory = tmp_path / name
    directory.mkdir()
    (directory / "servable.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return directory


def test_parameters_autobatch_and_unpack_behave_as_on_dlhub(
    tmp_path: Path, client: Client, serve: Callable[..., str]
) -> None:
    npmax = serve(_servable_dir(tmp_path, "static_numpy_max"))
    x = np.array([[1.0, 5.0], [7.0, 2.0]])
    assert np.array_equal(client.run(npmax, x), np.max(x, axis=0))  # axis=0 by default
    hypot = serve(_servable_dir(tmp_path, "static_hypot_autobatch_unpack"))
    assert client.run(hypot, [[3.0, 4.0], [5.0, 12.0]]) == [5.0, 13.0]  # once per pair
