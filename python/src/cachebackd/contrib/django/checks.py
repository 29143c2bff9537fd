"""The system check: a discovered job that no worker serves cannot fill a miss."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from django.apps import AppConfig
from django.core import checks

from cachebackd.client import default_client
from cachebackd.errors import CachebackError
from . import registry
from .settings import cachebackd_settings

HINT = "run `python manage.py cachebackd_worker` (it serves every job in the apps' jobs.py)"


def check_workers(
    app_configs: Optional[Sequence[AppConfig]] = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """cachebackd.W001 for each discovered job that no worker serves now; cachebackd.W002
    if the daemon cannot be asked (CACHEBACKD["CHECK_WORKERS"] = False turns it off)."""
    config = cachebackd_settings()
    jobs = registry.discovered()
    if not config.check_workers or not jobs:
        return []
    try:
        workers = default_client().workers(timeout=config.check_timeout)
    except CachebackError as error:
        return [
            checks.Warning(
                f"cannot ask cachebackd which jobs have workers: {error}",
                hint="start the daemon, or check CACHEBACKD['URL']",
                id="cachebackd.W002",
            )
        ]
    return [
        checks.Warning(
            f"no worker serves job {job.name!r}: reads that miss will fail (NOT_FOUND for a "
            "job never registered, UNAVAILABLE once none is connected)",
            hint=HINT,
            obj=job,
            id="cachebackd.W001",
        )
        for job in jobs
        if workers.get(job.name, 0) == 0
    ]
