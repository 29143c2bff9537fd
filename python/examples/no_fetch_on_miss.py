"""The seed's second example: `@cacheback(lifetime=1200, fetch_on_miss=False)`.

django-cacheback::

    @cacheback(lifetime=1200, fetch_on_miss=False)
    def fetch_tweets(username):
        return twitter.user_timeline(username)

A miss returns None at once and the data is fetched in the background; the item stays
fresh for 20 minutes. Run a daemon, then `python examples/no_fetch_on_miss.py`.
"""

from __future__ import annotations

import fake_twitter
from timeline import show, wait_for_refresh

from cachebackd import Worker, cacheback


@cacheback(lifetime=1200, fetch_on_miss=False)
def fetch_tweets(username: str) -> list[str]:
    return fake_twitter.user_timeline(username)


def main() -> None:
    with Worker().serve(fetch_tweets) as worker:
        worker.wait_until_registered(timeout=30)
        job = fetch_tweets.job
        job.delete(fetch_tweets, "alice")
        show("miss: None at once, fetched in background", lambda: fetch_tweets("alice"))
        show("the background fetch landed", lambda: wait_for_refresh(job, fetch_tweets, "alice"))
        item = show("hit: cached, at once", lambda: job.get_item(fetch_tweets, "alice"))
        print(f"fresh for {(item.expires_at - item.stored_at).total_seconds():.0f}s")


if __name__ == "__main__":
    main()
