"""Paging and filtering of ``GET /predictions`` and ``GET /alerts`` for large fleets.

Without any of these query parameters both routes answer the whole document, as the contract shows (fine for
a few thousand servers). With 100,000 servers a client asks for a page instead:

- ``limit``: at most this many items (1 .. ``MAX_LIMIT``);
- ``offset``: skip this many matching items first (the answer's ``next_offset`` is the next page's, ``null``
  on the last page); pages follow the answer's order (riskiest first), which is fixed within one batch
  (the answer's ``timestamp``), so a client paging through a batch sees each server once;
- ``risk_level`` (predictions) or ``severity`` (alerts): one level or a comma-separated list;
- ``profile``: one profile or a comma-separated list;
- ``server``: a server-name prefix (``db-`` matches ``db-01`` and ``db-02``).

A paged answer carries ``total`` (how many items match) and ``next_offset`` beside the usual fields. Bad
values answer 400 naming the parameter (``Query.parse`` raises ``ValueError``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from models.alerts import SEVERITIES

MAX_LIMIT = 10_000
T = TypeVar("T")


def _choices(name: str, raw: str | None, allowed: Sequence[str] | None = None) -> frozenset[str] | None:
    if raw is None:
        return None
    values = frozenset(v.strip() for v in raw.split(",") if v.strip())
    if not values:
        raise ValueError(f"{name}: empty; give one value or a comma-separated list")
    if allowed is not None and not values <= set(allowed):
        unknown = ", ".join(sorted(values - set(allowed)))
        raise ValueError(f"{name}: unknown value {unknown!r}; one of {', '.join(allowed)}")
    return values


@dataclass(frozen=True)
class Query:
    """A validated page request; ``paged`` is False when no parameter was given (answer the whole document)."""

    limit: int | None = None
    offset: int = 0
    levels: frozenset[str] | None = None  # risk_level (predictions) or severity (alerts)
    profiles: frozenset[str] | None = None
    server_prefix: str | None = None

    @property
    def paged(self) -> bool:
        return (self.limit is not None or self.offset > 0 or self.levels is not None
                or self.profiles is not None or self.server_prefix is not None)

    @classmethod
    def parse(cls, limit: int | None = None, offset: int | None = None, levels: str | None = None,
              profiles: str | None = None, server: str | None = None, level_name: str = "risk_level") -> Query:
        if limit is not None and not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit: {limit} is out of range; 1 to {MAX_LIMIT}")
        if offset is not None and offset < 0:
            raise ValueError(f"offset: {offset} is negative")
        if server is not None and not server:
            raise ValueError("server: empty prefix")
        return cls(limit=limit, offset=offset or 0, levels=_choices(level_name, levels, SEVERITIES),
                   profiles=_choices("profile", profiles), server_prefix=server)

    def matches(self, item: Mapping[str, Any], level_key: str) -> bool:
        if self.levels is not None and item.get(level_key) not in self.levels:
            return False
        if self.profiles is not None and item.get("profile") not in self.profiles:
            return False
        return self.server_prefix is None or str(item.get("server_name", "")).startswith(self.server_prefix)


@dataclass(frozen=True)
class Page:
    items: list[Any]
    total: int
    next_offset: int | None


def select(items: Iterable[T], query: Query, key: Callable[[T], Mapping[str, Any]], level_key: str) -> Page:
    """The page of ``items`` (already in answer order) that ``query`` asks for; ``key`` gives an item's fields."""
    matching = [item for item in items if query.matches(key(item), level_key)]
    end = len(matching) if query.limit is None else query.offset + query.limit
    page = matching[query.offset:end]
    return Page(page, len(matching), end if end < len(matching) else None)
