"""The client-side half of the API, without a daemon: names, encoding, config, expiry."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration

from cachebackd import CachedFunction, Job, cacheback, encode_args
from cachebackd._proto import cacheback_pb2 as pb


class UserTweets(Job):
    def fetch(self, username: str) -> list[str]:
        return [username]


class Tuned(Job):
    name = "tests.Tuned"
    lifetime = timedelta(minutes=10)
    refresh_timeout = 5.5
    fetch_on_miss = False
    fetch_on_stale_threshold = 3600
    cache_ttl = 86400


@cacheback()
def fetch_tweets(username: str) -> list[str]:
    """The seed's decorated function."""
    return [username]


@cacheback
def bare(username: str) -> str:
    return username


def test_args_are_the_canonical_json_array_of_protocol_md() -> None:
    assert encode_args(("bob",)) == b'["bob"]'
    assert encode_args(()) == b"[]"
    assert encode_args(("bob", 3, {"z": 1, "a": [1.5, None, True]})) == (
        b'["bob",3,{"a":[1.5,null,true],"z":1}]'
    )
    # Python's default ensure_ascii, as the Rust client reproduces it.
    assert encode_args(("café",)) == b'["caf\\u00e9"]'


def test_args_refuse_nan_which_no_other_language_reads() -> None:
    with pytest.raises(ValueError):
        encode_args((float("nan"),))


def test_job_is_named_after_its_module_and_class() -> None:
    assert UserTweets.name == f"{__name__}.UserTweets"
    assert UserTweets().name == f"{__name__}.UserTweets"
    assert Tuned.name == "tests.Tuned"


def test_a_subclass_gets_its_own_name() -> None:
    class Sub(Tuned):
        name = "tests.Sub"

    assert Sub.name == "tests.Sub"
    assert Tuned.name == "tests.Tuned"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "tab\t", "é"])
def test_ill_formed_names_are_refused_where_the_job_is_defined(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid job name"):

        class Bad(Job):
            name = bad

    with pytest.raises(ValueError, match="invalid job name"):
        cacheback(name=bad)(lambda: 1)


def test_a_local_class_needs_a_name() -> None:
    with pytest.raises(ValueError, match="invalid job name .*<locals>"):

        class Local(Job):
            pass


def test_names_of_128_allowed_characters_are_accepted() -> None:
    long_name = ("Az09_.:-" * 16)[:128]

    class Long(Job):
        name = long_name

    assert Long.name == long_name
    assert cacheback(name=long_name)(lambda: 1).job.name == long_name


def test_class_attributes_become_the_registered_config() -> None:
    default = UserTweets().config()
    assert default == pb.JobConfig(
        lifetime=Duration(seconds=600),  # django-cacheback's default
        refresh_timeout=Duration(seconds=60),
        fetch_on_miss=True,
        cache_ttl=Duration(seconds=30 * 86400),
    )
    assert not default.HasField("fetch_on_stale_threshold")
    tuned = Tuned().config()
    assert tuned.lifetime.ToTimedelta() == timedelta(minutes=10)
    assert tuned.refresh_timeout.ToTimedelta() == timedelta(seconds=5.5)
    assert tuned.HasField("fetch_on_miss") and tuned.fetch_on_miss is False
    assert tuned.fetch_on_stale_threshold.ToTimedelta() == timedelta(hours=1)
    assert tuned.cache_ttl.ToTimedelta() == timedelta(days=1)


def test_decorator_makes_a_job_named_after_the_function() -> None:
    assert isinstance(fetch_tweets, CachedFunction)
    assert fetch_tweets.job.name == f"{__name__}.fetch_tweets"
    assert fetch_tweets.fn("bob") == ["bob"]
    assert fetch_tweets.job.fetch("bob") == ["bob"]
    assert fetch_tweets.__name__ == "fetch_tweets"
    assert fetch_tweets.__doc__ == "The seed's decorated function."
    assert bare.job.name == f"{__name__}.bare"
    assert (bare.job.lifetime, bare.job.fetch_on_miss) == (600, True)


def test_decorator_settings_reach_the_job_config() -> None:
    slow = cacheback(lifetime=1200, fetch_on_miss=False, name="tests.slow")(lambda u: u)
    config = slow.job.config()
    assert config.lifetime.ToTimedelta() == timedelta(seconds=1200)
    assert config.fetch_on_miss is False
    assert config.refresh_timeout.ToTimedelta() == timedelta(seconds=60)


def test_a_local_function_needs_a_name() -> None:
    def local(username: str) -> str:
        return username

    with pytest.raises(ValueError, match="<locals>"):
        cacheback()(local)


def test_expiry_not_overridden_sends_no_per_item_lifetime() -> None:
    assert UserTweets().item_lifetime("bob") is None
    # cacheback's default: a Unix timestamp, `lifetime` from now.
    before = time.time()
    assert before + 600 <= UserTweets().expiry("bob") <= time.time() + 600


class Expiring(Job):
    name = "tests.Expiring"

    def expiry(self, kind: str) -> Any:
        if kind == "timestamp":
            return time.time() + 60
        if kind == "datetime":
            return datetime.now(timezone.utc) + timedelta(seconds=60)
        if kind == "past":
            return time.time() - 10
        if kind == "span":
            return timedelta(seconds=90)
        return super().expiry(kind)


def test_expiry_may_be_a_timestamp_a_datetime_or_a_span() -> None:
    job = Expiring()
    for kind in ("timestamp", "datetime"):
        lifetime = job.item_lifetime(kind)
        assert lifetime is not None and timedelta(seconds=59) < lifetime <= timedelta(seconds=60)
    assert job.item_lifetime("span") == timedelta(seconds=90)
    assert job.item_lifetime("past") == timedelta(0)
    other = job.item_lifetime("other")  # super().expiry(): the job's lifetime from now
    assert other is not None and timedelta(seconds=599) < other <= timedelta(seconds=600)


class RecordingClient:
    """Stands in for Client to show what a Job sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def set(self, job: str, args: bytes, data: bytes, *, lifetime: Any = None) -> datetime:
        self.sent.append((job, args, data, lifetime))
        return datetime.now(timezone.utc)


def test_set_takes_the_data_last_or_as_a_keyword_like_cacheback() -> None:
    client = RecordingClient()
    job = UserTweets(client)  # type: ignore[arg-type]
    job.set("bob", ["a"])
    job.set("bob", data=["b"])
    job.set("bob", data=["c"], lifetime=5)
    name = UserTweets.name
    assert client.sent == [
        (name, b'["bob"]', b'["a"]', None),
        (name, b'["bob"]', b'["b"]', None),
        (name, b'["bob"]', b'["c"]', 5),
    ]
    with pytest.raises(TypeError):
        job.set()
