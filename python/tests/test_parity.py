"""django-cacheback's API, member by member, with cacheback's semantics, through the real
daemon (cacheback's `cacheback/base.py`, `decorators.py` and `jobs.py` are the reference).
"""

from __future__ import annotations

import time
import warnings
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Optional

import pytest

from cachebackd import (
    CachebackdWarning,
    CachebackError,
    Call,
    Client,
    CodecError,
    FetchFailed,
    FunctionJob,
    ItemState,
    Job,
    Worker,
    cacheback,
)
from support import Calls, eventually

FRESH, STALE, MISS = ItemState.FRESH, ItemState.STALE, ItemState.MISS


class Timeline(Job):
    """A job with a default argument, recording its fetches."""

    name = "parity.Timeline"

    def __init__(self, calls: Calls, client: Optional[Client] = None) -> None:
        super().__init__(client)
        self.calls = calls

    def fetch(self, username: str, count: int = 20) -> list[str]:
        n = self.calls.enter(username, count)
        return [f"{username} {count} #{n}"]


def test_keyword_arguments_are_bound_to_fetchs_signature_with_defaults(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Timeline(calls))
    job = Timeline(calls, client)
    assert job.get("bob") == ["bob 20 #1"]
    # One item, however the arguments are spelt: the defaults are part of its address.
    assert job.get(username="bob") == ["bob 20 #1"]
    assert job.get("bob", count=20) == ["bob 20 #1"]
    assert job.get(count=20, username="bob") == ["bob 20 #1"]
    assert calls.args == [("bob", 20)]
    assert client.peek(job.name, b'["bob",20]').data == b'["bob 20 #1"]'
    assert job.key(username="bob") == '["bob",20]'
    assert job.get("bob", 5) == ["bob 5 #2"]
    with pytest.raises(TypeError, match="unexpected keyword argument 'user'"):
        job.get("bob", user="x")
    with pytest.raises(TypeError, match="missing a required argument"):
        job.get()


def test_a_fetch_with_keyword_only_parameters_or_kwargs_is_refused_at_definition() -> None:
    with pytest.raises(TypeError, match="keyword-only parameter page: cachebackd addresses"):

        class KeywordOnly(Job):
            name = "parity.KeywordOnly"

            def fetch(self, username: str, *, page: int = 1) -> None: ...

    with pytest.raises(TypeError, match=r"\*\*options: .*no position in it"):

        @cacheback(name="parity.kwargs")
        def anything(username: str, **options: Any) -> None: ...


def test_the_decorator_takes_cachebacks_signature_and_warns_once_for_what_it_ignores() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        @cacheback(
            lifetime=1200,
            fetch_on_miss=False,
            cache_alias="secondary",
            job_class=FunctionJob,
            task_options={"queue": "slow"},
            set_data_kwarg="tweets",
            name="parity.decorated",
        )
        def fetch_tweets(username: str) -> list[str]:
            return [username]

        # The same job again: no second warning.
        FunctionJob(cache_alias="secondary", name="parity.decorated").for_function(fetch_tweets)
    assert sorted(str(w.message).split(":")[1].strip() for w in caught) == [
        "cache_alias is ignored by cachebackd",
        "task_options is ignored by cachebackd",
    ]
    assert all(issubclass(w.category, CachebackdWarning) for w in caught)
    job = fetch_tweets.job
    assert (job.lifetime, job.fetch_on_miss, job.set_data_kwarg) == (1200, False, "tweets")
    assert (job.cache_alias, job.task_options) == ("secondary", {"queue": "slow"})
    assert job.get_init_kwargs() == {"lifetime": 1200, "cache_alias": "secondary"}


def test_cache_alias_and_task_options_on_a_job_class_warn_once() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        class Aliased(Job):
            name = "parity.Aliased"
            cache_alias = "other"
            task_options = {"queue": "q"}

            def fetch(self) -> int:
                return 1

        class AliasedAgain(Aliased):
            name = "parity.Aliased"  # one job, so no second warning

    assert [str(w.message) for w in caught] == [
        "parity.Aliased: cache_alias is ignored by cachebackd: the daemon is the cache "
        "(there is no Django cache to choose)",
        "parity.Aliased: task_options is ignored by cachebackd: refreshes run in the "
        "cachebackd worker, not in a Celery or RQ task",
    ]


def test_function_job_refuses_a_misspelt_setting() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'lifetim'"):
        FunctionJob(lifetim=10)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'lifetim'"):
        cacheback(lifetim=10)


