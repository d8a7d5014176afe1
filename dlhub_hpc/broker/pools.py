"""Pooled workers' books: what each holds, which takes a batch, and the counters.

Pure bookkeeping, no sockets: ``BrokerState`` (through ``pool_state.py``) asks it which free
pooled worker takes a servable's batch and tells it what workers report. A batch goes to a
free worker that holds the servable (a hit); else a free worker loads it, the one whose
load is cheapest: it would evict the fewest bytes, then holds the fewest.

What a worker holds is what it said in its last ``Ready`` (it measures each model's RSS
growth and evicts the least recently used past its budget, ``worker/models.py``); the hub
mirrors it, and between two reports nothing changes, since a worker loads only when told.

A servable whose workers cannot be shared gets workers of its own, and the books say why:
one that runs over MPI ranks, a pipeline, one with its own image ('dlhub-hpc build' put
what it needs there; a pool's workers run one environment, so only workers that run that
very image take it), one whose pinned packages conflict with what a worker has (a process
cannot unload a package).

A pool serves its owner's servables, and those whose owners allow its owner's pools
(``registry/pool_grants.py``): the gate says so per dispatch, so a grant taken back stops
the next batch. An ``owner:bob`` pool names what bob's pools may serve, granted ones too.

Pins compare as versions, not text: no version ("latest", "") fits any; two requirements
conflict only when no version satisfies both. Once a worker says which version of a
package it has installed (its ``Ready``), that version alone decides: every servable there
imports it, whatever it pins.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from dlhub_hpc.broker.events import ServableInfo, ServableKey
from dlhub_hpc.broker.fairshare import DeficitRoundRobin, peek_flow
from dlhub_hpc.servable.pools import PoolSpec

logger = logging.getLogger(__name__)

NO_SERVABLE: ServableKey = ("", 0)  # a pooled worker's servable before its first load
_COUNTERS = ("loads", "evictions", "hits", "load_failures")
_MAX_INSTALLED = 256  # package versions one Ready may report (a worker's report is untrusted)


def ref_of(key: ServableKey) -> str:
    return f"{key[0]}@{key[1]}"


def key_of(ref: Any) -> ServableKey | None:
    """``name@version`` -> its key; None for anything else (a worker's report is untrusted)."""
    if not isinstance(ref, str):
        return None
    name, _, version = ref.rpartition("@")
    if not name or not version.isascii() or not version.isdigit() or len(version) > 19:
        return None
    return (name, int(version))


def credential_owner(user: str) -> str | None:
    """``worker:alice:KEY`` -> ``alice``; None on a hub without identities."""
    kind, _, rest = user.partition(":")
    return rest.partition(":")[0] or None if kind == "worker" else None


class MayServe(Protocol):
    """The gate's ``may_serve``: may this worker credential serve this servable?"""

    def __call__(self, user: str, info: ServableInfo, pooled: bool = False) -> bool: ...


def no_grants(owner: str, info: ServableInfo) -> bool:
    """Pools without grants: each serves its own owner's servables only."""
    return False


def not_granted(info: ServableInfo, owner: str) -> str:
    """Why ``owner``'s pools may not serve ``info``, and what would let them; it names
    ``info`` and owners only (a list pool's text may name servables a reader may not see)."""
    return (f"{info.owner} has not allowed {owner}'s pools to serve it ({info.owner} may "
            f"run 'dlhub-hpc pooling {info.name} --allow {owner}')")


def exclusion(info: ServableInfo) -> str | None:
    """Why ``info`` can share no pooled worker at all; None when it can."""
    if info.ranks > 1:
        return f"it runs over {info.ranks} MPI ranks, started by its own pilot"
    if info.pipeline:
        return "it is a pipeline: the hub runs it, its steps have workers"
    return None


def image_refusal(image: str, info: ServableInfo) -> str | None:
    """Why a pooled worker that runs in ``image`` ('' for none) may not serve ``info``,
    which has images of its own: only one of those has what it was built with."""
    if not info.images:
        return None
    if image and os.path.normpath(image) in {os.path.normpath(i) for i in info.images}:
        return None
    runs = f"they run {image}" if image else "they run in no container"
    return (f"it has its own image (built with 'dlhub-hpc build'), which this pool's workers "
            f"do not run ({runs}); start its own workers: dlhub-hpc pilot start --servable "
            f"{ref_of(info.key)} --profile PROFILE (one that runs containers and names no "
            "container.image)")


Requirement = Version | SpecifierSet | str | None


@functools.lru_cache(maxsize=4096)
def requirement(text: str) -> Requirement:
    """A pinned version as DLHub records it: None for any ('' or 'latest'), a ``Version``
    for one exact version ('1.19.2', '==1.19.2'), a ``SpecifierSet`` ('>=1.20,<2'); text
    that is none of these stays text, which only the same text satisfies."""
    text = text.strip()
    if text in ("", "*", "latest"):
        return None
    try:
        return Version(text)
    except InvalidVersion:
        pass
    try:
        spec = SpecifierSet(text)
    except InvalidSpecifier:
        return text
    specs = list(spec)
    if len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version:
        return Version(specs[0].version)
    return spec


def compatible(one: Requirement, other: Requirement) -> bool:
    """Can one version satisfy both requirements? Two ranges are taken to overlap."""
    if one is None or other is None:
        return True
    if isinstance(one, str) or isinstance(other, str):
        return one == other
    if isinstance(one, Version):
        return one == other if isinstance(other, Version) else other.contains(one, True)
    if isinstance(other, Version):
        return one.contains(other, True)
    return True


@functools.lru_cache(maxsize=4096)
def package_name(package: str) -> str:
    """One spelling of a package's name: ``Scikit_Learn`` and ``scikit-learn`` are one."""
    return canonicalize_name(package)


def installed_report(report: Any) -> dict[str, str]:
    """The package versions a worker's ``Ready`` says it has installed, by package name;
    what is malformed is dropped (the report is untrusted)."""
    found = report.get("installed") if isinstance(report, dict) else None
    if not isinstance(found, dict):
        return {}
    return {package_name(k): v for k, v in list(found.items())[:_MAX_INSTALLED]
            if isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 200
            and 0 < len(v) <= 200}


@dataclass(slots=True, eq=False)
class Member:
    """One pooled worker."""

    identity: bytes
    worker_id: str
    spec: PoolSpec
    user: str  # its credential identity, for the gate
    owner: str | None  # the one owner whose servables it serves (None: no identities here)
    holds: OrderedDict[ServableKey, int] = field(default_factory=OrderedDict)  # LRU first
    # each package's requirements of the servables ever loaded here, one servable each
    pins: dict[str, dict[str, ServableKey]] = field(default_factory=dict)
    installed: dict[str, str] = field(default_factory=dict)  # package -> version it reported
    failed: set[ServableKey] = field(default_factory=set)  # loads that failed here
    loading: ServableKey | None = None
    fresh: ServableKey | None = None  # loaded, its first batch not yet sent (not a hit)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def held_bytes(self) -> int:
        return sum(self.holds.values())

    def conflict(self, info: ServableInfo) -> str | None:
        """A package ``info`` pins that this worker has (or imported for another servable)
        in a version the pin does not allow; None when there is none. One it holds is
        loaded already (before it said what it has installed): it serves on."""
        if info.key in self.holds:
            return None
        for package, wanted in info.pins:
            need = requirement(wanted)
            if need is None:
                continue
            name = package_name(package)
            have = self.installed.get(name)
            if have is not None:  # what every servable here imports, whatever it pins
                if not compatible(need, requirement(have)):
                    return (f"it pins {package} {wanted} but the worker has {package} "
                            f"{have} installed")
                continue
            for pinned, key in self.pins.get(name, {}).items():
                if not compatible(need, requirement(pinned)):
                    return (f"it pins {package} {wanted} but {ref_of(key)}, already loaded "
                            f"there, pins {package} {pinned}")
        return None

    def imported(self, info: ServableInfo, report: Any) -> None:
        """``info`` loaded here: its pins, and the versions the worker reported."""
        for package, wanted in info.pins:
            if requirement(wanted) is not None:
                self.pins.setdefault(package_name(package), {}).setdefault(wanted, info.key)
        self.installed.update(installed_report(report))


class PoolBook:
    """Every pooled worker's holdings, the free ones, and the counters."""

    def __init__(self, may_serve: MayServe,
                 granted: Callable[[str, ServableInfo], bool] = no_grants) -> None:
        self._may_serve = may_serve  # the gate: may this credential serve this servable?
        # has the servable's owner allowed this owner's pools? (HubSecurity.pool_granted)
        self.granted = granted
        self.members: dict[bytes, Member] = {}
        self.free: dict[bytes, None] = {}  # ordered: the longest free first
        self.sizes: dict[ServableKey, int] = {}  # measured bytes of each loaded servable
        self.counts: dict[ServableKey, Counter[str]] = {}
        self.own_workers: dict[ServableKey, str] = {}  # servable -> why no pool takes it
        self.load_seconds: dict[ServableKey, float] = {}  # each servable's last load, reported
        self.backlog: set[ServableKey] = set()  # servables whose requests found no free member
        # whose turn it is between a pool's servables, per pool (spec, owner): pick_flow
        self.turns: dict[tuple[str, str | None], DeficitRoundRobin[ServableKey]] = {}

    def __repr__(self) -> str:
        return f"PoolBook(members={len(self.members)}, free={len(self.free)})"

    # -- membership --

    def join(self, identity: bytes, worker_id: str, spec: PoolSpec, user: str) -> Member:
        member = Member(identity, worker_id, spec, user, spec.owner or credential_owner(user))
        self.members[identity] = member
        self.free[identity] = None
        return member

    def leave(self, identity: bytes) -> None:
        self.members.pop(identity, None)
        self.free.pop(identity, None)

    def hold_back(self, identity: bytes) -> None:
        """Take a member off the free list (it is silent, draining, or busy)."""
        self.free.pop(identity, None)

    def release(self, identity: bytes) -> None:
        if identity in self.members:
            self.free[identity] = None

    # -- who may take what --

    def refusal(self, member: Member, info: ServableInfo) -> str | None:
        """Why ``member`` may not serve ``info``; None when it may."""
        why = self.spec_refusal(member.spec, member.owner, info)
        if why:
            return why
        if not self._may_serve(member.user, info, pooled=True):
            holder = credential_owner(member.user)
            if holder is not None and holder != info.owner:
                return not_granted(info, holder)
            return "the worker's credential does not serve it"
        if info.key in member.failed:
            return "it failed to load on this worker"
        return member.conflict(info)

    def spec_refusal(self, spec: PoolSpec, owner: str | None, info: ServableInfo
                     ) -> str | None:
        """Why a worker of pool ``spec`` (in ``spec.image``), run with ``owner``'s
        credential, would not serve ``info``; None when it would. What a pool pilot with
        no worker connected is judged by: ``refusal`` less what only a connected worker
        knows (its credential at the gate, its failed loads, the packages it has)."""
        if not self.names(spec, info):
            return f"pool {spec.text()} does not name it"
        owner = spec.owner or owner
        if owner is not None and info.owner != owner and not self.granted(owner, info):
            return not_granted(info, owner)
        return exclusion(info) or image_refusal(spec.image, info)

    def names(self, spec: PoolSpec, info: ServableInfo) -> bool:
        """Does ``spec`` name ``info``? An ``owner:`` pool names what its owner was allowed
        to pool too."""
        return (spec.names_servable(info.name, info.owner, info.tags, info.public)
                or (spec.kind == "owner" and self.granted(spec.value, info)))

    def admits(self, member: Member, info: ServableInfo) -> bool:
        return self.refusal(member, info) is None

    def serving(self, info: ServableInfo) -> int:
        """Pooled workers that could serve ``info`` (now or after a load)."""
        return sum(1 for m in self.members.values() if self.admits(m, info))

    def free_holder(self, info: ServableInfo) -> bytes | None:
        """The longest-free member that holds ``info`` loaded (a hit), or None."""
        for identity in self.free:
            member = self.members[identity]
            if info.key in member.holds and self.admits(member, info):
                return identity
        return None

    def loader(self, info: ServableInfo) -> bytes | None:
        """The free member whose load of ``info`` is cheapest; None when none may, or one
        is loading it already (its batch waits for that load, not a second one)."""
        if any(m.loading == info.key for m in self.members.values()):
            return None
        need = self.sizes.get(info.key, 0)
        best: tuple[int, int, int] | None = None
        chosen = None
        for rank, identity in enumerate(self.free):
            member = self.members[identity]
            if not self.admits(member, info):
                continue
            evicts = max(0, need - (member.spec.budget - member.held_bytes))
            cost = (evicts, member.held_bytes, rank)
            if best is None or cost < best:
                best, chosen = cost, identity
        if chosen is None:
            self._note_refused(info)
        return chosen

    def _note_refused(self, info: ServableInfo) -> None:
        """Say once (log and status) why no pooled worker takes a servable its pool names."""
        if any(self.admits(m, info) for m in self.members.values()):
            return
        named = [m for m in self.members.values() if self.names(m.spec, info)]
        why = next((r for m in named if info.key not in m.failed  # a failed load says it
                    and (r := self.refusal(m, info))), None)
        if why and self.own_workers.get(info.key) != why:
            self.own_workers[info.key] = why
            logger.warning("%s gets workers of its own, not a pool's: %s", ref_of(info.key), why)

    # -- what workers do --

    def start_load(self, identity: bytes, info: ServableInfo) -> None:
        member = self.members[identity]
        self.free.pop(identity, None)
        member.loading = info.key
        member.counts["loads"] += 1
        self._count(info.key, "loads")

    def loaded(self, identity: bytes, info: ServableInfo, report: Any) -> list[ServableKey]:
        """A member's ``Ready`` after a load: mirror what it holds; the evicted keys."""
        member = self.members[identity]
        member.loading = None
        report = report if isinstance(report, dict) else {}
        holds: OrderedDict[ServableKey, int] = OrderedDict()
        for entry in report.get("holds") or []:
            if isinstance(entry, list) and len(entry) == 2 and type(entry[1]) is int:
                key = key_of(entry[0])
                if key is not None and (key in member.holds or key == info.key):
                    holds[key] = max(0, entry[1])  # only what it was sent: nothing new
        if info.key not in holds:  # a report without it: it holds it, size unknown
            holds[info.key] = self.sizes.get(info.key, 0)
        holds.move_to_end(info.key)
        evicted = [k for k in member.holds if k not in holds]
        member.holds = holds
        member.fresh = info.key
        self.sizes[info.key] = holds[info.key]
        seconds = report.get("seconds")
        if type(seconds) is float and math.isfinite(seconds) and seconds >= 0:
            self.load_seconds[info.key] = seconds
        member.imported(info, report)
        for key in evicted:
            member.counts["evictions"] += 1
            self._count(key, "evictions")
        self.own_workers.pop(info.key, None)
        return evicted

    def abandon_load(self, identity: bytes) -> ServableKey | None:
        """The member will not finish its load (it drains): what it was loading."""
        member = self.members.get(identity)
        if member is None or member.loading is None:
            return None
        key, member.loading = member.loading, None
        return key

    def load_failed(self, identity: bytes, key: ServableKey) -> None:
        member = self.members[identity]
        member.loading = None
        member.failed.add(key)
        member.counts["load_failures"] += 1
        self._count(key, "load_failures")

    def use(self, identity: bytes, key: ServableKey) -> None:
        """A batch of ``key`` goes to ``identity``, which holds it: a hit, unless it is the
        first batch after its load."""
        member = self.members[identity]
        self.free.pop(identity, None)
        member.holds.move_to_end(key)
        if member.fresh == key:
            member.fresh = None
            return
        member.counts["hits"] += 1
        self._count(key, "hits")

    def _count(self, key: ServableKey, what: str) -> None:
        self.counts.setdefault(key, Counter())[what] += 1

    def next_for(self, identity: bytes, waiting: Iterable[tuple[int, ServableInfo]]
                 ) -> ServableInfo | None:
        """What a member that just came free should take, of the servables with requests
        waiting (oldest request's seq, info): the servable whose turn it is in its pool's
        deficit round robin, so a flood of one servable does not starve the others. When
        that one is held or loaded by another (busy) member, which takes it when it frees,
        this one serves what it holds meanwhile (the turn is not used up)."""
        member = self.members.get(identity)
        if member is None:
            return None
        admitted = {info.key: (seq, info) for seq, info in waiting if self.admits(member, info)}
        turns = self.turns.setdefault((member.spec.text(), member.owner), DeficitRoundRobin())
        for _, info in sorted(admitted.values(), key=lambda w: w[0]):
            turns.activate(info.key)  # new flows join the round's end, oldest first
        head = peek_flow(turns, admitted.__contains__)
        if head is None:
            return None
        loading = {m.loading for m in self.members.values()}
        elsewhere = head not in member.holds and (head in loading or any(
            head in m.holds for m in self.members.values() if m is not member))
        if not elsewhere:
            turns.next()
            return admitted[head][1]
        held = [w for k, w in admitted.items() if k in member.holds]
        if held:
            return min(held, key=lambda w: w[0])[1]
        if head in loading:  # its batch waits for that load: the oldest one free to load
            other = [w for k, w in admitted.items() if k not in loading]
            return min(other, key=lambda w: w[0])[1] if other else None
        turns.next()  # held by a busy member only: a second copy here serves it sooner
        return admitted[head][1]

    # -- status --

    def view(self) -> dict[str, Any]:
        """Plain data for ``status``: each pooled worker, each servable's counters."""
        workers = {
            m.worker_id: {
                "pool": m.spec.text(), "budget": m.spec.budget, "owner": m.owner,
                "holds": {ref_of(k): n for k, n in m.holds.items()},
                "held_bytes": m.held_bytes,
                "loading": None if m.loading is None else ref_of(m.loading),
                **{c: m.counts[c] for c in _COUNTERS},
                "hit_rate": hit_rate(m.counts),
            }
            for m in self.members.values()
        }
        servables = {ref_of(k): self._servable_view(k, n) for k, n in self.counts.items()}
        return {"workers": workers, "servables": servables,
                "own_workers": {ref_of(k): why for k, why in self.own_workers.items()}}

    def _servable_view(self, key: ServableKey, counts: Counter[str]) -> dict[str, Any]:
        return {**{c: counts[c] for c in _COUNTERS}, "hit_rate": hit_rate(counts),
                "bytes": self.sizes.get(key), "last_load_s": self.load_seconds.get(key)}

    def view_servable(self, ref: str) -> dict[str, Any] | None:
        """One servable's part of ``view()``; None when no pool served it."""
        key = key_of(ref)
        counts = None if key is None else self.counts.get(key)
        return None if key is None or counts is None else self._servable_view(key, counts)


def hit_rate(counts: Counter[str]) -> float | None:
    """Batches sent to a worker already holding the servable, of all that needed it."""
    total = counts["hits"] + counts["loads"]
    return None if total == 0 else counts["hits"] / total
