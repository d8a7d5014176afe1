"""Pilot blocks of warm workers, started through Parsl providers from site profiles."""

from dlhub_hpc.pilot.local import local_provider
from dlhub_hpc.pilot.manager import Block, PilotManager
from dlhub_hpc.pilot.pilots import Pilot, PilotBlock, PilotService
from dlhub_hpc.pilot.profiles import SiteProfile, build_provider, load_profile, parse_profile
from dlhub_hpc.pilot.scaling import BlockView, Decision, Load, decide

__all__ = [
    "Block",
    "BlockView",
    "Decision",
    "Load",
    "Pilot",
    "PilotBlock",
    "PilotManager",
    "PilotService",
    "SiteProfile",
    "build_provider",
    "decide",
    "load_profile",
    "local_provider",
    "parse_profile",
]
