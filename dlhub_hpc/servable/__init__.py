"""Servable specs, declared types, bundles and the shims that load and call models."""

from dlhub_hpc.servable.bundle import Bundle, make_bundle, unpack_bundle
from dlhub_hpc.servable.shims import Shim, load_servable
from dlhub_hpc.servable.spec import MethodSpec, ServableSpec, parse_ref
from dlhub_hpc.servable.types import ArgType, check_value

__all__ = [
    "ArgType",
    "Bundle",
    "MethodSpec",
    "ServableSpec",
    "Shim",
    "check_value",
    "load_servable",
    "make_bundle",
    "parse_ref",
    "unpack_bundle",
]
