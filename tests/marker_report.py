"""Which marked groups of tests ran, and no group skipped silently on CI.

At the end of a run, the count of tests run and skipped per marker (slurm, container, mpi,
globus, slow). Under ``CI=true`` a skipped test of a marker that needs tools installed
(slurm, container, mpi, globus) fails instead, with what to install, and so does a test
module that skipped as a whole (an ``importorskip`` at its top), and any other test whose
skip says a dependency is missing (``pytest.importorskip``'s "could not import", or a reason
that says what to install): CI installs everything the suite needs, so a skip there means
tests did not run. Off CI the skips stay, and ``-ra`` prints why.
``DLHUB_HPC_CI_ALLOW_SKIP=container,mpi,onnx`` names markers, or modules / words of a skip's
reason, that a CI machine may skip on purpose; the summary says which markers were let
through.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Generator
from typing import Any

import pytest

# What to install for each marker whose tests need tools beyond the Python packages.
INSTALL: dict[str, str] = {
    "slurm": "slurm-wlm and munge ('make system-deps' as root), and a running Slurm: "
             "'make integration' starts one as root (scripts/slurm/start.sh)",
    "container": "the container tools in scripts/system-packages.txt ('make system-deps' as "
                 "root: mmdebstrap squashfs-tools siftool squashfuse fuse3 bubblewrap "
                 "charliecloud-runtime) and /dev/fuse",
    "mpi": "Open MPI ('make system-deps' as root: openmpi-bin libopenmpi-dev) and mpi4py "
           "(pip install -e '.[test]')",
    "globus": "the Globus Compute SDK and endpoint (pip install -e '.[test]')",
}
COUNTED = ("slurm", "container", "mpi", "globus", "slow")
ALLOW_ENV = "DLHUB_HPC_CI_ALLOW_SKIP"
# A skip reason that says a dependency is missing: pytest.importorskip's own text, or words
# that name something to install ("not installed", "pip install X", libzmq "built without").
MISSING_DEPENDENCY = re.compile(
    r"^could not import|\bnot installed\b|\binstall\b|\bbuilt without\b", re.I)
IMPORTED = re.compile(r"^could not import '([\w.]+)'")
NAME = "dlhub-marker-report"


def on_ci() -> bool:
    """CI services set CI=true; .ci/run sets it too (the Makefile tests the same string)."""
    return os.environ.get("CI") == "true"


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


class MarkerReport:
    """A pytest plugin: per-marker counts, and skips turned into failures on CI."""

    def __init__(self, ci: bool, allowed: set[str]) -> None:
        self.ci = ci
        self.allowed = allowed
        self.outcomes: dict[str, tuple[frozenset[str], str]] = {}  # nodeid -> marks, outcome
        self.skipped_modules: list[str] = []

    def __repr__(self) -> str:
        return f"MarkerReport(ci={self.ci!r}, allowed={sorted(self.allowed)!r})"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        marks = frozenset(m.name for m in item.iter_markers() if m.name in COUNTED)
        outcome: str = report.outcome
        if report.skipped and not hasattr(report, "wasxfail"):
            needs = sorted((marks & INSTALL.keys()) - self.allowed)
            if self.ci and needs:
                report.outcome = "failed"
                report.longrepr = self._missing(needs, _reason(report))
                outcome = "missing"
            elif (self.ci and not marks & INSTALL.keys()  # a marker's own rule decided
                  and self._missing_dependency(_reason(report))):
                report.outcome = "failed"
                report.longrepr = self._dependency(_reason(report))
                outcome = "missing"
        elif report.when == "call" or report.failed:
            outcome = "failed" if report.failed else "ran"
        else:
            return report  # a setup or teardown that passed says nothing yet
        _, before = self.outcomes.get(report.nodeid, (marks, ""))
        if before not in ("failed", "missing"):
            self.outcomes[report.nodeid] = (marks, outcome)
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(
        self, collector: pytest.Collector
    ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        report = yield
        if report.skipped and isinstance(collector, pytest.Module):
            self.skipped_modules.append(f"{report.nodeid}: {_reason(report)}")
        return report

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.ci and self.skipped_modules and session.exitstatus in (
                pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        tr.section("tests run per marker")
        for mark in COUNTED:
            counts = Counter(o for marks, o in self.outcomes.values() if mark in marks)
            ran = counts["ran"] + counts["failed"]
            line = f"{mark:<10} {ran} ran ({counts['failed']} failed), {counts['skipped']} skipped"
            if counts["missing"]:
                line += f", {counts['missing']} could not run (tools missing: failed, CI=true)"
            if self.ci and mark in self.allowed:
                line += f" (may skip: {ALLOW_ENV})"
            tr.write_line(line, red=bool(counts["missing"]))
        for module in self.skipped_modules:
            verdict = "FAILED, CI=true" if self.ci else "skipped"
            tr.write_line(f"whole module {verdict}: {module}", red=self.ci, yellow=not self.ci)
        if self.skipped_modules and self.ci:
            tr.write_line("CI installs everything the suite needs: pip install -e '.[test]' "
                          "and 'make system-deps' as root", red=True)

    def _missing_dependency(self, reason: str) -> bool:
        """Whether a skip outside the tool markers says a dependency is missing, and the
        allow list does not name it (an imported module, or a word of the reason)."""
        if not MISSING_DEPENDENCY.search(reason):
            return False
        imported = IMPORTED.match(reason)
        names = {imported.group(1), imported.group(1).split(".")[0]} if imported else set()
        words = set(re.findall(r"[\w.-]+", reason.lower()))
        return not ({a.lower() for a in self.allowed} & (names | words))

    def _dependency(self, reason: str) -> str:
        return (f"CI=true and this test could not run: {reason}\nInstall what it needs "
                "(pip install -e '.[test]'; 'make system-deps' as root), or name it in "
                f"{ALLOW_ENV} where this CI machine cannot have it")

    def _missing(self, marks: list[str], reason: str) -> str:
        hints = "; ".join(f"{m}: install {INSTALL[m]}" for m in marks)
        return (f"CI=true and this {'/'.join(marks)} test could not run: {reason}\n"
                f"Install what it needs: {hints}\n(or set {ALLOW_ENV}={','.join(marks)} "
                "where this CI machine cannot have it)")


def register(config: pytest.Config) -> None:
    """Add the plugin once (the root conftest calls this; ``-p tests.marker_report`` too)."""
    if config.pluginmanager.has_plugin(NAME):
        return
    allowed = {m.strip() for m in os.environ.get(ALLOW_ENV, "").split(",") if m.strip()}
    config.pluginmanager.register(MarkerReport(on_ci(), allowed), NAME)


def pytest_configure(config: pytest.Config) -> None:
    register(config)
