"""The shipped folders (configs/, site_profiles/): where they are found, what reads them, and
``profiles check`` / ``profiles render`` on top of them."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from dlhub_hpc.bridge.templates import EndpointSettings, render, template_dir
from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.cli import cli
from dlhub_hpc.errors import ConfigError, ProfileError
from dlhub_hpc.pilot import profiles
from dlhub_hpc.pilot.profiles import load_profile
from dlhub_hpc.pilot.render import render_block
from dlhub_hpc.shipped import SHIPPED, shipped_dir

ROOT = Path(__file__).resolve().parents[2]


def test_a_checkout_uses_the_top_level_folders() -> None:
    for name in SHIPPED:
        assert shipped_dir(name) == ROOT / name
    assert profiles.BUNDLED_DIR == ROOT / "site_profiles"
    assert template_dir() == ROOT / "configs" / "globus_compute"
    with pytest.raises(ValueError, match="shipped: configs, site_profiles"):
        shipped_dir("examples")


def test_the_hub_config_file_is_valid_and_documents_every_setting() -> None:
    path = ROOT / "configs" / "hub.yaml"
    settings = yaml.safe_load(path.read_text())
    assert HubConfig.model_validate(settings) == HubConfig(home=HubConfig().home)
    text = path.read_text()
    undocumented = [f for f in HubConfig.model_fields if not re.search(rf"^#? ?{f}:", text, re.M)]
    assert not undocumented, f"configs/hub.yaml does not mention {undocumented}"


def test_hub_start_refuses_a_bad_settings_file_before_starting(tmp_path: Path) -> None:
    bad = tmp_path / "hub.yaml"
    bad.write_text("heartbeat_interval: 1\nheartbeat_timout: 5\n")
    result = CliRunner().invoke(cli, ["hub", "start", "--config", str(bad),
                                      "--home", str(tmp_path / "home")])
    assert isinstance(result.exception, ConfigError)
    assert "heartbeat_timout" in str(result.exception) and str(bad) in str(result.exception)
    bad.write_text("- a list\n")
    result = CliRunner().invoke(cli, ["hub", "start", "--config", str(bad)])
    assert isinstance(result.exception, ConfigError) and "mapping" in str(result.exception)
    assert not (tmp_path / "home").exists(), "nothing was started"


def test_profiles_check_fails_when_there_is_nothing_to_check(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(profiles, "BUNDLED_DIR", tmp_path / "absent")
    monkeypatch.delenv("DLHUB_HPC_PROFILES", raising=False)
    runner = CliRunner()
    checked = runner.invoke(cli, ["profiles", "check"])
    assert isinstance(checked.exception, ProfileError)
    message = str(checked.exception)
    assert str(tmp_path / "absent") in message and "DLHUB_HPC_PROFILES" in message
    listed = runner.invoke(cli, ["profiles", "list"], terminal_width=200)
    assert listed.exit_code == 0 and "DLHUB_HPC_PROFILES" in listed.output
    with pytest.raises(ProfileError, match=re.escape(f"searched {tmp_path / 'absent'}")):
        load_profile("polaris")


def test_render_shows_the_pbs_script_and_submit_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DLHUB_HPC_ACCOUNT", raising=False)
    result = CliRunner().invoke(cli, ["profiles", "render", "polaris", "--servable",
                                      "alice/oqmd@3", "--worker-address",
                                      "tcp://0.0.0.0:47651"])
    assert result.exit_code == 0, result.output
    out = result.output
    command = out.split("nothing was submitted):\n")[1].splitlines()[0]
    assert re.match(r"qsub\s+-q debug -A \$\{DLHUB_HPC_ACCOUNT\} \S+", command)
    assert "#PBS -l select=1:ncpus=64:ngpus=4" in out and "mpiexec" in out
    assert "set before starting the hub: DLHUB_HPC_ACCOUNT" in out
    worker = next(line for line in out.splitlines() if "dlhub_hpc.worker" in line)
    assert "--servable alice/oqmd@3" in worker and "alice_oqmd.sif" in worker
    # the script is shown where the hub would write it, not in the temporary folder
    assert "dlhub-render-" not in out and "/pilots/pilot-" in out


def test_render_of_a_local_profile_starts_nothing(tmp_path: Path) -> None:
    block = render_block(load_profile("local"), "demo/add@1", "tcp://127.0.0.1:47651",
                         pilots_dir=tmp_path)
    assert block.provider == "LocalProvider"
    assert block.submit_command.startswith("/bin/bash -c") and str(tmp_path) in block.submit_command
    assert "dlhub_hpc.worker --hub tcp://127.0.0.1:47651 --servable demo/add@1" in block.script
    assert not list(tmp_path.rglob("*")), "render writes nothing where the hub keeps pilots"


def test_render_uses_the_mpi_launcher_and_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLHUB_HPC_ACCOUNT", "matsci")
    block = render_block(load_profile("frontier"), "alice/ens@1", "tcp://10.0.0.1:47651",
                         ranks=4)
    assert block.submit_command.startswith("sbatch ")
    assert "#SBATCH --account=matsci" in block.script
    worker = next(line for line in block.script.splitlines() if "dlhub_hpc.worker" in line)
    assert "--mpi" in worker.split()


def _settings(**changes: object) -> EndpointSettings:
    values: dict[str, object] = {"name": "ep", "hub": "tcp://10.1.2.3:47650",
                                 "function_ids": [uuid.uuid4()], "multi_user": True}
    values.update(changes)
    return EndpointSettings.build(**values)


def test_endpoint_templates_are_files_that_an_admin_can_replace(tmp_path: Path) -> None:
    files = render(_settings(), tmp_path)
    user = files["user_config_template.yaml.j2"]
    assert "idle_heartbeats_soft: 10" in user and "idle_heartbeats_hard: 5760" in user
    mapping = yaml.safe_load(files["identity_mapping.json"])
    assert mapping[0]["mappings"][0]["match"] == r"(.*)@example\.org"
    copy = tmp_path / "templates"
    shutil.copytree(template_dir(), copy)
    engine = copy / "engine.yaml.tmpl"
    engine.write_text(engine.read_text().replace("max_workers_per_node: $workers",
                                                 "max_workers_per_node: $workers  # site"))
    single = render(_settings(multi_user=False), tmp_path, copy)["config.yaml"]
    assert "max_workers_per_node: 4  # site" in single
    engine.write_text("engine: $no_such_field\n")
    with pytest.raises(ConfigError, match="no_such_field"):
        render(_settings(multi_user=False), tmp_path, copy)
    with pytest.raises(ConfigError, match="--template-dir"):
        render(_settings(), tmp_path, tmp_path / "absent")

