"""The targets a benchmark states, checked once, with an exit status that follows them.

    targets = Targets()
    targets.check("p99 stall", 102.0, 50.0, unit="ms")        # lower is better
    targets.check("hub / HTEX req/s", 8.1, 10.0, better="higher", unit="x")
    targets.report()           # one line per target; "TARGET MISSED: p99 stall 102 ms > 50 ms"
    sys.exit(targets.exit_code())

A target whose figure was not measured (``value`` None: the part did not run) is reported
as not run and does not fail the run. A missed target makes ``exit_code()`` 1, so a
benchmark run in CI or a Makefile cannot pass with a missed target unnoticed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

Better = Literal["lower", "higher"]
MISSED = 1  # the exit status of a run with a missed target


@dataclass(frozen=True)
class Check:
    """One target: ``name``'s ``value`` against ``limit``; ``ok`` None when not run."""

    name: str
    value: float | None
    limit: float
    better: Better
    strict: bool
    unit: str
    ok: bool | None
    detail: str = ""  # a yes/no target's account of what happened

    def goal(self) -> str:
        """The target as a condition: ``<= 50 ms``, ``>= 10x``."""
        op = {("lower", False): "<=", ("lower", True): "<",
              ("higher", False): ">=", ("higher", True): ">"}[(self.better, self.strict)]
        return f"{op} {_num(self.limit)}{_unit(self.unit)}"

    def line(self) -> str:
        if self.detail:  # a yes/no target
            return f"{'target met' if self.ok else 'TARGET MISSED'}: {self.name} ({self.detail})"
        if self.ok is None:
            return f"target not run: {self.name} (goal {self.goal()})"
        value = f"{_num(self.value)}{_unit(self.unit)}"
        if self.ok:
            return f"target met: {self.name} {value} (goal {self.goal()})"
        miss = {("lower", False): ">", ("lower", True): ">=",
                ("higher", False): "<", ("higher", True): "<="}[(self.better, self.strict)]
        return f"TARGET MISSED: {self.name} {value} {miss} {_num(self.limit)}{_unit(self.unit)}"


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _unit(unit: str) -> str:
    return unit if unit in ("", "x", "%") else f" {unit}"


class Targets:
    """Collects a run's targets; ``report`` prints them, ``exit_code`` follows them."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def check(self, name: str, value: float | None, limit: float, better: Better = "lower",
              *, strict: bool = False, unit: str = "") -> bool | None:
        """Record ``value`` against ``limit`` (``better``: which side meets it; ``strict``:
        the limit itself misses). Returns whether it was met, None when not measured."""
        if better not in ("lower", "higher"):
            raise ValueError(f"better should be 'lower' or 'higher', not {better!r}")
        ok: bool | None = None
        if value is not None:
            v = float(value)
            if math.isnan(v):
                ok = False
            elif better == "lower":
                ok = v < limit if strict else v <= limit
            else:
                ok = v > limit if strict else v >= limit
        self.checks.append(Check(name, None if value is None else float(value), float(limit),
                                 better, strict, unit, ok))
        return ok

    def require(self, name: str, ok: bool, detail: str = "") -> bool:
        """A yes/no target (e.g. no worker lost); ``detail`` says what happened."""
        self.checks.append(Check(name, 1.0 if ok else 0.0, 1.0, "higher", False, "", ok,
                                 detail or ("yes" if ok else "no")))
        return ok

    @property
    def missed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def report(self, say: Callable[[str], Any] = print) -> None:
        """One line per target, missed ones starting ``TARGET MISSED:``."""
        for check in self.checks:
            say(check.line())

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(c) | {"goal": c.goal()} for c in self.checks]

    def exit_code(self) -> int:
        """0 when no target was missed, else 1."""
        return MISSED if self.missed else 0
