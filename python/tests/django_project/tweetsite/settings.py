"""A small Django project for the tests: the seed's tweets view, read through cachebackd.

The daemon is found at CACHEBACKD_URL (CACHEBACKD's default); the SQLite file at
TWEETSITE_DB, shared by the test process and its `manage.py cachebackd_worker`.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "tests only"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = ["cachebackd.contrib.django", "tweets"]
ROOT_URLCONF = "tweetsite.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TWEETSITE_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
CACHEBACKD = {"TIMEOUT": 30.0, "CHECK_TIMEOUT": 5.0}
