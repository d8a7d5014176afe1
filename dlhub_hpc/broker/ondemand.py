"""Start on first request: which servables start when a request finds no worker, how far
each start got, and when an idle one goes back to zero workers.

The broker's loop decides (``wanted``, ``tick``) and emits ``StartServable`` or
``ReleaseServable`` actions; the hub's starter (``dlhub_hpc.hubops.ondemand``) carries
them out through the pilot service, off the loop, and reports back here with
``set_stage`` and ``fail`` from its own threads: this board is the one object both sides
touch, behind its lock. The loop reads failures on its ticks (``take_failures``) and
answers the waiting requests with them.

Stages, in order: ``requested`` (the start was asked for), ``queued at scheduler`` (the
pilot's job is submitted), ``job running`` (the job started; its worker is coming up),
``model loading`` (a worker registered and loads the servable: the state sees this itself).
A servable a pool serves shows the same stages (``BrokerState.start_stage``): its pool
pilot's while it starts a block from zero, ``model loading`` while a pooled worker loads it.

The profile a start uses, first found: the hub's ``start_on_demand`` for the servable, the
servable's own ``default_profile`` where the hub's ``servable_profiles`` allows it and the
hub has it, then ``start_on_demand["*"]``. A servable whose own profile is refused and that
nothing else starts is ``not started``: its callers' deadline error says why
(``ServableNotStarted``), as ``status`` and ``request_status`` do. Why is looked up once per
version when first asked (``refusal``), and again once the servable changes (``forget``).
A hub with neither ``start_on_demand`` nor ``servable_profiles`` starts nothing: its requests
skip the board (``active``), and a refusal is looked up only when status or a deadline asks.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import (
    InFlight,
    Pending,
    ReleaseServable,
    RequestQueue,
    ServableKey,
    StartServable,
)
from dlhub_hpc.errors import ServableNotStarted, ServableStarting, Timeout

logger = logging.getLogger(__name__)

__all__ = ["NOT_STARTED", "STAGES", "OnDemand", "Refusal", "find_request", "timeout_error"]

STAGES = ("requested", "queued at scheduler", "job running", "model loading")
NOT_STARTED = "not started"  # the servable's own profile was refused and nothing else starts it
POLL = 0.25  # seconds between the loop's looks at the board while a start is under way
RATE_WINDOW = 60.0  # max_starts_per_minute counts starts in this window


@dataclass(slots=True)
class _Start:
    profile: str
    stage: str
    since: float
    last_used: float
    pilot: str = ""
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the hub starts no pilot from the profile a servable's own spec names
    (``OnDemand.refusal``): what its callers' deadline error, ``request_status`` and
    ``status`` say while it is ``not started``."""

    reason: str
    profile: str  # the refused default_profile
    allowed: list[str]  # the hub's servable_profiles


def _no_profile(key: ServableKey) -> str | None:
    return None


def _any_profile(name: str) -> bool:
    return True


