"""cachebackd: serve cached data at once and refresh it in the background.

The Python client and worker of the cachebackd daemon, with django-cacheback's API::

    from cachebackd import Job, Worker, cacheback

    class UserTweets(Job):
        lifetime = 600
        def fetch(self, username):
            return slow_fetch(username)

    Worker().serve(UserTweets).start()   # in the app server: runs fetches for the daemon
    tweets = UserTweets().get("bob")     # anywhere: cached data at once

The daemon is found at CACHEBACKD_TARGET (`host:port`, `https://host:port` for TLS, or
`unix:/path`), else 127.0.0.1:7070; CACHEBACKD_TOKEN and CACHEBACKD_TLS_CA / _CERT / _KEY
are its credentials.
"""

from datetime import datetime

from ._codec import encode_args, encode_json
from ._near import MAX_NEAR_CACHE_ITEMS, NearCacheStats
from ._security import TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV, TlsConfig
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
from .errors import CachebackdWarning, CachebackError, CodecError, FetchFailed, NoDaemonError
from .job import Call, CachedFunction, FunctionJob, Job, cacheback, validate_name
from .outcomes import Absent, FetchContext, Fetched, NotModified, fetch_context
from .worker import AnswerRefused, Worker

__version__ = "0.1.0"

def invalidate_tags(tags: "list[str] | tuple[str, ...]", client: "Client | None" = None) -> "datetime":
    """Mark every item, of any job, carrying one of `tags` stale (through `client`, else
    the process-wide one): each refreshes on its next read, so a tag on a million items
    causes no stampede. See `Job.tags`."""
    return (client or default_client()).invalidate_tags(tags)


__all__ = [
    "Absent",
    "AnswerRefused",
    "DEFAULT_TARGET",
    "MAX_NEAR_CACHE_ITEMS",
    "TARGET_ENV",
    "TLS_CA_ENV",
    "TLS_CERT_ENV",
    "TLS_KEY_ENV",
    "TlsConfig",
    "TOKEN_ENV",
    "URL_ENV",
    "CachebackError",
    "NoDaemonError",
    "CachebackdWarning",
    "CachedFunction",
    "Call",
    "Client",
    "CodecError",
    "FetchContext",
    "FetchFailed",
    "Fetched",
    "FunctionJob",
    "Invalidated",
    "Item",
    "ItemState",
    "Job",
    "NearCacheStats",
    "NotModified",
    "Worker",
    "cacheback",
    "default_client",
    "encode_args",
    "encode_json",
    "fetch_context",
    "invalidate_tags",
    "set_default_client",
    "validate_name",
]
