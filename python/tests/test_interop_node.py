"""Interop with the Node client (node/), through the real processes: a Node worker serves
Python readers, and a Python worker serves the Node client's reader.

The Node side is the Node package's own examples, built by `node/run-tests.sh --build-only`:
`serve_tweets` is a worker process for the seed's UserTweets (job `examples.UserTweets`)
that prints `ready` once registered and stops gracefully on SIGTERM; `read_tweets` reads
that job, one JSON line per username, and registers no worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest

from cachebackd import Client, ItemState, Job, Worker
from conftest import REPO, Daemon
from support import WAIT

NODE = REPO / "node"


@pytest.fixture(scope="session")
def node_examples() -> Path:
    """The Node package built (npm ci from the lock file when needed, then tsc)."""
    subprocess.run([str(NODE / "run-tests.sh"), "--build-only"], check=True, capture_output=True)
    return NODE / "dist" / "examples"


def node_env(daemon: Daemon) -> dict[str, str]:
    return {**os.environ, "CACHEBACKD_URL": f"http://{daemon.target}"}


@pytest.fixture
def node_worker(daemon: Daemon, node_examples: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        ["node", str(node_examples / "serve_tweets.js")],
        env=node_env(daemon),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read() if proc.stderr else ""
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)


class NodeTweets(Job):
    """The Python view of the examples' job."""

    name = "examples.UserTweets"
    lifetime = 600

    def __init__(self, calls: list[str], client: Client | None = None) -> None:
        super().__init__(client)
        self.calls = calls

    def fetch(self, username: str) -> list[str]:
        self.calls.append(username)
        return [f"@{username}: from the Python worker"]


def test_a_node_worker_serves_python_readers(
    client: Client, node_worker: subprocess.Popen[str]
) -> None:
    tweets = NodeTweets([], client)  # this process serves nothing: the Node worker fetches
    for username in ("bob", "caf\u00e9", "\U0001f600 {\"k\"}"):
        item = tweets.get_item(username)
        assert (item.state, item.fetched) == (ItemState.FRESH, True)
        assert item.data == [f"@{username}: from the Node worker"]
        assert item.expires_at - item.stored_at == timedelta(seconds=600)
    again = tweets.get_item("caf\u00e9")
    assert (again.state, again.fetched) == (ItemState.FRESH, False)
    assert tweets.calls == []
    # SIGTERM stops the Node worker gracefully: it exits 0 with its stream closed.
    node_worker.send_signal(signal.SIGTERM)
    assert node_worker.wait(WAIT) == 0


def test_a_python_worker_serves_a_node_reader(
    daemon: Daemon, client: Client, node_examples: Path
) -> None:
    calls: list[str] = []
    with Worker(client).serve(NodeTweets(calls)) as worker:
        assert worker.wait_until_registered(WAIT)

        def read(*usernames: str) -> list[dict[str, Any]]:
            done = subprocess.run(
                ["node", str(node_examples / "read_tweets.js"), *usernames],
                env=node_env(daemon),
                capture_output=True,
                text=True,
                timeout=WAIT * 4,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return [json.loads(line) for line in done.stdout.splitlines()]

        assert read("bob", "caf\u00e9") == [
            {"username": "bob", "state": "FRESH", "fetched": True, "data": ["@bob: from the Python worker"]},
            {
                "username": "caf\u00e9",
                "state": "FRESH",
                "fetched": True,
                "data": ["@caf\u00e9: from the Python worker"],
            },
        ]
        assert calls == ["bob", "caf\u00e9"]
        assert read("caf\u00e9")[0]["fetched"] is False
        assert calls == ["bob", "caf\u00e9"]
