"""The asyncio flavour: AsyncClient and a Job's methods awaited, and `async def fetch`."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Callable

import grpc
import pytest

from cachebackd import CachebackError, FetchFailed, ItemState, Job, Worker
from cachebackd.aio import AsyncClient
from conftest import Daemon
from support import WAIT, Calls


class AsyncTweets(Job):
    name = "tests.AsyncTweets"

    def __init__(self, calls: Calls) -> None:
        super().__init__()
        self.calls = calls

    async def fetch(self, username: str) -> list[str]:  # type: ignore[override]
        await asyncio.sleep(0)  # a real coroutine, awaited by the worker
        return [f"{username} tweet {self.calls.enter(username)}"]


def test_async_client_reads_and_writes_through_a_job(
    daemon: Daemon, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(AsyncTweets(calls))

    async def scenario() -> None:
        async with AsyncClient(daemon.target, timeout=WAIT) as client:
            tweets = client.job(AsyncTweets(calls))
            first = await tweets.get_item("bob")
            assert (first.state, first.data, first.fetched) == (
                ItemState.FRESH,
                ["bob tweet 1"],
                True,
            )
            assert await tweets.get("bob") == ["bob tweet 1"]
            assert await tweets.get(username="bob") == ["bob tweet 1"]  # bound: the same item
            expiry, data = await tweets.raw_get(username="bob")  # type: ignore[misc]
            assert (expiry, data) == (first.expires_at.timestamp(), ["bob tweet 1"])  # type: ignore[union-attr]
            assert await tweets.raw_get("carol") is None  # a peek: no fetch starts
            expires_at = await tweets.set("alice", ["by hand"], lifetime=60)
            alice = await tweets.get_item("alice")
            assert (alice.data, alice.expires_at) == (["by hand"], expires_at)
            assert alice.expires_at - alice.stored_at == timedelta(seconds=60)
            assert await tweets.delete("alice") is True
            assert await tweets.invalidate("alice") is False
            with pytest.raises(CachebackError) as raised:
                await client.get("tests.Unknown", b"[]")
            assert raised.value.code == grpc.StatusCode.NOT_FOUND

    asyncio.run(scenario())
    assert calls.args == [("bob",)]


class RateLimited(Exception):
    pass


class AsyncFailing(Job):
    name = "tests.AsyncFailing"

    def fetch(self, username: str) -> None:
        raise RateLimited(f"slow down, {username}")


def test_async_reads_raise_a_failed_fetch_as_the_origins_type(
    daemon: Daemon, make_worker: Callable[..., Worker]
) -> None:
    make_worker(AsyncFailing())

    async def scenario() -> None:
        async with AsyncClient(daemon.target, timeout=WAIT) as client:
            with pytest.raises(RateLimited) as raised:
                await client.job(AsyncFailing()).get(username="bob")
            assert isinstance(raised.value, FetchFailed)
            assert raised.value.remote_message == "slow down, bob"

    asyncio.run(scenario())
