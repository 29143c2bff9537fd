"""The `CACHEBACKD` setting, with its defaults.

::

    CACHEBACKD = {
        "URL": "http://127.0.0.1:7070",   # default: CACHEBACKD_URL (or CACHEBACKD_TARGET)
        "TOKEN": "...",                    # default: CACHEBACKD_TOKEN
        "TIMEOUT": 5.0,                    # every call's deadline in seconds (default: none)
        "WORKER_NAME": "web-1",            # default: python-<host>-<pid>
        "CONCURRENCY": 16,                 # fetches per job at once (default: each job's max_in_flight)
        "JOBS": ["myapp.views.fetch_tweets"],  # jobs outside a jobs.py, by dotted path
        "CHECK_WORKERS": True,             # the system check that asks the daemon (default True)
        "CHECK_TIMEOUT": 1.0,              # how long that check waits for the daemon
    }
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_KEYS = {
    "URL",
    "TOKEN",
    "TIMEOUT",
    "WORKER_NAME",
    "CONCURRENCY",
    "JOBS",
    "CHECK_WORKERS",
    "CHECK_TIMEOUT",
}


@dataclass(frozen=True)
class Settings:
    """CACHEBACKD, read and checked; None means the environment's value or the default."""

    url: Optional[str] = None
    token: Optional[str] = None
    timeout: Optional[float] = None
    worker_name: Optional[str] = None
    concurrency: Optional[int] = None
    jobs: tuple[str, ...] = field(default_factory=tuple)
    check_workers: bool = True
    check_timeout: float = 1.0


def cachebackd_settings() -> Settings:
    """The CACHEBACKD setting; ImproperlyConfigured for a key it does not know (a typo
    would otherwise be silently ignored) or a value of the wrong type."""
    given: Any = getattr(settings, "CACHEBACKD", {})
    if not isinstance(given, dict):
        raise ImproperlyConfigured("CACHEBACKD must be a dict")
    unknown = sorted(set(given) - _KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"CACHEBACKD has unknown keys {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})"
        )
    jobs = given.get("JOBS", ())
    if isinstance(jobs, str) or not all(isinstance(j, str) for j in jobs):
        raise ImproperlyConfigured("CACHEBACKD['JOBS'] must be a list of dotted paths")
    concurrency = given.get("CONCURRENCY")
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise ImproperlyConfigured("CACHEBACKD['CONCURRENCY'] must be a positive integer")
    return Settings(
        url=given.get("URL"),
        token=given.get("TOKEN"),
        timeout=given.get("TIMEOUT"),
        worker_name=given.get("WORKER_NAME"),
        concurrency=concurrency,
        jobs=tuple(jobs),
        check_workers=bool(given.get("CHECK_WORKERS", True)),
        check_timeout=float(given.get("CHECK_TIMEOUT", 1.0)),
    )
