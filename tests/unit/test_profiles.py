"""Site profiles: every bundled profile validates and builds; bad ones say what to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from parsl.launchers import MpiExecLauncher, SingleNodeLauncher, SrunLauncher
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

from dlhub_hpc.cli import cli
from dlhub_hpc.cli.common import console
from dlhub_hpc.errors import ConfigError, ProfileError
from dlhub_hpc.pilot.profiles import (
    build_provider,
    load_profile,
    parse_profile,
    parse_walltime,
    profile_paths,
    unset_variables,
)

EXPECTED = {"local", "slurm-local", "polaris", "aurora", "frontier", "perlmutter", "slurm", "pbs"}


def _base(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "t", "provider": {"type": "SlurmProvider",
                                                      "walltime": "00:30:00"}}
    data.update(changes)
    return data


def test_every_named_profile_is_bundled_and_valid() -> None:
    assert set(profile_paths()) >= EXPECTED
    for name in EXPECTED:
        profile = load_profile(name)
        assert profile.name == name
        assert build_provider(profile) is not None


@pytest.mark.parametrize(("name", "provider", "launcher", "gpu_env", "workers"), [
    ("local", LocalProvider, SingleNodeLauncher, None, 1),
    ("slurm-local", SlurmProvider, SingleNodeLauncher, None, 1),
    ("polaris", PBSProProvider, MpiExecLauncher, "CUDA_VISIBLE_DEVICES", 4),
    ("aurora", PBSProProvider, MpiExecLauncher, "ZE_AFFINITY_MASK", 12),
    ("frontier", SlurmProvider, SrunLauncher, "ROCR_VISIBLE_DEVICES", 8),
    ("perlmutter", SlurmProvider, SrunLauncher, "CUDA_VISIBLE_DEVICES", 4),
])
def test_sites_resolve_to_parsl_classes(name: str, provider: type, launcher: type,
                                        gpu_env: str | None, workers: int) -> None:
    profile = load_profile(name)
    built = build_provider(profile)
    assert type(built) is provider
    assert type(built.launcher) is launcher
    assert (profile.gpus.env if profile.gpus else None) == gpu_env
    assert profile.workers == workers
    # Our scaling owns block counts: the provider never starts blocks by itself.
    assert built.init_blocks == 0 and built.min_blocks == 0


def test_mpi_launcher_swaps_in_for_ranked_servables() -> None:
    built = build_provider(load_profile("slurm-local"), mpi=True)
    assert isinstance(built.launcher, SrunLauncher)
    assert "--mpi=pmix" in built.launcher.overrides
    with pytest.raises(ProfileError, match="no mpi_launcher"):
        build_provider(load_profile("local"), mpi=True)


def test_unknown_provider_type_lists_the_valid_ones() -> None:
    with pytest.raises(ProfileError) as err:
        parse_profile(_base(provider={"type": "SlurmProvidr"}))
    assert "unknown provider type 'SlurmProvidr'" in err.value.message
    assert "PBSProProvider" in err.value.message and "SlurmProvider" in err.value.message
    assert isinstance(err.value, ConfigError)


def test_unknown_launcher_type_lists_the_valid_ones() -> None:
    with pytest.raises(ProfileError, match=r"unknown launcher type 'Mpiexec'.*MpiExecLauncher"):
        parse_profile(_base(mpi_launcher={"type": "Mpiexec"}))


def test_unknown_provider_option_names_the_valid_ones() -> None:
    with pytest.raises(ProfileError, match=r"no option\(s\) \['partiton'\].*'partition'"):
        parse_profile(_base(provider={"type": "SlurmProvider", "partiton": "debug"}))
    with pytest.raises(ProfileError, match="set by the profile's scaling"):
        parse_profile(_base(provider={"type": "SlurmProvider", "max_blocks": 3}))


@pytest.mark.parametrize(("changes", "message"), [
    ({"scaling": {"min_blocks": 3, "max_blocks": 2}}, "min_blocks \\(3\\) exceeds"),
    ({"walltime": {"replace_lead": 10, "drain_margin": 20}}, "at least drain_margin"),
    ({"walltime": {"replace_lead": 3600, "drain_margin": 20}}, "shorter than the provider"),
    ({"container": {"runtime": "docker"}}, "unknown container runtime .docker."),
    ({"gpus": {"devices": []}}, "lists no device"),
    ({"gpus": {"devices": [0], "env": "GPU_DEVICE_ORDINAL"}}, "gpus.env"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_fields_are_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_profile(_base(**changes))


def test_walltime_and_drain() -> None:
    assert parse_walltime("01:00:00") == 3600
    assert parse_walltime("1-00:00:30") == 86430
    assert parse_walltime("05:00") == 300
    with pytest.raises(ValueError, match="HH:MM:SS"):
        parse_walltime("1h")
    profile = parse_profile(_base(walltime={"drain_margin": 60, "replace_lead": 120}))
    assert profile.drain_after() == 1800 - 60
    assert load_profile("local").drain_after() is None


def test_gpu_binding_flags_and_workers_per_node() -> None:
    profile = parse_profile(_base(gpus={"devices": "0,1", "env": "ROCR_VISIBLE_DEVICES",
                                        "workers_per_gpu": 2, "vendor": "amd"}))
    assert profile.workers == 4
    assert profile.gpus is not None
    assert profile.gpus.worker_flags() == ["--gpus", "0,1", "--gpu-env",
                                           "ROCR_VISIBLE_DEVICES", "--workers-per-gpu", "2"]


def test_variables_expand_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_CONF", raising=False)
    assert unset_variables(load_profile("slurm-local")) == ["SLURM_CONF"]
    profile = parse_profile({"name": "t", "provider": {
        "type": "LocalProvider", "worker_init": "export SLURM_CONF=${SLURM_CONF}"}})
    monkeypatch.setenv("SLURM_CONF", "/x/slurm.conf")
    assert unset_variables(profile) == []
    assert build_provider(profile).worker_init == "export SLURM_CONF=/x/slurm.conf"


def test_unknown_name_and_bad_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProfileError, match=r"no site profile named 'nersc'.*perlmutter"):
        load_profile("nersc")
    bad = tmp_path / "bad.yaml"
    bad.write_text("provider: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(bad)
    mine = tmp_path / "mysite.yaml"
    mine.write_text("provider: {type: SlurmProvider, walltime: '00:20:00'}\n")
    monkeypatch.setenv("DLHUB_HPC_PROFILES", str(tmp_path))
    assert load_profile("mysite").name == "mysite"
    assert repr(load_profile("mysite")) == "load_profile('mysite')"


def test_cli_list_show_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 200)
    runner = CliRunner()
    listed = runner.invoke(cli, ["profiles", "list"], terminal_width=200)
    assert listed.exit_code == 0, listed.output
    for name in EXPECTED:
        assert name in listed.output
    shown = runner.invoke(cli, ["profiles", "show", "polaris"])
    assert shown.exit_code == 0 and "type: PBSProProvider" in shown.output
    checked = runner.invoke(cli, ["profiles", "check"], terminal_width=200)
    assert checked.exit_code == 0, checked.output
    (tmp_path / "broken.yaml").write_text("provider: {type: Nope}\n")
    monkeypatch.setenv("DLHUB_HPC_PROFILES", str(tmp_path))
    failed = runner.invoke(cli, ["profiles", "check", "broken"], terminal_width=200)
    assert failed.exit_code == 1 and "unknown provider type 'Nope'" in failed.output


def test_local_is_embedded_when_no_profile_directory_has_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dlhub_hpc.pilot import profiles

    bundled = load_profile("local")
    monkeypatch.setattr(profiles, "BUNDLED_DIR", tmp_path / "absent")
    assert profile_paths() == {}
    embedded = load_profile("local")
    assert embedded.provider == bundled.provider and embedded.hub == bundled.hub
    assert (embedded.scaling.min_blocks, embedded.scaling.max_blocks) == (1, 4)
    with pytest.raises(ProfileError, match="known profiles: none"):
        load_profile("polaris")


def test_a_local_profile_with_a_walltime_drains_and_is_replaced_by_the_pilot() -> None:
    # LocalProvider has no walltime option: the pilot keeps it for drain and replacement.
    profile = parse_profile({"name": "t", "provider": {"type": "LocalProvider",
                                                       "walltime": "00:00:30"},
                             "walltime": {"replace_lead": 12, "drain_margin": 6}})
    assert profile.provider.walltime_seconds() == 30
    assert profile.drain_after() == 24
    assert isinstance(build_provider(profile), LocalProvider)
    with pytest.raises(ProfileError, match="no option"):
        parse_profile({"name": "t", "provider": {"type": "LocalProvider", "wallclock": "1"}})
