"""Several daemon targets (issue 13, the clients' side) against two real cachebackd
processes on sled, each with its own data dir: a client uses one and moves to the other
when it is SIGKILLed, a worker registers with both and serves fetches on both, a status
the daemon answers never moves the client, and with every daemon down the error names
each target tried."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from typing import Callable, Iterator, Union

import grpc
import pytest

from cachebackd import Client, FetchFailed, ItemState, Job, NoDaemonError, Worker
from cachebackd.aio import AsyncClient
from conftest import Daemon, free_port
from support import WAIT, Calls, Tweets, eventually


def in_use(client: Union[Client, AsyncClient], a: Daemon, b: Daemon) -> tuple[Daemon, Daemon]:
    """The daemon the client uses now, and the other one."""
    if client.target == a.target:
        return a, b
    assert client.target == b.target
    return b, a


def started(client: Client, *jobs: Job) -> Worker:
    worker = Worker(client, reconnect_initial=0.02, reconnect_max=0.5)
    for job in jobs:
        worker.serve(job)
    worker.start()
    assert worker.wait_until_registered(WAIT)
    return worker


def test_a_client_of_two_daemons_fails_over_when_its_daemon_is_killed(
    make_daemon: Callable[..., Daemon], calls: Calls
) -> None:
    a, b = make_daemon(), make_daemon()
    with Client([a.target, b.target], timeout=WAIT) as client:
        assert client.targets == [a.target, b.target]
        worker = started(client, Tweets(calls))
        assert worker.registrations == 2, "one registration per daemon"
        tweets = Tweets(calls, client)
        assert tweets.get("bob") == ["bob tweet 1"]
        assert tweets.get("bob") == ["bob tweet 1"]

        used, other = in_use(client, a, b)
        used.kill()
        # The next call goes to the other daemon (its own store: bob is fetched anew).
        item = tweets.get_item("bob")
        assert client.target == other.target
        assert (item.data, item.fetched) == (["bob tweet 2"], True)
        # Every reader call works there, and the client stays.
        tweets.set("bob", ["set"])
        assert tweets.get("bob") == ["set"]
        assert tweets.get_many([("ann",)]) == [["ann tweet 3"]]
        client.invalidate_tags(["user:bob"])
        assert calls.count == 3
        assert tweets.invalidate("bob") is True
        assert tweets.delete("bob") is True
        assert client.target == other.target
        worker.stop()


def test_a_worker_of_two_daemons_serves_fetches_on_both_and_reconnects_each(
    make_daemon: Callable[..., Daemon], calls: Calls
) -> None:
    a, b = make_daemon(), make_daemon()
    with Client(f"{a.target},{b.target}", timeout=WAIT) as fleet, Client(
        a.target, timeout=WAIT
    ) as on_a, Client(b.target, timeout=WAIT) as on_b:
        worker = started(fleet, Tweets(calls))
        assert worker.registrations == 2
        assert Tweets(calls, on_a).get("ann") == ["ann tweet 1"]
        assert Tweets(calls, on_b).get("bob") == ["bob tweet 2"]

        # A restarts: the worker registers with it again; its stream to B is untouched.
        a.kill()
        assert Tweets(calls, on_b).get("cat") == ["cat tweet 3"]
        a.start()
        assert worker.wait_until_registered(WAIT, count=3)
        assert Tweets(calls, on_a).get("dan") == ["dan tweet 4"]
        assert worker.registrations == 3, "B's stream never dropped"
        worker.stop()


class Failing(Job):
    name = "tests.Failing"

    def fetch(self, username: str) -> str:
        raise ValueError("the API said no")


def test_an_unavailable_the_daemon_answers_does_not_move_the_client(
    make_daemon: Callable[..., Daemon],
) -> None:
    a, b = make_daemon(), make_daemon()
    with Client([a.target, b.target], timeout=WAIT) as client:
        worker = started(client, Failing())
        before = client.target
        with pytest.raises(FetchFailed) as raised:
            Failing(client).get("bob")
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        assert "the API said no" in raised.value.details
        assert client.target == before
        worker.stop()


def test_with_every_daemon_down_the_error_names_each_target_tried(
    make_daemon: Callable[..., Daemon], calls: Calls
) -> None:
    nowhere = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    with Client(nowhere, timeout=WAIT) as client:
        with pytest.raises(NoDaemonError) as raised:
            client.get(Tweets.name, b'["bob"]')
    assert sorted(raised.value.tried) == sorted(nowhere)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    for target in nowhere:
        assert target in str(raised.value)

    a, b = make_daemon(), make_daemon()
    with Client([a.target, b.target], timeout=WAIT) as client:
        client.wait_until_ready(WAIT)
        a.kill()
        b.kill()
        with pytest.raises(NoDaemonError) as raised:
            Tweets(calls, client).get("bob")
    assert raised.value.rpc == "Get"
    assert sorted(raised.value.tried) == sorted([a.target, b.target])


def test_an_async_client_of_two_daemons_fails_over(
    make_daemon: Callable[..., Daemon], calls: Calls
) -> None:
    a, b = make_daemon(), make_daemon()
    with Client([a.target, b.target], timeout=WAIT) as plain:
        worker = started(plain, Tweets(calls))

        async def scenario() -> None:
            async with AsyncClient([a.target, b.target], timeout=WAIT) as client:
                tweets = client.job(Tweets(calls))
                assert await tweets.get("bob") == ["bob tweet 1"]
                used, other = in_use(client, a, b)
                used.kill()
                item = await tweets.get_item("bob")
                assert client.target == other.target
                assert (item.data, item.fetched) == (["bob tweet 2"], True)
                await tweets.set("bob", ["set"])
                assert await tweets.get("bob") == ["set"]

        asyncio.run(scenario())
        worker.stop()


def test_the_near_cache_drops_everything_when_its_daemon_is_killed_and_serves_from_the_next(
    make_daemon: Callable[..., Daemon], calls: Calls
) -> None:
    a, b = make_daemon(), make_daemon()
    with Client([a.target, b.target], timeout=WAIT) as plain, Client(
        [a.target, b.target], timeout=WAIT, near_cache=100
    ) as near:
        worker = started(plain, Tweets(calls))
        near.wait_until_ready(WAIT)
        tweets = Tweets(calls, near)
        tweets.get("bob")
        assert tweets.get("bob") == ["bob tweet 1"]
        stats = near.near_cache_stats()
        assert stats is not None and (stats.hits, stats.items) == (1, 1)

        used, other = in_use(near, a, b)
        used.kill()
        # The stream breaks: everything goes without a read, and the client moves on.
        eventually(near.near_cache_stats, lambda s: s is not None and (s.items, s.resets) == (0, 1))
        item = tweets.get_item("bob")
        assert near.target == other.target
        assert (item.data, item.fetched) == (["bob tweet 2"], True)
        # On the new daemon, once its stream is up, a read is kept and then served locally.
        def held() -> int:
            tweets.get("bob")
            s = near.near_cache_stats()
            assert s is not None
            return s.items

        eventually(held, lambda n: n == 1)
        hits = near.near_cache_stats().hits  # type: ignore[union-attr]
        assert tweets.get("bob") == ["bob tweet 2"]
        assert near.near_cache_stats().hits == hits + 1  # type: ignore[union-attr]
        assert calls.count == 2
        worker.stop()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A redis-server on a free loopback port, without persistence, killed by pid."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is needed (apt-get install redis-server)"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:

        def reachable() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        eventually(reachable, bool)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def test_in_a_fleet_a_failed_over_client_reads_what_it_wrote_through_the_dead_daemon(
    redis_url: str, make_daemon: Callable[..., Daemon], calls: Calls
) -> None:
    # redis_url first: set up before the daemons, so it is stopped after them.
    a, b = make_daemon("--store", redis_url), make_daemon("--store", redis_url)
    with Client([a.target, b.target], timeout=WAIT) as client:
        worker = started(client, Tweets(calls))
        tweets = Tweets(calls, client)
        assert tweets.get("bob") == ["bob tweet 1"]
        tweets.set("ann", ["written"])

        used, other = in_use(client, a, b)
        used.kill()
        # The other daemon serves the same store: both are FRESH hits, nothing fetched.
        item = tweets.get_item("bob")
        assert client.target == other.target
        assert (item.state, item.fetched, item.data) == (ItemState.FRESH, False, ["bob tweet 1"])
        assert tweets.get("ann") == ["written"]
        # A miss is fetched through the worker's stream to the daemon still up.
        assert tweets.get("cat") == ["cat tweet 2"]
        assert calls.count == 2
        worker.stop()
