"""No part imports a part above it (the table of parts in DESIGN.md, bottom to top)."""

from __future__ import annotations

import ast
from pathlib import Path

import dlhub_hpc

ROOT = Path(dlhub_hpc.__file__).resolve().parent

# part -> the parts it may import (besides itself). Leaves first; each line may use
# only what is above it here. `hub`, `demo`, `cli` and the examples sit on top.
ALLOWED: dict[str, set[str]] = {
    "_version": set(),
    "errors": set(),
    "hubfile": set(),
    "shipped": set(),
    "logging_setup": set(),
    "metrics": {"errors"},
    "references": {"errors"},
    "globus_collections": {"errors", "references"},
    "protocol": {"errors", "references"},
    "localpath": {"errors", "protocol"},
    "transfer": {"errors", "protocol"},
    "servable": {"errors", "_version"},
    "registry": {"errors", "_version", "servable"},
    "security": {"errors", "_version", "hubfile", "protocol", "registry", "servable",
                 "references"},
    "broker": {"errors", "hubfile", "protocol", "registry", "security", "servable", "transfer",
               "references"},
    "worker": {"errors", "protocol", "security", "servable", "transfer"},
    "container": {"errors", "_version", "registry", "security", "servable"},
    "pilot": {"errors", "container", "registry", "security", "servable", "shipped"},
    "client_publication": {"errors"},
    "client_core": {"errors", "hubfile", "protocol", "security", "servable", "transfer",
                    "references"},
    "client_sockets": {"errors", "protocol", "security", "transfer", "client_core"},
    "client_window": {"errors", "protocol", "security", "transfer", "client_core"},
    "client": {"errors", "hubfile", "protocol", "security", "servable", "client_publication",
               "transfer", "client_core", "client_sockets", "client_window",
               "references"},
    "async_client": {"errors", "hubfile", "protocol", "security", "servable", "client",
                     "client_publication", "references", "transfer"},
    "parsl_executor": {"errors", "client", "servable", "protocol"},
    "bridge": {"errors", "client", "protocol", "servable", "shipped"},
    "gateway": {"errors", "_version", "client", "async_client", "protocol", "servable"},
    "compat": {"errors", "client", "registry", "servable"},
}
# Metrics and structured logs sit low: the parts that record or log through them.
for _part in ("broker", "worker", "gateway", "pilot"):
    ALLOWED[_part] = ALLOWED[_part] | {"metrics", "logging_setup"}
# The same-node fast path (memfds over AF_UNIX): the parts that send and receive arrays.
for _part in ("broker", "worker", "client_core", "client"):
    ALLOWED[_part] = ALLOWED[_part] | {"localpath"}
TOP = {"hub", "demo", "cli", "examples", "__init__", "hub_ops", "hubops"}


def part_of(module: str) -> str:
    """``dlhub_hpc.broker.state`` -> ``broker``; ``dlhub_hpc.hub`` -> ``hub``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> set[str]:
    """Every dlhub_hpc module ``path`` imports, at any depth (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "dlhub_hpc":
                found |= {f"dlhub_hpc.{a.name}" for a in node.names}
            elif node.module.startswith("dlhub_hpc."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dlhub_hpc")}
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    return ".".join(rel.parts)


def test_no_part_imports_a_part_above_it() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        here = part_of(module_name(path))
        if here in TOP:
            continue
        assert here in ALLOWED, f"{path}: part {here!r} is not in the table; add it"
        for target in imports(path):
            there = part_of(target)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{module_name(path)} imports {target} ({here} -> {there})")
    assert not wrong, "\n".join(wrong)


def test_the_table_has_no_cycles() -> None:
    seen: dict[str, int] = {}

    def depth(part: str, path: tuple[str, ...] = ()) -> int:
        assert part not in path, f"cycle: {' -> '.join((*path, part))}"
        if part not in seen:
            seen[part] = 1 + max((depth(p, (*path, part)) for p in ALLOWED.get(part, ())),
                                 default=0)
        return seen[part]

    for part in ALLOWED:
        depth(part)


def test_a_violation_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from dlhub_hpc.hub import Hub\n    import dlhub_hpc.cli\n")
    assert imports(bad) == {"dlhub_hpc.hub", "dlhub_hpc.cli"}
    assert {part_of(m) for m in imports(bad)} - ALLOWED["servable"] == {"hub", "cli"}
