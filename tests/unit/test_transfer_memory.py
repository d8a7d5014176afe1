"""Memory for a large array received in chunks: a mapping of its own whose pages are mapped
as each chunk's bytes come (resident pages read with mincore(2), exactly over the array),
and numpy's own memory where the kernel cannot do that."""

from __future__ import annotations

import ctypes
import mmap
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlhub_hpc.protocol import Credit, decode, encode
from dlhub_hpc.transfer import memory, window
from dlhub_hpc.transfer.memory import populate, receiving_array
from dlhub_hpc.transfer.window import Incoming, Outgoing, new_ref

MIB = 2**20
PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
can_populate = pytest.mark.skipif(
    not memory.populating_supported(),
    reason="this kernel cannot populate pages on request (MADV_POPULATE_WRITE, Linux 5.14)")


def resident_pages(array: np.ndarray, start: int, end: int) -> int:
    """How many pages that bytes ``start`` to ``end`` of ``array`` fall in are resident."""
    first = start - start % PAGE
    pages = -(-(end - first) // PAGE)
    vec = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(array.ctypes.data + first),
                    ctypes.c_size_t(pages * PAGE), vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return sum(b & 1 for b in vec)


def sent(end: Incoming, sender: Outgoing, upto: int, chunk: int) -> None:
    sender.grant(Credit(sender.ref.transfer_id, upto, chunk))
    for c in sender.chunks():
        end.accept(decode(encode(c)))  # type: ignore[arg-type]


def test_a_small_array_is_numpys_own() -> None:
    array, mapped = receiving_array((4, 2), np.dtype("<f4"))
    assert array.flags.owndata and array.shape == (4, 2) and not mapped


@can_populate
def test_populate_maps_the_pages_of_the_bytes_that_came_and_no_others() -> None:
    array, mapped = receiving_array((64 * MIB,), np.dtype(np.uint8))
    assert mapped and array.flags.writeable and not array.flags.owndata
    assert resident_pages(array, 0, array.nbytes) == 0
    start, end = 5000, 3 * MIB + 7  # from mid-page (the 2nd) to mid-page (the 769th)
    assert populate(array.ctypes.data, start, end)
    assert resident_pages(array, start, end) == 768
    assert resident_pages(array, 3 * MIB, end) == 1  # the last, partial, page too
    assert resident_pages(array, 8 * MIB, array.nbytes) == 0  # past a huge page or two


@can_populate
def test_a_receiver_holds_memory_only_for_the_chunks_that_came(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    def spy(address: int, start: int, end: int) -> bool:
        calls.append((start, end))
        return populate(address, start, end)

    monkeypatch.setattr(window, "populate", spy)
    data = np.arange(8 * MIB, dtype=np.float64)  # 64 MiB
    ref = new_ref(data)
    end, sender = Incoming(ref, max_bytes=data.nbytes), Outgoing(ref, data)
    got = end.array
    assert resident_pages(got, 0, got.nbytes) == 0  # nothing before a byte came
    sent(end, sender, 3 * MIB, MIB)
    assert calls == [(0, MIB), (MIB, 2 * MIB), (2 * MIB, 3 * MIB)]
    assert resident_pages(got, 0, 3 * MIB) == 3 * MIB // PAGE
    assert resident_pages(got, 8 * MIB, got.nbytes) == 0
    sent(end, sender, data.nbytes, MIB)
    assert end.done and np.array_equal(got, data) and len(calls) == 64


def test_where_the_kernel_cannot_populate_the_array_is_numpys_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_supported", None)  # asked again, of a kernel that refuses
    monkeypatch.setattr(memory, "_MADV_POPULATE_WRITE", 999)
    array, mapped = receiving_array((64 * MIB,), np.dtype(np.uint8))
    assert array.flags.owndata and not mapped


@can_populate
def test_a_refusal_mid_transfer_leaves_the_writes_to_fault_the_pages_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_supported", True)  # put back after the refusal below
    data = np.random.default_rng(2).standard_normal(5 * MIB)  # 40 MiB
    ref = new_ref(data)
    end, sender = Incoming(ref, max_bytes=data.nbytes), Outgoing(ref, data)
    sent(end, sender, 2 * MIB, MIB)
    monkeypatch.setattr(memory, "_MADV_POPULATE_WRITE", 999)
    sent(end, sender, data.nbytes, MIB)
    assert end.done and not end._populate and np.array_equal(end.array, data)
    assert not memory.populating_supported()  # nor are others asked again


@can_populate
@settings(max_examples=40, deadline=None)
@given(count=st.integers(1, 3000), chunk=st.integers(1, 9000),
       grants=st.lists(st.integers(1, 20_000), min_size=1, max_size=6))
def test_chunks_that_start_and_end_anywhere_rebuild_the_array(
        count: int, chunk: int, grants: list[int]) -> None:
    data = np.random.default_rng(count).standard_normal(count)
    ref = new_ref(data)
    with pytest.MonkeyPatch.context() as patch:  # a mapping even for a small array
        patch.setattr(memory, "PREFAULT_MIN_BYTES", 1)
        end, sender = Incoming(ref, max_bytes=data.nbytes), Outgoing(ref, data)
    assert not end.array.flags.owndata
    offered = 0
    for step in [*grants, data.nbytes]:
        offered += step
        sent(end, sender, offered, chunk)
    got: Any = end.array
    del end, sender
    assert np.array_equal(got, data)
