"""`Job` and `@cacheback`: django-cacheback's API, with the daemon in place of the task queue.

A job says how to fetch some slow data (`fetch`) and how long it stays fresh
(`lifetime`). Readers call `get`; a `Worker` in the app server runs `fetch` when the
daemon asks. The class attributes become the job's `JobConfig` when a worker registers
it; `expiry` and `should_missing_item_be_fetched_synchronously` are evaluated here, on
the client side, and travel as `FetchedValue.lifetime` and `GetRequest.fetch_on_miss`.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import datetime, timedelta, timezone
from typing import (
    Any,
    Callable,
    Generic,
    Optional,
    ParamSpec,
    Sequence,
    TypeVar,
    Union,
    overload,
)

from . import _wire
from ._codec import Seconds, decode_json, encode_args, encode_json, to_duration, to_timedelta
from ._proto import cacheback_pb2 as pb
from .client import Client, Invalidated, Item, default_client
from .errors import CachebackError

#: Job names the daemon accepts (PROTOCOL.md, "Errors").
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def validate_name(name: str) -> str:
    """Return `name` if the daemon accepts it as a job name, else raise ValueError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid job name {name!r}: 1 to 128 characters of A-Z a-z 0-9 _ . : - "
            "(set `name` on the job, or pass name= to @cacheback)"
        )
    return name


def _default_name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


