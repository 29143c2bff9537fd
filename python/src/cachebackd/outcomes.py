"""What a fetch can say beyond returning data (PROTOCOL.md, "Additions: Outcomes of a fetch").

django-cacheback's `fetch` returns data or raises. A cachebackd `fetch` may also:

- ``raise Absent()``: the origin has no such data. The daemon stores the absence for the
  job's `absent_lifetime` (negative caching) and `get` returns None meanwhile, sparing
  the origin a call per read of a missing row;
- ``raise NotModified()``: the data stored is still current (`fetch_context().validator`
  says which version is stored); the daemon keeps it and makes it fresh again, and
  nothing is sent;
- ``return Fetched(data, validator=..., tags=[...])``: data with a validator (an ETag, a
  version) that the next refresh receives, and tags for `invalidate_tags`.

Exceptions, because a fetch already reports "no data" by raising, and a sentinel return
value could collide with real data.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence


class Absent(Exception):
    """Raised by `fetch`: the origin has no such data (stored as an absence; `get`
    returns None). `tags` are stored with it (default: the job's `tags()`)."""

    def __init__(self, *, tags: Sequence[str] = ()) -> None:
        super().__init__("absent")
        self.tags = tuple(tags)


class NotModified(Exception):
    """Raised by `fetch` on a refresh whose `fetch_context().validator` is still current:
    the stored data, validator and tags are kept and made fresh again."""

    def __init__(self) -> None:
        super().__init__("not modified")


@dataclass(frozen=True)
class Fetched:
    """Data returned by `fetch` with what is stored alongside it: a `validator` (at most
    256 bytes) given back to the next refresh, and `tags` (at most 32, each spelled like
    a job name; empty: the job's `tags()`)."""

    data: Any
    validator: Optional[bytes] = None
    tags: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class FetchContext:
    """Why the running fetch was asked for ("MISS", "STALE", "INVALIDATED", "EARLY") and
    the validator of the stored data, on a refresh of an item that has one."""

    reason: str = "MISS"
    validator: Optional[bytes] = None


_CONTEXT: contextvars.ContextVar[FetchContext] = contextvars.ContextVar(
    "cachebackd_fetch_context", default=FetchContext()
)


def fetch_context() -> FetchContext:
    """The context of the fetch running in this thread (or task): read it inside `fetch`
    to answer a conditional refresh. Outside a worker's fetch: a MISS with no validator."""
    return _CONTEXT.get()


def set_fetch_context(context: FetchContext) -> contextvars.Token[FetchContext]:
    """Used by the worker around each fetch."""
    return _CONTEXT.set(context)


def reset_fetch_context(token: contextvars.Token[FetchContext]) -> None:
    """Used by the worker after each fetch."""
    _CONTEXT.reset(token)
