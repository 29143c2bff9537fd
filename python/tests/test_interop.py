"""Items are shared across languages: same job name + same args bytes = same item.

The peer here is a "foreign" client written directly on the generated stubs, with every
args and data byte written out by hand as PROTOCOL.md's convention says, independent of
the package's codec: any language that follows the convention shares items.
test_interop_rust.py runs the same checks against the Rust client, both ways.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

from cachebackd import Client, ItemState, Job, Worker
from cachebackd._proto import cacheback_pb2 as pb
from support import WAIT, Calls


class ForeignWorker:
    """A worker in "another language": the RegisterJob stream driven by hand."""

    def __init__(self, client: Client, job: str, answer: Callable[[bytes], bytes]) -> None:
        self.seen: list[bytes] = []
        self.registered = threading.Event()
        self._out: queue.Queue[Any] = queue.Queue()
        self._out.put(pb.WorkerMessage(register=pb.Register(job=job, worker_name="foreign")))
        self._call = client.stub.RegisterJob(self._outgoing())
        self._answer = answer
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _outgoing(self) -> Iterator[pb.WorkerMessage]:
        while (message := self._out.get()) is not None:
            yield message

    def _serve(self) -> None:
        try:
            for message in self._call:
                if message.HasField("registered"):
                    self.registered.set()
                elif message.HasField("fetch"):
                    fetch = message.fetch
                    self.seen.append(fetch.args)
                    value = pb.FetchedValue(data=self._answer(fetch.args))
                    result = pb.FetchResult(request_id=fetch.request_id, value=value)
                    self._out.put(pb.WorkerMessage(result=result))
        except Exception:  # the stream ends with the test
            pass

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()
        self._thread.join(WAIT)


class Greeting(Job):
    """The Python side of a job whose worker is foreign."""

    name = "interop.greeting"


def test_an_item_fetched_by_a_foreign_worker_is_read_by_the_python_client(client: Client) -> None:
    # The foreign worker answers {"from":"foreign","user":<the one argument>}.
    foreign = ForeignWorker(
        client, Greeting.name, lambda args: b'{"from":"foreign","user":' + args[1:-1] + b"}"
    )
    try:
        assert foreign.registered.wait(WAIT)
        greeting = Greeting(client)
        item = greeting.get_item("café")
        assert (item.state, item.fetched) == (ItemState.FRESH, True)
        assert item.data == {"from": "foreign", "user": "café"}
        assert foreign.seen == [b'["caf\\u00e9"]']  # the args bytes Python sent
        assert greeting.get("café") == {"from": "foreign", "user": "café"}
        assert len(foreign.seen) == 1
    finally:
        foreign.close()


class Profile(Job):
    """A Python worker's job, read by a foreign reader."""

    name = "interop.profile"

    def __init__(self, calls: Calls, client: Client | None = None) -> None:
        super().__init__(client)
        self.calls = calls

    def fetch(self, user: str, options: dict[str, Any]) -> dict[str, Any]:
        self.calls.enter(user, options)
        return {"user": user, "options": options, "score": 1.5, "tags": ["a", "é"]}


def test_a_python_worker_serves_a_foreign_reader(
    client: Client, make_worker: Callable[..., Worker], calls: Calls
) -> None:
    make_worker(Profile(calls))
    args = b'["bob",{"a":1,"b":[true,null]}]'
    reply = client.stub.Get(pb.GetRequest(job=Profile.name, args=args), timeout=WAIT)
    assert (reply.state, reply.fetched) == (pb.ITEM_STATE_FRESH, True)
    assert reply.data == (
        b'{"options":{"a":1,"b":[true,null]},"score":1.5,"tags":["a","\\u00e9"],"user":"bob"}'
    )
    assert calls.args == [("bob", {"a": 1, "b": [True, None]})]
    # The Python client's own encoding of the same arguments (keys in another order)
    # finds the same item.
    mine = Profile(calls, client).get_item("bob", {"b": [True, None], "a": 1})
    assert (mine.state, mine.fetched) == (ItemState.FRESH, False)
    assert mine.data["tags"] == ["a", "é"]
    assert calls.count == 1