class Job:
    """A cached, background-refreshed computation, as in django-cacheback.

    Subclass it, override `fetch`, and set class attributes to tune it::

        class UserTweets(Job):
            lifetime = 600
            def fetch(self, username):
                return slow_fetch(username)

        tweets = UserTweets().get("bob")

    The job's name is `module.ClassName` unless the class sets `name`. Spans are seconds
    (int or float) or timedeltas. Arguments are positional and, like the data, must be
    JSON-serialisable (override `encode`/`decode` for another data format).
    """

    #: The job's name on the daemon: `module.ClassName` unless set.
    name: str = "cachebackd.job.Job"
    #: How long fetched data is fresh.
    lifetime: Seconds = _wire.JOB_LIFETIME_SECS
    #: How long one fetch may take before it counts as lost; also the fetch deadline.
    refresh_timeout: Seconds = _wire.JOB_REFRESH_TIMEOUT_SECS
    #: A miss waits for a synchronous fetch (True) or returns None at once and fills
    #: asynchronously (False).
    fetch_on_miss: bool = _wire.JOB_FETCH_ON_MISS
    #: If an item has been stale for longer than this, `get` fetches synchronously
    #: instead of serving it (None: never).
    fetch_on_stale_threshold: Optional[Seconds] = None
    #: Hard limit: an item older than this (since it was stored) is never served.
    cache_ttl: Seconds = timedelta(seconds=_wire.JOB_CACHE_TTL_SECS)
    #: How many fetches of this job a worker runs at once.
    max_in_flight: int = _wire.DEFAULT_MAX_IN_FLIGHT
    #: The keyword that `set` takes the data from (cacheback's `set_data_kwarg`).
    set_data_kwarg: str = "data"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name") is None:
            cls.name = _default_name(cls)
        validate_name(cls.name)

    def __init__(self, client: Optional[Client] = None) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__} job {self.name!r}>"

    @property
    def client(self) -> Client:
        """The client given to the constructor, else the process-wide default."""
        return getattr(self, "_client", None) or default_client()

    # What to override.

    def fetch(self, *args: Any) -> Any:
        """Compute the data for `args`; runs in a worker. Must be overridden."""
        raise NotImplementedError(f"{type(self).__name__}.fetch is not implemented")

    def expiry(self, *args: Any) -> Union[float, datetime, timedelta]:
        """When data just fetched for `args` stops being fresh.

        Return a Unix timestamp, as in cacheback (`time.time() + 60`), an aware datetime,
        or a timedelta counted from now. The default is the job's `lifetime` as a
        timedelta, so an override may fall back on `super().expiry(*args)`. Evaluated by
        the worker right after `fetch`, only when overridden: the result becomes the
        item's own lifetime (`FetchedValue.lifetime`).
        """
        return to_timedelta(self.lifetime)

    def should_missing_item_be_fetched_synchronously(self, *args: Any) -> bool:
        """Whether `get(*args)` on a miss waits for a fetch (True) or returns None.

        Evaluated by the reader and sent with every read as the Get's `fetch_on_miss`
        (as the Rust client does), so the reader's job decides, as in cacheback.
        """
        return bool(self.fetch_on_miss)

    def encode(self, data: Any) -> bytes:
        """The bytes stored for fetched or set data: canonical JSON."""
        return encode_json(data)

    def decode(self, raw: bytes) -> Any:
        """Inverse of `encode`."""
        return decode_json(raw)

    # What to call.

    def get(self, *args: Any) -> Any:
        """The cached data for `args`, fresh or stale; None on an asynchronous miss.

        Raises CachebackError if a synchronous fetch fails (UNAVAILABLE, with the
        worker's message) or the job was never registered (NOT_FOUND).
        """
        item = self.raw_get(*args)
        return item.data if item.hit else None

    def raw_get(self, *args: Any) -> Item:
        """Like `get`, but the whole answer: state, data, stored_at, expires_at, flags."""
        fetch_on_miss = bool(self.should_missing_item_be_fetched_synchronously(*args))
        item = self.client.get(self.name, encode_args(args), fetch_on_miss=fetch_on_miss)
        return item.decoded(self.decode)

    def get_many(self, arg_lists: Sequence[Sequence[Any]]) -> list[Any]:
        """`get` for many items in few calls: one entry per args list, in order.

        `tweets.get_many([("bob",), ("alice",)])`. Raises the first item's CachebackError,
        as its own `get` would; `raw_get_many` gives every item's outcome instead.
        """
        items = self.raw_get_many(arg_lists)
        for item in items:
            if isinstance(item, CachebackError):
                raise item
        return [item.data if item.hit else None for item in items if isinstance(item, Item)]

    def raw_get_many(self, arg_lists: Sequence[Sequence[Any]]) -> list[Item | CachebackError]:
        """Like `get_many`, but each item's whole answer, or its error, in order."""
        items = self.client.get_many(
            self.name,
            [encode_args(tuple(a)) for a in arg_lists],
            fetch_on_miss=[
                bool(self.should_missing_item_be_fetched_synchronously(*a)) for a in arg_lists
            ],
        )
        return [i if isinstance(i, CachebackError) else i.decoded(self.decode) for i in items]

    def set(self, *args: Any, **kwargs: Any) -> datetime:
        """Store data for `args` directly: `set(*args, data)` or `set(*args, data=...)`.

        `lifetime=` (keyword) gives this item its own lifetime. Returns when it stops
        being fresh.
        """
        key, data, lifetime = self.set_parts(args, kwargs)
        return self.client.set(self.name, key, data, lifetime=lifetime)

    def set_parts(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bytes, bytes, Optional[Seconds]]:
        """`set`'s arguments as (encoded args, encoded data, lifetime)."""
        kwargs = dict(kwargs)
        lifetime = kwargs.pop("lifetime", None)
        if self.set_data_kwarg in kwargs:
            data = kwargs.pop(self.set_data_kwarg)
        elif args:
            *rest, data = args
            args = tuple(rest)
        else:
            raise TypeError(f"{type(self).__name__}.set() needs the data to store")
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {', '.join(kwargs)}")
        return encode_args(args), self.encode(data), lifetime

    def invalidate(self, *args: Any) -> bool:
        """Mark the item stale and refresh it in the background; stale data is served
        until the refresh lands. Returns whether the item existed."""
        return self.raw_invalidate(*args).found

    def raw_invalidate(self, *args: Any) -> Invalidated:
        """Like `invalidate`, with whether a refresh was scheduled."""
        return self.client.invalidate(self.name, encode_args(args))

    def delete(self, *args: Any) -> bool:
        """Remove the item, so that the next `get` is a miss. Returns whether it existed."""
        return self.client.delete(self.name, encode_args(args))

    # Used by the worker.

    def config(self) -> pb.JobConfig:
        """The JobConfig a worker registers for this job (ValueError if the daemon would
        refuse it: a negative span, or a zero `refresh_timeout` or `cache_ttl`)."""
        for attribute in ("refresh_timeout", "cache_ttl"):
            if to_timedelta(getattr(self, attribute)) == timedelta(0):
                raise ValueError(f"{self.name}: {attribute} must be more than zero")
        config = pb.JobConfig(
            lifetime=to_duration(self.lifetime),
            refresh_timeout=to_duration(self.refresh_timeout),
            fetch_on_miss=bool(self.fetch_on_miss),
            cache_ttl=to_duration(self.cache_ttl),
        )
        if self.fetch_on_stale_threshold is not None:
            config.fetch_on_stale_threshold.CopyFrom(to_duration(self.fetch_on_stale_threshold))
        return config

    def item_lifetime(self, *args: Any) -> Optional[timedelta]:
        """The per-item lifetime to send with fetched data: from `expiry`, when overridden."""
        if not _overrides(self, "expiry"):
            return None
        expiry = self.expiry(*args)
        if isinstance(expiry, timedelta):
            return max(expiry, timedelta(0))
        if isinstance(expiry, datetime):
            return max(expiry - datetime.now(timezone.utc), timedelta(0))
        return timedelta(seconds=max(float(expiry) - time.time(), 0.0))


