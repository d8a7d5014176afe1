"""How an MPI worker shares a batch over ranks, and how an ensemble is combined (no MPI run)."""

from __future__ import annotations

import numpy as np
import pytest

from dlhub_hpc.errors import SpecError
from dlhub_hpc.servable.spec import ServableSpec
from dlhub_hpc.worker.mpi import combine, split

ERR = {"type": "ExecutionError", "message": "bad row", "details": {}}


@pytest.mark.parametrize(("n", "parts", "sizes"), [
    (5, 2, [3, 2]), (4, 2, [2, 2]), (1, 3, [1, 0, 0]), (0, 2, [0, 0]), (7, 3, [3, 2, 2]),
])
def test_split_makes_contiguous_slices_in_order(n: int, parts: int, sizes: list[int]) -> None:
    items = list(range(n))
    slices = split(items, parts)
    assert [len(s) for s in slices] == sizes
    assert [x for s in slices for x in s] == items


def test_the_mean_of_members_keeps_lists_as_lists_and_arrays_as_arrays() -> None:
    members = [
        [[True, 1.0], [True, [1.0, 2.0]], [True, np.array([2.0, 4.0])]],
        [[True, 3.0], [True, [3.0, 4.0]], [True, np.array([4.0, 8.0])]],
    ]
    scalar, vector, array = combine(members, "mean")
    assert scalar == [True, 2.0]
    assert vector == [True, [2.0, 3.0]]
    assert array[0] is True and isinstance(array[1], np.ndarray)
    assert array[1].tolist() == [3.0, 6.0]


def test_a_failing_member_fails_only_that_item() -> None:
    members = [[[True, 1.0], [True, 2.0]], [[True, 3.0], [False, ERR]]]
    assert combine(members, "mean") == [[True, 2.0], [False, ERR]]


def test_list_keeps_every_members_value_and_odd_values_cannot_be_averaged() -> None:
    members = [[[True, "a"]], [[True, "b"]]]
    assert combine(members, "list") == [[True, ["a", "b"]]]
    ((ok, error),) = combine(members, "mean")
    assert ok is False and "declare 'ensemble: list'" in error["message"]


def test_the_spec_declares_ranks_and_the_ensemble_mode() -> None:
    base = {
        "datacite": {"title": "t"}, "dlhub": {"owner": "demo", "name": "m"},
        "servable": {"type": "python_function",
                     "methods": {"run": {"input": {"type": "any"}, "function": "m:f"}}},
    }
    spec = ServableSpec.from_data(base)
    assert spec.servable.ranks == 1 and spec.servable.ensemble is None
    base["servable"].update(ranks=4, ensemble="mean")  # type: ignore[attr-defined]
    assert ServableSpec.from_data(base).servable.ranks == 4
    base["servable"].update(ranks=0)  # type: ignore[attr-defined]
    with pytest.raises(SpecError, match=r"servable\.ranks"):
        ServableSpec.from_data(base)
    base["servable"].update(ranks=2, ensemble="median")  # type: ignore[attr-defined]
    with pytest.raises(SpecError, match=r"servable\.ensemble"):
        ServableSpec.from_data(base)
