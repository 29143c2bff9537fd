"""`Client`: one gRPC channel to the daemon, and the four item RPCs on raw bytes.

Most code uses a `Job`, which encodes arguments and data and calls this; the client is
for tools that speak the wire format directly and for the worker, which shares its
channel.
"""

from __future__ import annotations

import enum
import os
import threading
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import grpc

from . import _wire
from ._daemons import Daemons, daemon_down, split_targets
from ._codec import Seconds, from_timestamp, to_duration
from ._near import NearCache, NearCacheStats, key_of, near_item
from ._proto import cacheback_pb2 as pb
from ._proto.cacheback_pb2_grpc import CachebackAdminStub, CachebackStub
from ._security import TlsConfig, check_plaintext_token, choose_tls, split_scheme
from .errors import CachebackError, NoDaemonError, of_status

#: The environment variable a `Client()` without a target reads.
TARGET_ENV = "CACHEBACKD_TARGET"
#: The Rust client's variable (`http://host:port` or `unix:/path`), read when TARGET_ENV
#: is unset, so that one setting serves an app's Rust and Python parts. Either may hold
#: several targets separated by commas: the daemons of a fleet.
URL_ENV = "CACHEBACKD_URL"
#: The bearer token a `Client()` without one sends (PROTOCOL.md, "Security").
TOKEN_ENV = "CACHEBACKD_TOKEN"
#: Where the daemon listens when nothing says otherwise.
DEFAULT_TARGET = "127.0.0.1:7070"
#: gRPC's default 4 MiB receive limit is exactly the daemon's data limit, too small for
#: a response carrying 4 MiB of data plus its envelope.
MAX_MESSAGE_BYTES = _wire.CLIENT_MAX_MESSAGE_BYTES

_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Reconnect promptly after a daemon restart; gRPC's own default backs off to 120 s.
    ("grpc.initial_reconnect_backoff_ms", _wire.RECONNECT_MIN_MILLIS),
    ("grpc.min_reconnect_backoff_ms", _wire.RECONNECT_MIN_MILLIS),
    ("grpc.max_reconnect_backoff_ms", _wire.RECONNECT_MAX_MILLIS),
    # Notice a dead connection under an idle worker stream.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)

_DEFAULT = object()


class ItemState(enum.Enum):
    """What a Get found: FRESH data, STALE data (a refresh is under way), or a MISS."""

    FRESH = pb.ITEM_STATE_FRESH
    STALE = pb.ITEM_STATE_STALE
    MISS = pb.ITEM_STATE_MISS


@dataclass(frozen=True)
class Item:
    """The answer to a Get: data with its state and timestamps (cacheback has no such view).

    `data` is raw bytes from `Client.get` and decoded data from `Job.raw_get`; it is
    None on a MISS, as are the timestamps.
    """

    state: ItemState
    data: Any
    stored_at: Optional[datetime]
    expires_at: Optional[datetime]
    #: An asynchronous fetch of this item was started by this call or is in flight.
    refresh_scheduled: bool
    #: This call waited for a synchronous fetch (its own or one it joined).
    fetched: bool
    #: The origin said there is no such data (a fetch raised `Absent`): `data` is None,
    #: the state FRESH or STALE as for any item.
    absent: bool = False
    #: The item's tags (see `invalidate_tags`).
    tags: tuple[str, ...] = ()

    @property
    def hit(self) -> bool:
        """True for FRESH and STALE: there is data."""
        return self.state is not ItemState.MISS

    def decoded(self, decode: Callable[[bytes], Any]) -> "Item":
        """This item with its data decoded (left None on a MISS and for an absence)."""
        return replace(self, data=decode(self.data) if self.hit and not self.absent else None)

    @property
    def expiry(self) -> Optional[float]:
        """`expires_at` as a Unix timestamp: the first half of cacheback's raw item."""
        return self.expires_at.timestamp() if self.expires_at is not None else None

    def __iter__(self) -> Iterator[Any]:
        """`expiry, data = job.raw_get(...)`, as django-cacheback's `(expiry, data)` tuple."""
        return iter((self.expiry, self.data))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Any:
        """`item[0]` is the expiry and `item[1]` the data, as in cacheback's tuple."""
        return (self.expiry, self.data)[index]


