"""The asyncio flavour: `AsyncClient` on grpc.aio, and a Job's reads and writes through it.

::

    from cachebackd.aio import AsyncClient

    async with AsyncClient() as client:
        tweets = await client.job(UserTweets()).get("bob")

The same `Job` classes serve both flavours: the job says how to encode and decide, the
client says how to talk. Fetches still run in a (threaded) `Worker`; a job's `fetch` may
be an `async def`, which the worker runs to completion in its fetch thread.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional, Sequence, Union

import grpc
import grpc.aio

from ._codec import Seconds, encode_args, from_timestamp
from ._daemons import Daemons, daemon_down
from ._proto import cacheback_pb2 as pb
from ._proto.cacheback_pb2_grpc import CachebackStub
from ._security import TlsConfig
from .client import (
    Connection,
    Targets,
    Invalidated,
    Item,
    ItemState,
    get_request,
    item_from_reply,
    set_request,
)
from .errors import CachebackError, NoDaemonError
from .job import Call, Job

_DEFAULT: Any = object()


class AsyncClient:
    """`Client` for asyncio code: the same target(s), credentials, timeout and methods,
    awaited; with several targets it fails over as `Client` does.

    Make it inside the running event loop (grpc.aio channels belong to one loop).
    """

    def __init__(
        self,
        target: Optional[Targets] = None,
        *,
        timeout: Optional[float] = None,
        options: Sequence[tuple[str, Any]] = (),
        token: Optional[str] = None,
        tls: Union[TlsConfig, bool, None] = None,
        allow_plaintext_token: bool = False,
    ) -> None:
        connections = Connection.resolve_all(target, options, token, tls, allow_plaintext_token)
        self.targets = [c.target for c in connections]
        self.timeout = timeout
        self.metadata = connections[0].metadata
        self.channels = [c.aio_channel() for c in connections]
        self.stubs = [CachebackStub(channel) for channel in self.channels]
        self.daemons = Daemons(self.targets)

    @property
    def target(self) -> str:
        """The target of the daemon in use."""
        return self.targets[self.daemons.current]

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel of the daemon in use."""
        return self.channels[self.daemons.current]

    @property
    def stub(self) -> CachebackStub:
        """The stub of the daemon in use (calls on it do not fail over)."""
        return self.stubs[self.daemons.current]

    def __repr__(self) -> str:
        return f"AsyncClient({','.join(self.targets)!r}, timeout={self.timeout!r})"

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def _call(self, rpc: str, request: Any, timeout: Any) -> Any:
        """See `Client._call`."""
        index = self.daemons.current
        tried: list[str] = []
        while True:
            try:
                return await getattr(self.stubs[index], rpc)(
                    request,
                    timeout=self.timeout if timeout is _DEFAULT else timeout,
                    metadata=self.metadata,
                )
            except grpc.RpcError as error:
                if len(self.daemons) == 1 or not daemon_down(error):
                    raise CachebackError.from_rpc_error(error) from None
                tried.append(self.targets[index])
                self.daemons.fail_over(index)
                if len(tried) >= len(self.daemons):
                    last = CachebackError.from_rpc_error(error)
                    raise NoDaemonError(rpc, tried, last.code, last.details) from None
                index = self.daemons.current

    async def get(
        self,
        job: str,
        args: bytes,
        *,
        fetch_on_miss: Optional[bool] = None,
        max_age: Optional[Seconds] = None,
        timeout: Any = _DEFAULT,
    ) -> Item:
        """See `Client.get`."""
        request = get_request(job, args, fetch_on_miss, max_age=max_age)
        reply = await self._call("Get", request, timeout)
        return item_from_reply(reply)

    async def peek(self, job: str, args: bytes, *, timeout: Any = _DEFAULT) -> Item:
        """See `Client.peek`."""
        request = get_request(job, args, None, peek=True)
        return item_from_reply(await self._call("Get", request, timeout))

    async def set(
        self,
        job: str,
        args: bytes,
        data: bytes,
        *,
        lifetime: Optional[Seconds] = None,
        tags: Sequence[str] = (),
        timeout: Any = _DEFAULT,
    ) -> datetime:
        """See `Client.set`."""
        request = set_request(job, args, data, lifetime, tags)
        reply = await self._call("Set", request, timeout)
        return from_timestamp(reply.expires_at)

    async def invalidate_tags(self, tags: Sequence[str], *, timeout: Any = _DEFAULT) -> datetime:
        """See `Client.invalidate_tags`."""
        request = pb.InvalidateTagsRequest(tags=list(tags))
        reply = await self._call("InvalidateTags", request, timeout)
        return from_timestamp(reply.invalidated_before)

    async def invalidate(self, job: str, args: bytes, *, timeout: Any = _DEFAULT) -> Invalidated:
        """See `Client.invalidate`."""
        request = pb.InvalidateRequest(job=job, args=args)
        reply = await self._call("Invalidate", request, timeout)
        return Invalidated(found=reply.found, refresh_scheduled=reply.refresh_scheduled)

    async def delete(self, job: str, args: bytes, *, timeout: Any = _DEFAULT) -> bool:
        """See `Client.delete`."""
        reply = await self._call("Delete", pb.DeleteRequest(job=job, args=args), timeout)
        return bool(reply.found)

    def job(self, job: Job) -> "AsyncJob":
        """`job`'s get/raw_get/set/invalidate/delete, awaited through this client."""
        return AsyncJob(self, job)


