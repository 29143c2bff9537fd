"""cachebackd for Django: `pip install "cachebackd[django]"`, then add
`"cachebackd.contrib.django"` to INSTALLED_APPS.

- Settings: `CACHEBACKD = {"URL": ..., "TOKEN": ..., "TIMEOUT": ...}`, each defaulting to
  the environment (CACHEBACKD_URL, CACHEBACKD_TOKEN), as the other clients read it.
- The jobs in each installed app's `jobs.py` are discovered when Django starts, as Celery's
  `autodiscover_tasks` finds `tasks.py` (`cachebackd.contrib.django.registry`).
- `python manage.py cachebackd_worker` serves every discovered job: the process that
  replaces cacheback's Celery or RQ workers.
- `cachebackd.contrib.django.jobs`: cacheback's `QuerySetGetJob`, `QuerySetFilterJob`.
- A system check warns about discovered jobs that no worker serves.
"""