class OnDemand:
    """The hub's board of on-demand starts; ``profiles`` maps a servable name (or ``*``)
    to the site profile its pilot starts from. ``default_profile_of`` gives the profile a
    servable's own spec names (looked up once per version), ``servable_profiles`` the ones
    it may name (``*``: any), ``has_profile`` whether the hub has one of that name."""

    def __init__(self, profiles: Mapping[str, str] | None = None,
                 idle_release_after: float | None = None,
                 max_starts_per_minute: int = 6, *,
                 servable_profiles: Iterable[str] = (),
                 default_profile_of: Callable[[ServableKey], str | None] | None = None,
                 has_profile: Callable[[str], bool] = _any_profile) -> None:
        self.profiles = dict(profiles or {})
        self.idle_release_after = idle_release_after
        self.max_starts_per_minute = max_starts_per_minute
        self.servable_profiles = frozenset(servable_profiles)
        self.default_profile_of = default_profile_of or _no_profile
        self.has_profile = has_profile
        # read on the hot path: False when the hub starts nothing on demand, so requests
        # skip the check. A servable's own profile refused there is said all the same:
        # ``stage`` and ``refusal`` look it up when asked (status, deadlines), not per request.
        self.active = bool(self.profiles or self.servable_profiles)
        self._lock = threading.Lock()
        self._starts: dict[ServableKey, _Start] = {}
        self._recent: deque[float] = deque()
        self._deferred: dict[ServableKey, str] = {}  # refused by the rate limit: retried
        self._own: dict[ServableKey, str | None] = {}  # each version's own default_profile
        # why each version's own profile is refused (None: it names none, or may use it);
        # looked up once, forgotten when the servable changes (``forget``)
        self._refusals: dict[ServableKey, Refusal | None] = {}
        # those refused for a profile the hub lacks: asked again once nothing waits for them,
        # as the admin may install it meanwhile
        self._uninstalled: set[ServableKey] = set()

    @classmethod
    def from_config(cls, config: HubConfig,
                    default_profile_of: Callable[[ServableKey], str | None] | None = None,
                    has_profile: Callable[[str], bool] = _any_profile) -> OnDemand:
        return cls(config.start_on_demand, config.idle_release_after,
                   config.max_starts_per_minute, servable_profiles=config.servable_profiles,
                   default_profile_of=default_profile_of, has_profile=has_profile)

    def __repr__(self) -> str:
        return (f"OnDemand(profiles={self.profiles!r}, "
                f"idle_release_after={self.idle_release_after!r}, "
                f"servable_profiles={sorted(self.servable_profiles)!r})")

    def profile_for(self, key: ServableKey) -> str | None:
        """The profile ``key`` starts from: the hub's for it, its own where allowed, the
        hub's ``*``."""
        named = self.profiles.get(key[0])
        if named:
            return named
        own = self._own_profile(key)
        if own is not None and self.refusal(key) is None:
            return own
        return self.profiles.get("*")

    def refusal(self, key: ServableKey) -> Refusal | None:
        """Why the hub will not start ``key`` from the profile its spec names, if it won't
        (looked up once per version, until ``forget``)."""
        if key not in self._refusals:
            own = self._own_profile(key)
            why = self._refusals[key] = None if own is None else self._refuse(key, own)
            if why is not None and self._allowed(own):  # allowed, so not installed
                self._uninstalled.add(key)
        return self._refusals[key]

    def forget(self, name: str) -> None:
        """``name`` was published again or its images changed: look its profile up anew."""
        for cache in (self._own, self._refusals):
            for key in [k for k in cache if k[0] == name]:
                del cache[key]

    def _own_profile(self, key: ServableKey) -> str | None:
        if key not in self._own:
            try:
                self._own[key] = self.default_profile_of(key)
            except Exception as exc:  # a withdrawn or unreadable record starts from none
                logger.warning("cannot read %s@%s's default profile: %s", *key, exc)
                self._own[key] = None
        return self._own[key]

    def _allowed(self, own: str | None) -> bool:
        return "*" in self.servable_profiles or own in self.servable_profiles

    def _refuse(self, key: ServableKey, own: str) -> Refusal | None:
        """Why the hub will not start ``key`` from the profile its spec names, if it won't."""
        allowed = sorted(self.servable_profiles)
        if not self._allowed(own):
            listed = ", ".join(allowed) if allowed else "none"
            return Refusal(
                f"{key[0]} names default_profile {own!r}, which this hub does not let "
                f"servables choose (servable_profiles: {listed}); the hub's admin may add it "
                f"to servable_profiles or start_on_demand, or start workers with 'dlhub-hpc "
                f"pilot start --servable {key[0]} --profile {own}'",
                own, allowed)
        if not self.has_profile(own):
            return Refusal(
                f"{key[0]} names default_profile {own!r}, which this hub does not have "
                f"(no installed site profile of that name): name one 'dlhub-hpc profiles "
                f"list' shows and publish again, or ask the hub's admin to install it",
                own, allowed)
        return None

    # -- the loop's side --

    def wanted(self, key: ServableKey, now: float) -> StartServable | None:
        """A request for ``key`` found no worker: the start to make, if one is due."""
        with self._lock:
            entry = self._starts.get(key)
            if entry is not None:
                entry.last_used = now
                return None  # under way, or started and its workers are coming back
        profile = self.profile_for(key)
        if profile is None:
            return None
        with self._lock:
            return self._start_locked(key, profile, now)

    def _start_locked(self, key: ServableKey, profile: str, now: float) -> StartServable | None:
        while self._recent and self._recent[0] <= now - RATE_WINDOW:
            self._recent.popleft()
        if len(self._recent) >= self.max_starts_per_minute:
            if key not in self._deferred:
                logger.warning("start of %s@%s deferred: %d starts in the last minute "
                               "(max_starts_per_minute)", *key, len(self._recent))
            self._deferred[key] = profile
            return None
        self._deferred.pop(key, None)
        self._recent.append(now)
        self._starts[key] = _Start(profile, "requested", now, now)
        logger.info("starting %s@%s on demand with profile %s", *key, profile)
        return StartServable(key, profile)

    def used(self, key: ServableKey, now: float) -> None:
        """A request for ``key`` arrived: it is not idle."""
        entry = self._starts.get(key)
        if entry is not None:
            entry.last_used = now

    def tick(self, now: float, waiting: Callable[[ServableKey], int],
             workers: Callable[[ServableKey], int]) -> list[StartServable | ReleaseServable]:
        """Deferred starts whose requests still wait and no worker serves; releases of
        started servables with nothing waiting for ``idle_release_after`` seconds."""
        out: list[StartServable | ReleaseServable] = []
        for key in [k for k in self._uninstalled if not waiting(k)]:
            self._uninstalled.discard(key)
            self._refusals.pop(key, None)
        with self._lock:
            for key, profile in list(self._deferred.items()):
                if not waiting(key) or workers(key):
                    del self._deferred[key]
                    continue
                start = self._start_locked(key, profile, now)
                if start is not None:
                    out.append(start)
            if self.idle_release_after is None:
                return out
            for key, entry in list(self._starts.items()):
                if waiting(key):
                    entry.last_used = now
                elif entry.error is None and now - entry.last_used >= self.idle_release_after:
                    del self._starts[key]
                    logger.info("releasing %s@%s: idle for %.0fs", *key, now - entry.last_used)
                    out.append(ReleaseServable(key, entry.pilot))
        return out

    def take_failures(self) -> list[tuple[ServableKey, dict[str, Any]]]:
        """Starts that failed since last asked (forgotten, so a later request retries)."""
        with self._lock:
            failed = [(k, e.error) for k, e in self._starts.items() if e.error is not None]
            for key, _ in failed:
                del self._starts[key]
        return [(k, e) for k, e in failed if e is not None]

    def next_check(self, now: float) -> float:
        """Seconds until ``tick`` is next worth running (inf: nothing started or deferred)."""
        return POLL if self._starts or self._deferred else math.inf

    def stage(self, key: ServableKey) -> str | None:
        """How far ``key``'s start got; ``not started`` when its own profile was refused
        and the hub has none of its own for it."""
        entry = self._starts.get(key)
        if entry is not None:
            return entry.stage
        if key[0] in self.profiles or "*" in self.profiles or self.refusal(key) is None:
            return None
        return NOT_STARTED

    def view(self, stage_of: Callable[[ServableKey], str | None],
             waiting: Mapping[ServableKey, float] | None = None) -> dict[str, dict[str, Any]]:
        """The starts under way, by ``name@version``, for ``status``; with ``waiting`` (the
        servables requests wait for: since when), those not started too, and why."""
        with self._lock:
            items = list(self._starts.items())
        shown: dict[str, dict[str, Any]] = {}
        for key, entry in items:
            stage = stage_of(key)
            if stage is not None:
                shown[f"{key[0]}@{key[1]}"] = {"stage": str(stage), "profile": entry.profile,
                                               "pilot": entry.pilot, "since": entry.since}
                why = None if key[0] in self.profiles else self.refusal(key)
                if why is not None:  # started from the hub's '*' instead: say why
                    shown[f"{key[0]}@{key[1]}"]["reason"] = why.reason
        for key, since in (waiting or {}).items():
            ref = f"{key[0]}@{key[1]}"
            why = None if ref in shown else self.refusal(key)
            if why is not None and stage_of(key) == NOT_STARTED:
                shown[ref] = {"stage": NOT_STARTED, "profile": why.profile, "pilot": "",
                              "since": since, "reason": why.reason}
        return shown

    # -- the starter's side (any thread) --

    def set_stage(self, key: ServableKey, stage: str, now: float, pilot: str = "") -> None:
        with self._lock:
            entry = self._starts.get(key)
            if entry is None:
                return  # released meanwhile
            if stage != entry.stage:
                entry.stage, entry.since = stage, now
            entry.pilot = pilot or entry.pilot

    def fail(self, key: ServableKey, error: dict[str, Any]) -> None:
        with self._lock:
            entry = self._starts.get(key)
            if entry is not None:
                entry.error = error

    def pilot_of(self, key: ServableKey) -> str:
        with self._lock:
            entry = self._starts.get(key)
            return "" if entry is None else entry.pilot


