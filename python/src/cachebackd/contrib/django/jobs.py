"""django-cacheback's `cacheback.jobs`: `FunctionJob` and the queryset jobs.

`QuerySetGetJob(User).get(username="bob")` caches `User.objects.get(username="bob")`;
`QuerySetFilterJob(User).get(is_staff=True)` caches `User.objects.filter(is_staff=True)`
(evaluated: the cached value is the queryset with its results). As in cacheback, they
need no subclass: the model is given to `__init__`, and the lookups are keyword arguments.

Each is one job per model (`cachebackd.contrib.django.jobs.QuerySetGetJob:auth.User`), so
`QuerySetGetJob(User)` made in a view is the same job as one declared in a `jobs.py`, where
the worker finds it (`user_by_name = QuerySetGetJob(User)`). Their data are model instances,
so they use the pickle codec: only Python reads them (see `Job.codec` for what that trusts).
A lookup's model instance is sent as its primary key.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from django.db.models import Model

from cachebackd.client import Client
from cachebackd.errors import warn_once
from cachebackd.job import _NO_CACHE_ALIAS, _NO_TASK_OPTIONS, FunctionJob, Job, validate_name
from cachebackd._codec import Seconds

__all__ = ["FunctionJob", "QuerySetFilterJob", "QuerySetGetJob", "QuerySetJob"]


class QuerySetJob(Job):
    """Helper class for wrapping ORM reads, as cacheback's: `QuerySetJob(model, lifetime,
    fetch_on_miss, cache_alias, task_options)`."""

    codec = "pickle"

    def __init__(
        self,
        model: type[Model],
        lifetime: Optional[Seconds] = None,
        fetch_on_miss: Optional[bool] = None,
        cache_alias: Optional[str] = None,
        task_options: Optional[dict[str, Any]] = None,
        *,
        client: Optional[Client] = None,
    ) -> None:
        super().__init__(client)
        self.model = model
        if lifetime is not None:
            self.lifetime = lifetime
        if fetch_on_miss is not None:
            self.fetch_on_miss = fetch_on_miss
        self.cache_alias, self.task_options = cache_alias, task_options
        self.name = validate_name(f"{type(self).name}:{model._meta.label}")
        if cache_alias is not None:
            warn_once(self.name, "cache_alias", _NO_CACHE_ALIAS)
        if task_options is not None:
            warn_once(self.name, "task_options", _NO_TASK_OPTIONS)

    def get_init_kwargs(self) -> dict[str, Any]:
        return {"model": self.model, "lifetime": self.lifetime, "cache_alias": self.cache_alias}

    def prepare_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        """A model instance in a lookup travels as its primary key (`author=user` is
        `author=user.pk` to the ORM)."""
        return {k: v.pk if isinstance(v, Model) else v for k, v in kwargs.items()}

    def wire_args(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """The lookups as one JSON object: the item's args are `[{"username":"bob"}]`."""
        if args:
            raise TypeError(
                f"{type(self).__name__} takes its lookups as keyword arguments, as in "
                "django-cacheback: .get(username='bob')"
            )
        return (kwargs,)

    def call_args(self, wire: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if len(wire) != 1 or not isinstance(wire[0], dict):
            raise ValueError(f"{self.name}: args must be one JSON object of lookups, got {wire!r}")
        return (), dict(wire[0])


class QuerySetGetJob(QuerySetJob):
    """For ORM reads that use the `get` method. `Model.DoesNotExist` raised by the worker
    reaches the reader as a FetchFailed that is also a `Model.DoesNotExist`."""

    def fetch(self, *args: Any, **kwargs: Any) -> Any:
        return self.model._default_manager.get(**kwargs)


class QuerySetFilterJob(QuerySetJob):
    """For ORM reads that use the `filter` method."""

    def fetch(self, *args: Any, **kwargs: Any) -> Any:
        return self.model._default_manager.filter(**kwargs)
