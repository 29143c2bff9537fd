"""Interop with the Rust client (client/): an item fetched by a Rust worker is read by
the Python client under the same key.

The Rust side is the Rust client's own `user_tweets` example (the seed's UserTweets,
job `examples.UserTweets`): it runs its worker and its timeline against the test daemon,
leaving its items behind; then the Python example's `UserTweets`, which names the same
job, reads them. The other direction: a Python worker serves the Rust client's
`read_tweets` example, a reader that registers no worker of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest

from cachebackd import Absent, Client, ItemState, Job, Worker
from conftest import REPO, Daemon
from support import WAIT

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="session")
def rust_examples() -> Path:
    """The Rust client's examples used here, built like the daemon."""
    given = os.environ.get("CACHEBACK_RUST_EXAMPLES")
    if given:
        return Path(given)
    build = ["cargo", "build", "-p", "cacheback", "--example", "user_tweets"]
    subprocess.run([*build, "--example", "read_tweets"], cwd=REPO, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "examples"


@pytest.fixture(scope="session")
def rust_user_tweets(rust_examples: Path) -> Path:
    return rust_examples / "user_tweets"


def is_rust_tweets(username: str, data: Any) -> bool:
    """What the Rust example's fake Twitter returns, decoded by Python."""
    return (
        isinstance(data, list)
        and len(data) == 1
        and re.fullmatch(rf"@{username}: tweet fetched by API call #\d+", data[0]) is not None
    )


@pytest.fixture
def python_examples() -> Iterator[None]:
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


def test_items_fetched_by_the_rust_worker_are_read_by_python(
    daemon: Daemon, client: Client, rust_user_tweets: Path, python_examples: None
) -> None:
    done = subprocess.run(
        [str(rust_user_tweets)],
        env={**os.environ, "CACHEBACKD_URL": f"http://{daemon.target}"},
        capture_output=True,
        text=True,
        timeout=WAIT * 4,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    from user_tweets import UserTweets  # the Python example: the same job, no worker now

    tweets = UserTweets(client)
    bob = tweets.get_item("bob")
    assert (bob.state, bob.fetched) == (ItemState.FRESH, False)
    assert is_rust_tweets("bob", bob.data)
    assert bob.expires_at - bob.stored_at == timedelta(seconds=600)  # the job's lifetime
    # Keyword arguments are bound to fetch's signature: the same item the Rust worker filled.
    assert tweets.get_item(username="bob") == bob
    # celeb_ada's Rust expiry() gave it 3 s: by now it may be fresh or stale; either way
    # it is the Rust worker's data under the same key.
    celeb = tweets.get_item("celeb_ada")
    assert (celeb.state in (ItemState.FRESH, ItemState.STALE), celeb.fetched) == (True, False)
    assert is_rust_tweets("celeb_ada", celeb.data)
    assert celeb.expires_at - celeb.stored_at == timedelta(seconds=3)


class PythonTweets(Job):
    """A Python worker for the Rust example's job."""

    name = "examples.UserTweets"
    lifetime = 600

    def __init__(self, calls: list[str], client: Client | None = None) -> None:
        super().__init__(client)
        self.calls = calls

    def fetch(self, username: str) -> list[str]:
        self.calls.append(username)
        return [f"@{username}: from the Python worker"]


def read_with_rust(reader: Path, daemon: Daemon, *usernames: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(reader), *usernames],
        env={**os.environ, "CACHEBACKD_URL": f"http://{daemon.target}"},
        capture_output=True,
        text=True,
        timeout=WAIT * 4,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_python_worker_serves_a_rust_reader(
    daemon: Daemon, client: Client, rust_examples: Path
) -> None:
    calls: list[str] = []
    with Worker(client).serve(PythonTweets(calls)) as worker:
        worker.wait_until_registered(timeout=WAIT)
        reader = rust_examples / "read_tweets"
        first = read_with_rust(reader, daemon, "bob", "caf\u00e9")
        assert first == [
            {
                "username": "bob",
                "state": "FRESH",
                "fetched": True,
                "data": ["@bob: from the Python worker"],
            },
            {
                "username": "caf\u00e9",
                "state": "FRESH",
                "fetched": True,
                "data": ["@caf\u00e9: from the Python worker"],
            },
        ]
        assert calls == ["bob", "caf\u00e9"]
        # Read again: a cache hit, under the key the Python client uses too.
        again = read_with_rust(reader, daemon, "bob")
        assert (again[0]["state"], again[0]["fetched"]) == ("FRESH", False)
        assert calls == ["bob", "caf\u00e9"]
        # And the Python client reads the very same item.
        mine = PythonTweets([], client).get_item("bob")
        assert (mine.state, mine.fetched) == (ItemState.FRESH, False)
        assert mine.data == ["@bob: from the Python worker"]


class KeywordTweets(Job):
    """The Rust example's job, written with keyword arguments on the Python side."""

    name = "examples.UserTweets"

    def fetch(self, username: str) -> list[str]:
        return [f"@{username}: fetched in Python"]


def test_an_item_set_with_keyword_arguments_is_the_one_a_rust_reader_reads(
    daemon: Daemon, client: Client, rust_examples: Path
) -> None:
    with Worker(client).serve(KeywordTweets()) as worker:
        worker.wait_until_registered(timeout=WAIT)
        KeywordTweets(client).set(username="bob", data=["@bob: set by keyword in Python"])
        [bob] = read_with_rust(rust_examples / "read_tweets", daemon, "bob")
        assert bob == {
            "username": "bob",
            "state": "FRESH",
            "fetched": False,
            "data": ["@bob: set by keyword in Python"],
        }
        # And what the Rust reader had fetched (positionally) a Python keyword read finds.
        [alice] = read_with_rust(rust_examples / "read_tweets", daemon, "alice")
        assert (alice["fetched"], alice["data"]) == (True, ["@alice: fetched in Python"])
        mine = KeywordTweets(client).get_item(username="alice")
        assert (mine.state, mine.fetched, mine.data) == (ItemState.FRESH, False, alice["data"])


class PickledTweets(KeywordTweets):
    """The same job opting into pickle: Python-only from then on."""

    name = "examples.UserTweets"
    codec = "pickle"

    def fetch(self, username: str) -> tuple[str, ...]:
        return (f"@{username}: a tuple only Python reads",)


def test_a_pickle_jobs_items_are_refused_by_a_rust_reader(
    daemon: Daemon, client: Client, rust_examples: Path
) -> None:
    with Worker(client).serve(PickledTweets()) as worker:
        worker.wait_until_registered(timeout=WAIT)
        assert PickledTweets(client).get("bob") == ("@bob: a tuple only Python reads",)
        done = subprocess.run(
            [str(rust_examples / "read_tweets"), "bob"],
            env={**os.environ, "CACHEBACKD_URL": f"http://{daemon.target}"},
            capture_output=True,
            text=True,
            timeout=WAIT * 4,
        )
    # The Rust reader cannot decode the pickle as its JSON and says so; it never sees
    # garbage as data.
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("bob: "), done.stderr
    assert "decod" in done.stderr.lower(), done.stderr


class AbsentTweets(Job):
    """The Rust example's job, served by a Python worker that knows nobody called "nobody"."""

    name = "examples.UserTweets"

    def fetch(self, username: str) -> list[str]:
        if username == "nobody":
            raise Absent()
        return [f"@{username}: from the Python worker"]

    def tags(self, username: str) -> list[str]:
        return [f"user:{username}"]


def test_an_absence_and_tags_from_a_python_worker_reach_a_rust_reader(
    daemon: Daemon, client: Client, rust_examples: Path
) -> None:
    with Worker(client).serve(AbsentTweets()) as worker:
        worker.wait_until_registered(timeout=WAIT)
        reader = rust_examples / "read_tweets"
        nobody, bob = read_with_rust(reader, daemon, "nobody", "bob")
        assert nobody == {
            "username": "nobody",
            "state": "FRESH",
            "fetched": True,
            "data": None,
            "absent": True,
            "tags": ["user:nobody"],
        }
        assert bob["data"] == ["@bob: from the Python worker"] and bob["tags"] == ["user:bob"]
        # A tag invalidated from Python is seen by the Rust reader: stale, refreshing.
        client.invalidate_tags(["user:bob"])
        (again,) = read_with_rust(reader, daemon, "bob")
        assert again["state"] == "STALE"
