"""What ``dlhub-hpc run`` prints while a servable starts: each new stage once, and why a
servable is not started at all."""

from __future__ import annotations

import io
from concurrent.futures import Future
from typing import Any

from rich.console import Console

from dlhub_hpc.cli import starting
from dlhub_hpc.cli.starting import wait_showing_stage


class _Hub:
    """Answers request_status from a script of answers; the last one sets the result."""

    def __init__(self, answers: list[dict[str, Any]], future: Future[Any]) -> None:
        self.answers, self.future = answers, future

    def request_status(self, request_id: str, timeout: float) -> dict[str, Any]:
        answer = self.answers.pop(0)
        if not self.answers:
            self.future.set_result(42)
        return answer


def test_run_shows_each_stage_once_and_why_a_servable_is_not_started(monkeypatch: Any) -> None:
    monkeypatch.setattr(starting, "POLL", 0.001)
    future: Future[Any] = Future()
    hub = _Hub([
        {"stage": "not started", "reason": "profile 'gpu' is not in servable_profiles"},
        {"stage": "not started", "reason": "profile 'gpu' is not in servable_profiles"},
        {"stage": "queued", "reason": None},
        {"stage": "model loading", "reason": None},
    ], future)
    out = io.StringIO()
    result = wait_showing_stage(hub, "alice/m", future, "r1",  # type: ignore[arg-type]
                                Console(file=out, force_terminal=False, width=200))
    assert result == 42
    assert out.getvalue().splitlines() == [
        "alice/m is starting: not started (profile 'gpu' is not in servable_profiles)",
        "alice/m is starting: queued",
        "alice/m is starting: model loading",
    ]
