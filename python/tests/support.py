"""Helpers for the tests: a recorder for fetches, and waiting on a state."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional, TypeVar

from cachebackd import Client, Job

#: How long a test waits for something that should happen soon (a registration, a fetch
#: starting, a refresh landing); only a hang ever reaches it.
WAIT = 30.0

T = TypeVar("T")


def eventually(read: Callable[[], T], until: Callable[[T], bool]) -> T:
    """Read until `until` holds of the result, and return it: for a background refresh,
    whose landing the daemon does not announce. Fails after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        value = read()
        if until(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {WAIT}s"
        time.sleep(0.01)


class Calls:
    """What a test job's fetch saw, and a gate to hold fetches back."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.args: list[tuple[Any, ...]] = []
        self.running = 0
        self.most_running = 0
        self.gate = threading.Event()
        self.gate.set()

    def enter(self, *args: Any) -> int:
        """Record a fetch of `args`, wait at the gate; returns the fetch's number (1-based)."""
        with self._cond:
            self.args.append(args)
            n = len(self.args)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self._cond.notify_all()
        try:
            assert self.gate.wait(WAIT), "the test never opened the gate"
        finally:
            with self._cond:
                self.running -= 1
                self._cond.notify_all()
        return n

    @property
    def count(self) -> int:
        with self._cond:
            return len(self.args)

    def wait_for(self, count: int, running: Optional[int] = None) -> None:
        """Until `count` fetches have started (and, if given, `running` are running)."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len(self.args) >= count and (running is None or self.running == running),
                WAIT,
            )
        assert ok, f"waited for {count} fetches ({running} running); saw {self.args}"


class Tweets(Job):
    """The seed's UserTweets, with a recording fetch in place of Twitter."""

    name = "tests.Tweets"

    def __init__(self, calls: Calls, client: Client | None = None) -> None:
        super().__init__(client)
        self.calls = calls

    def fetch(self, username: str) -> list[str]:
        n = self.calls.enter(username)
        return [f"{username} tweet {n}"]
