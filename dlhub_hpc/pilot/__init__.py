"""Pilot blocks of warm workers, started through Parsl providers."""

from dlhub_hpc.pilot.local import local_provider
from dlhub_hpc.pilot.manager import Block, PilotManager

__all__ = ["Block", "PilotManager", "local_provider"]
