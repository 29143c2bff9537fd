"""The Python client's near cache (`Client(..., near_cache=N)`) against the real daemon:
a local hit never reaches it, a write by anyone ends the local copy (also one by the Rust
`cachebackd ctl`), so do its expiry and the loss of the stream, and the bound holds."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from cachebackd import Client, ItemState, Job, NearCacheStats, Worker
from cachebackd._proto import cacheback_pb2 as pb
from cachebackd._proto.cacheback_pb2_grpc import CachebackAdminStub
from conftest import Daemon, free_port
from support import WAIT, eventually

JOB = "tests.Near"


def scrape(metrics: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=WAIT) as r:
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def daemon_gets(metrics: str) -> float:
    s = scrape(metrics)
    return sum(
        s.get(f'cachebackd_gets_total{{job="{JOB}",outcome="{o}"}}', 0.0)
        for o in ("fresh", "stale", "miss")
    )


def await_subscribed(metrics: str, n: int) -> None:
    """The daemon has applied the stream's adds (they travel on their own stream)."""
    eventually(lambda: scrape(metrics).get("cachebackd_subscribed_items"), lambda v: v == n)


def await_held(client: Client, n: int) -> None:
    eventually(lambda: stats(client).items, lambda v: v == n)


def stats(client: Client) -> NearCacheStats:
    s = client.near_cache_stats()
    assert s is not None
    return s


@pytest.fixture
def metrics_daemon(make_daemon: Callable[..., Daemon]) -> tuple[Daemon, str]:
    metrics = f"127.0.0.1:{free_port()}"
    return make_daemon("--metrics-listen", metrics), metrics


@pytest.fixture
def writer(metrics_daemon: tuple[Daemon, str]) -> Iterator[Client]:
    """A plain client: the other reader and writer."""
    daemon, _ = metrics_daemon
    with Client(daemon.target, timeout=WAIT) as c:
        yield c


@pytest.fixture
def near(metrics_daemon: tuple[Daemon, str]) -> Iterator[Client]:
    daemon, _ = metrics_daemon
    with Client(daemon.target, timeout=WAIT, near_cache=100) as c:
        c.wait_until_ready(WAIT)
        yield c


class Near(Job):
    name = JOB

    def fetch(self, user: str) -> str:
        return f"{user} fetched"


def register(client: Client) -> Worker:
    worker = Worker(client)
    worker.serve(Near())
    worker.start()
    assert worker.wait_until_registered(WAIT)
    return worker


ARGS = b'["bob"]'


def test_a_near_cache_hit_does_not_reach_the_daemon(
    metrics_daemon: Any, writer: Client, near: Client
) -> None:
    _, metrics = metrics_daemon
    worker = register(writer)
    try:
        first = near.get(JOB, ARGS)
        assert (first.state, first.fetched, first.data) == (ItemState.FRESH, True, b'"bob fetched"')
        assert daemon_gets(metrics) == 1
        for _ in range(10):
            item = near.get(JOB, ARGS)
            assert (item.state, item.data, item.expires_at, item.fetched) == (
                ItemState.FRESH,
                b'"bob fetched"',
                first.expires_at,
                False,
            )
        assert daemon_gets(metrics) == 1, "no hit reached the daemon"
        assert stats(near) == NearCacheStats(hits=10, misses=1, items=1, resets=0)
        assert writer.near_cache_stats() is None
    finally:
        worker.stop()


