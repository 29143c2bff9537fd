from django.http import Http404
from django.shortcuts import render

from cachebackd.contrib.django.jobs import QuerySetGetJob

from .jobs import UserTweets
from .models import Tweet


def tweets(request, username):
    """The seed's view, as django-cacheback's usage guide writes it."""
    return render(request, "tweets.html", {"tweets": UserTweets().get(username)})


def tweet_detail(request, pk):
    """cacheback's queryset example: the job is made in the view (it is the same job as
    the `tweet_by` that jobs.py declares, which the worker serves)."""
    try:
        tweet = QuerySetGetJob(Tweet).get(pk=pk)
    except Tweet.DoesNotExist:
        raise Http404("no such tweet")
    return render(request, "tweet.html", {"tweet": tweet})