def test_a_decorated_functions_job_takes_the_function_first(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    @cacheback(name="parity.fetch_tweets", client=client)
    def fetch_tweets(username: str) -> list[str]:
        return [f"{username} #{calls.enter(username)}"]

    make_worker(fetch_tweets)
    job = fetch_tweets.job
    # cacheback's usage guide: set and raw_get with the function first.
    job.set(fetch_tweets, "bob", ["by hand"])
    assert fetch_tweets("bob") == ["by hand"]
    job.set(fetch_tweets, "bob", data=["by keyword"])
    expiry, data = job.raw_get(fetch_tweets, "bob")
    assert data == ["by keyword"] and expiry == pytest.approx(time.time() + 600, abs=5)
    assert job.invalidate(fetch_tweets, "bob") is True
    eventually(lambda: job.get_item(fetch_tweets, "bob"), lambda i: i.state is FRESH)
    assert fetch_tweets("bob") == ["bob #1"]
    assert job.delete(fetch_tweets, "bob") is True
    assert job.raw_get(fetch_tweets, "bob") is None
    # As in cacheback, leaving the function out is an error, with a message that says so.
    with pytest.raises(TypeError, match="pass the function first"):
        job.invalidate("bob")
    assert calls.args == [("bob",)]


def test_an_unbound_function_job_caches_each_function_it_is_given(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    def shout(word: str) -> str:
        calls.enter(word)
        return word.upper()

    shout.__qualname__ = "shout"  # a module-level name, as a real one would have
    job = FunctionJob(lifetime=30, client=client)
    make_worker(job.for_function(shout))
    assert job.get(shout, "hey") == "HEY"
    assert job.get(shout, word="hey") == "HEY"
    assert job.for_function(shout).name == f"{__name__}.shout"
    assert calls.args == [("hey",)]
    with pytest.raises(TypeError, match="caches no function of its own"):
        Worker(client).serve(job)


def test_raw_get_reads_without_side_effects(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Timeline(calls))
    job = Timeline(calls, client)
    assert job.raw_get("bob") is None
    job.set("alice", ["stale"], lifetime=0)
    stored = job.raw_get("alice")
    assert stored is not None and (stored.state, stored.data) == (STALE, ["stale"])
    assert (stored.refresh_scheduled, stored.fetched) == (False, False)
    expiry, data = stored  # cacheback's (expiry, data)
    assert (len(stored), stored[0], stored[1]) == (2, expiry, data)
    assert (expiry, data) == (stored.expires_at.timestamp(), ["stale"])  # type: ignore[union-attr]
    # Nothing was fetched, for the miss or for the stale item.
    assert job.get_item("bob").state is FRESH
    assert calls.args == [("bob", 20)]


def test_set_gives_the_item_the_lifetime_of_an_overridden_expiry(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    class Expiring(Timeline):
        name = "parity.Expiring"

        def expiry(self, username: str, count: int = 20) -> float:
            return time.time() + (30 if username == "vip" else 900)

    make_worker(Expiring(calls))
    job = Expiring(calls, client)
    job.set("vip", ["set"])
    job.set(username="bob", data=["set"])
    for username, lifetime in (("vip", 30), ("bob", 900)):
        item = job.get_item(username)
        assert (item.state, item.data, item.fetched) == (FRESH, ["set"], False)
        span = (item.expires_at - item.stored_at).total_seconds()  # type: ignore[operator]
        assert lifetime - 1 < span <= lifetime


class OriginError(Exception):
    """An exception of the app's own, importable in the reader's process."""


class Failing(Job):
    name = "parity.Failing"

    def fetch(self, kind: str) -> None:
        if kind == "own":
            raise OriginError("the origin said no")
        if kind == "builtin":
            raise KeyError("missing")

        class Local(Exception):
            pass

        raise Local("nobody can import me")


def test_a_failed_fetch_raises_fetch_failed_of_the_origins_type(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    make_worker(Failing())
    job = Failing(client)
    with pytest.raises(OriginError) as own:
        job.get("own")
    assert isinstance(own.value, FetchFailed) and isinstance(own.value, CachebackError)
    assert (own.value.remote_type, own.value.remote_message) == (
        f"{__name__}.OriginError",
        "the origin said no",
    )
    with pytest.raises(KeyError) as builtin:
        job.get(kind="builtin")
    assert (builtin.value.remote_type, builtin.value.remote_message) == ("KeyError", "'missing'")  # type: ignore[attr-defined]
    with pytest.raises(FetchFailed) as local:
        job.get("local")
    assert type(local.value) is FetchFailed
    assert local.value.remote_type == f"{__name__}.Failing.fetch.<locals>.Local"
    assert local.value.remote_message == "nobody can import me"
    # The same through GetMany, item by item.
    [many] = job.raw_get_many([("own",)])
    assert isinstance(many, OriginError) and isinstance(many, FetchFailed)
    assert many.remote_message == "the origin said no"

    # A job that was never registered is not a failed fetch.
    class Unregistered(Failing):
        name = "parity.Unregistered"

    with pytest.raises(CachebackError) as unknown:
        Unregistered(client).get("x")
    assert not isinstance(unknown.value, FetchFailed)


def test_refresh_fetches_here_and_stores_the_result(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Timeline(calls))
    job = Timeline(calls, client)
    assert job.refresh("bob") == ["bob 20 #1"]  # ran in this process, through fetch
    item = job.get_item(username="bob")
    assert (item.state, item.data, item.fetched) == (FRESH, ["bob 20 #1"], False)
    with pytest.raises(OriginError):
        Failing(client).refresh("own")  # cacheback: the fetch's exception, as it is


def test_async_refresh_has_a_worker_refresh_the_item(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Timeline(calls))
    job = Timeline(calls, client)
    job.set("bob", ["set"])
    assert job.async_refresh("bob") is None
    eventually(lambda: job.raw_get("bob"), lambda i: i is not None and i.data == ["bob 20 #1"])
    job.async_refresh("alice")  # missing: filled in the background
    eventually(lambda: job.raw_get("alice"), lambda i: i is not None and i.data == ["alice 20 #2"])
    assert calls.args == [("bob", 20), ("alice", 20)]


class Observed(Job):
    """Overrides every hook of cacheback's get, and records what they were given."""

    name = "parity.Observed"
    fetch_on_miss = False

    def __init__(self, calls: Calls, client: Optional[Client] = None) -> None:
        super().__init__(client)
        self.calls = calls
        self.seen: list[tuple[Any, ...]] = []

    def fetch(self, username: str) -> str:
        return f"{username} #{self.calls.enter(username)}"

    def prepare_args(self, *args: Any) -> tuple[Any, ...]:
        return tuple(a.lower() if isinstance(a, str) else a for a in args)

    def prepare_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        return {k: v.lower() if isinstance(v, str) else v for k, v in kwargs.items()}

    def should_missing_item_be_fetched_synchronously(self, username: str) -> bool:
        return username == "sync"

    def should_stale_item_be_fetched_synchronously(self, delta: float, username: str) -> bool:
        self.seen.append(("stale?", round(delta) if delta >= 0 else "negative", username))
        return username == "sync"

    def empty(self) -> str:
        return "nothing yet"

    def process_result(
        self, result: Any, call: Call, cache_status: int, sync_fetch: Optional[bool] = None
    ) -> Any:
        self.seen.append((result, call, cache_status, sync_fetch))
        return result


def test_prepare_args_and_prepare_kwargs_normalise_before_the_item_is_addressed(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Observed(calls))
    job = Observed(Calls(), client)
    assert job.get("SYNC") == "sync #1"
    assert job.get(username="Sync") == "sync #1"  # the same item
    assert job.key(*job.prepare_args("SYNC")) == '["sync"]'  # key() takes prepared args
    assert calls.args == [("sync",)]  # fetch and the hooks get the prepared arguments


def test_empty_is_what_a_miss_filled_in_the_background_returns(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Observed(calls))
    job = Observed(Calls(), client)
    assert job.get("bob") == "nothing yet"
    eventually(lambda: job.raw_get("bob"), lambda i: i is not None)
    assert job.get("bob") == "bob #1"


def test_process_result_gets_the_call_the_cache_status_and_whether_it_fetched(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Observed(calls))
    job = Observed(Calls(), client)
    assert (job.MISS, job.HIT, job.STALE) == (Job.MISS, Job.HIT, Job.STALE) == (0, 1, 2)
    job.get("Bob")  # a miss filled in the background
    eventually(lambda: job.raw_get("bob"), lambda i: i is not None)
    job.get(username="BOB")  # a hit
    job.get("sync")  # a miss the job waits for
    job.set("bob", "old", lifetime=0)
    calls.gate.clear()
    job.get("bob")  # stale, served (the job does not refresh bob synchronously)
    calls.gate.set()
    statuses = [entry for entry in job.seen if entry[0] != "stale?"]
    assert statuses == [
        ("nothing yet", Call(("Bob",), {}), Job.MISS, False),
        ("bob #1", Call((), {"username": "BOB"}), Job.HIT, None),
        ("sync #2", Call(("sync",), {}), Job.MISS, True),
        ("old", Call(("bob",), {}), Job.STALE, False),
    ]


def test_an_overridden_stale_rule_gets_delta_and_refreshes_here(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Observed(calls))
    here = Calls()  # the fetches that refresh() runs in this process
    job = Observed(here, client)
    job.set("sync", "old", lifetime=0)
    assert job.get("sync") == "sync #1"  # stale, and the job says refresh now: refresh()
    assert here.args == [("sync",)]
    assert job.seen == [
        ("stale?", 0, "sync"),  # delta: seconds since the item's expiry, as in cacheback
        ("sync #1", Call(("sync",), {}), Job.STALE, True),
    ]
    stored = job.raw_get("sync")
    assert stored is not None and (stored.state, stored.data) == (FRESH, "sync #1")


def test_the_default_stale_rule_is_cachebacks_and_runs_in_the_daemon() -> None:
    class Threshold(Job):
        name = "parity.Threshold"
        lifetime = 60
        fetch_on_stale_threshold = 300

    job = Threshold()
    assert job.should_stale_item_be_fetched_synchronously(239, "x") is False
    assert job.should_stale_item_be_fetched_synchronously(241, "x") is True
    assert job.config().fetch_on_stale_threshold.ToTimedelta() == timedelta(seconds=300)


def test_class_path_is_module_and_class_name() -> None:
    assert Timeline(Calls()).class_path == f"{__name__}.Timeline"


def test_key_is_the_items_canonical_args_and_an_override_warns() -> None:
    assert Timeline(Calls()).key("bob") == '["bob",20]'
    assert Timeline(Calls()).key(count=3, username="b\u00e9") == '["b\\u00e9",3]'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        class OwnKey(Job):
            name = "parity.OwnKey"

            def key(self, *args: Any, **kwargs: Any) -> str:
                return "mine"

    assert [str(w.message).split(":")[1].strip() for w in caught] == [
        "an overridden key() is ignored by cachebackd"
    ]


def test_timeout_is_now_plus_refresh_timeout_and_an_override_warns() -> None:
    assert Timeline(Calls()).timeout("bob") == pytest.approx(time.time() + 60, abs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        class OwnTimeout(Job):
            name = "parity.OwnTimeout"

            def timeout(self, *args: Any, **kwargs: Any) -> float:
                return 0.0

    assert [str(w.message).split(":")[1].strip() for w in caught] == [
        "an overridden timeout() is ignored by cachebackd"
    ]


def test_get_init_args_and_kwargs_as_in_cacheback() -> None:
    assert (Timeline(Calls()).get_init_args(), Timeline(Calls()).get_init_kwargs()) == ((), {})
    job = FunctionJob(lifetime=90, name="parity.init")
    assert (job.get_init_args(), job.get_init_kwargs()) == (
        (),
        {"lifetime": 90, "cache_alias": None},
    )


class Dated(Job):
    name = "parity.Dated"
    codec = "pickle"

    def fetch(self, day: str) -> Any:
        return {
            "at": datetime(2026, 1, 2, tzinfo=timezone.utc),
            "price": Decimal("9.99"),
            "pair": (1, 2),
        }


def test_the_pickle_codec_keeps_python_values_and_is_refused_by_a_json_reader(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    make_worker(Dated())
    value = Dated(client).get("monday")
    assert value == {
        "at": datetime(2026, 1, 2, tzinfo=timezone.utc),
        "price": Decimal("9.99"),
        "pair": (1, 2),
    }

    class JsonReader(Job):
        name = "parity.Dated"  # the same job, read as JSON

    with pytest.raises(CodecError, match="not JSON \\(it is pickle data"):
        JsonReader(client).get("monday")
    # And a pickle reader refuses JSON that another language's worker or a Set wrote.
    client.set("parity.Dated", b'["tuesday"]', b'{"at":"2026-01-02"}')
    with pytest.raises(CodecError, match="not a pickle"):
        Dated(client).get("tuesday")
    with pytest.raises(ValueError, match="codec must be one of json, pickle"):

        class Yaml(Job):
            name = "parity.Yaml"
            codec = "yaml"


def test_json_is_the_default_and_says_what_it_cannot_carry(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    class DatedJson(Dated):
        name = "parity.DatedJson"
        codec = "json"

    make_worker(DatedJson())
    with pytest.raises(TypeError) as raised:
        DatedJson(client).get("monday")
    assert "Object of type datetime is not JSON serializable" in str(raised.value)