class AsyncJob:
    """A Job read and written through an AsyncClient; the same semantics as the Job's own
    methods (see `Job.get` and friends), keyword arguments and all."""

    def __init__(self, client: AsyncClient, job: Job) -> None:
        self.client = client
        self.job = job

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        """See `Job.get` (an overridden should_stale_item_be_fetched_synchronously is not
        consulted: `refresh` runs fetch, which belongs to the threaded side)."""
        kwargs, options = self.job._read_options(kwargs, ("max_age",))
        job, wire = self.job._address(args, kwargs)
        item = await self._read(job, wire, **options)
        call = Call(args, kwargs)
        if item.state is ItemState.MISS:
            return job.process_result(
                job.empty(), call=call, cache_status=job.MISS, sync_fetch=False
            )
        if item.state is ItemState.STALE:
            return job.process_result(
                item.data, call=call, cache_status=job.STALE, sync_fetch=False
            )
        status, sync = (job.MISS, True) if item.fetched else (job.HIT, None)
        return job.process_result(item.data, call=call, cache_status=status, sync_fetch=sync)

    async def get_item(self, *args: Any, **kwargs: Any) -> Item:
        """See `Job.get_item` (`max_age=`, `peek=True` included)."""
        kwargs, options = self.job._read_options(kwargs, ("max_age", "peek"))
        job, wire = self.job._address(args, kwargs)
        if options.pop("peek", False):
            item = await self.client.peek(job.name, encode_args(wire))
            return item.decoded(job.decode)
        return await self._read(job, wire, **options)

    async def raw_get(self, *args: Any, **kwargs: Any) -> Optional[Item]:
        """See `Job.raw_get`: what is stored, starting nothing."""
        job, wire = self.job._address(args, kwargs)
        item = await self.client.peek(job.name, encode_args(wire))
        return item.decoded(job.decode) if item.hit else None

    async def _read(
        self, job: Job, wire: tuple[Any, ...], max_age: Optional[Seconds] = None
    ) -> Item:
        a, k = job.call_args(wire)
        fetch_on_miss = bool(job.should_missing_item_be_fetched_synchronously(*a, **k))
        item = await self.client.get(
            job.name, encode_args(wire), fetch_on_miss=fetch_on_miss, max_age=max_age
        )
        return item.decoded(job.decode)

    async def set(self, *args: Any, **kwargs: Any) -> datetime:
        job, wire, data, lifetime = self.job.set_parts(args, kwargs)
        a, k = job.call_args(wire)
        return await self.client.set(
            job.name,
            encode_args(wire),
            job.encode(data),
            lifetime=lifetime,
            tags=list(job.tags(*a, **k)),
        )

    async def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        job, wire = self.job._address(args, kwargs)
        return (await self.client.invalidate(job.name, encode_args(wire))).found

    async def delete(self, *args: Any, **kwargs: Any) -> bool:
        job, wire = self.job._address(args, kwargs)
        return await self.client.delete(job.name, encode_args(wire))
