"""Build step that pyproject.toml cannot say: ship the top-level configs/ and site_profiles/.

They stay at the top of the repository, where admins look for them, and the wheel carries
a copy inside the package (dlhub_hpc/_shipped/), where dlhub_hpc.shipped finds it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("configs", "site_profiles")  # as dlhub_hpc.shipped.SHIPPED


class build_py_with_shipped(build_py):
    """build_py, then copy the shipped folders into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the source tree
        target = Path(self.build_lib) / "dlhub_hpc" / "_shipped"
        shutil.rmtree(target, ignore_errors=True)  # no stale file from an earlier build
        for name in SHIPPED:
            source = ROOT / name
            if not source.is_dir():
                raise FileNotFoundError(f"{source} is missing: the wheel must ship it")
            shutil.copytree(source, target / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*~"))


setup(cmdclass={"build_py": build_py_with_shipped})
