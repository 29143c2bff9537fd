"""The seed's first example: `@cacheback()` on a function.

django-cacheback::

    @cacheback()
    def fetch_tweets(username):
        return twitter.user_timeline(username)

With cachebackd the decorator is the same; a Worker in the app server runs the fetches.
Run a daemon (cachebackd --listen 127.0.0.1:7070), then `python examples/decorated.py`.
"""

from __future__ import annotations

import fake_twitter
from timeline import show, wait_for_refresh

from cachebackd import Worker, cacheback


@cacheback()
def fetch_tweets(username: str) -> list[str]:
    return fake_twitter.user_timeline(username)


def main() -> None:
    with Worker().serve(fetch_tweets) as worker:
        worker.wait_until_registered(timeout=30)
        job = fetch_tweets.job
        job.delete(fetch_tweets, "bob")  # start from a miss, whatever earlier runs left
        show("miss: waits for one fetch", lambda: fetch_tweets("bob"))
        show("hit: cached, at once", lambda: fetch_tweets("bob"))
        job.invalidate(fetch_tweets, "bob")
        show("invalidated: stale data at once", lambda: job.get_item(fetch_tweets, "bob"))
        show("the background refresh landed", lambda: wait_for_refresh(job, fetch_tweets, "bob"))
        job.delete(fetch_tweets, "bob")
        show("deleted: the next call fetches again", lambda: fetch_tweets("bob"))


if __name__ == "__main__":
    main()
