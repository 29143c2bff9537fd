"""The seed's third example: a `Job` subclass with class attributes and overridden policy.

django-cacheback::

    class UserTweets(Job):
        lifetime = 600
        fetch_on_miss = False

        def fetch(self, username):
            return twitter.user_timeline(username)

        def expiry(self, username):
            if username in VIPS:
                return time.time() + 60
            return super().expiry(username)

        def should_missing_item_be_fetched_synchronously(self, username):
            return username in VIPS

    tweets = UserTweets().get(username)

The same class runs against cachebackd: `expiry` becomes the item's own lifetime and the
miss decision is sent with each read. Run a daemon, then `python examples/user_tweets.py`.
"""

from __future__ import annotations

import time

import fake_twitter
from timeline import show, wait_for_refresh

from cachebackd import Job, Worker

VIPS = {"someone-important"}


class UserTweets(Job):
    name = "examples.UserTweets"  # the Rust example's job: the two share items
    lifetime = 600
    fetch_on_miss = False

    def fetch(self, username):
        return fake_twitter.user_timeline(username)

    def expiry(self, username):
        if username in VIPS:
            return time.time() + 60
        return super().expiry(username)

    def should_missing_item_be_fetched_synchronously(self, username):
        return username in VIPS


def main() -> None:
    with Worker().serve(UserTweets) as worker:
        worker.wait_until_registered(timeout=30)
        tweets = UserTweets()
        for username in ("bob", "someone-important"):
            tweets.delete(username)
        show("bob, a miss: None at once", lambda: tweets.get("bob"))
        show("someone-important, a miss: waits", lambda: tweets.get("someone-important"))
        bob = show("bob, once fetched in background", lambda: wait_for_refresh(tweets, "bob"))
        vip = show("someone-important, a hit", lambda: tweets.get_item("someone-important"))
        for username, item in (("bob", bob), ("someone-important", vip)):
            lifetime = (item.expires_at - item.stored_at).total_seconds()
            print(f"{username} stays fresh for {lifetime:.0f}s")
        tweets.invalidate("bob")
        show("bob, invalidated: stale at once", lambda: tweets.get_item("bob"))
        show("bob, refreshed in background", lambda: wait_for_refresh(tweets, "bob"))


if __name__ == "__main__":
    main()
