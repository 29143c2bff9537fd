"""Interop with the Rust client (client/): an item fetched by a Rust worker is read by
the Python client under the same key.

The Rust side is the Rust client's own `user_tweets` example (the seed's UserTweets,
job `examples.UserTweets`): it runs its worker and its timeline against the test daemon,
leaving its items behind; then the Python example's `UserTweets`, which names the same
job, reads them. The other direction (a Python worker serving a Rust reader) needs a
Rust reader that does not also serve the job; until the Rust client has one,
test_interop.py checks it against a stub-level peer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest

from cachebackd import Client, ItemState
from conftest import REPO, Daemon
from support import WAIT

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="session")
def rust_user_tweets() -> Path:
    """The Rust client's user_tweets example, built like the daemon."""
    given = os.environ.get("CACHEBACK_RUST_EXAMPLES")
    if given:
        return Path(given) / "user_tweets"
    subprocess.run(
        ["cargo", "build", "-p", "cacheback", "--example", "user_tweets"], cwd=REPO, check=True
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "examples" / "user_tweets"


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
    bob = tweets.raw_get("bob")
    assert (bob.state, bob.fetched) == (ItemState.FRESH, False)
    assert is_rust_tweets("bob", bob.data)
    assert bob.expires_at - bob.stored_at == timedelta(seconds=600)  # the job's lifetime
    # celeb_ada's Rust expiry() gave it 3 s: by now it may be fresh or stale; either way
    # it is the Rust worker's data under the same key.
    celeb = tweets.raw_get("celeb_ada")
    assert (celeb.state in (ItemState.FRESH, ItemState.STALE), celeb.fetched) == (True, False)
    assert is_rust_tweets("celeb_ada", celeb.data)
    assert celeb.expires_at - celeb.stored_at == timedelta(seconds=3)
