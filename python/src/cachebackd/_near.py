"""The near cache: FRESH items served inside this process, kept true by the daemon's
`Subscribe` stream (PROTOCOL.md, "Near cache"). The same rules as the Rust client's:

- it holds only items a Get answered FRESH, serves each while `now < expires_at` and no
  event has come for it, and drops it on any event;
- one background thread keeps the stream; while it is down nothing is served or kept, and
  losing it (or a RESET) drops everything;
- a reader subscribes before the Get whose answer it may keep, and keeps the answer
  unless an event told of a change after that data was stored (a CHANGED event is at its
  data's `stored_at`, so the event of the fetch a Get waited for does not spoil it);
- subscriptions are pruned in bulk once they outnumber what is held, never past the
  daemon's 100,000 per stream;
- with several daemons the stream is on the one the client uses; when the client fails
  over (or the stream finds that daemon down, which moves the client too) everything held
  goes, and a new stream opens on the next daemon.

The bound is a plain LRU (an OrderedDict under one lock): small enough to own, and it
needs nothing from PyPI.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import grpc

from ._daemons import Daemons, daemon_down
from ._proto import cacheback_pb2 as pb

#: The most items a near cache may hold (room is left for reads in flight under the
#: daemon's 100,000 subscriptions per stream).
MAX_NEAR_CACHE_ITEMS = 90_000
_MAX_SUBSCRIBED = 100_000


@dataclass(frozen=True)
class NearCacheStats:
    """How a client's near cache has been used since the client was made."""

    #: Reads answered in this process, never seen by the daemon.
    hits: int
    #: Reads that went to the daemon.
    misses: int
    #: Items held now.
    items: int
    #: Times the stream was lost (or reset) and everything dropped.
    resets: int


@dataclass(frozen=True)
class NearItem:
    """One FRESH item as a Get answered it (times in seconds since the epoch)."""

    reply: pb.GetResponse
    stored_at: float
    expires_at: float


def _seconds(ts: Any) -> float:
    return float(ts.seconds) + float(ts.nanos) / 1e9


def near_item(reply: pb.GetResponse) -> Optional[NearItem]:
    """What may be kept of a Get's answer: FRESH data with both times."""
    if reply.state != pb.ITEM_STATE_FRESH:
        return None
    if not (reply.HasField("stored_at") and reply.HasField("expires_at")):
        return None
    return NearItem(reply, _seconds(reply.stored_at), _seconds(reply.expires_at))


def key_of(job: str, args: bytes) -> bytes:
    """The daemon's own key layout: job, 0x00, args."""
    return job.encode() + b"\0" + args


def _item_ref(key: bytes) -> pb.ItemRef:
    job, _, args = key.partition(b"\0")
    return pb.ItemRef(job=job.decode(), args=args)


class _Held:
    """A subscribed item: reads of it in flight, and the bound its events set (data
    stored before `spoiled_before` is out of date)."""

    __slots__ = ("reading", "spoiled_before")

    def __init__(self) -> None:
        self.reading = 0
        self.spoiled_before: Optional[float] = None

    def spoil(self, before: float) -> None:
        if self.spoiled_before is None or before > self.spoiled_before:
            self.spoiled_before = before


class Ticket:
    """A read that may be kept: the stream it began on."""

    __slots__ = ("key", "generation")

    def __init__(self, key: bytes, generation: int) -> None:
        self.key = key
        self.generation = generation


_CLOSE = object()