def _overrides(job: Job, method: str) -> bool:
    """Whether `job` (its class or the instance) replaces Job's own `method`."""
    if method in vars(job):
        return True
    return getattr(type(job), method) is not getattr(Job, method)


P = ParamSpec("P")
R = TypeVar("R")


class FunctionJob(Job):
    """The job behind a `@cacheback` function: `fetch` calls the function."""

    name = "cachebackd.job.FunctionJob"

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: Optional[str] = None,
        client: Optional[Client] = None,
        **settings: Any,
    ) -> None:
        super().__init__(client)
        self.fn = fn
        self.name = validate_name(name or _default_name(fn))
        for key, value in settings.items():
            if value is not None:
                setattr(self, key, value)

    def fetch(self, *args: Any) -> Any:
        return self.fn(*args)


class CachedFunction(Generic[P, R]):
    """What `@cacheback` returns: calling it reads through the daemon.

    `.job` is the `FunctionJob` (for `invalidate`, `delete`, `set`, and for
    `Worker.serve`), `.fn` the undecorated function. Like cacheback, a call returns None
    on an asynchronous miss.
    """

    def __init__(self, fn: Callable[P, R], job: FunctionJob) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.job = job

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Optional[R]:
        if kwargs:
            raise TypeError("cachebackd jobs take positional arguments only")
        result: Optional[R] = self.job.get(*args)
        return result

    def __repr__(self) -> str:
        return f"<cacheback function {self.job.name!r}>"


@overload
def cacheback(lifetime: Callable[P, R]) -> CachedFunction[P, R]: ...


@overload
def cacheback(
    lifetime: Optional[Seconds] = None,
    fetch_on_miss: Optional[bool] = None,
    *,
    refresh_timeout: Optional[Seconds] = None,
    fetch_on_stale_threshold: Optional[Seconds] = None,
    cache_ttl: Optional[Seconds] = None,
    max_in_flight: Optional[int] = None,
    name: Optional[str] = None,
    job_class: type[FunctionJob] = FunctionJob,
    client: Optional[Client] = None,
) -> Callable[[Callable[P, R]], CachedFunction[P, R]]: ...


def cacheback(
    lifetime: Any = None,
    fetch_on_miss: Optional[bool] = None,
    *,
    refresh_timeout: Optional[Seconds] = None,
    fetch_on_stale_threshold: Optional[Seconds] = None,
    cache_ttl: Optional[Seconds] = None,
    max_in_flight: Optional[int] = None,
    name: Optional[str] = None,
    job_class: type[FunctionJob] = FunctionJob,
    client: Optional[Client] = None,
) -> Any:
    """Cache a function through cachebackd, as cacheback's decorator does::

        @cacheback()
        def fetch_tweets(username): ...

        @cacheback(lifetime=1200, fetch_on_miss=False)
        def fetch_tweets(username): ...

    (`@cacheback` without parentheses works too.) The job is named after the function's
    module and qualified name unless `name` is given; settings left None keep the Job
    defaults. Serve it with `Worker().serve(fetch_tweets)`.
    """
    if callable(lifetime):
        return cacheback()(lifetime)

    def decorate(fn: Callable[P, R]) -> CachedFunction[P, R]:
        job = job_class(
            fn,
            name=name,
            client=client,
            lifetime=lifetime,
            fetch_on_miss=fetch_on_miss,
            refresh_timeout=refresh_timeout,
            fetch_on_stale_threshold=fetch_on_stale_threshold,
            cache_ttl=cache_ttl,
            max_in_flight=max_in_flight,
        )
        return CachedFunction(fn, job)

    return decorate
