"""The protocol's additions from Python, through the real daemon: absences (`Absent`),
conditional refresh (`fetch_context().validator`, `NotModified`), tags and
`invalidate_tags`, `max_age` and `peek` on reads, the new job settings, and `fetch_many`
for batches."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any, Callable, Sequence

import pytest

from cachebackd import (
    Absent,
    Call,
    CachebackError,
    Client,
    Fetched,
    FetchFailed,
    ItemState,
    Job,
    NotModified,
    Worker,
    cacheback,
    fetch_context,
    invalidate_tags,
)
from support import eventually

FRESH, STALE, MISS = ItemState.FRESH, ItemState.STALE, ItemState.MISS


class Users(Job):
    """0 is nobody; every user is at version "v1"; tagged by user; 13 fails."""

    name = "tests.additions.Users"
    absent_lifetime = 60
    error_ttl = 60
    max_batch = 16

    def __init__(self, client: Client | None = None) -> None:
        super().__init__(client)
        self.contexts: list[Any] = []
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def fetch(self, user_id: int) -> Any:
        with self.lock:
            self.contexts.append(fetch_context())
        if user_id == 0:
            raise Absent()
        if user_id == 13:
            raise ConnectionError("user 13 is cursed")
        if fetch_context().validator == b"v1":
            raise NotModified()
        return Fetched(f"user {user_id}", validator=b"v1")

    def fetch_many(self, calls: Sequence[Call]) -> list[Any]:
        with self.lock:
            self.batches.append(len(calls))
        return [f"batched {call.args[0]}" for call in calls]

    def tags(self, user_id: int) -> Sequence[str]:
        return [f"user:{user_id}", "users"]


def test_absent_is_cached_and_read_as_none(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    job = Users(client)
    make_worker(job)
    assert job.get(0) is None
    item = job.get_item(0)
    assert (item.state, item.absent, item.data, item.fetched) == (FRESH, True, None, False)
    assert item.tags == ("user:0", "users")
    assert item.expires_at is not None and item.stored_at is not None
    assert item.expires_at - item.stored_at == timedelta(seconds=60)
    assert len(job.contexts) == 1, "the absence was cached: no second fetch"


def test_a_refresh_sees_the_validator_and_not_modified_keeps_the_data(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    job = Users(client)
    make_worker(job)
    first = job.get_item(7)
    assert first.data == "user 7"
    assert job.raw_invalidate(7).refresh_scheduled
    item = eventually(lambda: job.get_item(7), lambda i: i.state is FRESH)
    assert item.data == "user 7"
    assert item.stored_at is not None and first.stored_at is not None
    assert item.stored_at > first.stored_at
    reasons = [(c.reason, c.validator) for c in job.contexts]
    assert reasons == [("MISS", None), ("INVALIDATED", b"v1")]


def test_tags_invalidate_tags_peek_and_max_age(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    job = Users(client)
    make_worker(job)
    job.set(5, "set by hand")
    assert job.get_item(5, peek=True).tags == ("user:5", "users")
    missing = job.get_item(6, peek=True)
    assert (missing.state, missing.fetched) == (MISS, False)
    invalidate_tags(["user:5"], client)
    peeked = job.get_item(5, peek=True)
    assert (peeked.state, peeked.data, peeked.refresh_scheduled) == (STALE, "set by hand", False)
    assert job.raw_get(5) is not None

    job.set(8, "old")
    stored = job.get_item(8, peek=True).stored_at
    assert stored is not None
    time.sleep(0.3)  # the item must be older than the max_age below: time is the point
    assert job.get(8, max_age=60) == "old"
    assert job.get(8, max_age=0.2) == "user 8"


def test_error_ttl_spares_the_origin(client: Client, make_worker: Callable[..., Worker]) -> None:
    job = Users(client)
    make_worker(job)
    for _ in range(3):
        with pytest.raises(FetchFailed, match="user 13 is cursed"):
            job.get(13)
    assert len(job.contexts) == 1, "error_ttl: the origin was asked once"


def test_a_batch_goes_to_one_fetch_many(client: Client, make_worker: Callable[..., Worker]) -> None:
    job = Users(client)
    first = make_worker(job)
    first.stop()
    ids = list(range(100, 120))
    for user_id in ids:
        assert client.get(job.name, f"[{user_id}]".encode(), fetch_on_miss=False).state is MISS
    make_worker(job, max_in_flight=32)
    for user_id in ids:
        item = eventually(lambda: job.get_item(user_id, peek=True), lambda i: i.hit)
        assert item.data == f"batched {user_id}"
    assert job.batches == [16, 4]


def test_the_new_settings_are_registered_and_bad_ones_refused(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    @cacheback(early_refresh_beta=1.5, absent_lifetime=5, error_ttl=2, name="tests.additions.hot")
    def hot() -> int:
        return 1

    worker = make_worker(hot)
    config = worker.effective_config("tests.additions.hot")
    assert config is not None
    assert config.early_refresh_beta == 1.5
    assert config.absent_lifetime.ToTimedelta() == timedelta(seconds=5)
    assert config.error_ttl.ToTimedelta() == timedelta(seconds=2)

    class Bad(Job):
        name = "tests.additions.Bad"
        early_refresh_beta = float("nan")

        def fetch(self) -> int:
            return 1

    with pytest.raises(ValueError, match="early_refresh_beta"):
        Worker(client).serve(Bad)
    with pytest.raises(CachebackError) as refused:
        client.invalidate_tags([])
    assert "1 to 100" in str(refused.value)


def test_the_async_client_reads_with_max_age_and_peek_and_invalidates_tags(
    daemon: Any, client: Client, make_worker: Callable[..., Worker]
) -> None:
    import asyncio

    from cachebackd.aio import AsyncClient

    job = Users(client)
    make_worker(job)

    async def scenario() -> None:
        async with AsyncClient(daemon.target) as aio:
            users = aio.job(job)
            await users.set(9, "by hand")
            peeked = await users.get_item(9, peek=True)
            assert (peeked.state, peeked.tags) == (FRESH, ("user:9", "users"))
            await aio.invalidate_tags(["user:9"])
            assert (await users.get_item(9, peek=True)).state is STALE
            assert await users.get(9, max_age=0) == "user 9"

    asyncio.run(scenario())
