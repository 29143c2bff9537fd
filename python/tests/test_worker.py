"""The worker: reconnection, failing fetches, bounded concurrency, graceful stop."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Callable

import grpc
import pytest

from cachebackd import AnswerRefused, CachebackError, Client, Item, ItemState, Job, Worker
from conftest import Daemon
from support import WAIT, Calls, Tweets

FRESH, STALE = ItemState.FRESH, ItemState.STALE


class Flaky(Job):
    name = "tests.Flaky"

    def fetch(self, username: str) -> str:
        if username == "boom":
            raise ValueError("no such user: boom")
        if username == "silent":
            raise KeyError
        if username == "unencodable":
            return {1, 2}  # type: ignore[return-value]  # a set is not JSON
        return username.upper()


def test_an_exception_in_fetch_fails_the_get_with_its_message(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    worker = make_worker(Flaky())
    flaky = Flaky(client)
    with pytest.raises(CachebackError) as raised:
        flaky.get("boom")
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert "ValueError: no such user: boom" in raised.value.details
    with pytest.raises(CachebackError) as raised:
        flaky.get("silent")
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert "KeyError" in raised.value.details
    with pytest.raises(CachebackError) as raised:
        flaky.get("unencodable")
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert "TypeError: Object of type set is not JSON serializable" in raised.value.details
    # args that are not a JSON array (from some other client) fail the fetch, not the worker.
    with pytest.raises(CachebackError) as raised:
        client.get(Flaky.name, b'{"not":"an array"}')
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert "ValueError: args must be a JSON array" in raised.value.details
    # The worker and its stream live on.
    assert flaky.get("fine") == "FINE"
    assert worker.registrations == 1
    # Nothing was stored for the failed fetches: the next read fetches (and fails) again.
    with pytest.raises(CachebackError):
        flaky.get("boom")


def test_worker_reconnects_after_a_daemon_restart(
    daemon: Daemon, client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    worker = make_worker(Tweets(calls))
    tweets = Tweets(calls, client)
    assert tweets.get("bob") == ["bob tweet 1"]
    assert worker.registrations == 1

    daemon.restart()
    assert worker.wait_until_registered(WAIT, count=2)
    assert worker.registrations == 2
    # The item and the job's config survived the restart ...
    kept = tweets.get_item("bob")
    assert (kept.state, kept.data, kept.fetched) == (FRESH, ["bob tweet 1"], False)
    # ... and the re-registered worker fetches again.
    assert tweets.delete("bob") is True
    assert tweets.get("bob") == ["bob tweet 2"]
    assert calls.args == [("bob",), ("bob",)]


def test_worker_waits_for_a_daemon_that_is_not_up_yet(
    make_daemon: Callable[..., Daemon], calls: Calls
) -> None:
    daemon = make_daemon()
    daemon.stop()
    with Client(daemon.target, timeout=WAIT) as client:
        with Worker(client, reconnect_max=0.5).serve(Tweets(calls)) as worker:
            daemon.start()
            assert worker.wait_until_registered(WAIT)
            assert Tweets(calls, client).get("bob") == ["bob tweet 1"]


def test_worker_runs_up_to_max_in_flight_fetches_at_once(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Tweets(calls), max_in_flight=3)
    tweets = Tweets(calls, client)
    calls.gate.clear()
    results: dict[str, Any] = {}
    users = [f"user{i}" for i in range(5)]
    threads = [
        threading.Thread(target=lambda u=u: results.__setitem__(u, tweets.get(u))) for u in users
    ]
    for thread in threads:
        thread.start()
    calls.wait_for(3, running=3)  # three at once: the worker does not serialise them
    calls.gate.set()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(results) == users
    assert calls.count == 5
    assert calls.most_running == 3  # and never more than max_in_flight


def test_stop_lets_running_fetches_finish_and_deliver(client: Client, calls: Calls) -> None:
    worker = Worker(client).serve(Tweets(calls)).start()
    assert worker.wait_until_registered(WAIT)
    tweets = Tweets(calls, client)
    calls.gate.clear()
    got: list[Item] = []
    reader = threading.Thread(target=lambda: got.append(tweets.get_item("bob")))
    reader.start()
    calls.wait_for(1, running=1)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    assert worker._stopping.wait(WAIT)  # stop() is under way while the fetch runs
    calls.gate.set()
    reader.join(WAIT)
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert [(i.state, i.data, i.fetched) for i in got] == [(FRESH, ["bob tweet 1"], True)]
    assert calls.count == 1


def test_one_worker_serves_a_class_an_instance_and_a_function(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    from cachebackd import cacheback

    class Upper(Job):
        name = "tests.Upper"

        def fetch(self, s: str) -> str:
            return s.upper()

    @cacheback(name="tests.lower", client=client)
    def lower(s: str) -> str:
        return s.lower()

    worker = make_worker(Upper, Flaky(), lower)
    assert sorted(worker.jobs) == ["tests.Flaky", "tests.Upper", "tests.lower"]
    assert worker.registrations == 3
    assert Upper(client).get("a") == "A"
    assert Flaky(client).get("b") == "B"
    assert lower("C") == "c"
    config = worker.effective_config("tests.Upper")
    assert config is not None and config.lifetime.seconds == 600


def test_a_config_the_daemon_would_refuse_is_refused_at_serve(client: Client) -> None:
    class NoTimeout(Flaky):
        name = "tests.NoTimeout"
        refresh_timeout = 0

    class NegativeLifetime(Flaky):
        name = "tests.NegativeLifetime"
        lifetime = -1

    with pytest.raises(ValueError, match="refresh_timeout must be more than zero"):
        Worker(client).serve(NoTimeout)
    with pytest.raises(ValueError, match="cannot be negative"):
        Worker(client).serve(NegativeLifetime)


def test_serving_a_job_twice_is_refused(client: Client) -> None:
    worker = Worker(client).serve(Flaky)
    with pytest.raises(ValueError, match="already served"):
        worker.serve(Flaky())
    with pytest.raises(TypeError):
        worker.serve(object())  # type: ignore[arg-type]


def test_two_workers_share_a_job_and_one_carries_on_when_the_other_stops(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    first = make_worker(Tweets(calls), name="first")
    make_worker(Tweets(calls), name="second")
    tweets = Tweets(calls, client)
    calls.gate.clear()
    results: list[Any] = []
    readers = [
        threading.Thread(target=lambda u=u: results.append(tweets.get(u))) for u in ("a", "b")
    ]
    for reader in readers:
        reader.start()
    calls.wait_for(2, running=2)
    calls.gate.set()
    for reader in readers:
        reader.join(WAIT)
    assert sorted(tweet for [tweet] in results) in (
        ["a tweet 1", "b tweet 2"],
        ["a tweet 2", "b tweet 1"],  # the fetches are numbered in the order they started
    )
    first.stop()
    assert tweets.get("c") == ["c tweet 3"]
    assert sorted(args for args in calls.args) == [("a",), ("b",), ("c",)]


class Sized(Job):
    name = "tests.Sized"

    def fetch(self, name: str) -> str:
        return "x" * (200 * 1024) if name == "big" else name.upper()


def test_a_refused_answer_is_logged_counted_and_passed_to_on_refused_and_the_worker_serves_on(
    make_daemon: Callable[..., Daemon], caplog: pytest.LogCaptureFixture
) -> None:
    daemon = make_daemon("--max-answer-bytes", "100KiB")
    refusals: list[AnswerRefused] = []
    told = threading.Event()

    def on_refused(refused: AnswerRefused) -> None:
        refusals.append(refused)
        told.set()

    with Client(daemon.target, timeout=WAIT) as client:
        worker = Worker(client, on_refused=on_refused).serve(Sized()).start()
        try:
            assert worker.wait_until_registered(WAIT)
            sized = Sized(client)
            with caplog.at_level(logging.WARNING, logger="cachebackd.worker"):
                with pytest.raises(CachebackError) as raised:
                    sized.get("big")
                assert raised.value.code == grpc.StatusCode.UNAVAILABLE
                assert told.wait(WAIT)
            [refused] = refusals
            assert refused.job == "tests.Sized"
            assert refused.code == grpc.StatusCode.UNAVAILABLE
            assert refused.reason == raised.value.details
            assert "max_answer_bytes" in refused.reason
            assert str(uuid.UUID(refused.request_id)) == refused.request_id
            assert worker.refused == 1
            [line] = [r for r in caplog.records if "refused the answer" in r.getMessage()]
            assert line.levelno == logging.WARNING
            assert refused.request_id in line.getMessage() and "max_answer_bytes" in line.getMessage()
            # Same stream: the next answer is taken.
            assert sized.get("bob") == "BOB"
            assert worker.registrations == 1
            assert worker.refused == 1 and len(refusals) == 1
        finally:
            worker.stop()


def test_a_daemon_message_of_a_kind_unknown_to_an_older_worker_decodes_as_no_kind() -> None:
    """A worker built from the proto before `refused = 4` sees a message with no kind, which
    its stream loop ignores (it dispatches on the kinds it knows)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    from cachebackd._proto import cacheback_pb2 as pb

    old = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(old)
    [daemon_message] = [m for m in old.message_type if m.name == "DaemonMessage"]
    kept = [f for f in daemon_message.field if f.number != 4]
    del daemon_message.field[:]
    daemon_message.field.extend(kept)
    pool = descriptor_pool.DescriptorPool()  # of its own, beside the package's
    for dependency in pb.DESCRIPTOR.dependencies:
        proto = descriptor_pb2.FileDescriptorProto()
        dependency.CopyToProto(proto)
        pool.Add(proto)
    pool.Add(old)
    OldDaemonMessage = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("cacheback.v1.DaemonMessage")
    )
    notice = pb.DaemonMessage(refused=pb.AnswerRefused(request_id="r", code=14, reason="why"))
    decoded = OldDaemonMessage.FromString(notice.SerializeToString())
    assert decoded.WhichOneof("kind") is None
