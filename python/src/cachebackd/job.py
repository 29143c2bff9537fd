"""`Job` and `@cacheback`: django-cacheback's API, with the daemon in place of the cache and
the task queue.

A job says how to fetch some slow data (`fetch`) and how long it stays fresh
(`lifetime`). Readers call `get`; a `Worker` in the app server runs `fetch` when the
daemon asks. The class attributes become the job's `JobConfig` when a worker registers
it; `expiry` and `should_missing_item_be_fetched_synchronously` are evaluated here, on
the client side, and travel as `FetchedValue.lifetime` and `GetRequest.fetch_on_miss`.

Every public member of cacheback's `Job` is here with its signature and meaning. The
arguments of a call go through the same steps as in cacheback: `prepare_args` and
`prepare_kwargs`, then (new) binding to `fetch`'s signature, so that `get("bob")` and
`get(username="bob")` are one item; the bound positional arguments, canonically encoded
(PROTOCOL.md, "Client conventions"), address the item, so readers in other languages
share it. The hooks (`fetch`, `expiry`, `should_*`, `key`, `refresh`, ...) receive the
bound arguments.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import math
import re
import time
from datetime import datetime, timedelta, timezone
from typing import (
    Any,
    Callable,
    Generic,
    NamedTuple,
    Optional,
    ParamSpec,
    Sequence,
    TypeVar,
    Union,
    overload,
)

from . import _wire
from ._codec import (
    CODECS,
    Seconds,
    decode_data,
    encode_args,
    encode_data,
    to_duration,
    to_timedelta,
)
from ._proto import cacheback_pb2 as pb
from .client import Client, Invalidated, Item, ItemState, default_client
from .errors import CachebackError, warn_once

#: Job names the daemon accepts (PROTOCOL.md, "Errors").
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

#: Why cacheback's `cache_alias` and `task_options` mean nothing here.
_NO_CACHE_ALIAS = "the daemon is the cache (there is no Django cache to choose)"
_NO_TASK_OPTIONS = "refreshes run in the cachebackd worker, not in a Celery or RQ task"


def validate_name(name: str) -> str:
    """Return `name` if the daemon accepts it as a job name, else raise ValueError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid job name {name!r}: 1 to 128 characters of A-Z a-z 0-9 _ . : - "
            "(set `name` on the job, or pass name= to @cacheback)"
        )
    return name


def validate_codec(codec: str, job: str) -> str:
    """Return `codec` if it is one of CODECS, else raise ValueError."""
    if codec not in CODECS:
        raise ValueError(f"{job}: codec must be one of {', '.join(CODECS)}, not {codec!r}")
    return codec


def _default_name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _seconds(span: Seconds) -> float:
    return to_timedelta(span).total_seconds()


