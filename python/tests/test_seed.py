"""Every behaviour the seed's text states, through the real daemon.

The jobs mirror the seed's examples; their fetches record their calls (see
support.Calls) and can be held at a gate, so each test knows exactly how many fetches
ran and what state a read must see.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any, Callable

import pytest

from cachebackd import Client, ItemState, Job, Worker, cacheback
from support import WAIT, Calls, Tweets, eventually

FRESH, STALE, MISS = ItemState.FRESH, ItemState.STALE, ItemState.MISS


VIPS = {"someone-important"}


class VipTweets(Tweets):
    """The seed's UserTweets with class attributes and both decisions overridden."""

    name = "tests.VipTweets"
    lifetime = 600
    fetch_on_miss = False

    def expiry(self, username: str) -> Any:
        if username in VIPS:
            return time.time() + 60  # cacheback's form: a Unix timestamp
        if username == "celebrity":
            return timedelta(seconds=90)
        return super().expiry(username)

    def should_missing_item_be_fetched_synchronously(self, username: str) -> bool:
        return username in VIPS


def test_default_job_fetches_synchronously_on_a_miss_then_serves_the_cache(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Tweets(calls))
    tweets = Tweets(calls, client)
    first = tweets.get_item("bob")
    assert (first.state, first.data, first.fetched, first.refresh_scheduled) == (
        FRESH,
        ["bob tweet 1"],
        True,
        False,
    )
    assert first.expires_at is not None and first.stored_at is not None
    assert first.expires_at - first.stored_at == timedelta(seconds=600)
    again = tweets.get_item("bob")
    assert (again.state, again.data, again.fetched, again.refresh_scheduled) == (
        FRESH,
        ["bob tweet 1"],
        False,
        False,
    )
    assert (again.stored_at, again.expires_at) == (first.stored_at, first.expires_at)
    assert tweets.get("bob") == ["bob tweet 1"]
    assert calls.args == [("bob",)]


