"""Which jobs a Django project has: those in each installed app's `jobs.py`, found when
Django starts (as Celery's `autodiscover_tasks` finds `tasks.py`), and those named in
CACHEBACKD["JOBS"].

In a `jobs.py`, a job is any of: a `@cacheback` function defined there; a Job instance at
module level (`user_by_name = QuerySetGetJob(User)`); a Job subclass defined there that
overrides `fetch` and can be made without arguments (served as `UserTweets()`). Jobs are
told apart by name, so a class and an instance of it count once.
"""

from __future__ import annotations

import inspect
import sys
from types import ModuleType
from typing import Any, Iterator, Optional

from django.apps import apps
from django.utils.module_loading import autodiscover_modules, import_string

from cachebackd.job import CachedFunction, FunctionJob, Job
from .settings import cachebackd_settings

#: The module of each app that holds its jobs.
MODULE = "jobs"


def autodiscover() -> None:
    """Import every installed app's `jobs.py` and each CACHEBACKD["JOBS"] path (an error
    in one propagates, as Django's admin autodiscovery does: a job module that fails to
    import is a bug to see at startup)."""
    autodiscover_modules(MODULE)
    for path in cachebackd_settings().jobs:
        import_string(path)


def discovered() -> list[Job]:
    """Every job of the project, one per name, in app order then definition order."""
    jobs: dict[str, Job] = {}
    for app in apps.get_app_configs():
        module = sys.modules.get(f"{app.name}.{MODULE}")
        if module is not None:
            for job in jobs_in(module):
                jobs.setdefault(job.name, job)
    for path in cachebackd_settings().jobs:
        named = as_job(import_string(path))
        if named is None:
            raise TypeError(f"CACHEBACKD['JOBS']: {path} is not a job")
        jobs.setdefault(named.name, named)
    return list(jobs.values())


def jobs_in(module: ModuleType) -> Iterator[Job]:
    """The jobs that `module` defines (see the module's doc)."""
    for value in list(vars(module).values()):
        if isinstance(value, CachedFunction):
            if value.fn.__module__ == module.__name__:
                yield value.job
        elif isinstance(value, type):
            if value.__module__ == module.__name__ and _servable_class(value):
                yield value()
        else:
            job = as_job(value)
            if job is not None:
                yield job


def as_job(value: Any) -> Optional[Job]:
    """`value` as a servable job: a bound Job instance, a @cacheback function, or a Job
    class made without arguments; None for anything else."""
    if isinstance(value, CachedFunction):
        job: Job = value.job
        return job
    if isinstance(value, Job):
        return None if isinstance(value, FunctionJob) and value.fn is None else value
    if isinstance(value, type) and _servable_class(value):
        made: Job = value()
        return made
    return None


def _servable_class(cls: type) -> bool:
    if not issubclass(cls, Job) or issubclass(cls, FunctionJob) or cls.fetch is Job.fetch:
        return False
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return all(
        p.default is not inspect.Parameter.empty
        or p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        for p in parameters
    )
