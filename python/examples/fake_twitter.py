"""A stand-in for Twitter's API: slow, and newer on every call, so refreshes show."""

from __future__ import annotations

import collections
import os
import threading
import time

#: Seconds one call takes (the examples' tests set it to 0).
DELAY = float(os.environ.get("FAKE_TWITTER_DELAY", "0.5"))

_lock = threading.Lock()
_calls: collections.Counter[str] = collections.Counter()


def user_timeline(username: str) -> list[str]:
    """The user's latest tweets, after a slow round trip: call n of a user returns
    tweets n.2 and n.1."""
    time.sleep(DELAY)
    with _lock:
        _calls[username] += 1
        call = _calls[username]
    return [f"@{username} tweet {call}.{i}" for i in range(2, 0, -1)]
