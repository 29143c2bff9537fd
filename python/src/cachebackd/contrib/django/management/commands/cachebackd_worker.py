"""`python manage.py cachebackd_worker`: the process that runs the project's fetches for the
daemon, in place of cacheback's Celery or RQ workers."""

from __future__ import annotations

import fnmatch
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cachebackd.worker import Worker
from cachebackd.contrib.django import registry
from cachebackd.contrib.django.settings import cachebackd_settings


class Command(BaseCommand):
    help = (
        "Serve the project's cachebackd jobs (every app's jobs.py, and CACHEBACKD['JOBS']): "
        "run their fetches for the daemon until SIGTERM or SIGINT, then finish the fetches "
        "running and stop."
    )
    # The check asks whether workers are registered: this command is what registers them.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--job",
            action="append",
            dest="jobs",
            metavar="NAME",
            help="serve only the jobs whose name matches (a shell-style glob; repeatable)",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            help="fetches of each job run at once (default: CACHEBACKD['CONCURRENCY'], else "
            "each job's max_in_flight)",
        )
        parser.add_argument("--name", help="the worker's name, as the daemon reports it")
        parser.add_argument(
            "--stop-grace",
            type=float,
            default=10.0,
            help="seconds a stop waits for the fetches running (default 10)",
        )
        parser.add_argument("--list", action="store_true", help="print the jobs and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        config = cachebackd_settings()
        jobs = registry.discovered()
        patterns = options["jobs"] or ["*"]
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(job.name, pattern) for job in jobs):
                known = ", ".join(job.name for job in jobs) or "none"
                raise CommandError(f"--job {pattern}: no such job (known: {known})")
        chosen = [job for job in jobs if any(fnmatch.fnmatchcase(job.name, p) for p in patterns)]
        if options["list"]:
            for job in chosen:
                self.stdout.write(job.name)
            return
        if not chosen:
            raise CommandError(
                "no jobs to serve: define them in an app's jobs.py or in CACHEBACKD['JOBS']"
            )
        concurrency = options["concurrency"] or config.concurrency
        if concurrency is not None and concurrency < 1:
            raise CommandError("--concurrency must be at least 1")

        worker = Worker(
            name=options["name"] or config.worker_name, stop_grace=options["stop_grace"]
        )
        for job in chosen:
            worker.serve(job, max_in_flight=concurrency)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())

        worker.start()
        target = worker.client.target
        self._say(f"connecting to {target}")
        # Short waits, so that a signal is seen at once (handlers run between them).
        while not stop.is_set() and not worker.wait_until_registered(0.2):
            pass
        if not stop.is_set():
            self._say(f"serving {len(chosen)} jobs: {', '.join(worker.jobs)}")
        while not stop.wait(0.2):
            pass
        self._say("stopping; finishing the fetches running")
        worker.stop()
        self._say("stopped")

    def _say(self, line: str) -> None:
        """One line of progress, flushed at once (a supervisor or a test reads it)."""
        self.stdout.write(f"cachebackd_worker: {line}")
        self.stdout.flush()
