"""A stock grpcio client over the daemon's Unix socket, with no channel options.

gRPC C-core sends the socket path as `:authority`; the daemon's HTTP/2 layer used to reset
such streams with PROTOCOL_ERROR (vendor/README.md). These tests use the generated stubs on
`grpc.insecure_channel("unix:...")` exactly as a user's generated client would, without the
`grpc.default_authority` option the package's own Client sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest

from cachebackd import Client, Job, Worker
from cachebackd._proto import cacheback_pb2 as pb
from cachebackd._proto.cacheback_pb2_grpc import CachebackStub
from conftest import Daemon
from support import WAIT


class Echo(Job):
    name = "unix.echo"

    def fetch(self, word: str) -> str:
        return f"{word} fetched"


@pytest.fixture
def unix_daemon(make_daemon: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    return make_daemon(listen=f"unix:{tmp_path / 'cachebackd.sock'}")


@pytest.fixture
def stock_channel(unix_daemon: Daemon) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(unix_daemon.target) as channel:
        yield channel


def test_a_stock_grpcio_client_reads_and_writes_over_the_unix_socket(
    unix_daemon: Daemon, stock_channel: grpc.Channel
) -> None:
    stub = CachebackStub(stock_channel)
    with Client(unix_daemon.target, timeout=WAIT) as client:
        with Worker(client).serve(Echo) as worker:
            assert worker.wait_until_registered(WAIT)
            fetched = stub.Get(pb.GetRequest(job="unix.echo", args=b'["hi"]'), timeout=WAIT)
            assert (fetched.state, fetched.fetched, fetched.data) == (
                pb.ITEM_STATE_FRESH,
                True,
                b'"hi fetched"',
            )
            stub.Set(pb.SetRequest(job="unix.echo", args=b'["set"]', data=b'"by hand"'), timeout=WAIT)
            got = stub.Get(pb.GetRequest(job="unix.echo", args=b'["set"]'), timeout=WAIT)
            assert (got.state, got.fetched, got.data) == (pb.ITEM_STATE_FRESH, False, b'"by hand"')


def test_a_stock_grpcio_worker_stream_registers_over_the_unix_socket(
    stock_channel: grpc.Channel,
) -> None:
    stub = CachebackStub(stock_channel)
    register = pb.WorkerMessage(register=pb.Register(job="unix.stream", worker_name="stock"))
    call = stub.RegisterJob(iter([register]), timeout=WAIT)
    first = next(call)
    assert first.WhichOneof("kind") == "registered"
    assert first.registered.config.lifetime.seconds == 300
    call.cancel()


def test_a_refused_call_over_the_unix_socket_still_gets_its_status(
    stock_channel: grpc.Channel,
) -> None:
    stub = CachebackStub(stock_channel)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Get(pb.GetRequest(job="never.registered", args=b"[]"), timeout=WAIT)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
