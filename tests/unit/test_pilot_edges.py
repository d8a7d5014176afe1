"""The scaling strategy and pilot job commands at their edges."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from dlhub_hpc.pilot.pilots import Pilot
from dlhub_hpc.pilot.profiles import ScalingSpec, build_provider, load_profile, parse_profile
from dlhub_hpc.pilot.scaling import BlockView, Load, decide

NOW = 1000.0


def test_scale_up_from_zero_blocks_for_one_queued_item() -> None:
    # min_blocks 0 and every block released: one queued request must bring a block back,
    # even though 1 is below queue_per_worker (4).
    spec = ScalingSpec(min_blocks=0, max_blocks=2, queue_per_worker=4)
    d = decide(spec, [], Load(queued=1), NOW)
    assert d.submit == 1
    assert not decide(spec, [], Load(), NOW), "nothing queued: stay at zero"


def test_running_block_without_workers_yet_holds_off_another() -> None:
    # The job runs but its workers are still starting: more blocks would only pile up.
    spec = ScalingSpec(min_blocks=1, max_blocks=4, queue_per_worker=4, start_grace=300)
    starting = BlockView("b1", "RUNNING", submitted_at=NOW - 20, started_at=NOW - 10)
    assert not decide(spec, [starting], Load(queued=100), NOW)


def test_heredoc_launcher_keeps_dollar_backtick_and_spaces_literal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SrunLauncher writes the command through an unquoted heredoc: the batch shell would
    # expand $HOME and run `id` inside shlex's single quotes unless they are escaped.
    monkeypatch.setenv("DLHUB_HPC_ACCOUNT", "matsci")
    data = load_profile("frontier").model_dump(mode="json")
    data["container"]["env"] = {"TOKEN": "a$HOME`id`\\n", "PLAIN": "x y"}
    data["container"]["binds"] = ["/lustre/my data:/data"]
    profile = parse_profile(data)
    pilot = Pilot(profile, "alice/oqmd@3", "tcp://10.0.0.1:5000", tmp_path,
                  provider=build_provider(profile))
    text = pilot.command("b1")
    # What the batch shell writes into the task script, then how the task's shell splits it.
    written = subprocess.run(["bash", "-c", f"cat << SLURM_EOF\n{text}\nSLURM_EOF\n"],
                             capture_output=True, text=True, check=True,
                             env={"PATH": os.environ["PATH"], "HOME": "/home/batch"}).stdout
    argv = shlex.split(written.replace('"${SLURM_LOCALID:-}"', "3"))
    assert "TOKEN=a$HOME`id`\\n" in argv
    assert "PLAIN=x y" in argv
    assert "/lustre/my data:/data" in argv
    assert "SLURM_LOCALID=3" in argv  # the local rank is still left for the task's shell


class _FakeProvider:
    """Just enough of a Parsl provider: submit / status / cancel, recorded."""

    label = "fake"
    script_dir = ""
    launcher = None
    nodes_per_block = 1

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.cancelled: list[str] = []

    def submit(self, command: str, tasks_per_node: int, job_name: str = "") -> str:
        self.submitted.append(f"job{len(self.submitted) + 1}")
        return self.submitted[-1]

    def status(self, job_ids: list[str]) -> list[object]:
        return []

    def cancel(self, job_ids: list[str]) -> list[bool]:
        self.cancelled += job_ids
        return [True] * len(job_ids)


def test_pilot_added_after_hub_shutdown_cancels_its_blocks(tmp_path: Path) -> None:
    # hub.stop() shuts the pilot service down while a 'pilot start' may still be submitting
    # on the hub's executor: its jobs must not be left queued with no hub to serve.
    from dlhub_hpc.errors import PilotError
    from dlhub_hpc.pilot.service import PilotService

    service = PilotService(lambda: {}, period=60)
    service.shutdown()
    provider = _FakeProvider()
    pilot = Pilot(load_profile("local"), "alice/oqmd@1", "tcp://127.0.0.1:5000", tmp_path,
                  provider=provider)  # type: ignore[arg-type]
    with pytest.raises(PilotError, match="stopped"):
        service.add(pilot)
    assert provider.submitted and provider.cancelled == provider.submitted
    assert not service.all()
    assert service._thread is None, "no scaling thread restarted after shutdown"


def test_failed_resubmit_does_not_count_the_same_dead_block_twice(tmp_path: Path) -> None:
    # One block died before connecting; the resubmission fails (sbatch down for a moment).
    # The next tick must not count that same block as a second failure and halt the pilot.
    from parsl.jobs.states import JobState, JobStatus

    from dlhub_hpc.errors import PilotError

    class Flaky(_FakeProvider):
        broken = False

        def submit(self, command: str, tasks_per_node: int, job_name: str = "") -> str:
            if self.broken:
                raise RuntimeError("sbatch: error: Slurm controller not responding")
            return super().submit(command, tasks_per_node, job_name)

        def status(self, job_ids: list[str]) -> list[object]:
            return [JobStatus(JobState.FAILED) for _ in job_ids]

    data = load_profile("local").model_dump(mode="json")
    data["scaling"] = {"min_blocks": 1, "max_blocks": 2, "max_failures": 2}
    provider = Flaky()
    pilot = Pilot(parse_profile(data), "alice/oqmd@1", "tcp://127.0.0.1:5000", tmp_path,
                  provider=provider)  # type: ignore[arg-type]
    pilot.submit_block()
    provider.broken = True
    with pytest.raises(PilotError):
        pilot.tick(Load(), [], NOW)
    assert pilot.failures == 1 and provider.cancelled == []  # FAILED: nothing to cancel
    with pytest.raises(PilotError):
        pilot.tick(Load(), [], NOW + 5)  # the floor retries the submit; still failing
    assert pilot.failures == 1 and not pilot.halted


def test_job_side_variables_do_not_block_a_pilot(monkeypatch: pytest.MonkeyPatch) -> None:
    # $PBS_O_WORKDIR exists only inside the job; expand_vars leaves a bare $VAR to the job's
    # shell, so the hub must not refuse the profile because the login node lacks it.
    from dlhub_hpc.pilot.profiles import unset_variables

    monkeypatch.delenv("PBS_O_WORKDIR", raising=False)
    monkeypatch.delenv("DLHUB_HPC_TEST_UNSET", raising=False)
    profile = parse_profile({"name": "t", "provider": {
        "type": "LocalProvider",
        "worker_init": "cd $PBS_O_WORKDIR; export X=${DLHUB_HPC_TEST_UNSET}"}})
    assert unset_variables(profile) == ["DLHUB_HPC_TEST_UNSET"]


def test_pilot_stop_says_which_jobs_could_not_be_cancelled(tmp_path: Path) -> None:
    # Parsl's SlurmProvider.cancel returns [False, ...] when scancel fails, and raises nothing:
    # 'pilot stop' must not report success while the jobs still hold nodes.
    from dlhub_hpc.errors import PilotError
    from dlhub_hpc.pilot.service import PilotService

    class Stuck(_FakeProvider):
        def cancel(self, job_ids: list[str]) -> list[bool]:
            return [False] * len(job_ids)

    service = PilotService(lambda: {}, period=60)
    provider = Stuck()
    pilot = Pilot(load_profile("local"), "alice/oqmd@1", "tcp://127.0.0.1:5000", tmp_path,
                  provider=provider)  # type: ignore[arg-type]
    service.add(pilot)
    try:
        with pytest.raises(PilotError, match="could not cancel jobs job1") as err:
            service.stop()
        assert "scancel job1" in err.value.message
        assert not service.all()
    finally:
        service.shutdown()


def test_idle_block_above_the_floor_is_released_not_replaced_at_walltime() -> None:
    # After a burst, two idle blocks with min_blocks 1: the one nearing its walltime must
    # not get a fresh replacement job; it is released (and the floor still holds).
    from dlhub_hpc.pilot.scaling import WalltimePlan

    spec = ScalingSpec(min_blocks=1, max_blocks=3, idle_release=30)
    plan = WalltimePlan(walltime=600, replace_lead=120)
    old = BlockView("b1", "RUNNING", submitted_at=NOW - 600, started_at=NOW - 500,
                    connected=2, ever_connected=True, idle_since=NOW - 100)
    young = BlockView("b2", "RUNNING", submitted_at=NOW - 200, started_at=NOW - 100,
                      connected=2, ever_connected=True, idle_since=NOW - 100)
    d = decide(spec, [old, young], Load(workers=4), NOW, plan)
    assert d.replace == [] and d.submit == 0 and d.cancel == ["b1"]
    # The last block (the floor) is still replaced, idle or not.
    d = decide(spec, [old], Load(workers=2), NOW, plan)
    assert d.replace == ["b1"]
    # Busy, or with work queued: replaced as before.
    assert decide(spec, [old, young], Load(queued=3, workers=4, busy=4), NOW, plan).replace


def test_provider_calls_never_overlap_between_threads(tmp_path: Path) -> None:
    # Parsl's SlurmProvider.status() marks a job that submit() added meanwhile as "missing,
    # so completed": the pilot then starts another block and leaves the first one running.
    import threading
    import time

    class Slow(_FakeProvider):
        def __init__(self) -> None:
            super().__init__()
            self.inside = 0
            self.overlaps = 0

        def _enter(self) -> None:
            self.inside += 1
            self.overlaps += self.inside > 1
            time.sleep(0.002)
            self.inside -= 1

        def submit(self, command: str, tasks_per_node: int, job_name: str = "") -> str:
            self._enter()
            return super().submit(command, tasks_per_node, job_name)

        def status(self, job_ids: list[str]) -> list[object]:
            self._enter()
            return []

    provider = Slow()
    pilot = Pilot(load_profile("local"), "alice/oqmd@1", "tcp://127.0.0.1:5000", tmp_path,
                  provider=provider)  # type: ignore[arg-type]
    pilot.submit_block()
    watcher = threading.Thread(target=lambda: [pilot.refresh([], time.time())
                                               for _ in range(40)])
    watcher.start()
    for _ in range(20):
        pilot.submit_block("scaling")
    watcher.join()
    assert len(provider.submitted) == 21
    assert provider.overlaps == 0


def test_a_pool_pilot_scales_on_what_waits_for_its_pool(tmp_path: Path) -> None:
    # A pool pilot's servable is the pool's ref, which no queue is named after: its load is
    # the requests queued for any servable the pool serves, as the state counts them.
    from dlhub_hpc.pilot.service import PilotService
    from dlhub_hpc.servable.pools import PoolSpec

    ref = PoolSpec.parse("owner:alice").ref()
    snapshot = {"servables": {"alice/a@1": {"queued": 3}},
                "pools": {"queued": {ref: 17, "pool:owner:bob": 5}},
                "workers": [{"servable": "", "block": "P.0", "state": "busy"},
                            {"servable": "", "block": "P.0", "state": "idle"},
                            {"servable": "", "block": "Q.0", "state": "busy"}]}
    service = PilotService(lambda: snapshot, period=60)
    provider = _FakeProvider()
    pilot = Pilot(load_profile("local"), ref, "tcp://127.0.0.1:5000", tmp_path,
                  provider=provider, pilot_id="P")  # type: ignore[arg-type]
    seen: list[Load] = []
    pilot.tick = lambda load, workers, now: seen.append(load)  # type: ignore[method-assign]
    service.pilots["P"] = pilot
    try:
        service.tick_all(NOW)
    finally:
        service.shutdown()
    assert seen == [Load(queued=17, in_flight=1, workers=2, busy=1)]
