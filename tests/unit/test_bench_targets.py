"""benchmarks/targets.py: a benchmark's exit status follows its stated targets."""

from __future__ import annotations

import math

import pytest

from benchmarks import paper_report
from benchmarks.targets import Targets


def test_no_targets_or_all_met_exit_zero() -> None:
    targets = Targets()
    assert targets.exit_code() == 0
    assert targets.check("hub CPU ratio", 1.25, 1.25, unit="x") is True  # at the limit: met
    assert targets.check("req/s", 2000, 1800, better="higher") is True
    assert targets.exit_code() == 0


def test_a_missed_target_exits_one_and_says_which() -> None:
    targets = Targets()
    targets.check("other work", 3.0, 5.0)
    assert targets.check("p99 stall", 102.0, 50.0, unit="ms") is False
    lines: list[str] = []
    targets.report(lines.append)
    assert "TARGET MISSED: p99 stall 102 ms > 50 ms" in lines
    assert "target met: other work 3 (goal <= 5)" in lines
    assert targets.exit_code() == 1
    assert [c.name for c in targets.missed] == ["p99 stall"]


@pytest.mark.parametrize(("value", "limit", "better", "strict", "ok"), [
    (150.0, 150.0, "lower", True, False),  # "< 150": the limit itself misses
    (149.9, 150.0, "lower", True, True),
    (10.0, 10.0, "higher", False, True),  # ">= 10x"
    (9.99, 10.0, "higher", False, False),
    (math.nan, 1.0, "lower", False, False),  # a broken measurement never passes
])
def test_the_limit_and_its_side(value: float, limit: float, better: str, strict: bool,
                                ok: bool) -> None:
    targets = Targets()
    assert targets.check("t", value, limit, better, strict=strict) is ok  # type: ignore[arg-type]
    assert targets.exit_code() == (0 if ok else 1)


def test_a_target_not_measured_does_not_fail_the_run() -> None:
    targets = Targets()
    assert targets.check("HTEX ratio", None, 5.0, "higher") is None
    lines: list[str] = []
    targets.report(lines.append)
    assert lines == ["target not run: HTEX ratio (goal >= 5)"]
    assert targets.exit_code() == 0


def test_a_yes_no_target() -> None:
    targets = Targets()
    targets.require("no worker lost", False, "2 lost")
    lines: list[str] = []
    targets.report(lines.append)
    assert lines == ["TARGET MISSED: no worker lost (2 lost)"]
    assert targets.exit_code() == 1
    assert targets.as_json()[0]["ok"] is False


def test_an_unknown_side_is_refused() -> None:
    with pytest.raises(ValueError, match="lower"):
        Targets().check("t", 1.0, 2.0, "less")  # type: ignore[arg-type]


def test_the_paper_suite_checks_memo_hits_against_the_floor_through_the_same_client() -> None:
    def results(hit: float, floor: float) -> paper_report.Results:
        return paper_report.Results(settings={}, servables={"noop": {"memo": {
            "client on": {"p50": hit}, "floor": {"p50": 40.0, "client_p50": floor}}}})

    met = paper_report.targets(results(110.0, 100.0))
    assert met.exit_code() == 0 and met.checks[0].value == pytest.approx(1.1)
    missed = paper_report.targets(results(130.0, 100.0))
    assert missed.exit_code() == 1
    assert "through Client.run" in missed.missed[0].name
    not_run = paper_report.targets(paper_report.Results(settings={}, servables={}))
    assert not_run.exit_code() == 0 and not_run.checks[0].ok is None
