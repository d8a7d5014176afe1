"""``dlhub-hpc top``'s view: a hub that goes away and comes back, no servables, very many,
and names chosen by publishers and workers (markup, escape sequences)."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from rich.console import Console, RenderableType

from dlhub_hpc.cli.top import Frame, refresh, render
from dlhub_hpc.errors import Timeout


def shown(renderable: RenderableType) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    return str(console.file.getvalue())  # type: ignore[attr-defined]


def status(servables: int = 1, host: str = "node1") -> dict[str, Any]:
    return {
        "hub": {"pid": 7, "uptime": 3.0},
        "servables": {f"alice/m{i}@1": {"queued": i % 3, "in_flight": 0}
                      for i in range(servables)},
        "workers": [{"worker_id": f"w{i}", "servable": f"alice/m{i}@1", "state": "idle",
                     "host": host, "batches": 0, "items": 0} for i in range(servables)],
    }


class FlakyHub:
    """A client whose hub answers, goes away for two refreshes, then answers again."""

    def __init__(self) -> None:
        self.answers: list[dict[str, Any] | None] = [status(), None, None, status()]

    def status(self, timeout: float | None = None) -> dict[str, Any]:
        answer = self.answers.pop(0)
        if answer is None:
            raise Timeout("no reply from the hub in 2s")
        return answer


def test_a_hub_that_goes_away_and_comes_back_is_waited_for() -> None:
    client = FlakyHub()
    view, frame, gone = refresh(client, None, None, None, None)
    assert frame is not None and gone is None and "alice/m0@1" in shown(view)
    view, frame, gone = refresh(client, None, None, frame, gone)
    assert frame is None and gone is not None
    assert "the hub does not answer" in shown(view) and "no reply" in shown(view)
    first_gone = gone
    view, frame, gone = refresh(client, None, None, frame, gone)
    assert gone == first_gone  # still counted from when it went
    view, frame, gone = refresh(client, None, None, frame, gone)
    assert frame is not None and gone is None and "alice/m0@1" in shown(view)


def test_no_servables_says_so() -> None:
    out = shown(render(Frame(status(0), None, 0.0)))
    assert "no servables" in out and "no workers" in out


def test_very_many_servables_show_the_busiest_within_the_row_limit() -> None:
    many = status(20_000)
    many["servables"]["alice/m7@1"]["queued"] = 50
    frame = Frame(many, None, 0.0)
    started = time.monotonic()
    out = shown(render(frame, rows=10))
    assert time.monotonic() - started < 5.0
    assert "the 10 busiest of 20000 servables" in out
    assert "the 10 busiest of 20000 workers" in out
    servables = out.split("Workers")[0]
    assert "alice/m7@1 " in servables and "alice/m0@1 " not in servables  # queued 50 first


@pytest.mark.parametrize("host", ["[/oops]", "[bold red]boss[/]", "x\x1b[2Jy\nforged"])
def test_names_chosen_by_workers_are_plain_text(host: str) -> None:
    out = shown(render(Frame(status(1, host=host), None, 0.0)))
    assert "\x1b[2J" not in out
    [row] = [line for line in out.splitlines() if "w0" in line]
    assert host.replace("\x1b", "\\x1b").replace("\n", "\\n") in row
