"""Which servables a pool of shared workers serves, and how they say so on the command line.

A pool is named by one of: a list of servables (``alice/a,alice/b``), an owner
(``owner:alice``), a tag (``tag:materials``: the servable's DataCite subjects and DLHub
domains) or ``public`` (every public servable). Whatever it names, a pool mixes its owner's
servables and those whose owners allowed its owner's pools (``registry/pool_grants.py``),
so one owner's code shares a process with another's only when that owner said so. Which
owner a list pool is (its starter, if every servable it names allows it) the hub decides
when it starts (``hubops/limits.py``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dlhub_hpc.errors import ConfigError

logger = logging.getLogger(__name__)

POOL_PREFIX = "pool:"  # a pilot's servable ref that names a pool: pool:owner:alice
DEFAULT_BUDGET = 2 << 30  # bytes of loaded models a pooled worker keeps by default
_MAX_IMAGE = 4096  # characters of an image's path or name


class PoolSpec(BaseModel):
    """One pool: what it serves, and the memory budget of each of its workers (and, as a
    worker reports it, the container image it runs in)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["names", "owner", "tag", "public"]
    names: tuple[str, ...] = ()
    value: str = Field(default="", description="the owner or tag the pool names")
    budget: int = Field(default=DEFAULT_BUDGET, ge=1,
                        description="bytes of loaded models one worker keeps, at most")
    # Not part of the pool's name (text, ref): a servable with an image of its own goes only
    # to workers that run that image (broker/pools.py).
    image: str = Field(default="", max_length=_MAX_IMAGE,
                       description="the container image the worker runs in; '' for none")

    @model_validator(mode="after")
    def _fits_kind(self) -> PoolSpec:
        if (self.kind == "names") != bool(self.names):
            raise ValueError("a list pool names its servables, and only it does")
        if self.kind in ("owner", "tag") and not self.value:
            raise ValueError(f"a {self.kind} pool names its {self.kind}")
        for n in self.names:
            owner, _, short = n.partition("/")
            if not owner or not short or "@" in n:
                raise ValueError(f"{n!r} should look like owner/name")
        return self

    def __repr__(self) -> str:
        image = f".in_image({self.image!r})" if self.image else ""
        return f"PoolSpec.parse({self.text()!r}, budget={self.budget}){image}"

    def in_image(self, image: str) -> PoolSpec:
        """This pool, as a worker that runs in ``image`` ('' for none) reports it."""
        if len(image) > _MAX_IMAGE:
            raise ConfigError(f"an image's path is at most {_MAX_IMAGE} characters")
        return self.model_copy(update={"image": image})

    @property
    def owner(self) -> str | None:
        """The owner an ``owner:`` pool names; others serve their credential's owner's
        (a list: the owner the hub started it for, ``hubops/limits.py``)."""
        return self.value if self.kind == "owner" else None

    def text(self) -> str:
        """The command-line form, which ``parse`` reads back."""
        if self.kind == "names":
            return ",".join(self.names)
        return "public" if self.kind == "public" else f"{self.kind}:{self.value}"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"spec": self.text(), "budget": self.budget}
        if self.image:  # only then: a hub from before images reads the rest as it did
            wire["image"] = self.image
        return wire

    @classmethod
    def from_wire(cls, data: Any) -> PoolSpec:
        """A worker's Hello: untrusted; ``ConfigError`` for anything malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("spec"), str):
            raise ConfigError("a pool is {'spec': str, 'budget': int, 'image': str}")
        budget = data.get("budget", DEFAULT_BUDGET)
        if type(budget) is not int:
            raise ConfigError("a pool's budget is a whole number of bytes")
        image = data.get("image", "")
        if not isinstance(image, str):
            raise ConfigError("a pool's image is the path or name of its workers' image")
        return cls.parse(data["spec"], budget).in_image(image)

    def ref(self) -> str:
        """The pool as a pilot's servable ref: ``pool:SPEC[,budget=BYTES]``."""
        budget = "" if self.budget == DEFAULT_BUDGET else f",budget={self.budget}"
        return f"{POOL_PREFIX}{self.text()}{budget}"

    @classmethod
    def parse(cls, text: str, budget: int = DEFAULT_BUDGET) -> PoolSpec:
        """``owner:alice``, ``tag:materials``, ``public``, or ``alice/a,alice/b``; a
        ``,budget=BYTES`` item sets the budget."""
        items = [i.strip() for i in text.split(",")]
        for item in [i for i in items if i.startswith("budget=")]:
            items.remove(item)
            number = item.partition("=")[2]
            if not (number.isascii() and number.isdigit() and len(number) <= 19):
                raise ConfigError(f"pool budget {item!r} should be budget=BYTES", pool=text)
            budget = int(number)
        text = ",".join(items).strip()
        kind, sep, value = text.partition(":")
        try:
            if text == "public":
                return cls(kind="public", budget=budget)
            if sep and kind in ("owner", "tag"):
                return cls(kind=kind, value=value, budget=budget)  # type: ignore[arg-type]
            names = tuple(n.strip() for n in text.split(",") if n.strip())
            return cls(kind="names", names=names, budget=budget)
        except ValidationError as exc:
            reasons = "; ".join(str(e["msg"]) for e in exc.errors())
            raise ConfigError(
                f"pool {text!r} is not valid ({reasons}); give owner:NAME, tag:TAG, public, "
                "or owner/name[,owner/name...]", pool=text) from None

    def names_servable(self, name: str, owner: str, tags: tuple[str, ...], public: bool) -> bool:
        """Does the spec name this servable (before the one-owner rule and the gate)?"""
        if self.kind == "names":
            return name in self.names
        if self.kind == "owner":
            return owner == self.value
        if self.kind == "tag":
            return self.value in tags
        return public



def pool_of(ref: str, budget: int = DEFAULT_BUDGET) -> PoolSpec | None:
    """The pool a ``pool:SPEC`` servable ref names (a pilot's, a worker's); None for a
    plain ``owner/name`` ref."""
    if not ref.startswith(POOL_PREFIX):
        return None
    return PoolSpec.parse(ref[len(POOL_PREFIX):], budget)
