"""The app's jobs, as a django-cacheback project writes them; only the imports changed
(`cacheback.base` / `cacheback.decorators` / `cacheback.jobs` became these)."""

import time
from pathlib import Path

from cachebackd import Job, cacheback
from cachebackd.contrib.django.jobs import QuerySetFilterJob, QuerySetGetJob

from .models import Tweet


class UserTweets(Job):
    """The seed's job, with the database in place of Twitter."""

    def fetch(self, username):
        return list(Tweet.objects.filter(author=username).order_by("id").values_list("text", flat=True))


@cacheback(lifetime=1200)
def tweet_count(username, include_replies=False):
    tweets = Tweet.objects.filter(author=username)
    if not include_replies:
        tweets = tweets.exclude(text__startswith="@")
    return tweets.count()


tweet_by = QuerySetGetJob(Tweet)
tweets_where = QuerySetFilterJob(Tweet, lifetime=60)


class Gated(Job):
    """A fetch that holds until told: it marks `<marker>.started`, then waits for
    `<marker>.go` (a test's way to hold a fetch in flight in another process)."""

    refresh_timeout = 120

    def fetch(self, marker):
        Path(f"{marker}.started").touch()
        deadline = time.monotonic() + 60
        while not Path(f"{marker}.go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return "finished"
