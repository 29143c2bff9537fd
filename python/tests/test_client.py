"""The client against the daemon: errors as statuses, limits, Unix sockets."""

from __future__ import annotations

from typing import Any, Callable

import grpc
import pytest

from cachebackd import CachebackError, Client, Item, ItemState, Job, Worker
from conftest import Daemon
from support import WAIT, Calls, Tweets


class Echo(Job):
    name = "tests.Echo"

    def fetch(self, *args: Any) -> list[Any]:
        return list(args)


class Blob(Echo):
    """Data as raw bytes rather than JSON (a job may say otherwise, PROTOCOL.md)."""

    name = "tests.Blob"

    def fetch(self, size: int) -> bytes:  # type: ignore[override]
        return b"x" * size

    def encode(self, data: Any) -> bytes:
        return bytes(data)

    def decode(self, raw: bytes) -> Any:
        return raw


def test_reading_a_job_never_registered_is_not_found(client: Client) -> None:
    with pytest.raises(CachebackError) as raised:
        Echo(client).get("x")
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


def test_an_ill_formed_job_name_is_invalid_argument(client: Client) -> None:
    with pytest.raises(CachebackError) as raised:
        client.get("has space", b"[]")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_four_mib_of_data_round_trips_and_one_byte_more_is_refused(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    limit = 4 * 1024 * 1024
    make_worker(Blob(), Echo())
    blob = Blob(client)
    assert len(blob.get(limit)) == limit  # fetched by the worker, over the 4 MiB default receive limit
    item = blob.get_item(limit)
    assert (item.state, item.fetched, len(item.data)) == (ItemState.FRESH, False, limit)
    # JSON data of exactly the limit, set and read back.
    echo = Echo(client)
    text = "y" * (limit - 2)
    echo.set("big", text)
    assert echo.get("big") == text
    with pytest.raises(CachebackError) as raised:
        echo.set("bigger", text + "y")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(CachebackError) as raised:
        blob.get(limit + 1)  # the worker's answer is over the limit: a failed fetch
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def test_args_of_exactly_4096_bytes_are_accepted_and_one_more_is_refused(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    make_worker(Echo())
    echo = Echo(client)
    arg = "a" * (4096 - 4)  # ["..."]
    assert echo.get(arg) == [arg]
    with pytest.raises(CachebackError) as raised:
        echo.get(arg + "a")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_unix_socket_target(make_daemon: Callable[..., Daemon], tmp_path: Any) -> None:
    daemon = make_daemon(listen=f"unix:{tmp_path}/cachebackd.sock")
    with Client(daemon.target, timeout=WAIT) as client:
        with Worker(client).serve(Echo) as worker:
            assert worker.wait_until_registered(WAIT)
            assert Echo(client).get("over", "unix") == ["over", "unix"]


def test_a_daemon_that_is_down_is_unavailable() -> None:
    from conftest import free_port

    with Client(f"127.0.0.1:{free_port()}", timeout=WAIT) as client:
        with pytest.raises(CachebackError) as raised:
            client.get("tests.Echo", b"[]")
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def test_targets_in_the_rust_clients_form_are_accepted() -> None:
    assert Client("http://127.0.0.1:7070").target == "127.0.0.1:7070"
    assert Client("unix:/run/cachebackd.sock").target == "unix:/run/cachebackd.sock"


def test_the_target_defaults_to_the_environment_then_localhost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CACHEBACKD_TARGET", raising=False)
    monkeypatch.delenv("CACHEBACKD_URL", raising=False)
    assert Client().target == "127.0.0.1:7070"
    monkeypatch.setenv("CACHEBACKD_URL", "http://127.0.0.2:7071")  # the Rust client's variable
    assert Client().target == "127.0.0.2:7071"
    monkeypatch.setenv("CACHEBACKD_TARGET", "unix:/tmp/x.sock")
    assert Client().target == "unix:/tmp/x.sock"


def test_the_clients_deadline_fails_the_call_but_not_the_shared_fetch(
    daemon: Daemon, client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Tweets(calls))
    calls.gate.clear()  # the fetch cannot finish before the impatient client's deadline
    with Client(daemon.target, timeout=0.5) as impatient:
        with pytest.raises(CachebackError) as raised:
            Tweets(calls, impatient).get("bob")
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    calls.wait_for(1, running=1)
    calls.gate.set()
    # The fetch went on: a patient reader gets its result (joining it or from the cache).
    assert Tweets(calls, client).get("bob") == ["bob tweet 1"]
    assert calls.args == [("bob",)]


def test_get_many_reads_many_items_in_one_call(
    client: Client, make_worker: Callable[..., Worker]
) -> None:
    make_worker(Echo)
    echo = Echo(client)
    echo.set("cached", data=["set by hand"])

    assert echo.get_many([("cached",), ("a", 1), ("cached",)]) == [
        ["set by hand"],
        ["a", 1],
        ["set by hand"],
    ]
    raw = echo.raw_get_many([("a", 1), ("b",)])
    assert isinstance(raw[0], Item) and (raw[0].state, raw[0].fetched) == (ItemState.FRESH, False)
    assert isinstance(raw[1], Item) and (raw[1].state, raw[1].fetched) == (ItemState.FRESH, True)
    assert raw[1].data == ["b"]
    # Over 1,000 args: several calls under the hood, one result per args, in order.
    assert echo.get_many([("cached",)] * 1500) == [["set by hand"]] * 1500


def test_get_many_gives_each_failed_item_its_own_error(client: Client) -> None:
    items = client.get_many("never.registered", [b"[1]", b"[2]"])
    assert [i.code for i in items if isinstance(i, CachebackError)] == [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.NOT_FOUND,
    ]
    with pytest.raises(CachebackError) as raised:
        Echo(client).get_many([("x",)])
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
