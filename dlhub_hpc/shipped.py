"""The repository's top-level ``configs/`` and ``site_profiles/``, wherever they are.

They are the sources; the wheel carries a copy of each inside the package, at
``dlhub_hpc/_shipped/<name>/`` (``setup.py`` copies them there at build time). An installed
package finds that copy through :mod:`importlib.resources`; a source checkout (editable
install) has no copy and uses the folders beside the package.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

SHIPPED = ("configs", "site_profiles")
PACKAGED = "_shipped"  # the folder inside the package that the build fills
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def shipped_dir(name: str) -> Path:
    """The folder ``name`` (one of :data:`SHIPPED`): the packaged copy, else the source tree's.

    Returns the packaged path even when neither exists, so that messages say where an
    installed package looked.
    """
    if name not in SHIPPED:
        raise ValueError(f"no shipped folder {name!r}; shipped: {', '.join(SHIPPED)}")
    packaged = resources.files("dlhub_hpc") / PACKAGED / name
    # A wheel installs as files, so the traversable is a real directory.
    packaged_path = Path(str(packaged))
    if packaged_path.is_dir():
        return packaged_path
    source = _SOURCE_ROOT / name
    if source.is_dir() and (_SOURCE_ROOT / "pyproject.toml").is_file():
        return source
    logger.debug("no %s folder at %s nor %s", name, packaged_path, source)
    return packaged_path