@dataclass(frozen=True)
class Invalidated:
    """The answer to an Invalidate."""

    #: The item existed; an absent item is left alone.
    found: bool
    #: A refresh (reason INVALIDATED) is scheduled or in flight.
    refresh_scheduled: bool


#: One target, several separated by commas, or a sequence of them.
Targets = Union[str, Sequence[str]]


def resolve_target(target: Optional[str]) -> str:
    """The target to dial: `target`, else CACHEBACKD_TARGET, else CACHEBACKD_URL, else
    the default; `http://host:port` is accepted for `host:port` (and `https://host:port`,
    which asks for TLS: see `Connection`)."""
    return _normalise_target(
        target or os.environ.get(TARGET_ENV) or os.environ.get(URL_ENV) or DEFAULT_TARGET
    )


def resolve_targets(targets: Optional[Targets]) -> list[str]:
    """Every target to dial, as `resolve_target` finds them, split at commas."""
    if targets is not None and not isinstance(targets, str):
        found = [t for entry in targets for t in split_targets(entry)]
        if not found:
            raise ValueError("no cachebackd target given")
        return found
    return split_targets(resolve_target(targets)) or [DEFAULT_TARGET]


@dataclass(frozen=True)
class Connection:
    """How to reach the daemon: the gRPC target, its channel options, the TLS settings
    (None: plaintext), and the call metadata carrying the token."""

    target: str
    options: list[tuple[str, Any]]
    tls: Optional[TlsConfig]
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def resolve_all(
        cls,
        targets: Optional[Targets],
        options: Sequence[tuple[str, Any]],
        token: Optional[str],
        tls: Union[TlsConfig, bool, None],
        allow_plaintext_token: bool,
    ) -> list["Connection"]:
        """One connection per target (see `resolve_targets`), each as `resolve` makes it:
        the token and TLS settings apply to every one."""
        return [
            cls.resolve(t, options, token, tls, allow_plaintext_token)
            for t in resolve_targets(targets)
        ]

    @classmethod
    def resolve(
        cls,
        target: Optional[str],
        options: Sequence[tuple[str, Any]],
        token: Optional[str],
        tls: Union[TlsConfig, bool, None],
        allow_plaintext_token: bool,
    ) -> "Connection":
        """Reads the environment for what is not given (target, CACHEBACKD_TOKEN,
        CACHEBACKD_TLS_*) and refuses a token that would travel in plaintext to another
        machine."""
        grpc_target, https = split_scheme(resolve_target(target))
        chosen = choose_tls(tls, https)
        token = token or os.environ.get(TOKEN_ENV) or None
        check_plaintext_token(grpc_target, token, chosen, allow_plaintext_token)
        extra = chosen.options() if chosen is not None else []
        return cls(
            target=grpc_target,
            options=channel_options(grpc_target, [*extra, *options]),
            tls=chosen,
            metadata=auth_metadata(token),
        )

    def channel(self) -> grpc.Channel:
        if self.tls is None:
            return grpc.insecure_channel(self.target, options=self.options)
        return grpc.secure_channel(self.target, self.tls.credentials(), options=self.options)

    def aio_channel(self) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.tls.credentials(), options=self.options)


