"""Pilot blocks of warm workers, started through Parsl providers from site profiles."""

from dlhub_hpc.pilot.command import Container, WorkerCommand, worker_command
from dlhub_hpc.pilot.local import local_provider
from dlhub_hpc.pilot.pilots import Pilot, PilotBlock, fixed_profile
from dlhub_hpc.pilot.profiles import SiteProfile, build_provider, load_profile, parse_profile
from dlhub_hpc.pilot.scaling import BlockView, Decision, Load, decide
from dlhub_hpc.pilot.service import PilotService, WorkersSetup

__all__ = [
    "BlockView",
    "Container",
    "Decision",
    "Load",
    "Pilot",
    "PilotBlock",
    "PilotService",
    "SiteProfile",
    "WorkerCommand",
    "WorkersSetup",
    "build_provider",
    "decide",
    "fixed_profile",
    "load_profile",
    "local_provider",
    "parse_profile",
    "worker_command",
]
