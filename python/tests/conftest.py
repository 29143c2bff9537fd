"""Fixtures that run the real cachebackd binary: built once per session, one daemon per test.

The binary is `CACHEBACKD_BIN` if set, else built with
`cargo build -p cachebackd --bin cachebackd` from the repository root. Each test gets
its own daemon on a free port with a temp data dir, so tests share nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import grpc
import pytest

from cachebackd import Client, Worker, set_default_client

from support import WAIT, Calls

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cachebackd_bin() -> Path:
    given = os.environ.get("CACHEBACKD_BIN")
    if given:
        return Path(given)
    subprocess.run(
        ["cargo", "build", "-p", "cachebackd", "--bin", "cachebackd"], cwd=REPO, check=True
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "cachebackd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """One cachebackd process; `restart` keeps its data dir and address."""

    def __init__(
        self,
        binary: Path,
        data_dir: Path,
        listen: str,
        log: Path,
        *args: str,
        credentials: Optional[grpc.ChannelCredentials] = None,
    ) -> None:
        #: For a daemon serving TLS: what the readiness probe connects with.
        self.credentials = credentials
        self.binary = binary
        self.data_dir = data_dir
        self.listen = listen
        self.log = log
        self.args = args
        self.proc: Optional[subprocess.Popen[bytes]] = None
        #: Killed by the test (SIGKILL): not expected to exit cleanly.
        self.killed = False

    @property
    def target(self) -> str:
        return self.listen

    def start(self) -> "Daemon":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "--listen", self.listen, "--data-dir", str(self.data_dir), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
            )
        options = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 200)]
        channel = (
            grpc.insecure_channel(self.listen, options=options)
            if self.credentials is None
            else grpc.secure_channel(self.listen, self.credentials, options=options)
        )
        try:
            grpc.channel_ready_future(channel).result(timeout=WAIT)
        except grpc.FutureTimeoutError:
            self.stop()
            raise RuntimeError(f"cachebackd did not come up; log:\n{self.log.read_text()}")
        finally:
            channel.close()
        return self

    def stop(self) -> int:
        """SIGTERM and wait: the daemon's graceful stop. Returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL by pid and wait: a daemon that dies."""
        assert self.proc is not None
        self.killed = True
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> "Daemon":
        code = self.stop()
        assert code == 0, f"cachebackd exited with {code}; log:\n{self.log.read_text()}"
        return self.start()


@pytest.fixture
def make_daemon(cachebackd_bin: Path, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    daemons: list[Daemon] = []

    def make(
        *args: str,
        listen: Optional[str] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
    ) -> Daemon:
        n = len(daemons)
        daemon = Daemon(
            cachebackd_bin,
            tmp_path / f"data{n}",
            listen or f"127.0.0.1:{free_port()}",
            tmp_path / f"cachebackd{n}.log",
            *args,
            credentials=credentials,
        )
        daemons.append(daemon.start())
        return daemon

    yield make
    for daemon in daemons:
        if daemon.killed:
            continue
        code = daemon.stop()
        assert code == 0, f"cachebackd exited with {code}; log:\n{daemon.log.read_text()}"


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.target, timeout=WAIT) as c:
        yield c


@pytest.fixture
def make_worker(client: Client) -> Iterator[Callable[..., Worker]]:
    """Started workers on the test's client, registered before they are returned."""
    workers: list[Worker] = []

    def make(*jobs: Any, max_in_flight: Optional[int] = None, **kwargs: Any) -> Worker:
        worker = Worker(client, **kwargs)
        for job in jobs:
            worker.serve(job, max_in_flight=max_in_flight)
        workers.append(worker.start())
        assert worker.wait_until_registered(WAIT)
        return worker

    yield make
    for worker in workers:
        worker.stop()


@pytest.fixture(autouse=True)
def _no_default_client() -> Iterator[None]:
    """Tests that use the process-wide client get a fresh one."""
    set_default_client(None)
    yield
    set_default_client(None)


@pytest.fixture
def calls() -> Calls:
    return Calls()