def channel_options(target: str, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The channel options for `target`: ours, then the caller's (later ones win)."""
    defaults = list(_CHANNEL_OPTIONS)
    if target.startswith("unix:"):
        # gRPC C-core sends the socket path, percent-encoded, as :authority; the daemon's
        # HTTP/2 stack (h2) rejects that with RST_STREAM PROTOCOL_ERROR.
        defaults.append(("grpc.default_authority", "localhost"))
    return [*defaults, *options]


def get_request(
    job: str,
    args: bytes,
    fetch_on_miss: Optional[bool],
    *,
    peek: bool = False,
    max_age: Optional[Seconds] = None,
) -> pb.GetRequest:
    """A GetRequest; `fetch_on_miss` None leaves the job's setting in force; `peek` reads
    what is stored and starts nothing; `max_age` bounds the age of the data answered."""
    request = pb.GetRequest(job=job, args=args)
    if fetch_on_miss is not None:
        request.fetch_on_miss = fetch_on_miss
    if peek:
        request.peek = True
    if max_age is not None:
        request.max_age.CopyFrom(to_duration(max_age))
    return request


def auth_metadata(token: Optional[str]) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying `token` as PROTOCOL.md's bearer credential (none without)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def item_from_reply(reply: pb.GetResponse) -> Item:
    """A GetResponse as an Item (raw data; None and no timestamps on a MISS)."""
    state = ItemState(reply.state)
    hit = state is not ItemState.MISS
    return Item(
        state=state,
        data=reply.data if hit else None,
        stored_at=from_timestamp(reply.stored_at) if reply.HasField("stored_at") else None,
        expires_at=from_timestamp(reply.expires_at) if reply.HasField("expires_at") else None,
        refresh_scheduled=reply.refresh_scheduled,
        fetched=reply.fetched,
        absent=reply.absent,
        tags=tuple(reply.tags),
    )


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def set_request(
    job: str,
    args: bytes,
    data: bytes,
    lifetime: Optional[Seconds],
    tags: Sequence[str] = (),
) -> pb.SetRequest:
    """A SetRequest; `lifetime` None leaves the job's lifetime in force."""
    request = pb.SetRequest(job=job, args=args, data=data, tags=list(tags))
    if lifetime is not None:
        request.lifetime.CopyFrom(to_duration(lifetime))
    return request


def _normalise_target(target: str) -> str:
    """gRPC wants `host:port` or `unix:/path`; accept the Rust client's `http://host:port` too."""
    for scheme in ("http://", "grpc://"):
        if target.startswith(scheme):
            return target[len(scheme) :].rstrip("/")
    return target


class Client:
    """A connection to cachebackd.

    `target` is `host:port` or `unix:/path/to.sock` (or the Rust client's
    `http://host:port`); without one, the environment variable CACHEBACKD_TARGET, else
    CACHEBACKD_URL (the Rust client's), else 127.0.0.1:7070. Several targets (a list, or
    separated by commas, in the argument or the variable) are the daemons of a fleet: the
    client uses one, picked at random, and when a call finds it down (connection refused or
    broken, or the daemon draining) moves to the next and sends the call there, each daemon
    at most once (every call of a reader is idempotent); with all of them down it raises
    NoDaemonError naming every target tried. `timeout` is the deadline of every
    call in seconds; None (the default) sets none, and a synchronous fetch is then bounded
    by the job's `refresh_timeout` on the daemon's side. `token` (default: the environment
    variable CACHEBACKD_TOKEN) is sent with every call as `authorization: Bearer <token>`.
    `near_cache` (default None: off) keeps up to that many items the daemon answered FRESH
    in this process and serves them from `get` without a call while they are fresh and
    the daemon has told of no change to them (its Subscribe stream, on a thread of its
    own); a lost stream drops them all. Reads served locally are not seen by the daemon
    (no early refresh): `near_cache_stats()` counts them.

    An `https://host:port` target means TLS, verified with the CA bundle CACHEBACKD_TLS_CA
    names (else the system's roots) and presenting the client certificate of
    CACHEBACKD_TLS_CERT / CACHEBACKD_TLS_KEY (mTLS); `tls=TlsConfig(...)` gives them in code,
    `tls=True` asks for TLS on a `host:port` target. A token is never sent in plaintext to
    another machine (only to a Unix socket or a loopback address) unless
    `allow_plaintext_token=True`: that raises ValueError instead.
    Thread-safe; use one per process.
    """

    def __init__(
        self,
        target: Optional[Targets] = None,
        *,
        timeout: Optional[float] = None,
        options: Sequence[tuple[str, Any]] = (),
        token: Optional[str] = None,
        near_cache: Optional[int] = None,
        tls: Union[TlsConfig, bool, None] = None,
        allow_plaintext_token: bool = False,
    ) -> None:
        connections = Connection.resolve_all(target, options, token, tls, allow_plaintext_token)
        self.targets = [c.target for c in connections]
        self.timeout = timeout
        self.metadata = connections[0].metadata
        self.channels = [c.channel() for c in connections]
        self.stubs = [CachebackStub(channel) for channel in self.channels]
        self.daemons = Daemons(self.targets)
        self.near: Optional[NearCache] = (
            NearCache(self.stubs, self.daemons, self.metadata, near_cache)
            if near_cache is not None
            else None
        )

    @property
    def target(self) -> str:
        """The target of the daemon in use (it changes when the client fails over)."""
        return self.targets[self.daemons.current]

    @property
    def channel(self) -> grpc.Channel:
        """The channel of the daemon in use."""
        return self.channels[self.daemons.current]

    @property
    def stub(self) -> CachebackStub:
        """The Cacheback stub of the daemon in use (calls on it do not fail over)."""
        return self.stubs[self.daemons.current]

    def __repr__(self) -> str:
        return f"Client({','.join(self.targets)!r}, timeout={self.timeout!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels; calls in flight fail with CANCELLED."""
        if self.near is not None:
            self.near.close()
        for channel in self.channels:
            channel.close()

    def wait_until_ready(self, timeout: Optional[float] = None) -> None:
        """Block until the channel of the daemon in use is connected and, with a near
        cache, its stream is up (raises grpc.FutureTimeoutError)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
        if self.near is not None and not self.near.wait_until_up(timeout):
            raise grpc.FutureTimeoutError()

    def near_cache_stats(self) -> Optional[NearCacheStats]:
        """The near cache's counters (hits, misses, items, resets); None without one."""
        return self.near.stats() if self.near is not None else None

    def _call(self, rpc: str, request: Any, timeout: Any, *, admin: bool = False) -> Any:
        """Calls `rpc` on the daemon in use; if it is down, moves on and sends it to the
        next, each daemon at most once (see `_daemons`)."""
        index = self.daemons.current
        tried: list[str] = []
        while True:
            stub = CachebackAdminStub(self.channels[index]) if admin else self.stubs[index]
            try:
                return getattr(stub, rpc)(
                    request,
                    timeout=self.timeout if timeout is _DEFAULT else timeout,
                    metadata=self.metadata,
                )
            except grpc.RpcError as error:
                if len(self.daemons) == 1 or not daemon_down(error):
                    raise CachebackError.from_rpc_error(error) from None
                tried.append(self.targets[index])
                if self.daemons.fail_over(index) and self.near is not None:
                    self.near.lost_daemon()
                if len(tried) >= len(self.daemons):
                    last = CachebackError.from_rpc_error(error)
                    raise NoDaemonError(rpc, tried, last.code, last.details) from None
                index = self.daemons.current

    def get(
        self,
        job: str,
        args: bytes,
        *,
        fetch_on_miss: Optional[bool] = None,
        max_age: Optional[Seconds] = None,
        timeout: Any = _DEFAULT,
    ) -> Item:
        """Read an item; on a miss or a stale hit the daemon refreshes it as the job says.

        `fetch_on_miss` overrides the job's setting for this call. `max_age`: the caller
        accepts data at most this old (since it was fetched or set); an older item, fresh
        or stale, is fetched synchronously, and answered anyway if that fetch fails.
        """
        request = get_request(job, args, fetch_on_miss, max_age=max_age)
        near = self.near if max_age is None else None
        if near is None:
            return item_from_reply(self._call("Get", request, timeout))
        key = key_of(job, args)
        hit = near.lookup(key)
        if hit is not None:
            return replace(item_from_reply(hit.reply), refresh_scheduled=False, fetched=False)
        ticket = near.begin(key)
        try:
            reply = self._call("Get", request, timeout)
        except BaseException:
            if ticket is not None:
                near.finish(ticket, None)
            raise
        if ticket is not None:
            near.finish(ticket, near_item(reply))
        return item_from_reply(reply)

    def _forget_near(self, job: str, args: bytes) -> None:
        if self.near is not None:
            self.near.forget(key_of(job, args))

    def peek(self, job: str, args: bytes, *, timeout: Any = _DEFAULT) -> Item:
        """Read what is stored for an item and start nothing: no fetch, no refresh
        (GetRequest.peek). FRESH or STALE with the data, or MISS."""
        request = get_request(job, args, None, peek=True)
        return item_from_reply(self._call("Get", request, timeout))

    def get_many(
        self,
        job: str,
        args: Sequence[bytes],
        *,
        fetch_on_miss: Optional[Sequence[Optional[bool]]] = None,
        timeout: Any = _DEFAULT,
    ) -> list[Item | CachebackError]:
        """Many Gets of `job` in few calls (the daemon's GetMany, 1,000 a call): one result
        per args, in order, each what its own `get` would have returned, or the
        CachebackError it would have raised.

        `fetch_on_miss`, if given, holds one override (or None) per args.
        """
        overrides = list(fetch_on_miss) if fetch_on_miss is not None else [None] * len(args)
        if len(overrides) != len(args):
            raise ValueError("fetch_on_miss needs one entry per args")
        results: list[Item | CachebackError] = []
        for start in range(0, len(args), _wire.MAX_GET_MANY):
            requests = [
                get_request(job, a, f)
                for a, f in zip(
                    args[start : start + _wire.MAX_GET_MANY],
                    overrides[start : start + _wire.MAX_GET_MANY],
                )
            ]
            reply = self._call("GetMany", pb.GetManyRequest(requests=requests), timeout)
            for result in reply.results:
                if result.HasField("response"):
                    results.append(item_from_reply(result.response))
                else:
                    code = _STATUS_CODES.get(result.error.code, grpc.StatusCode.UNKNOWN)
                    results.append(of_status(code, result.error.message))
        return results

    def set(
        self,
        job: str,
        args: bytes,
        data: bytes,
        *,
        lifetime: Optional[Seconds] = None,
        tags: Sequence[str] = (),
        timeout: Any = _DEFAULT,
    ) -> datetime:
        """Store data for an item; returns when it stops being fresh.

        `lifetime` replaces the job's lifetime for this item only; `tags` are stored with
        it (see `invalidate_tags`).
        """
        self._forget_near(job, args)
        request = set_request(job, args, data, lifetime, tags)
        reply = self._call("Set", request, timeout)
        return from_timestamp(reply.expires_at)

    def invalidate_tags(self, tags: Sequence[str], *, timeout: Any = _DEFAULT) -> datetime:
        """Mark every item, of any job, that carries one of `tags` and was stored until now
        stale: each is served stale and refreshed on its next read, so a tag on a million
        items causes no stampede. 1 to 100 tags. Returns the mark (items stored at or
        before it are stale)."""
        request = pb.InvalidateTagsRequest(tags=list(tags))
        reply = self._call("InvalidateTags", request, timeout)
        return from_timestamp(reply.invalidated_before)

    def invalidate(self, job: str, args: bytes, *, timeout: Any = _DEFAULT) -> Invalidated:
        """Mark an item stale now and schedule a refresh; the stale data is served meanwhile."""
        self._forget_near(job, args)
        reply = self._call("Invalidate", pb.InvalidateRequest(job=job, args=args), timeout)
        return Invalidated(found=reply.found, refresh_scheduled=reply.refresh_scheduled)

    def delete(self, job: str, args: bytes, *, timeout: Any = _DEFAULT) -> bool:
        """Remove an item, so that the next Get is a miss; returns whether it existed."""
        self._forget_near(job, args)
        reply = self._call("Delete", pb.DeleteRequest(job=job, args=args), timeout)
        return bool(reply.found)

    def workers(self, *, timeout: Any = _DEFAULT) -> dict[str, int]:
        """Every job the daemon knows, with how many worker streams serve it now
        (CachebackAdmin.ListJobs)."""
        reply = self._call("ListJobs", pb.ListJobsRequest(), timeout, admin=True)
        return {job.name: int(job.workers) for job in reply.jobs}


_default_lock = threading.Lock()
_default_client: Optional[Client] = None
_default_settings: dict[str, Any] = {}


def default_client() -> Client:
    """The process-wide client that jobs and workers use when given none.

    Made on first use from the settings given to `configure_default_client`, else the
    environment (CACHEBACKD_TARGET, CACHEBACKD_URL, CACHEBACKD_TOKEN), so that
    `UserTweets().get("bob")` works with no setup, as in cacheback. Made lazily, so that
    a forking server's children each make their own (gRPC channels do not survive a fork).
    """
    global _default_client
    with _default_lock:
        if _default_client is None:
            _default_client = Client(**_default_settings)
        return _default_client


def set_default_client(client: Optional[Client]) -> None:
    """Replace the process-wide client (None: make a new one on next use)."""
    global _default_client
    with _default_lock:
        _default_client = client


def configure_default_client(
    target: Optional[Targets] = None, *, token: Optional[str] = None, timeout: Optional[float] = None
) -> None:
    """What the process-wide client is made with on its next first use (None: from the
    environment); drops the current one. Django's app config calls it with CACHEBACKD."""
    global _default_client, _default_settings
    with _default_lock:
        _default_settings = {"target": target, "token": token, "timeout": timeout}
        _default_client = None
