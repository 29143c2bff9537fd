"""cachebackd.contrib.django in a real Django project (tests/django_project): the seed's
`tweets(request, username)` view rendered by Django's test client, with the fetches run by
`manage.py cachebackd_worker` in a subprocess against the real daemon, on SQLite.

One daemon and one worker process serve the whole module (each test uses its own items),
which keeps it lean; the tests that need a daemon with no worker make their own.
"""

from __future__ import annotations

import io
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import django
import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import Client as DjangoClient
from django.test import override_settings

from cachebackd import Client, FetchFailed, ItemState, set_default_client
from cachebackd.client import configure_default_client
from conftest import Daemon, free_port
from support import WAIT, eventually

PROJECT = Path(__file__).resolve().parent / "django_project"
DB_DIR = Path(tempfile.mkdtemp(prefix="tweetsite-"))
DB = DB_DIR / "db.sqlite3"

sys.path.insert(0, str(PROJECT))
os.environ["DJANGO_SETTINGS_MODULE"] = "tweetsite.settings"
os.environ["TWEETSITE_DB"] = str(DB)
django.setup()
# The app config configured the process-wide client from CACHEBACKD; the other test modules
# expect it made from the environment, and these tests set theirs explicitly.
configure_default_client()

from tweets import jobs  # noqa: E402  (after django.setup(), as Django requires)
from tweets.models import Tweet  # noqa: E402

SERVED = [
    "tweets.jobs.UserTweets",
    "tweets.jobs.tweet_count",
    "cachebackd.contrib.django.jobs.QuerySetGetJob:tweets.Tweet",
    "cachebackd.contrib.django.jobs.QuerySetFilterJob:tweets.Tweet",
]
EVERY_JOB = [*SERVED, "tweets.jobs.Gated"]


