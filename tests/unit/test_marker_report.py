"""The per-marker report and the CI gate (tests/marker_report.py), on a small suite run by a
pytest of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SUITE = '''
import pytest

@pytest.mark.slurm
def test_needs_slurm():
    pytest.skip("sbatch is not installed")

@pytest.mark.mpi
@pytest.mark.slow
def test_mpi_and_slow():
    pass

@pytest.mark.slow
def test_slow_fails():
    assert False

@pytest.mark.globus
@pytest.mark.xfail(reason="known", strict=True)
def test_globus_xfail():
    assert False

def test_plain_skip():
    pytest.skip("not about tools")
'''

WHOLE_MODULE = '''
import pytest
pytest.importorskip("no_such_module_here", reason="pip install no-such-module")

def test_never_collected():
    pass
'''

INI = """[pytest]
addopts = -ra -p tests.marker_report -p no:cacheprovider
markers =
    slurm: x
    container: x
    mpi: x
    globus: x
    slow: x
"""


def run_suite(tmp_path: Path, files: dict[str, str], **env: str) -> tuple[int, str]:
    (tmp_path / "pytest.ini").write_text(INI)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    clean = {k: v for k, v in os.environ.items()
             if k not in ("CI", "DLHUB_HPC_CI_ALLOW_SKIP", "PYTEST_ADDOPTS")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path)], cwd=tmp_path, capture_output=True,
        text=True, timeout=120, check=False,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
    )
    return done.returncode, done.stdout + done.stderr


def marker_lines(out: str) -> dict[str, str]:
    section = out.split("tests run per marker", 1)[1]
    lines = [line for line in section.splitlines()[1:] if line.strip()]
    return {line.split()[0]: line for line in lines[:5]}


def test_off_ci_a_missing_tool_is_a_skip_with_its_reason_and_counts_per_marker(
    tmp_path: Path,
) -> None:
    rc, out = run_suite(tmp_path, {"test_suite.py": SUITE})
    assert rc == 1, out  # test_slow_fails, nothing else
    assert "1 failed, 1 passed, 2 skipped, 1 xfailed" in out, out
    assert "SKIPPED [1] test_suite.py:6: sbatch is not installed" in out
    lines = marker_lines(out)
    assert lines["slurm"] == "slurm      0 ran (0 failed), 1 skipped"
    assert lines["mpi"] == "mpi        1 ran (0 failed), 0 skipped"
    assert lines["globus"] == "globus     1 ran (0 failed), 0 skipped"
    assert lines["slow"] == "slow       2 ran (1 failed), 0 skipped"
    assert lines["container"] == "container  0 ran (0 failed), 0 skipped"


def test_on_ci_a_missing_tool_fails_with_what_to_install(tmp_path: Path) -> None:
    rc, out = run_suite(tmp_path, {"test_suite.py": SUITE}, CI="true")
    assert rc == 1, out
    assert "2 failed, 1 passed, 1 skipped, 1 xfailed" in out, out
    assert "CI=true and this slurm test could not run: sbatch is not installed" in out
    assert "slurm-wlm and munge" in out and "DLHUB_HPC_CI_ALLOW_SKIP=slurm" in out
    assert "SKIPPED [1] test_suite.py:23: not about tools" in out, "unmarked skips stay"
    assert marker_lines(out)["slurm"] == (
        "slurm      0 ran (0 failed), 0 skipped, 1 could not run (tools missing: failed, "
        "CI=true)")


def test_on_ci_a_marker_named_in_the_allow_list_may_skip(tmp_path: Path) -> None:
    suite = SUITE.replace("assert False\n\n@pytest.mark.globus", "pass\n\n@pytest.mark.globus")
    rc, out = run_suite(tmp_path, {"test_suite.py": suite}, CI="true",
                        DLHUB_HPC_CI_ALLOW_SKIP="slurm, container")
    assert rc == 0, out
    assert marker_lines(out)["slurm"] == (
        "slurm      0 ran (0 failed), 1 skipped (may skip: DLHUB_HPC_CI_ALLOW_SKIP)")


DEPENDENCIES = '''
import pytest

def test_importorskip_inside():
    pytest.importorskip("no_such_module_here")

def test_names_what_to_install():
    pytest.skip("onnx is not installed: pip install onnx")

@pytest.mark.skipif(True, reason="libzmq was built without CURVE")
def test_built_without():
    pass

def test_not_about_a_dependency():
    pytest.skip("tensorflow is installed here")
'''


def test_on_ci_a_skip_for_a_missing_dependency_fails_unless_allowed(tmp_path: Path) -> None:
    files = {"test_deps.py": DEPENDENCIES}
    rc, out = run_suite(tmp_path, files)
    assert rc == 0 and "4 skipped" in out, out
    rc, out = run_suite(tmp_path, files, CI="true")
    assert rc == 1, out
    assert "2 failed, 1 skipped, 1 error" in out, out  # the skipif, at setup
    assert "CI=true and this test could not run: could not import 'no_such_module_here'" in out
    assert "CI=true and this test could not run: onnx is not installed" in out
    assert "CI=true and this test could not run: libzmq was built without CURVE" in out
    assert "SKIPPED [1] test_deps.py:15: tensorflow is installed here" in out
    rc, out = run_suite(tmp_path, files, CI="true",
                        DLHUB_HPC_CI_ALLOW_SKIP="no_such_module_here,onnx,curve")
    assert rc == 0 and "4 skipped" in out, out


def test_a_whole_module_skipped_fails_on_ci_and_is_named_off_it(tmp_path: Path) -> None:
    files = {"test_whole.py": WHOLE_MODULE, "test_ok.py": "def test_ok():\n    pass\n"}
    rc, out = run_suite(tmp_path, files)
    assert rc == 0, out
    assert "whole module skipped: test_whole.py: pip install no-such-module" in out
    rc, out = run_suite(tmp_path, files, CI="true")
    assert rc == 1, out
    assert "whole module FAILED, CI=true: test_whole.py: pip install no-such-module" in out
    assert "1 passed, 1 skipped" in out
