"""The app config: reads CACHEBACKD, discovers the jobs, registers the system check."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks

from cachebackd.client import configure_default_client


class CachebackdConfig(AppConfig):
    """`"cachebackd.contrib.django"` in INSTALLED_APPS."""

    name = "cachebackd.contrib.django"
    label = "cachebackd"
    verbose_name = "cachebackd"

    def ready(self) -> None:
        from . import registry
        from .checks import check_workers
        from .settings import cachebackd_settings

        config = cachebackd_settings()
        # The client is made on first use, in the process that uses it (after a fork).
        configure_default_client(config.url, token=config.token, timeout=config.timeout)
        registry.autodiscover()
        checks.register(check_workers, "cachebackd")
