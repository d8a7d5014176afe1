"""Definition files, recipe digests, and the Apptainer build command, without building."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from spython.main.parse.parsers import SingularityParser

import dlhub_hpc
import dlhub_hpc.examples
from dlhub_hpc.container.build import ImageBuilder, apptainer_build_command
from dlhub_hpc.container.definition import (
    BUNDLES_DIR,
    BuildOptions,
    Recipe,
    build_options,
    code_digest,
    render_definition,
)
from dlhub_hpc.errors import ConfigError, RuntimeNotFound, ServableNotFound
from dlhub_hpc.registry.store import Registry
from dlhub_hpc.servable.bundle import make_bundle

ADD = Path(dlhub_hpc.examples.__file__).parent / "add"


@pytest.fixture
def recipe() -> Recipe:
    bundle = make_bundle(ADD)
    return Recipe(servable="demo/add", version=3, bundle_digest=bundle.digest, spec=bundle.spec,
                  options=BuildOptions(), code_digest="c0de")


def _parse(text: str, tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "Singularity"
    path.write_text(text)
    return dict(SingularityParser(str(path)).recipe["spython-base"].json())


def test_definition_has_every_section_and_spython_reads_it(
    recipe: Recipe, tmp_path: Path
) -> None:
    text = render_definition(recipe, Path("/ctx/bundle.tar"), Path("/ctx/src"))
    assert text.startswith("Bootstrap: docker\nFrom: debian:bookworm-slim\n")
    parsed = _parse(text, tmp_path)
    assert parsed["fromHeader"] == "debian:bookworm-slim"
    assert "/ctx/bundle.tar /opt/dlhub-hpc/bundle.tar" in parsed["files"]  # type: ignore[operator]
    assert f"org.dlhub.bundle-digest sha256:{recipe.bundle_digest}" in parsed["labels"]  # type: ignore[operator]
    assert "org.dlhub.servable demo/add@3" in parsed["labels"]  # type: ignore[operator]
    assert parsed["cmd"] == (
        'exec python3 -m dlhub_hpc.worker --servable "$DLHUB_HPC_SERVABLE" '
        f'--cache-dir {BUNDLES_DIR} "$@"'
    )
    assert "DLHUB_HPC_SERVABLE=demo/add@3" in parsed["environ"]  # type: ignore[operator]
    install = "\n".join(parsed["install"])  # type: ignore[arg-type]
    assert "apt-get install -y --no-install-recommends python3-pip python3 python3-zmq" in install
    assert "--target /opt/dlhub-hpc/lib 'pydantic>=2.5' 'pyyaml>=6'" in install
    assert "python3 -m dlhub_hpc.container.selftest" in install  # spython's %test rendering


def test_a_site_base_sif_bootstraps_from_localimage(recipe: Recipe, tmp_path: Path) -> None:
    opts = BuildOptions(base="localimage:///soft/images/base-cuda.sif", apt=["python3-scipy"],
                        pip=["torch==2.3.0"])
    site = Recipe(**{**recipe.__dict__, "options": opts})
    text = render_definition(site, Path("/b.tar"), Path("/src"))
    assert text.startswith("Bootstrap: localimage\nFrom: /soft/images/base-cuda.sif\n")
    assert "python3-numpy python3-scipy" in text
    assert "--target /opt/dlhub-hpc/lib 'pydantic>=2.5' 'pyyaml>=6' torch==2.3.0" in text
    assert site.digest != recipe.digest


def test_recipe_digest_covers_its_inputs_but_not_the_version(recipe: Recipe) -> None:
    assert Recipe(**{**recipe.__dict__, "version": 4}).digest == recipe.digest
    for change in ({"bundle_digest": "0" * 64}, {"code_digest": "other"},
                   {"options": BuildOptions(apt=["htop"])}):
        assert Recipe(**{**recipe.__dict__, **change}).digest != recipe.digest


def test_code_digest_tracks_the_package_sources() -> None:
    assert len(code_digest()) == 64
    assert code_digest() == code_digest()


def test_bad_build_options_say_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match=r"base: .*localimage:///path/to/base\.sif"):
        build_options(base="/soft/base.sif")
    with pytest.raises(ConfigError, match="not Debian package names"):
        build_options(apt=["Python3 ;rm"])
    with pytest.raises(ConfigError, match="squashfs_level"):
        build_options(squashfs_level=40)
    assert repr(BuildOptions(apt=["htop"])) == "BuildOptions(apt=('htop',))"


def test_the_apptainer_build_command_is_exact(tmp_path: Path) -> None:
    assert apptainer_build_command("apptainer", tmp_path / "i.sif", tmp_path / "Singularity") == [
        "apptainer", "build", "--fakeroot", "--force", str(tmp_path / "i.sif"),
        str(tmp_path / "Singularity"),
    ]
    assert apptainer_build_command("singularity", Path("o.sif"), Path("d"), fakeroot=False) == [
        "singularity", "build", "--force", "o.sif", "d",
    ]


def test_building_with_a_missing_apptainer_names_what_to_install(tmp_path: Path) -> None:
    if shutil.which("apptainer"):
        pytest.skip("apptainer is installed here")
    registry = Registry(tmp_path / "reg")
    registry.publish(make_bundle(ADD))
    registry.close()
    builder = ImageBuilder(tmp_path / "reg", tmp_path / "cache", backend="apptainer")
    with pytest.raises(RuntimeNotFound, match="module load apptainer"):
        builder.build("demo/add")
    with pytest.raises(ServableNotFound):
        builder.build("demo/nothing")
    with pytest.raises(ConfigError, match="backend"):
        ImageBuilder(tmp_path, backend="docker")  # type: ignore[arg-type]


def test_an_apptainer_build_runs_the_exact_command_on_a_staged_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Apptainer cannot be installed here: a stand-in on PATH records its argv and writes
    # the image, so everything around the command is the real code.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_file = tmp_path / "argv"
    (bin_dir / "apptainer").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_file}\n'
        'eval "out=\\${$(($# - 1))}"\necho SIF > "$out"\n'
    )
    (bin_dir / "apptainer").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    registry = Registry(tmp_path / "reg")
    registry.publish(make_bundle(ADD))
    registry.close()
    builder = ImageBuilder(tmp_path / "reg", tmp_path / "cache")
    assert builder.resolve_backend() == "apptainer"
    result = builder.build("demo/add", build_options(base="oras://ghcr.io/site/base:1"))
    out = tmp_path / "cache" / "images" / result.recipe_digest
    assert argv_file.read_text().split("\n")[:-1] == apptainer_build_command(
        "apptainer", out / "image.sif", out / "Singularity", fakeroot=os.geteuid() != 0
    )[1:]
    assert result.definition.startswith("Bootstrap: oras\nFrom: ghcr.io/site/base:1\n")
    assert f"{out / 'bundle.tar'} /opt/dlhub-hpc/bundle.tar" in result.definition
    assert (out / "src" / "dlhub_hpc" / "worker" / "__main__.py").is_file()
    assert set(result.images) == {"sif"}
    assert result.image("sif").verify() == str(out / "image.sif")
    again = builder.build("demo/add", build_options(base="oras://ghcr.io/site/base:1"))
    assert again.cached


def test_a_local_build_on_a_site_base_cannot_add_debian_packages(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    registry.publish(make_bundle(ADD))
    registry.close()
    builder = ImageBuilder(tmp_path / "reg", tmp_path / "cache", backend="local")
    with pytest.raises(ConfigError, match="does not exist"):
        builder.build("demo/add", build_options(base="localimage:///nonexistent/base.sif"))
    base = tmp_path / "base.sif"
    base.write_bytes(b"SIF")
    with pytest.raises(ConfigError, match=r"cannot add Debian packages \['htop'\]"):
        builder.build("demo/add", build_options(base=f"localimage://{base}", apt=["htop"]))
    # The base's content is part of the recipe: a changed base is a new image.
    before = builder.recipe("demo/add", build_options(base=f"localimage://{base}")).digest
    base.write_bytes(b"SIF2")
    assert builder.recipe("demo/add", build_options(base=f"localimage://{base}")).digest != before