@pytest.mark.parametrize("write", ["set", "invalidate", "delete", "invalidate_job"])
def test_writes_by_another_client_end_the_local_copy(
    metrics_daemon: Any, writer: Client, near: Client, write: str
) -> None:
    _, metrics = metrics_daemon
    worker = register(writer)
    try:
        writer.set(JOB, ARGS, b'"before"')
        assert near.get(JOB, ARGS).data == b'"before"'
        await_subscribed(metrics, 1)
        assert near.get(JOB, ARGS).data == b'"before"'
        before = stats(near)
        assert before.hits == 1
        if write == "set":
            writer.set(JOB, ARGS, b'"after"')
        elif write == "invalidate":
            writer.invalidate(JOB, ARGS)
        elif write == "delete":
            assert writer.delete(JOB, ARGS)
        else:
            CachebackAdminStub(writer.channel).InvalidateJob(
                pb.InvalidateJobRequest(job=JOB), timeout=WAIT
            )
        await_held(near, 0)
        after = near.get(JOB, ARGS)
        assert stats(near).misses == before.misses + 1
        assert stats(near).hits == before.hits
        if write == "set":
            assert after.data == b'"after"'
        elif write == "delete":
            assert after.fetched
        else:
            # Stale (refreshing) or already refreshed: never the local copy.
            assert after.state is ItemState.STALE or after.data == b'"bob fetched"'
    finally:
        worker.stop()


def test_this_clients_own_write_ends_its_copy_at_once(near: Client) -> None:
    worker = register(near)
    try:
        near.get(JOB, ARGS)
        near.set(JOB, ARGS, b'"mine"')
        assert near.get(JOB, ARGS).data == b'"mine"'
    finally:
        worker.stop()


def test_expiry_ends_the_local_copy(metrics_daemon: Any, writer: Client, near: Client) -> None:
    _, metrics = metrics_daemon
    worker = register(writer)
    try:
        expires = writer.set(JOB, ARGS, b'"short"', lifetime=1)
        assert near.get(JOB, ARGS).state is ItemState.FRESH
        assert near.get(JOB, ARGS).state is ItemState.FRESH
        assert stats(near).hits == 1
        gets = daemon_gets(metrics)
        time.sleep(max(0.0, expires.timestamp() - time.time()) + 0.02)
        item = near.get(JOB, ARGS)
        assert item.state is ItemState.STALE
        assert daemon_gets(metrics) == gets + 1
        assert stats(near).hits == 1
    finally:
        worker.stop()


def test_a_lost_stream_drops_everything(metrics_daemon: Any, near: Client) -> None:
    daemon, _ = metrics_daemon
    worker = register(near)
    for user in ("ann", "bob", "cy"):
        near.get(JOB, f'["{user}"]'.encode())
    await_held(near, 3)
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait()
    await_held(near, 0)
    assert stats(near).resets == 1
    worker.stop()
    daemon.start()
    worker = register(near)
    try:
        hits = stats(near).hits
        eventually(lambda: near.get(JOB, ARGS).state, lambda s: s is ItemState.FRESH)
        assert stats(near).hits == hits
    finally:
        worker.stop()


def test_the_bound_holds(metrics_daemon: Any, writer: Client, make_daemon: Any) -> None:
    daemon, metrics = metrics_daemon
    worker = register(writer)
    try:
        with Client(daemon.target, timeout=WAIT, near_cache=5) as small:
            small.wait_until_ready(WAIT)
            for i in range(200):
                args = f'["user{i}"]'.encode()
                writer.set(JOB, args, b"1")
                assert small.get(JOB, args).data == b"1"
            s = stats(small)
            assert s.items <= 5 and s.misses == 200
            assert scrape(metrics).get("cachebackd_subscribed_items", 0) <= 5 + 64 + 1
    finally:
        worker.stop()


def test_a_write_by_the_rust_ctl_ends_the_local_copy(
    metrics_daemon: Any, writer: Client, near: Client, cachebackd_bin: Path
) -> None:
    daemon, metrics = metrics_daemon
    worker = register(writer)
    try:
        writer.set(JOB, ARGS, b'"python"')
        assert near.get(JOB, ARGS).data == b'"python"'
        await_subscribed(metrics, 1)
        subprocess.run(
            [str(cachebackd_bin), "ctl", "--addr", daemon.target, "set", JOB, '["bob"]', '"rust"'],
            check=True,
            capture_output=True,
            timeout=WAIT,
        )
        await_held(near, 0)
        assert near.get(JOB, ARGS).data == b'"rust"'
    finally:
        worker.stop()
