"""`Worker`: answers the daemon's fetch requests for any number of jobs, from background threads.

One `RegisterJob` stream per job: the worker registers the job's config, then runs each
FetchRequest in a thread pool of the job's `max_in_flight` threads (the daemon never
sends more unanswered requests than that) and sends back the data or, if `fetch`
raised, a FetchError with the exception's message. When the stream breaks (the daemon
restarted, the connection dropped) the worker reconnects and registers again, after an
exponential backoff with jitter so that a fleet of app servers does not reconnect in
lockstep. Stopping lets the fetches already running finish and deliver their results;
requests that arrive after that are left unanswered, and the daemon hands them to
another worker when the stream ends. An answer the daemon refuses (too large for its
budget of answers in flight, a field out of bounds) is logged as a WARN line, counted in
`Worker.refused` and passed to the `on_refused` callback; the stream goes on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import queue
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Optional, Union

import grpc

from . import _wire
from ._codec import decode_args, to_duration
from ._proto import cacheback_pb2 as pb
from .client import Client, default_client
from .job import CachedFunction, Call, FunctionJob, Job
from .outcomes import (
    Absent,
    FetchContext,
    Fetched,
    NotModified,
    reset_fetch_context,
    set_fetch_context,
)

log = logging.getLogger("cachebackd.worker")

#: Ends a stream's outgoing messages (a half-close).
_CLOSE = object()

Servable = Union[Job, type[Job], "CachedFunction[..., Any]"]

#: The longest refusal reason written to the log, in characters.
_LOGGED_REASON = 512

_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class AnswerRefused:
    """The daemon refused one of this worker's answers and said why: its fetch failed (the
    callers waiting for it got `code` with `reason`) and nothing was stored; the stream
    stays open. It happens when answers being received at once are past the daemon's
    `max_answer_bytes`, or when the answer breaks a limit (data over `max_data_bytes`, a
    validator over 256 bytes, a bad tag)."""

    #: The job the answer was for.
    job: str
    #: The FetchRequest the answer was for; empty if the daemon could not read it.
    request_id: str
    #: The status the fetch failed with for its callers (UNAVAILABLE).
    code: grpc.StatusCode
    #: Why, in the daemon's words (naming the limit).
    reason: str


def _as_job(job: Servable) -> Job:
    if isinstance(job, CachedFunction):
        return job.job
    if isinstance(job, type) and issubclass(job, Job):
        job = job()
    if isinstance(job, FunctionJob) and job.fn is None:
        raise TypeError(
            f"cannot serve {job!r}: it caches no function of its own; serve the "
            "@cacheback function, or job.for_function(fn)"
        )
    if isinstance(job, Job):
        return job
    raise TypeError(
        f"cannot serve {job!r}: expected a Job, a Job subclass or a @cacheback function"
    )


def _outgoing(outbox: "queue.Queue[Any]") -> Iterator[pb.WorkerMessage]:
    """The request stream of one RegisterJob call, fed from a queue until _CLOSE."""
    while True:
        message = outbox.get()
        if message is _CLOSE:
            return
        yield message


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def describe(error: BaseException) -> str:
    """The FetchError message for an exception raised by `fetch`: `Type: message`, the type
    qualified by its module unless it is a builtin, so that a Python reader can raise a
    FetchFailed that is also an instance of it (`except User.DoesNotExist` still matches)."""
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    text = str(error)
    return f"{name}: {text}" if text else name


class Worker:
    """Serves jobs to the daemon from the app server, like cacheback's Celery workers.

    ::

        worker = Worker().serve(UserTweets).serve(fetch_tweets).start()
        ...
        worker.stop()

    `client` defaults to the process-wide client (CACHEBACKD_TARGET). A client of several
    daemons (a fleet, where each daemon dispatches only to the workers registered with it)
    has every job registered with every one of them, each stream reconnecting on its own.
    `name` is reported
    to the daemon. Reconnection waits `reconnect_initial` seconds, doubling up to
    `reconnect_max`, each wait drawn between half and all of that (jitter).
    `on_refused`, if given, is called with an `AnswerRefused` for every answer the daemon
    refuses, from the thread reading the stream (keep it short). Also a context manager:
    `with Worker().serve(job):` starts it and stops it.
    """

    def __init__(
        self,
        client: Optional[Client] = None,
        *,
        name: Optional[str] = None,
        reconnect_initial: float = _wire.RECONNECT_MIN_MILLIS / 1000,
        reconnect_max: float = _wire.RECONNECT_MAX_MILLIS / 1000,
        stop_grace: float = 10.0,
        on_refused: Optional[Callable[[AnswerRefused], None]] = None,
    ) -> None:
        self.client = client or default_client()
        self.name = name or f"python-{socket.gethostname()}-{os.getpid()}"
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.stop_grace = stop_grace
        self.on_refused = on_refused
        # Guards every stream's registered/in_flight/outbox/call and the counter below;
        # never held while talking to the network or running a fetch.
        self._cond = threading.Condition()
        #: Per job, one stream per daemon of the client.
        self._streams: dict[str, list[_JobStream]] = {}
        self._registrations = 0
        self._refused = 0
        self._started = False
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        return f"<Worker {self.name!r} jobs={list(self._streams)}>"

    def serve(self, job: Servable, *, max_in_flight: Optional[int] = None) -> "Worker":
        """Add a job (a Job, a Job subclass, or a @cacheback function); chainable.

        `max_in_flight` defaults to the job's own (16).
        """
        instance = _as_job(job)
        instance.config()  # refuse here a config the daemon would refuse at each reconnection
        limit = max_in_flight or instance.max_in_flight
        if limit < 1:
            raise ValueError("max_in_flight must be at least 1")
        with self._cond:
            if instance.name in self._streams:
                raise ValueError(f"job {instance.name!r} is already served by this worker")
            streams = [
                _JobStream(self, instance, limit, target, stub)
                for target, stub in zip(self.client.targets, self.client.stubs)
            ]
            self._streams[instance.name] = streams
            started = self._started
        if started:
            for stream in streams:
                stream.thread.start()
        return self

    @property
    def jobs(self) -> list[str]:
        """The names of the jobs served."""
        return list(self._streams)

    @property
    def registrations(self) -> int:
        """How many times the daemon has confirmed a registration (any job), reconnections included."""
        with self._cond:
            return self._registrations

    @property
    def refused(self) -> int:
        """How many of this worker's answers the daemon has refused (any job), see `AnswerRefused`."""
        with self._cond:
            return self._refused

    def effective_config(self, job: str) -> Optional[pb.JobConfig]:
        """The job's config as a daemon last confirmed it, defaults filled in."""
        with self._cond:
            configs = [s.config for s in self._streams[job] if s.config is not None]
            return configs[0] if configs else None

    def _all_streams(self) -> list["_JobStream"]:
        return [s for streams in self._streams.values() for s in streams]

    def start(self) -> "Worker":
        """Open the streams in background threads and return at once."""
        with self._cond:
            if self._started:
                return self
            if self._stopping.is_set():
                raise RuntimeError("a stopped worker cannot be started again")
            self._started = True
            streams = self._all_streams()
        for stream in streams:
            stream.thread.start()
        return self

    def run(self) -> None:
        """Start and block until stopped (Ctrl-C stops gracefully): for a worker process."""
        self.start()
        try:
            while not self._stopping.wait(1.0):
                pass
        except KeyboardInterrupt:
            self.stop()

    def wait_until_registered(
        self, timeout: Optional[float] = None, *, count: Optional[int] = None
    ) -> bool:
        """Block until every job is registered on a live stream (with several daemons:
        with every one), or, with `count`, until `registrations` reaches it (to wait for
        a reconnection). False on timeout."""
        with self._cond:
            if count is None:
                return self._cond.wait_for(
                    lambda: bool(self._streams) and all(s.registered for s in self._all_streams()),
                    timeout,
                )
            return self._cond.wait_for(lambda: self._registrations >= count, timeout)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop gracefully: finish the fetches running, deliver their results, close the
        streams. Waits at most `timeout` (default `stop_grace`) seconds, then cuts."""
        deadline = time.monotonic() + (self.stop_grace if timeout is None else timeout)

        def left() -> float:
            return max(deadline - time.monotonic(), 0.0)

        with self._cond:
            # Set under the lock, so that no fetch starts and no stream opens unseen.
            self._stopping.set()
            streams = self._all_streams()
            self._cond.wait_for(lambda: all(s.in_flight == 0 for s in streams), left())
            outboxes = [s.outbox for s in streams if s.outbox is not None]
        # Half-close each stream after the results already queued; the daemon then ends it.
        for outbox in outboxes:
            outbox.put(_CLOSE)
        for stream in streams:
            if stream.thread.is_alive():
                stream.thread.join(left())
        for stream in streams:
            if stream.thread.is_alive():
                with self._cond:
                    call = stream.call
                if call is not None:
                    call.cancel()
                stream.thread.join(1.0)
            stream.executor.shutdown(wait=False)

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _JobStream:
    """One job's RegisterJob stream to one daemon, reconnected until the worker stops."""

    def __init__(self, worker: Worker, job: Job, max_in_flight: int, target: str, stub: Any) -> None:
        self.worker = worker
        self.job = job
        self.max_in_flight = max_in_flight
        self.target = target
        self.stub = stub
        self.executor = ThreadPoolExecutor(
            max_workers=max_in_flight, thread_name_prefix=f"cachebackd-fetch-{job.name}"
        )
        self.thread = threading.Thread(
            target=self._run, name=f"cachebackd-stream-{job.name}", daemon=True
        )
        # The fields below are guarded by worker._cond.
        self.registered = False
        self.config: Optional[pb.JobConfig] = None
        self.in_flight = 0
        self.outbox: Optional[queue.Queue[Any]] = None
        self.call: Any = None

    def _run(self) -> None:
        worker = self.worker
        delay = worker.reconnect_initial
        while not worker._stopping.is_set():
            registered = self._session()
            if worker._stopping.is_set():
                break
            if registered:
                delay = worker.reconnect_initial
            pause = random.uniform(delay / 2, delay)
            log.info(
                "job %s at %s: stream ended; reconnecting in %.2fs", self.job.name, self.target, pause
            )
            worker._stopping.wait(pause)
            delay = min(delay * 2, worker.reconnect_max)

    def _session(self) -> bool:
        """One RegisterJob call, until it ends; returns whether it got registered."""
        worker = self.worker
        register = pb.Register(
            job=self.job.name,
            config=self.job.config(),
            max_in_flight=self.max_in_flight,
            worker_name=worker.name,
            max_batch=max(int(self.job.max_batch), 1),
        )
        outbox: queue.Queue[Any] = queue.Queue()
        outbox.put(pb.WorkerMessage(register=register))
        registered = False
        with worker._cond:
            if worker._stopping.is_set():
                return False
            self.outbox = outbox  # from now on stop() half-closes it
        call = self.stub.RegisterJob(_outgoing(outbox), metadata=worker.client.metadata)
        with worker._cond:
            self.call = call
        try:
            for message in call:
                kind = message.WhichOneof("kind")
                if kind == "registered":
                    registered = True
                    self._on_registered(message.registered)
                elif kind == "fetch":
                    self._dispatch(message.fetch, outbox)
                elif kind == "batch":
                    self._dispatch_batch(list(message.batch.fetches), outbox)
                elif kind == "refused":
                    self._on_refused(message.refused)
                # Any other kind is a newer daemon's, unknown here: ignored.
        except grpc.RpcError as error:
            if worker._stopping.is_set():
                log.debug("job %s: stream closed: %s", self.job.name, error)
            else:
                code = error.code() if hasattr(error, "code") else None
                details = error.details() if hasattr(error, "details") else error
                log.warning("job %s: stream failed: %s %s", self.job.name, code, details)
        finally:
            with worker._cond:
                self.registered = False
                self.outbox = self.call = None
            outbox.put(_CLOSE)
        return registered

    def _on_registered(self, registered: pb.Registered) -> None:
        log.info(
            "job %s: registered as worker %s (max_in_flight %d)",
            self.job.name,
            registered.worker_id,
            self.max_in_flight,
        )
        with self.worker._cond:
            self.registered = True
            self.config = registered.config
            self.worker._registrations += 1
            self.worker._cond.notify_all()

    def _on_refused(self, refused: pb.AnswerRefused) -> None:
        notice = AnswerRefused(
            job=self.job.name,
            request_id=refused.request_id,
            code=_STATUS_CODES.get(refused.code, grpc.StatusCode.UNKNOWN),
            reason=refused.reason,
        )
        log.warning(
            "job %s: the daemon refused the answer to %s (%s): %s",
            notice.job,
            notice.request_id,
            notice.code.name,
            notice.reason[:_LOGGED_REASON],
        )
        with self.worker._cond:
            self.worker._refused += 1
            self.worker._cond.notify_all()
        callback = self.worker.on_refused
        if callback is not None:
            try:
                callback(notice)
            except Exception:  # the app's callback must not end the stream
                log.exception("job %s: on_refused raised", notice.job)

    def _dispatch(self, request: pb.FetchRequest, outbox: "queue.Queue[Any]") -> None:
        with self.worker._cond:
            if self.worker._stopping.is_set():
                return  # unanswered: the daemon gives it to another worker when the stream ends
            self.in_flight += 1
        try:
            self.executor.submit(self._fetch, request, outbox)
        except RuntimeError:  # the executor was shut down by stop()
            self._done()

    def _dispatch_batch(
        self, requests: list[pb.FetchRequest], outbox: "queue.Queue[Any]"
    ) -> None:
        """A FetchBatch: one `fetch_many` in one pool thread; each fetch counts in flight."""
        with self.worker._cond:
            if self.worker._stopping.is_set():
                return
            self.in_flight += len(requests)
        try:
            self.executor.submit(self._fetch_batch, requests, outbox)
        except RuntimeError:
            for _ in requests:
                self._done()

    def _fetch_batch(self, requests: list[pb.FetchRequest], outbox: "queue.Queue[Any]") -> None:
        try:
            for result in self._answer_batch(requests):
                outbox.put(pb.WorkerMessage(result=result))
        finally:
            for _ in requests:
                self._done()

    def _answer_batch(self, requests: list[pb.FetchRequest]) -> list[pb.FetchResult]:
        """Run one `fetch_many` for the batch; each item's outcome becomes its own result
        (an exception for one item fails that item; one from `fetch_many` fails all)."""
        calls: list[Optional[Call]] = []
        for request in requests:
            try:
                args, kwargs = self.job.call_args(decode_args(request.args))
                calls.append(Call(args, kwargs))
            except Exception:  # noqa: BLE001 - undecodable args fail that fetch alone
                calls.append(None)
        good = [c for c in calls if c is not None]
        try:
            outcomes = list(self.job.fetch_many(good))
            if len(outcomes) != len(good):
                raise ValueError(
                    f"fetch_many answered {len(outcomes)} results for {len(good)} calls"
                )
        except BaseException as error:  # noqa: BLE001 - a fetch must not kill the thread
            log.exception("job %s: fetch_many of %d failed", self.job.name, len(good))
            outcomes = [error] * len(good)
        results = iter(outcomes)
        answers = []
        for request, call in zip(requests, calls):
            if call is None:
                answers.append(self._failed(request, ValueError("cannot decode the args")))
                continue
            answers.append(self._result_of(request, call, next(results)))
        return answers

    def _failed(self, request: pb.FetchRequest, error: BaseException) -> pb.FetchResult:
        return pb.FetchResult(
            request_id=request.request_id, error=pb.FetchError(message=describe(error))
        )

    def _result_of(self, request: pb.FetchRequest, call: Call, outcome: Any) -> pb.FetchResult:
        """What a fetch came to, as its FetchResult: data (plain or `Fetched`), an absence
        (`Absent` raised), NotModified, or a failure (any other exception)."""
        args, kwargs = call
        try:
            if isinstance(outcome, Absent):
                tags = outcome.tags or tuple(self.job.tags(*args, **kwargs))
                return pb.FetchResult(
                    request_id=request.request_id, absent=pb.FetchedAbsent(tags=list(tags))
                )
            lifetime = self.job.item_lifetime(*args, **kwargs)
            if isinstance(outcome, NotModified):
                not_modified = pb.NotModified()
                if lifetime is not None:
                    not_modified.lifetime.CopyFrom(to_duration(lifetime))
                return pb.FetchResult(request_id=request.request_id, not_modified=not_modified)
            if isinstance(outcome, BaseException):
                return self._failed(request, outcome)
            fetched = outcome if isinstance(outcome, Fetched) else Fetched(outcome)
            tags = tuple(fetched.tags) or tuple(self.job.tags(*args, **kwargs))
            value = pb.FetchedValue(
                data=self.job.encode(fetched.data),
                validator=fetched.validator or b"",
                tags=list(tags),
            )
            if lifetime is not None:
                value.lifetime.CopyFrom(to_duration(lifetime))
            return pb.FetchResult(request_id=request.request_id, value=value)
        except BaseException as error:  # noqa: BLE001 - encoding failed: that fetch fails
            return self._failed(request, error)

    def _fetch(self, request: pb.FetchRequest, outbox: "queue.Queue[Any]") -> None:
        try:
            outbox.put(pb.WorkerMessage(result=self._answer(request)))
        finally:
            self._done()

    def _done(self) -> None:
        with self.worker._cond:
            self.in_flight -= 1
            self.worker._cond.notify_all()

    def _answer(self, request: pb.FetchRequest) -> pb.FetchResult:
        """Run the fetch; any exception becomes a FetchError, never a dead worker. The
        fetch can read `fetch_context()` (reason, stored validator), raise `Absent` or
        `NotModified`, or return a `Fetched`."""
        started = time.monotonic()
        reason = pb.FetchReason.Name(request.reason)
        context = FetchContext(
            reason=reason.removeprefix("FETCH_REASON_"), validator=request.validator or None
        )
        token = set_fetch_context(context)
        try:
            args, kwargs = self.job.call_args(decode_args(request.args))
            outcome: Any
            try:
                outcome = self.job.fetch(*args, **kwargs)
                if inspect.isawaitable(outcome):  # an `async def fetch`: run it in this thread
                    outcome = asyncio.run(_awaited(outcome))
            except (Absent, NotModified) as said:
                outcome = said
        except BaseException as error:  # noqa: BLE001 - a fetch must not kill the worker thread
            log.exception("job %s: fetch %s failed (%s)", self.job.name, request.args, reason)
            return self._failed(request, error)
        finally:
            reset_fetch_context(token)
        log.debug(
            "job %s: fetched %s (%s) in %.3fs",
            self.job.name,
            request.args,
            reason,
            time.monotonic() - started,
        )
        return self._result_of(request, Call(args, kwargs), outcome)