class Call(NamedTuple):
    """The arguments a `get` was called with, as cacheback passes them to `process_result`."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def fetch_signature(
    fetch: Callable[..., Any], owner: str, *, method: bool = False
) -> inspect.Signature:
    """The signature that `get`'s arguments are bound to, or TypeError if `fetch` has a
    keyword-only parameter or `**kwargs`: an item is addressed by the canonical JSON
    array of its positional arguments, shared with readers in other languages, and such a
    parameter has no position in it."""
    signature = inspect.signature(fetch)
    if method:  # a function defined in a class: its first parameter is self
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    for parameter in signature.parameters.values():
        if parameter.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD):
            shown = (
                f"**{parameter.name}"
                if parameter.kind is inspect.Parameter.VAR_KEYWORD
                else parameter.name
            )
            raise TypeError(
                f"{owner} takes {'keyword-only parameter ' if shown[0] != '*' else ''}{shown}: "
                "cachebackd addresses an item by the JSON array of fetch's positional "
                "arguments (so that readers in other languages find the same item), and a "
                "keyword-only parameter or **kwargs has no position in it; make it a plain "
                "parameter, or override wire_args and call_args"
            )
    return signature


class Job:
    """A cached, background-refreshed computation, as in django-cacheback.

    Subclass it, override `fetch`, and set class attributes to tune it::

        class UserTweets(Job):
            lifetime = 600
            def fetch(self, username):
                return slow_fetch(username)

        tweets = UserTweets().get("bob")     # or .get(username="bob"): the same item

    The job's name is `module.ClassName` unless the class sets `name`. Spans are seconds
    (int or float) or timedeltas. Arguments must be JSON-serialisable (`prepare_args`
    may turn others into such values); data is JSON by default, or pickled with
    `codec = "pickle"` for a job that only Python reads (see `codec`).
    """

    #: The job's name on the daemon: `module.ClassName` unless set.
    name: str = "cachebackd.job.Job"
    #: How long fetched data is fresh: cacheback's default, 10 minutes, so that a ported
    #: job keeps its behaviour (the protocol's and the Rust client's default is 300 s).
    lifetime: Seconds = 600
    #: How long one fetch may take before it counts as lost; also the fetch deadline.
    refresh_timeout: Seconds = _wire.JOB_REFRESH_TIMEOUT_SECS
    #: A miss waits for a synchronous fetch (True) or returns `empty()` at once and fills
    #: asynchronously (False).
    fetch_on_miss: bool = _wire.JOB_FETCH_ON_MISS
    #: If a stale item is older than this (since it was fetched or set), `get` fetches
    #: synchronously instead of serving it (None: never). cacheback's arithmetic, run by
    #: the daemon.
    fetch_on_stale_threshold: Optional[Seconds] = None
    #: Hard limit: an item older than this (since it was stored) is never served.
    cache_ttl: Seconds = timedelta(seconds=_wire.JOB_CACHE_TTL_SECS)
    #: How many fetches of this job a worker runs at once.
    max_in_flight: int = _wire.DEFAULT_MAX_IN_FLIGHT
    #: XFetch early refresh (> 0; 1.0 is the paper's optimum, larger refreshes earlier):
    #: a read of a fresh item may start one refresh before it expires, likelier as expiry
    #: nears and the longer its last fetch took, so that a hot item never turns stale.
    #: None: off.
    early_refresh_beta: Optional[float] = None
    #: How long an absence (a fetch that raised `Absent`) stays fresh (None: `lifetime`).
    absent_lifetime: Optional[Seconds] = None
    #: How long a failed fetch of a missing item is remembered: meanwhile a `get` that
    #: would wait for a fetch of it fails at once with the same error, sparing a dead
    #: origin (None: off).
    error_ttl: Optional[Seconds] = None
    #: Most fetches the daemon hands a worker in one message, answered by one
    #: `fetch_many` (one origin call: SQL `IN`, a multi-get API). 1: one at a time.
    max_batch: int = 1
    #: The keyword that `set` takes the data from (cacheback's `set_data_kwarg`).
    set_data_kwarg: str = "data"
    #: How data is stored: "json" (the default: any language reads it) or "pickle" (any
    #: Python value: datetimes, Decimals, tuples, model instances), for jobs that only
    #: Python reads. Pickle is not the default because unpickling runs code that the data
    #: names: every reader of a pickle job trusts the job's workers, and anything that can
    #: Set its items, with code execution.
    codec: str = "json"
    #: django-cacheback's; accepted and ignored (with a warning): the daemon is the cache.
    cache_alias: Optional[str] = None
    #: django-cacheback's; accepted and ignored (with a warning): there is no task queue.
    task_options: Optional[dict[str, Any]] = None

    #: Cache statuses given to `process_result`, as in cacheback.
    MISS, HIT, STALE = range(3)

    #: The signature `get`'s arguments are bound to (None: fetch is not overridden, so
    #: arguments are taken positionally as given).
    _fetch_signature: Optional[inspect.Signature] = None
    #: The signature is set per instance (a FunctionJob's is its function's).
    _signature_per_instance = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name") is None:
            cls.name = _default_name(cls)
        validate_name(cls.name)
        validate_codec(cls.codec, cls.name)
        if (
            "fetch" in cls.__dict__
            and cls.wire_args is Job.wire_args
            and not cls._signature_per_instance
        ):
            cls._fetch_signature = fetch_signature(
                cls.fetch, f"{cls.__qualname__}.fetch", method=True
            )
        for setting, why in (("cache_alias", _NO_CACHE_ALIAS), ("task_options", _NO_TASK_OPTIONS)):
            if cls.__dict__.get(setting) is not None:
                warn_once(cls.name, setting, why)
        if "key" in cls.__dict__:
            warn_once(
                cls.name,
                "an overridden key()",
                "an item is addressed by its job's name and the canonical JSON of its "
                "arguments, which a worker in any language decodes; normalise arguments in "
                "prepare_args instead",
            )
        if "timeout" in cls.__dict__:
            warn_once(
                cls.name,
                "an overridden timeout()",
                "the daemon bounds every fetch of the job by its refresh_timeout",
            )

    def __init__(self, client: Optional[Client] = None) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__} job {self.name!r}>"

    @property
    def client(self) -> Client:
        """The client given to the constructor, else the process-wide default."""
        return getattr(self, "_client", None) or default_client()

    @property
    def class_path(self) -> str:
        """`module.ClassName` of the job's class, as in cacheback (the default `name`
        uses the qualified name instead)."""
        return f"{type(self).__module__}.{type(self).__name__}"

    def get_init_args(self) -> tuple[Any, ...]:
        """The args to pass to `__init__` to rebuild this job (cacheback's, for its Celery
        task). Kept for parity: cachebackd never rebuilds a job, the worker serves the
        instance it was given."""
        return ()

    def get_init_kwargs(self) -> dict[str, Any]:
        """The kwargs to pass to `__init__` to rebuild this job (see get_init_args)."""
        return {}

    # What to override.

    def fetch(self, *args: Any, **kwargs: Any) -> Any:
        """Compute the data for the arguments; runs in a worker. Must be overridden."""
        raise NotImplementedError(f"{type(self).__name__}.fetch is not implemented")

    def fetch_many(self, calls: Sequence[Call]) -> list[Any]:
        """Fetch many items at once, when the daemon hands the worker a batch
        (`max_batch` > 1): one result per call, in order, each what `fetch` would return
        (data, or a `Fetched`) or the exception it would raise (`Absent`, or any error,
        which fails that item alone). By default each runs as its own `fetch`; override it
        to make one origin call for the whole batch."""
        results: list[Any] = []
        for call in calls:
            try:
                result = self.fetch(*call.args, **call.kwargs)
                if inspect.isawaitable(result):
                    result = asyncio.run(_awaited(result))
                results.append(result)
            except Exception as error:  # noqa: BLE001 - reported for that item alone
                results.append(error)
        return results

    def tags(self, *args: Any, **kwargs: Any) -> Sequence[str]:
        """The item's tags (see `cachebackd.invalidate_tags`), stored with what a fetch or
        `set` stores unless the fetch returns its own in a `Fetched`: at most 32, each
        spelled like a job name. Default: none."""
        return ()

    def expiry(self, *args: Any, **kwargs: Any) -> Union[float, datetime, timedelta]:
        """When data just fetched (or set) for the arguments stops being fresh.

        As in cacheback, a Unix timestamp (`time.time() + 60`); an aware datetime or a
        timedelta from now also do. Evaluated by the worker right after `fetch` and by
        `set`, only when overridden: the result becomes the item's own lifetime
        (`FetchedValue.lifetime`, `SetRequest.lifetime`).
        """
        return time.time() + _seconds(self.lifetime)

    def timeout(self, *args: Any, **kwargs: Any) -> float:
        """When a refresh started now counts as lost: `time.time() + refresh_timeout`.
        The daemon applies the job's `refresh_timeout` itself; an override is ignored."""
        return time.time() + _seconds(self.refresh_timeout)

    def should_missing_item_be_fetched_synchronously(self, *args: Any, **kwargs: Any) -> bool:
        """Whether `get` on a miss waits for a fetch (True) or returns `empty()`.

        Evaluated by the reader and sent with every read as the Get's `fetch_on_miss`
        (as the Rust client does), so the reader's job decides, as in cacheback.
        """
        return bool(self.fetch_on_miss)

    def should_stale_item_be_fetched_synchronously(
        self, delta: float, *args: Any, **kwargs: Any
    ) -> bool:
        """Whether `get` on a stale hit, `delta` seconds past its expiry, refreshes
        synchronously (True) or serves the stale data (False), as in cacheback.

        The default is the daemon's own rule for `fetch_on_stale_threshold` (older than
        it since fetched or set, which for an item past its own lifetime is stale for
        longer than `fetch_on_stale_threshold - lifetime`), applied there with no extra
        call. An override is evaluated by the reader on a STALE answer, and True runs
        `refresh` here.
        """
        if self.fetch_on_stale_threshold is None:
            return False
        return delta > _seconds(self.fetch_on_stale_threshold) - _seconds(self.lifetime)

    def empty(self) -> Any:
        """What `get` returns on a miss that is filled asynchronously (cacheback: None)."""
        return None

    def process_result(
        self, result: Any, call: Call, cache_status: int, sync_fetch: Optional[bool] = None
    ) -> Any:
        """Transform the data right before `get` returns it, as in cacheback.

        `call` holds `get`'s own args and kwargs; `cache_status` is MISS, HIT or STALE;
        `sync_fetch` is True when a synchronous fetch ran, False when none did on a miss or
        a stale hit, None on a fresh hit. A synchronous fetch of a stale item past
        `fetch_on_stale_threshold` is done by the daemon and reported as MISS (the daemon
        answers it as fresh data that it fetched).
        """
        return result

    def prepare_args(self, *args: Any) -> tuple[Any, ...]:
        """Turn `get`'s positional arguments into JSON-serialisable ones (cacheback made
        them picklable here): e.g. a model instance into its primary key."""
        return args

    def prepare_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        """The same for keyword arguments."""
        return kwargs

    def key(self, *args: Any, **kwargs: Any) -> str:
        """The item's key within the job: the canonical JSON of the bound arguments, the
        `args` bytes sent to the daemon (an override is ignored, with a warning)."""
        return encode_args(self.wire_args(*args, **kwargs)).decode()

    def encode(self, data: Any) -> bytes:
        """The bytes stored for fetched or set data, by the job's `codec`."""
        return encode_data(self.codec, data)

    def decode(self, raw: bytes) -> Any:
        """Inverse of `encode` (CodecError for data the codec cannot read)."""
        return decode_data(self.codec, raw)

    # How arguments travel (override both, or neither).

    def wire_args(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """The positional arguments that address the item and that the worker's `fetch`
        receives: the prepared arguments bound to `fetch`'s signature, defaults applied."""
        signature = self._fetch_signature
        if signature is None:
            if kwargs:
                raise TypeError(
                    f"{self!r} defines no fetch to bind keyword arguments to: pass them "
                    "positionally, or define fetch"
                )
            return tuple(args)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return tuple(bound.args)

    def call_args(self, wire: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Inverse of `wire_args`: how `fetch` and the hooks are called for an item."""
        return tuple(wire), {}

    # What to call.

    def get(self, *args: Any, **kwargs: Any) -> Any:
        """The cached data, fresh or stale; `empty()` on an asynchronous miss; passed
        through `process_result`.

        Raises FetchFailed if a synchronous fetch fails (an instance of the origin's
        exception type too, when it is importable here), CachebackError with NOT_FOUND if
        no worker ever registered the job.

        `max_age=` (a keyword, unless fetch has a parameter of that name): data at most
        this old (since it was fetched or set); an older item is fetched synchronously,
        and answered anyway if that fetch fails. A stored absence (a fetch that raised
        `Absent`) reads as None.
        """
        kwargs, options = self._read_options(kwargs, ("max_age",))
        job, wire = self._address(args, kwargs)
        return job._result(job._read(wire, **options), wire, Call(args, kwargs))

    def get_item(self, *args: Any, **kwargs: Any) -> Item:
        """Like `get`, but the daemon's whole answer: state, data, stored_at, expires_at,
        refresh_scheduled, fetched, absent, tags (no `process_result`, no stale override).

        Takes `max_age=` as `get` does, and `peek=True` to read what is stored and start
        nothing (as `raw_get`, but the whole answer, a miss included).
        """
        kwargs, options = self._read_options(kwargs, ("max_age", "peek"))
        job, wire = self._address(args, kwargs)
        if options.pop("peek", False):
            return job.client.peek(job.name, encode_args(wire)).decoded(job.decode)
        return job._read(wire, **options)

    def raw_get(self, *args: Any, **kwargs: Any) -> Optional[Item]:
        """What is stored, without side effects (no fetch, no refresh), as in cacheback:
        None if nothing is, else the Item, which unpacks as cacheback's `(expiry, data)`."""
        job, wire = self._address(args, kwargs)
        item = job.client.peek(job.name, encode_args(wire))
        return item.decoded(job.decode) if item.hit else None

    def get_many(self, arg_lists: Sequence[Sequence[Any]]) -> list[Any]:
        """`get` for many items in few calls: one entry per args list, in order.

        `tweets.get_many([("bob",), ("alice",)])`. Raises the first item's CachebackError,
        as its own `get` would; `raw_get_many` gives every item's outcome instead.
        """
        items = self.raw_get_many(arg_lists)
        for item in items:
            if isinstance(item, CachebackError):
                raise item
        return [item.data if item.hit else self.empty() for item in items if isinstance(item, Item)]

    def raw_get_many(self, arg_lists: Sequence[Sequence[Any]]) -> list[Item | CachebackError]:
        """Like `get_many`, but each item's whole answer, or its error, in order."""
        addressed = [self._address(tuple(a), {}) for a in arg_lists]
        decisions = []
        for job, wire in addressed:
            a, k = job.call_args(wire)
            decisions.append(bool(job.should_missing_item_be_fetched_synchronously(*a, **k)))
        name = addressed[0][0].name if addressed else self.name
        items = self.client.get_many(
            name, [encode_args(wire) for _, wire in addressed], fetch_on_miss=decisions
        )
        return [i if isinstance(i, CachebackError) else i.decoded(self.decode) for i in items]

    def set(self, *args: Any, **kwargs: Any) -> datetime:
        """Store data directly, as in cacheback: `set(*args, data)` or
        `set(*args, data=...)` (the keyword is `set_data_kwarg`).

        The item's lifetime comes from an overridden `expiry`, else the job's; `lifetime=`
        (a keyword, unless fetch has a parameter of that name) gives one directly.
        Returns when the item stops being fresh.
        """
        job, wire, data, lifetime = self.set_parts(args, kwargs)
        a, k = job.call_args(wire)
        tags = list(job.tags(*a, **k))
        # Only when there are any: a duck-typed client without tags keeps working.
        extra: dict[str, Any] = {"tags": tags} if tags else {}
        return job.client.set(
            job.name, encode_args(wire), job.encode(data), lifetime=lifetime, **extra
        )

    def set_parts(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple["Job", tuple[Any, ...], Any, Optional[Seconds]]:
        """`set`'s arguments as (job, bound arguments, data, lifetime)."""
        kwargs = dict(kwargs)
        if self.set_data_kwarg in kwargs:
            data = kwargs.pop(self.set_data_kwarg)
        elif args:
            *rest, data = args
            args = tuple(rest)
        else:
            raise TypeError(f"{type(self).__name__}.set() needs the data to store")
        lifetime = None
        if "lifetime" in kwargs and not self._binds("lifetime"):
            lifetime = kwargs.pop("lifetime")
        job, wire = self._address(args, kwargs)
        if lifetime is None:
            a, k = job.call_args(wire)
            lifetime = job.item_lifetime(*a, **k)
        return job, wire, data, lifetime

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Mark the item stale and refresh it in the background; stale data is served
        until the refresh lands. Returns whether the item existed."""
        return self.raw_invalidate(*args, **kwargs).found

    def raw_invalidate(self, *args: Any, **kwargs: Any) -> Invalidated:
        """Like `invalidate`, with whether a refresh was scheduled."""
        job, wire = self._address(args, kwargs)
        return job.client.invalidate(job.name, encode_args(wire))

    def delete(self, *args: Any, **kwargs: Any) -> bool:
        """Remove the item, so that the next `get` is a miss. Returns whether it existed."""
        job, wire = self._address(args, kwargs)
        return job.client.delete(job.name, encode_args(wire))

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        """Fetch SYNCHRONOUSLY, here, and store the result, as in cacheback: returns the
        fetched data; an exception of `fetch` propagates as it is. (Arguments as the
        hooks get them: for a FunctionJob, without the function.)"""
        wire = self.wire_args(*args, **kwargs)
        a, k = self.call_args(wire)
        result = self.fetch(*a, **k)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        self.client.set(
            self.name, encode_args(wire), self.encode(result), lifetime=self.item_lifetime(*a, **k)
        )
        return result

    def async_refresh(self, *args: Any, **kwargs: Any) -> None:
        """Have the item refreshed in the background by a worker (cacheback queued a
        task): a stored item is invalidated (served stale until the refresh lands), a
        missing one is scheduled to be filled."""
        wire = self.wire_args(*args, **kwargs)
        key = encode_args(wire)
        if not self.client.invalidate(self.name, key).found:
            self.client.get(self.name, key, fetch_on_miss=False)

    def store(self, key: str, expiry: Union[float, datetime, timedelta], data: Any) -> datetime:
        """Store `data` under `key` (from `key()`) until `expiry`, as cacheback's helper."""
        return self.client.set(
            self.name, key.encode(), self.encode(data), lifetime=_lifetime_until(expiry)
        )

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
        if self.early_refresh_beta is not None:
            beta = float(self.early_refresh_beta)
            if not (math.isfinite(beta) and beta > 0):
                raise ValueError(
                    f"{self.name}: early_refresh_beta must be greater than 0 and finite"
                )
            config.early_refresh_beta = beta
        if self.absent_lifetime is not None:
            config.absent_lifetime.CopyFrom(to_duration(self.absent_lifetime))
        if self.error_ttl is not None:
            if to_timedelta(self.error_ttl) == timedelta(0):
                raise ValueError(f"{self.name}: error_ttl must be more than zero")
            config.error_ttl.CopyFrom(to_duration(self.error_ttl))
        return config

    def item_lifetime(self, *args: Any, **kwargs: Any) -> Optional[timedelta]:
        """The per-item lifetime to send with fetched or set data: from `expiry`, when
        overridden."""
        if not _overrides(self, "expiry"):
            return None
        return _lifetime_until(self.expiry(*args, **kwargs))

    # The steps of a call.

    def _address(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple["Job", tuple[Any, ...]]:
        """The job a call is about (a FunctionJob picks one per function) and the item's
        bound arguments."""
        prepared = self.prepare_args(*args)
        return self, self.wire_args(*prepared, **self.prepare_kwargs(**kwargs))

    def _binds(self, parameter: str) -> bool:
        signature = self._fetch_signature
        return signature is not None and parameter in signature.parameters

    def _read_options(
        self, kwargs: dict[str, Any], names: Sequence[str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Splits a read's own keywords (`max_age`, `peek`) from fetch's arguments: a
        keyword that fetch has a parameter of the same name for stays fetch's."""
        kwargs = dict(kwargs)
        options = {n: kwargs.pop(n) for n in names if n in kwargs and not self._binds(n)}
        return kwargs, options

    def _read(self, wire: tuple[Any, ...], max_age: Optional[Seconds] = None) -> Item:
        a, k = self.call_args(wire)
        fetch_on_miss = bool(self.should_missing_item_be_fetched_synchronously(*a, **k))
        item = self.client.get(
            self.name, encode_args(wire), fetch_on_miss=fetch_on_miss, max_age=max_age
        )
        return item.decoded(self.decode)

    def _result(self, item: Item, wire: tuple[Any, ...], call: Call) -> Any:
        if item.state is ItemState.MISS:
            return self.process_result(
                self.empty(), call=call, cache_status=self.MISS, sync_fetch=False
            )
        if item.state is ItemState.STALE:
            if _overrides(self, "should_stale_item_be_fetched_synchronously") and item.expires_at:
                a, k = self.call_args(wire)
                delta = time.time() - item.expires_at.timestamp()
                if self.should_stale_item_be_fetched_synchronously(delta, *a, **k):
                    data = self.refresh(*a, **k)
                    return self.process_result(
                        data, call=call, cache_status=self.STALE, sync_fetch=True
                    )
            return self.process_result(
                item.data, call=call, cache_status=self.STALE, sync_fetch=False
            )
        if item.fetched:
            return self.process_result(
                item.data, call=call, cache_status=self.MISS, sync_fetch=True
            )
        return self.process_result(item.data, call=call, cache_status=self.HIT, sync_fetch=None)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _lifetime_until(expiry: Union[float, datetime, timedelta]) -> timedelta:
    """A span from now until `expiry` (a Unix timestamp, an aware datetime, or a span)."""
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


def _function_of(fn: Any) -> Any:
    """The plain function behind `fn` (a @cacheback function has it as `.fn`)."""
    return getattr(fn, "fn", fn)


class FunctionJob(Job):
    """Job for executing a function and caching its result, as cacheback's.

    The decorated function's job is bound to it: `fetch_tweets.job.get(fetch_tweets,
    "bob")` (cacheback's convention: the function comes first in every call on the job).
    An unbound `FunctionJob(lifetime=...)` caches any function it is called with, each as
    its own job named after the function: `FunctionJob().get(fetch_tweets, "bob")`.
    """

    name = "cachebackd.job.FunctionJob"
    _signature_per_instance = True

    def __init__(
        self,
        lifetime: Optional[Seconds] = None,
        fetch_on_miss: Optional[bool] = None,
        cache_alias: Optional[str] = None,
        task_options: Optional[dict[str, Any]] = None,
        set_data_kwarg: Optional[str] = None,
        *,
        fn: Optional[Callable[..., Any]] = None,
        name: Optional[str] = None,
        client: Optional[Client] = None,
        refresh_timeout: Optional[Seconds] = None,
        fetch_on_stale_threshold: Optional[Seconds] = None,
        cache_ttl: Optional[Seconds] = None,
        max_in_flight: Optional[int] = None,
        codec: Optional[str] = None,
        early_refresh_beta: Optional[float] = None,
        absent_lifetime: Optional[Seconds] = None,
        error_ttl: Optional[Seconds] = None,
        max_batch: Optional[int] = None,
    ) -> None:
        super().__init__(client)
        settings: dict[str, Any] = {
            "lifetime": lifetime,
            "fetch_on_miss": fetch_on_miss,
            "set_data_kwarg": set_data_kwarg,
            "refresh_timeout": refresh_timeout,
            "fetch_on_stale_threshold": fetch_on_stale_threshold,
            "cache_ttl": cache_ttl,
            "max_in_flight": max_in_flight,
            "codec": codec,
            "early_refresh_beta": early_refresh_beta,
            "absent_lifetime": absent_lifetime,
            "error_ttl": error_ttl,
            "max_batch": max_batch,
        }
        for key, value in settings.items():
            if value is not None:
                setattr(self, key, value)
        self._explicit_name = name
        self.fn: Optional[Callable[..., Any]] = None
        self._bound: dict[Any, FunctionJob] = {}
        if name is not None:
            self.name = validate_name(name)
        validate_codec(self.codec, self.name)
        self.cache_alias, self.task_options = cache_alias, task_options
        if fn is not None:
            self._bind(fn)

    def __repr__(self) -> str:
        return f"<FunctionJob {self.name!r}>" if self.fn is not None else "<FunctionJob (unbound)>"

    def _bind(self, fn: Callable[..., Any]) -> None:
        self.fn = _function_of(fn)
        if self._explicit_name is None:
            self.name = validate_name(_default_name(self.fn))
        self._fetch_signature = fetch_signature(self.fn, f"{self.name}()")
        for setting, why in (("cache_alias", _NO_CACHE_ALIAS), ("task_options", _NO_TASK_OPTIONS)):
            if getattr(self, setting) is not None:
                warn_once(self.name, setting, why, stacklevel=5)

    def for_function(self, fn: Callable[..., Any]) -> "FunctionJob":
        """This job's settings, bound to `fn` (made once per function)."""
        target = _function_of(fn)
        if self.fn is not None:
            if target is not self.fn:
                raise TypeError(f"{self!r} caches {self.fn.__qualname__}, not {target!r}")
            return self
        bound = self._bound.get(target)
        if bound is None:
            bound = copy.copy(self)
            bound._bound = {}
            bound._bind(target)
            self._bound[target] = bound
        return bound

    def get_init_kwargs(self) -> dict[str, Any]:
        return {"lifetime": self.lifetime, "cache_alias": self.cache_alias}

    def prepare_args(self, *args: Any) -> tuple[Any, ...]:
        """Drop the function that comes first (it names the job, so it is not part of the
        item's arguments, and a Rust reader of the function's job sends none)."""
        if not args or not callable(args[0]):
            raise TypeError(
                f"{self!r}: pass the function first, as in django-cacheback: "
                "fetch_tweets.job.invalidate(fetch_tweets, 'bob')"
            )
        return args[1:]

    def fetch(self, *args: Any, **kwargs: Any) -> Any:
        if self.fn is None:
            raise TypeError(f"{self!r} has no function to run")
        return self.fn(*args, **kwargs)

    def _address(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Job, tuple[Any, ...]]:
        if not args or not callable(args[0]):
            self.prepare_args(*args)  # raises the message that says how to call it
        job = self.for_function(args[0])
        return Job._address(job, args, kwargs)


class CachedFunction(Generic[P, R]):
    """What `@cacheback` returns: calling it reads through the daemon.

    `.job` is the `FunctionJob` (for `invalidate`, `delete`, `set`, `raw_get`, each with
    the function first, as in cacheback, and for `Worker.serve`), `.fn` the undecorated
    function. Like cacheback, a call returns the job's `empty()` (None) on an
    asynchronous miss.
    """

    def __init__(self, fn: Callable[P, R], job: FunctionJob) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.job = job.for_function(fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Optional[R]:
        result: Optional[R] = self.job.get(self.fn, *args, **kwargs)
        return result

    def __repr__(self) -> str:
        return f"<cacheback function {self.job.name!r}>"


@overload
def cacheback(lifetime: Callable[P, R]) -> CachedFunction[P, R]: ...


@overload
def cacheback(
    lifetime: Optional[Seconds] = None,
    fetch_on_miss: Optional[bool] = None,
    cache_alias: Optional[str] = None,
    job_class: Optional[type[FunctionJob]] = None,
    task_options: Optional[dict[str, Any]] = None,
    **job_class_kwargs: Any,
) -> Callable[[Callable[P, R]], CachedFunction[P, R]]: ...


def cacheback(
    lifetime: Any = None,
    fetch_on_miss: Optional[bool] = None,
    cache_alias: Optional[str] = None,
    job_class: Optional[type[FunctionJob]] = None,
    task_options: Optional[dict[str, Any]] = None,
    **job_class_kwargs: Any,
) -> Any:
    """Cache a function through cachebackd, as cacheback's decorator does::

        @cacheback()
        def fetch_tweets(username): ...

        @cacheback(lifetime=1200, fetch_on_miss=False)
        def fetch_tweets(username): ...

    The signature is cacheback's: `job_class_kwargs` go to the job class (FunctionJob
    takes `set_data_kwarg`, and here also `name`, `client`, `codec`, `refresh_timeout`,
    `fetch_on_stale_threshold`, `cache_ttl`, `max_in_flight`, `early_refresh_beta`,
    `absent_lifetime`, `error_ttl`, `max_batch`); `cache_alias` and
    `task_options` are accepted and ignored, with a warning. `@cacheback` without
    parentheses works too. The job is named after the function's module and qualified
    name unless `name` is given. Serve it with `Worker().serve(fetch_tweets)`.
    """
    if callable(lifetime):
        return cacheback()(lifetime)
    job = (job_class or FunctionJob)(
        lifetime=lifetime,
        fetch_on_miss=fetch_on_miss,
        cache_alias=cache_alias,
        task_options=task_options,
        **job_class_kwargs,
    )

    def decorate(fn: Callable[P, R]) -> CachedFunction[P, R]:
        return CachedFunction(fn, job)

    return decorate
