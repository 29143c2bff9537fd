"""The seed's examples (examples/*.py) run against a real daemon and print their timeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Daemon
from support import WAIT

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, daemon: Daemon) -> list[str]:
    """Run an example; its printed lines, with spacing collapsed and timings cut off."""
    env = {**os.environ, "CACHEBACKD_TARGET": daemon.target, "FAKE_TWITTER_DELAY": "0.2"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT * 4,
    )
    assert done.returncode == 0, done.stderr
    return [" ".join(line.split()).rsplit(" (", 1)[0] for line in done.stdout.splitlines()]


def stale_or_refreshed(what: str, user: str) -> set[str]:
    """An example's read right after an invalidation: the stale data, unless the (slow,
    fake) refresh has already landed. The gated tests in test_seed.py pin this down."""
    return {
        f"{what} STALE ['@{user} tweet 1.2', '@{user} tweet 1.1']",
        f"{what} FRESH ['@{user} tweet 2.2', '@{user} tweet 2.1']",
    }


def test_decorated_function_example(daemon: Daemon) -> None:
    lines = run_example("decorated.py", daemon)
    tweets = lambda n: f"['@bob tweet {n}.2', '@bob tweet {n}.1']"  # noqa: E731
    assert lines[2] in stale_or_refreshed("invalidated: stale data at once", "bob")
    lines[2] = "(invalidated)"
    assert lines == [
        f"miss: waits for one fetch {tweets(1)}",
        f"hit: cached, at once {tweets(1)}",
        "(invalidated)",
        f"the background refresh landed FRESH {tweets(2)}",
        f"deleted: the next call fetches again {tweets(3)}",
    ]


def test_fetch_on_miss_false_example(daemon: Daemon) -> None:
    lines = run_example("no_fetch_on_miss.py", daemon)
    tweets = "['@alice tweet 1.2', '@alice tweet 1.1']"
    assert lines == [
        "miss: None at once, fetched in background None",
        f"the background fetch landed FRESH {tweets}",
        f"hit: cached, at once FRESH {tweets}",
        "fresh for 1200s",
    ]


def test_user_tweets_example(daemon: Daemon) -> None:
    lines = run_example("user_tweets.py", daemon)
    assert lines[6] in stale_or_refreshed("bob, invalidated: stale at once", "bob")
    lines[6] = "(invalidated)"
    assert lines == [
        "bob, a miss: None at once None",
        "someone-important, a miss: waits ['@someone-important tweet 1.2', '@someone-important tweet 1.1']",
        "bob, once fetched in background FRESH ['@bob tweet 1.2', '@bob tweet 1.1']",
        "someone-important, a hit FRESH ['@someone-important tweet 1.2', '@someone-important tweet 1.1']",
        "bob stays fresh for 600s",
        "someone-important stays fresh for 60s",
        "(invalidated)",
        "bob, refreshed in background FRESH ['@bob tweet 2.2', '@bob tweet 2.1']",
    ]


@pytest.mark.parametrize("name", ["decorated.py", "no_fetch_on_miss.py", "user_tweets.py"])
def test_examples_start_with_a_docstring_showing_the_django_cacheback_form(name: str) -> None:
    assert "django-cacheback::" in (EXAMPLES / name).read_text()
