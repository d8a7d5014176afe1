"""The fuzzer (benchmarks/fuzz.py), bounded: mutated messages on both sockets from
legitimate identities never kill the hub, and it answers every valid request after."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fuzz import report, run


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_few_thousand_mutated_messages_leave_the_hub_answering_right(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    result = run(3000, seed=13, checks=200, home=tmp_path / "hub")
    assert report(result, 200), capsys.readouterr().out
    assert result.hub_deaths == 0
    assert sum(result.sent.values()) == 3000
    assert result.stats.get("handler_errors", 0) == 0, "a message raised inside the hub"
    assert result.stats["malformed_frames"] > 0 and result.stats["bad_answered"] > 0
