"""cachebackd: serve cached data at once and refresh it in the background.

The Python client and worker of the cachebackd daemon, with django-cacheback's API::

    from cachebackd import Job, Worker, cacheback

    class UserTweets(Job):
        lifetime = 600
        def fetch(self, username):
            return slow_fetch(username)

    Worker().serve(UserTweets).start()   # in the app server: runs fetches for the daemon
    tweets = UserTweets().get("bob")     # anywhere: cached data at once

The daemon is found at CACHEBACKD_TARGET (`host:port` or `unix:/path`), else
127.0.0.1:7070.
"""

from ._codec import encode_args, encode_json
from ._near import MAX_NEAR_CACHE_ITEMS, NearCacheStats
from .client import (
    DEFAULT_TARGET,
    TARGET_ENV,
    TOKEN_ENV,
    URL_ENV,
    Client,
    Invalidated,
    Item,
    ItemState,
    default_client,
    set_default_client,
)
from .errors import CachebackdWarning, CachebackError, CodecError, FetchFailed
from .job import Call, CachedFunction, FunctionJob, Job, cacheback, validate_name
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET",
    "MAX_NEAR_CACHE_ITEMS",
    "TARGET_ENV",
    "TOKEN_ENV",
    "URL_ENV",
    "CachebackError",
    "CachebackdWarning",
    "CachedFunction",
    "Call",
    "Client",
    "CodecError",
    "FetchFailed",
    "FunctionJob",
    "Invalidated",
    "Item",
    "ItemState",
    "Job",
    "NearCacheStats",
    "Worker",
    "cacheback",
    "default_client",
    "encode_args",
    "encode_json",
    "set_default_client",
    "validate_name",
]