def timeout_error(p: Pending, live_workers: int, stage: str | None,
                  how: str = "on demand", refusal: Refusal | None = None) -> Timeout:
    """The error of a request whose deadline passed: why none starts its servable when it
    is ``not started`` (``ServableNotStarted``, from ``refusal``); the stage when it was
    starting (``ServableStarting``; ``how``: ``on demand``, or ``in its pool`` when a pooled
    worker loads it or a pool pilot starts a block for it); else what to change."""
    name, version = p.servable
    if stage == NOT_STARTED and refusal is not None:
        return ServableNotStarted(
            f"{name}@{version}.{p.method} did not answer in time: no worker serves it and "
            f"none starts: {refusal.reason}", servable=name, version=version,
            stage=NOT_STARTED, profile=refusal.profile, allowed=refusal.allowed)
    if stage is not None:
        return ServableStarting(
            f"{name}@{version}.{p.method} did not answer in time: the servable is starting "
            f"{how} ({stage}); retry with a longer timeout, or see 'dlhub-hpc status'",
            servable=name, version=version, stage=stage)
    if not live_workers:
        hint = (f"no worker serves {name}@{version}; start one with "
                f"'dlhub-hpc workers start --servable {name}'")
    else:
        hint = "the servable's workers are busy; start more workers or raise the timeout"
    return Timeout(f"{name}@{version}.{p.method} did not answer in time: {hint}",
                   servable=name, version=version)


def find_request(queues: Mapping[ServableKey, Mapping[str, RequestQueue]],
                 batches: Iterable[InFlight], user: str,
                 request_id: str) -> tuple[Pending, str] | None:
    """``user``'s unanswered request ``request_id``, and whether it is queued or running."""
    for methods in queues.values():
        for queue in methods.values():
            for p in queue.items:
                if p.request_id == request_id and p.user == user and not p.done:
                    return p, "queued"
    for flight in batches:
        for p in flight.items:
            if p.request_id == request_id and p.user == user and not p.done:
                return p, "running"
    return None