def test_decorated_function_reads_through_the_daemon(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    @cacheback(name="tests.fetch_tweets", client=client)
    def fetch_tweets(username: str) -> list[str]:
        return [f"{username} tweet {calls.enter(username)}"]

    make_worker(fetch_tweets)
    assert fetch_tweets("bob") == ["bob tweet 1"]
    assert fetch_tweets("bob") == ["bob tweet 1"]
    assert fetch_tweets("alice") == ["alice tweet 2"]
    assert calls.args == [("bob",), ("alice",)]
    # The wrapper's job reaches the same items.
    item = fetch_tweets.job.get_item(fetch_tweets, "bob")
    assert (item.state, item.data) == (FRESH, ["bob tweet 1"])


def test_fetch_on_miss_false_returns_none_then_fills_in_the_background(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    @cacheback(lifetime=1200, fetch_on_miss=False, name="tests.lazy_tweets", client=client)
    def fetch_tweets(username: str) -> list[str]:
        return [f"{username} tweet {calls.enter(username)}"]

    make_worker(fetch_tweets)
    calls.gate.clear()
    assert fetch_tweets("bob") is None
    calls.wait_for(1, running=1)  # the background fetch started
    item = fetch_tweets.job.get_item(fetch_tweets, "bob")
    assert (item.state, item.data, item.stored_at, item.expires_at) == (MISS, None, None, None)
    assert (item.refresh_scheduled, item.fetched) == (True, False)
    calls.gate.set()
    # A read that would fetch synchronously joins the background fetch in flight (or finds
    # its result): either way no second fetch.
    filled = client.get(fetch_tweets.job.name, b'["bob"]', fetch_on_miss=True)
    assert (filled.state, filled.data) == (FRESH, b'["bob tweet 1"]')
    assert filled.expires_at - filled.stored_at == timedelta(seconds=1200)
    assert fetch_tweets("bob") == ["bob tweet 1"]
    assert calls.args == [("bob",)]


def test_lifetime_decides_freshness(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    class Short(Tweets):
        name = "tests.Short"
        lifetime = 0

    class Long(Tweets):
        name = "tests.Long"
        lifetime = timedelta(hours=1)

    short_calls, long_calls = Calls(), Calls()
    make_worker(Short(short_calls), Long(long_calls))  # one worker, two jobs
    short, long = Short(short_calls, client), Long(long_calls, client)

    stored = short.get_item("bob")
    assert (stored.state, stored.data, stored.fetched) == (FRESH, ["bob tweet 1"], True)
    assert stored.expires_at == stored.stored_at
    short_calls.gate.clear()
    stale = short.get_item("bob")
    assert (stale.state, stale.data, stale.fetched, stale.refresh_scheduled) == (
        STALE,
        ["bob tweet 1"],
        False,
        True,
    )
    short_calls.wait_for(2, running=1)  # exactly one refresh, held at the gate
    assert short_calls.args == [("bob",), ("bob",)]
    short_calls.gate.set()

    first = long.get_item("bob")
    assert first.expires_at - first.stored_at == timedelta(hours=1)
    again = long.get_item("bob")
    assert (again.state, again.data, again.fetched, again.refresh_scheduled) == (
        FRESH,
        ["bob tweet 1"],
        False,
        False,
    )
    assert long_calls.count == 1


def test_expiry_and_the_miss_decision_are_per_args(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(VipTweets(calls))
    tweets = VipTweets(calls, client)

    # The miss decision: someone important waits for the fetch, bob does not.
    before = time.time()
    vip = tweets.get_item("someone-important")
    after = time.time()
    assert (vip.state, vip.data, vip.fetched) == (FRESH, ["someone-important tweet 1"], True)
    calls.gate.clear()
    assert tweets.get("bob") is None
    calls.wait_for(2, running=1)
    calls.gate.set()
    bob = client.get(tweets.name, b'["bob"]', fetch_on_miss=True)  # joins the background fetch
    assert (bob.state, bob.data) == (FRESH, b'["bob tweet 2"]')

    # expiry: a timestamp 60 s after the fetch for someone important ...
    lifetime = (vip.expires_at - vip.stored_at).total_seconds()
    assert 60 - (after - before) - 1e-6 <= lifetime <= 60 + 1e-6
    # ... the class's lifetime (600 s) through super().expiry() for bob: cacheback's
    # `time.time() + lifetime`, taken just before the worker sent it ...
    bob_lifetime = (bob.expires_at - bob.stored_at).total_seconds()
    assert 599 < bob_lifetime <= 600
    # ... and a span from now for a celebrity (a miss that does not wait; join it).
    assert tweets.get("celebrity") is None
    celebrity = client.get(tweets.name, b'["celebrity"]', fetch_on_miss=True)
    assert celebrity.expires_at - celebrity.stored_at == timedelta(seconds=90)
    assert calls.args == [("someone-important",), ("bob",), ("celebrity",)]


def test_invalidate_serves_stale_data_and_refreshes_in_the_background(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Tweets(calls))
    tweets = Tweets(calls, client)
    assert tweets.get("bob") == ["bob tweet 1"]

    calls.gate.clear()
    invalidated = tweets.raw_invalidate("bob")
    assert (invalidated.found, invalidated.refresh_scheduled) == (True, True)
    calls.wait_for(2, running=1)  # the refresh is running, held at the gate
    stale = tweets.get_item("bob")
    assert (stale.state, stale.data, stale.fetched, stale.refresh_scheduled) == (
        STALE,
        ["bob tweet 1"],
        False,
        True,
    )
    assert stale.expires_at is not None and stale.stored_at is not None
    assert tweets.get("bob") == ["bob tweet 1"]  # stale data, at once
    calls.gate.set()

    fresh = eventually(lambda: tweets.get_item("bob"), lambda item: item.state is FRESH)
    assert fresh.data == ["bob tweet 2"]
    assert fresh.stored_at is not None and fresh.stored_at > stale.stored_at
    assert calls.args == [("bob",), ("bob",)]
    # Invalidating an absent item does nothing.
    assert tweets.invalidate("nobody") is False
    assert tweets.get_item("nobody").data == ["nobody tweet 3"]
    assert calls.count == 3


def test_delete_makes_the_next_get_fetch(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Tweets(calls))
    tweets = Tweets(calls, client)
    assert tweets.get("bob") == ["bob tweet 1"]
    assert tweets.delete("bob") is True
    refetched = tweets.get_item("bob")
    assert (refetched.state, refetched.data, refetched.fetched) == (FRESH, ["bob tweet 2"], True)
    assert tweets.delete("bob") is True
    assert tweets.delete("bob") is False
    assert calls.args == [("bob",), ("bob",)]


def test_set_stores_data_without_a_fetch(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Tweets(calls))
    tweets = Tweets(calls, client)
    expires_at = tweets.set("bob", ["set by hand"])
    item = tweets.get_item("bob")
    assert (item.state, item.data, item.fetched, item.expires_at) == (
        FRESH,
        ["set by hand"],
        False,
        expires_at,
    )
    assert item.expires_at - item.stored_at == timedelta(seconds=600)
    # Per-item lifetime; and the data given as cacheback's `data=` keyword.
    tweets.set("alice", data=["already stale"], lifetime=0)
    calls.gate.clear()
    stale = tweets.get_item("alice")
    assert (stale.state, stale.data, stale.refresh_scheduled) == (STALE, ["already stale"], True)
    calls.wait_for(1, running=1)
    calls.gate.set()
    assert calls.args == [("alice",)]


def test_arguments_address_items_by_canonical_json(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    @cacheback(name="tests.search", client=client)
    def search(query: str, options: dict[str, Any]) -> dict[str, Any]:
        return {"query": query, "options": options}

    make_worker(search)
    result = search("café", {"z": 1, "a": [1.5, None]})
    assert result == {"query": "café", "options": {"z": 1, "a": [1.5, None]}}
    # The same item, read with the bytes another language's client would send.
    raw = client.get(search.job.name, '["caf\\u00e9",{"a":[1.5,null],"z":1}]'.encode())
    assert (raw.state, raw.fetched) == (FRESH, False)
    assert raw.data == b'{"options":{"a":[1.5,null],"z":1},"query":"caf\\u00e9"}'


def test_the_default_client_comes_from_the_environment(
    daemon: Any, monkeypatch: pytest.MonkeyPatch, calls: Calls
) -> None:
    monkeypatch.setenv("CACHEBACKD_TARGET", daemon.target)
    with Worker().serve(Tweets(calls)) as worker:
        assert worker.wait_until_registered(WAIT)
        assert Tweets(calls).get("bob") == ["bob tweet 1"]  # as in the seed: no client given


def test_concurrent_gets_of_one_missing_item_share_one_fetch(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Tweets(calls))
    tweets = Tweets(calls, client)
    calls.gate.clear()
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(tweets.get("bob"))) for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    calls.wait_for(1, running=1)
    calls.gate.set()
    for thread in threads:
        thread.join(WAIT)
    assert results == [["bob tweet 1"]] * 20
    assert calls.args == [("bob",)]


def test_fetch_on_stale_threshold_fetches_synchronously_once_stale_that_long(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    class Strict(Tweets):
        """Stale at once (lifetime 0) and too stale at once (threshold 0)."""

        name = "tests.Strict"
        lifetime = 0
        fetch_on_stale_threshold = 0

    class Lenient(Tweets):
        name = "tests.Lenient"
        lifetime = 0
        fetch_on_stale_threshold = timedelta(hours=1)

    strict_calls, lenient_calls = Calls(), Calls()
    make_worker(Strict(strict_calls), Lenient(lenient_calls))
    strict, lenient = Strict(strict_calls, client), Lenient(lenient_calls, client)

    assert strict.get("bob") == ["bob tweet 1"]
    refetched = strict.get_item("bob")  # stale for longer than 0 s: waits for a fetch
    assert (refetched.state, refetched.data, refetched.fetched) == (FRESH, ["bob tweet 2"], True)
    assert strict_calls.count == 2

    assert lenient.get("bob") == ["bob tweet 1"]
    lenient_calls.gate.clear()
    served = lenient.get_item("bob")  # stale, but not for an hour: served at once
    assert (served.state, served.data, served.fetched) == (STALE, ["bob tweet 1"], False)
    lenient_calls.wait_for(2, running=1)
    lenient_calls.gate.set()


def test_stale_data_beats_a_failed_synchronous_refresh(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    class Failing(Job):
        name = "tests.Failing"
        lifetime = 0
        fetch_on_stale_threshold = 0

        def fetch(self, username: str) -> list[str]:
            raise ConnectionError("twitter is down")

    make_worker(Failing())
    failing = Failing(client)
    failing.set("bob", ["old tweet"])
    item = failing.get_item("bob")  # too stale: fetches synchronously, which fails
    assert (item.state, item.data, item.fetched) == (STALE, ["old tweet"], False)
