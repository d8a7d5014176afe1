"""``dlhub-hpc build OWNER/NAME[@VERSION]``: a published servable's container image."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from rich.table import Table

from dlhub_hpc.cli.common import console

logger = logging.getLogger(__name__)


def _size(path: Path) -> str:
    if path.is_dir():
        return "-"
    size = float(path.stat().st_size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


@click.command()
@click.argument("servable", metavar="OWNER/NAME[@VERSION]")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The hub's home, whose registry holds the servable (default: $DLHUB_HPC_HOME "
                   "or ~/.dlhub-hpc).")
@click.option("--base", default="docker://debian:bookworm-slim", show_default=True,
              help="Base for Apptainer builds: docker://IMAGE, oras://IMAGE or "
                   "localimage:///path/site-base.sif.")
@click.option("--apt", multiple=True, metavar="PACKAGE", help="Extra Debian package (repeat).")
@click.option("--pip", multiple=True, metavar="REQUIREMENT", help="Extra pip requirement (repeat).")
@click.option("--backend", type=click.Choice(["auto", "apptainer", "singularity", "local"]),
              default="auto", show_default=True,
              help="auto: apptainer or singularity when installed, else the local build "
                   "(mmdebstrap, squashfs, siftool).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where images are kept (default: $DLHUB_HPC_IMAGE_CACHE or "
                   "~/.cache/dlhub-hpc/images).")
@click.option("--force", is_flag=True, help="Build even if an image of this recipe exists.")
@click.option("--definition", "definition_only", is_flag=True,
              help="Print the Apptainer definition file and build nothing.")
@click.option("--prune", "keep", type=click.IntRange(min=1), default=None, metavar="KEEP",
              help="Afterwards, keep only the KEEP most recently used images in the cache.")
def build(servable: str, home: Path | None, base: str, apt: tuple[str, ...],
          pip: tuple[str, ...], backend: str, cache_dir: Path | None, force: bool,
          definition_only: bool, keep: int | None) -> None:
    """Build the container image of a published servable (cached by content)."""
    # Imported here: the builder and the registry cost a few tenths of a second.
    from dlhub_hpc.container.build import ImageBuilder, default_cache_dir
    from dlhub_hpc.container.definition import build_options, render_definition
    from dlhub_hpc.hubfile import default_home

    options = build_options(base=base, apt=apt, pip=pip)
    builder = ImageBuilder(home or default_home(), cache_dir or default_cache_dir(),
                           backend=backend, console=console, progress=True)  # type: ignore[arg-type]
    if definition_only:
        recipe = builder.recipe(servable, options)
        # Raw text: a console would wrap long lines and break %post and %labels.
        click.echo(render_definition(recipe, Path("bundle.tar"), Path("dlhub_hpc")), nl=False)
        return
    result = builder.build(servable, options, force=force)
    verb = "found cached" if result.cached else "built"
    console.print(f"{verb} image of {result.servable} (recipe {result.recipe_digest[:12]}) "
                  f"in {result.seconds:.1f} s")
    if result.steps:
        console.print("steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.steps.items()))
    table = Table("format", "path", "size", "sha256")
    for fmt, rec in sorted(result.images.items()):
        table.add_row(fmt, rec.path, _size(Path(rec.path)), rec.sha256[:16])
    console.print(table)
    _tell_hub(home or default_home(), result.servable)
    if keep is not None:
        removed = builder.prune(keep)
        console.print(f"pruned {len(removed)} older images from {builder.cache_dir}")


def _tell_hub(home: Path, servable: str) -> None:
    """A hub running from ``home`` cached what it knew of ``servable`` before its image:
    it forgets that, so its pools see the image from the next request on."""
    from dlhub_hpc.client import Client
    from dlhub_hpc.errors import DlhubHpcError
    from dlhub_hpc.hubfile import read_hub_file

    running = read_hub_file(home)
    if not running:
        return  # a hub started later reads the image with everything else
    try:
        with Client(running["client_address"], timeout=10) as client:
            client.control("images_changed", timeout=10, servable=servable)
    except DlhubHpcError as exc:
        console.print(f"[yellow]the hub at {running['client_address']} was not told of the "
                      f"image ({exc.message}); it sees it after the next publish of "
                      f"{servable} or a restart[/]")