class NearCache:
    """The near cache of one `Client`; its stream runs on a daemon thread."""

    def __init__(self, stubs: list[Any], daemons: Daemons, metadata: Any, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("near_cache needs a capacity of at least 1")
        self.capacity = min(int(capacity), MAX_NEAR_CACHE_ITEMS)
        self._stubs = stubs
        self._daemons = daemons
        self._metadata = metadata
        self._lock = threading.Lock()
        self._items: OrderedDict[bytes, NearItem] = OrderedDict()
        self._subscribed: dict[bytes, _Held] = {}
        self._requests: Optional[queue.SimpleQueue[Any]] = None
        self._generation = 0
        self._up = threading.Event()
        self._closed = threading.Event()
        self._call: Any = None
        self.hits = 0
        self.misses = 0
        self.resets = 0
        self._thread = threading.Thread(
            target=self._keep_stream, name="cachebackd-near", daemon=True
        )
        self._thread.start()

    # --- reads -------------------------------------------------------------------------

    def lookup(self, key: bytes) -> Optional[NearItem]:
        """The item if it may be served locally now; counts the hit or the miss."""
        with self._lock:
            item = self._items.get(key) if self._requests is not None else None
            if item is not None and time.time() >= item.expires_at:
                del self._items[key]
                item = None
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def begin(self, key: bytes) -> Optional[Ticket]:
        """Before a Get whose answer may be kept: subscribe to the item. None while the
        stream is down or full (the read then just goes to the daemon)."""
        with self._lock:
            requests = self._requests
            if requests is None:
                return None
            if key not in self._subscribed:
                if len(self._subscribed) >= self.capacity + self.capacity // 8 + 64:
                    self._prune(requests)
                if len(self._subscribed) >= _MAX_SUBSCRIBED:
                    return None
                requests.put(pb.SubscribeRequest(add=[_item_ref(key)]))
                self._subscribed[key] = _Held()
            self._subscribed[key].reading += 1
            return Ticket(key, self._generation)

    def finish(self, ticket: Ticket, item: Optional[NearItem]) -> None:
        """After that Get: keep `item` (FRESH) unless it was spoiled meanwhile."""
        with self._lock:
            held = self._subscribed.get(ticket.key)
            if held is None:
                return
            held.reading -= 1
            if item is None or ticket.generation != self._generation:
                return
            if held.spoiled_before is not None and item.stored_at < held.spoiled_before:
                return
            if time.time() >= item.expires_at:
                return
            self._items[ticket.key] = item
            self._items.move_to_end(ticket.key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def forget(self, key: bytes) -> None:
        """This client writes the item: its local copy goes now (the event follows)."""
        with self._lock:
            held = self._subscribed.get(key)
            if held is not None:
                held.spoil(time.time())
            self._items.pop(key, None)

    def stats(self) -> NearCacheStats:
        with self._lock:
            return NearCacheStats(self.hits, self.misses, len(self._items), self.resets)

    def wait_until_up(self, timeout: Optional[float]) -> bool:
        """Wait for the stream to be up; whether it is."""
        return self._up.wait(timeout)

    def lost_daemon(self) -> None:
        """The client left the daemon the stream is on: everything held goes now, and the
        stream's thread opens one on the next daemon."""
        with self._lock:
            call = self._call
        self._drop_all(None)
        if call is not None:
            call.cancel()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._requests is not None:
                self._requests.put(_CLOSE)
            call = self._call
        if call is not None:
            call.cancel()

    # --- the stream --------------------------------------------------------------------

    def _prune(self, requests: "queue.SimpleQueue[Any]") -> None:
        gone = [k for k, h in self._subscribed.items() if h.reading == 0 and k not in self._items]
        for k in gone:
            del self._subscribed[k]
        if gone:
            requests.put(pb.SubscribeRequest(remove=[_item_ref(k) for k in gone]))

    def _drop_all(
        self, requests: "Optional[queue.SimpleQueue[Any]]", moves: Optional[int] = None
    ) -> bool:
        """The stream is lost (None), or a new one is up, opened after `moves` daemon
        moves: everything held goes. A new stream on a daemon the client has left since
        is not used (False)."""
        with self._lock:
            if requests is not None and moves != self._daemons.moves:
                return False
            if self._requests is not None:
                self.resets += 1
            self._generation += 1
            self._subscribed.clear()
            self._items.clear()
            self._requests = requests
        if requests is None:
            self._up.clear()
        else:
            self._up.set()
        return True

    def _on_event(self, event: pb.ItemEvent) -> None:
        key = key_of(event.item.job, event.item.args)
        if event.HasField("at"):
            at = _seconds(event.at)
            # A change's own data (CHANGED at its stored_at) stays; after an
            # invalidation or a removal nothing stored until then does.
            bound = at if event.kind == pb.ITEM_EVENT_KIND_CHANGED else at + 1e-6
        else:
            bound = time.time() + 1.0
        with self._lock:
            held = self._subscribed.get(key)
            if held is not None:
                held.spoil(bound)
            # The CHANGED of the very data held (it may come after the Get's answer) leaves it.
            item = self._items.get(key)
            if item is not None and item.stored_at < bound:
                del self._items[key]

    def _keep_stream(self) -> None:
        delay = 0.05
        down_in_a_row = 0
        while not self._closed.is_set():
            requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

            def outbound(q: "queue.SimpleQueue[Any]" = requests) -> Iterator[pb.SubscribeRequest]:
                while True:
                    message = q.get()
                    if message is _CLOSE:
                        return
                    yield message

            moves = self._daemons.moves
            index = self._daemons.current
            call = self._stubs[index].Subscribe(outbound(), metadata=self._metadata)
            with self._lock:
                self._call = call
            try:
                # The daemon answers the call at once: its initial metadata says the
                # stream is up.
                call.initial_metadata()
                if call.done() and call.code() is not grpc.StatusCode.OK:
                    if len(self._daemons) > 1 and daemon_down(call):
                        # A daemon found down moves the client on; past all, back off.
                        self._daemons.fail_over(index)
                        down_in_a_row += 1
                        if down_in_a_row < len(self._daemons):
                            continue
                        down_in_a_row = 0
                    raise grpc.RpcError()
                if not self._drop_all(requests, moves):
                    continue
                delay = 0.05
                down_in_a_row = 0
                for event in call:
                    if event.kind == pb.ITEM_EVENT_KIND_RESET:
                        break
                    self._on_event(event)
            except grpc.RpcError:
                pass
            finally:
                requests.put(_CLOSE)
                call.cancel()
                self._drop_all(None)
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, 2.0)