class ManagedWorker:
    """`python manage.py cachebackd_worker ...` in a subprocess, its output read line by line."""

    def __init__(self, daemon: Daemon, *args: str) -> None:
        env = {
            **os.environ,
            "CACHEBACKD_URL": f"http://{daemon.target}",
            # The project only: the package is the one installed in the venv, as a user's.
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(PROJECT), os.environ.get("PYTHONPATH")) if p
            ),
        }
        env.pop("CACHEBACKD_TARGET", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(PROJECT / "manage.py"), "cachebackd_worker", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str) -> str:
        """Until a line containing `text` is printed (fails if the process ends first)."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no {text!r} after {WAIT}s; saw {self.seen}") from None
            assert line is not None, f"the worker exited before {text!r}; saw {self.seen}"
            self.seen.append(line)
            if text in line:
                return line

    def stop(self) -> int:
        """SIGTERM, as a process manager stops it; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def site_daemon(cachebackd_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    call_command("migrate", verbosity=0)
    tmp = tmp_path_factory.mktemp("django-daemon")
    daemon = Daemon(cachebackd_bin, tmp / "data", f"127.0.0.1:{free_port()}", tmp / "log").start()
    yield daemon
    assert daemon.stop() == 0, daemon.log.read_text()
    shutil.rmtree(DB_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def site_worker(site_daemon: Daemon) -> Iterator[ManagedWorker]:
    """The project's worker, as deployed, serving every job but the gated one."""
    args = [a for name in SERVED for a in ("--job", name)]
    worker = ManagedWorker(site_daemon, *args, "--name", "tests-site")
    worker.wait_for(f"serving {len(SERVED)} jobs")
    yield worker
    assert worker.stop() == 0, worker.seen
    worker.wait_for("stopped")


@pytest.fixture
def site(site_daemon: Daemon, site_worker: ManagedWorker) -> Iterator[Client]:
    """The test process reads through the module's daemon."""
    with Client(site_daemon.target, timeout=WAIT) as client:
        set_default_client(client)
        yield client


def tweet(author: str, text: str) -> Tweet:
    return Tweet.objects.create(author=author, text=text)


def test_the_seed_view_renders_tweets_fetched_by_the_worker_command(site: Client) -> None:
    tweet("bob", "first")
    tweet("bob", "second")
    browser = DjangoClient()
    page = browser.get("/tweets/bob/")
    assert page.status_code == 200
    assert page.content.decode().strip() == "<ul><li>first</li><li>second</li></ul>"
    # Served from the cache now: a new tweet is not seen until the item is refreshed.
    tweet("bob", "third")
    item = jobs.UserTweets().get_item("bob")
    assert (item.state, item.data, item.fetched) == (ItemState.FRESH, ["first", "second"], False)
    assert browser.get("/tweets/bob/").content == page.content
    # cacheback's invalidate: stale at once, refreshed by the worker process.
    assert jobs.UserTweets().invalidate(username="bob")

    eventually(lambda: jobs.UserTweets().get_item("bob"), lambda i: i.state is ItemState.FRESH)
    assert "<li>third</li>" in browser.get("/tweets/bob/").content.decode()


def test_the_worker_command_serves_every_job_discovered_in_the_apps_jobs_py(
    site: Client, site_worker: ManagedWorker
) -> None:
    listed = io.StringIO()
    call_command("cachebackd_worker", "--list", stdout=listed)
    assert listed.getvalue().split() == EVERY_JOB
    assert site_worker.seen[-1] == f"cachebackd_worker: serving 4 jobs: {', '.join(SERVED)}"
    workers = site.workers()
    assert {name: workers.get(name, 0) for name in EVERY_JOB} == {
        **{name: 1 for name in SERVED},
        "tweets.jobs.Gated": 0,
    }
    with pytest.raises(Exception, match="--job nothing.here: no such job"):
        call_command("cachebackd_worker", "--job", "nothing.here")


def test_a_decorated_function_binds_keywords_and_applies_defaults(site: Client) -> None:
    tweet("carol", "hello")
    tweet("carol", "@bob hi")
    assert jobs.tweet_count("carol") == 1
    # The same item whichever way the arguments are given; the default is part of it.
    item = jobs.tweet_count.job.get_item(jobs.tweet_count, username="carol", include_replies=False)
    assert (item.state, item.data, item.fetched) == (ItemState.FRESH, 1, False)
    assert site.peek("tweets.jobs.tweet_count", b'["carol",false]').data == b"1"
    assert jobs.tweet_count("carol", include_replies=True) == 2


def test_a_queryset_get_job_caches_a_model_instance_and_raises_does_not_exist(site: Client) -> None:
    posted = tweet("dave", "a model instance")
    browser = DjangoClient()
    page = browser.get(f"/tweet/{posted.pk}/")
    assert page.status_code == 200
    assert page.content.decode().strip() == (
        f"<p>dave at {posted.posted.isoformat()}: a model instance</p>"
    )
    cached = jobs.tweet_by.get(pk=posted.pk)
    assert isinstance(cached, Tweet) and (cached.pk, cached.posted) == (posted.pk, posted.posted)
    # The worker's Tweet.DoesNotExist reaches the reader as itself, so the view's
    # `except Tweet.DoesNotExist` answers 404, as with django-cacheback.
    assert browser.get("/tweet/999999/").status_code == 404
    with pytest.raises(Tweet.DoesNotExist) as raised:
        jobs.tweet_by.get(pk=999999)
    assert isinstance(raised.value, FetchFailed)
    assert raised.value.remote_type == "tweets.models.Tweet.DoesNotExist"
    assert raised.value.remote_message == "Tweet matching query does not exist."


def test_a_queryset_filter_job_caches_the_evaluated_queryset(site: Client) -> None:
    first, second = tweet("erin", "one"), tweet("erin", "two")
    found = jobs.tweets_where.get(author="erin")
    assert [t.pk for t in found] == [first.pk, second.pk]
    tweet("erin", "three")
    assert [t.text for t in jobs.tweets_where.get(author="erin")] == ["one", "two"]
    # A model instance in a lookup travels as its primary key: the same item either way.
    assert [t.text for t in jobs.tweets_where.get(pk=first)] == ["one"]
    assert jobs.tweets_where.get_item(pk=first.pk).fetched is False
    with pytest.raises(TypeError, match="lookups as keyword arguments"):
        jobs.tweets_where.get("erin")
    # A reader that sends positional args (another language, a tool) gets a clear error.
    with pytest.raises(FetchFailed, match="args must be one JSON object of lookups") as bad:
        site.get(jobs.tweets_where.name, b'["erin"]')
    assert bad.value.remote_type == "ValueError"


def test_the_system_check_warns_about_jobs_that_no_worker_serves(
    site: Client, make_daemon: Callable[..., Daemon]
) -> None:
    warned = checks.run_checks(tags=["cachebackd"])
    assert [(m.id, m.obj.name) for m in warned] == [("cachebackd.W001", "tweets.jobs.Gated")]
    with Client(make_daemon().target) as empty:
        set_default_client(empty)
        warned = checks.run_checks(tags=["cachebackd"])
    assert [(m.id, m.obj.name) for m in warned] == [("cachebackd.W001", n) for n in EVERY_JOB]
    with Client(f"127.0.0.1:{free_port()}") as nowhere:
        set_default_client(nowhere)
        warned = checks.run_checks(tags=["cachebackd"])
    assert [m.id for m in warned] == ["cachebackd.W002"]
    with override_settings(CACHEBACKD={"CHECK_WORKERS": False}):
        assert checks.run_checks(tags=["cachebackd"]) == []


def test_the_worker_command_picks_jobs_and_finishes_its_fetches_on_sigterm(
    site: Client, site_daemon: Daemon, tmp_path: Path
) -> None:
    gated = ManagedWorker(site_daemon, "--job", "tweets.jobs.Ga*", "--concurrency", "1")
    gated.wait_for("serving 1 jobs: tweets.jobs.Gated")
    marker = tmp_path / "fetch"
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(jobs.Gated().get(str(marker))))
    reader.start()
    started = Path(f"{marker}.started")
    eventually(started.exists, bool)  # the fetch is running in the worker process
    gated.proc.send_signal(signal.SIGTERM)
    gated.wait_for("stopping; finishing the fetches running")
    Path(f"{marker}.go").touch()
    reader.join(WAIT)
    assert got == ["finished"]  # the fetch in flight was delivered before the stream closed
    assert gated.proc.wait(WAIT) == 0
    gated.wait_for("stopped")
    assert site.workers()["tweets.jobs.Gated"] == 0


def test_settings_come_from_CACHEBACKD_else_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cachebackd.client import default_client
    from cachebackd.contrib.django.apps import CachebackdConfig
    from cachebackd.contrib.django.settings import cachebackd_settings
    from django.apps import apps

    app = apps.get_app_config("cachebackd")
    assert isinstance(app, CachebackdConfig)
    monkeypatch.setenv("CACHEBACKD_URL", "http://127.0.0.1:1111")
    monkeypatch.setenv("CACHEBACKD_TOKEN", "from-the-environment")
    monkeypatch.delenv("CACHEBACKD_TARGET", raising=False)
    try:
        set_default_client(None)
        app.ready()
        made = default_client()
        assert (made.target, made.metadata, made.timeout) == (
            "127.0.0.1:1111",
            (("authorization", "Bearer from-the-environment"),),
            30.0,
        )
        given = {"URL": "127.0.0.1:2222", "TOKEN": "from-settings", "CONCURRENCY": 4}
        with override_settings(CACHEBACKD=given):
            app.ready()
            made = default_client()
            assert (made.target, made.metadata, made.timeout) == (
                "127.0.0.1:2222",
                (("authorization", "Bearer from-settings"),),
                None,
            )
            assert cachebackd_settings().concurrency == 4
        with override_settings(CACHEBACKD={"URLS": "x"}):
            with pytest.raises(ImproperlyConfigured, match="unknown keys URLS"):
                cachebackd_settings()
    finally:
        configure_default_client()
        set_default_client(None)


def test_the_django_extra_installs_django() -> None:
    requires = metadata.requires("cachebackd") or []
    assert any(r.startswith("Django>=4.2") and 'extra == "django"' in r for r in requires)
