"""The daemons a client may talk to (one target, or the several of a fleet), which one it
uses now, and when a failed call moves it to the next. The same rules as the Rust client's:

- a client uses one daemon at a time (its channel, its near cache's stream and the
  daemon's single-flight stay in one place), starting on one picked at random, so that app
  servers given the same list spread over the fleet instead of all landing on the first;
- it moves to the next in the list when a call finds its daemon down: the connection
  refused or broken (a status gRPC made up, with no response from the daemon), or the
  daemon draining ("cachebackd is shutting down"); never for a status the daemon answered
  otherwise, such as the UNAVAILABLE of a failed fetch;
- it stays where it moved to; a call is sent at most once to each daemon. Every unary call
  of a reader may be sent twice: a read, and a Set of the same data, an Invalidate, a
  Delete or an InvalidateTags applied twice leave the same state (PROTOCOL.md).
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any, Sequence

import grpc

from .errors import SHUTTING_DOWN, answered_by_daemon

log = logging.getLogger("cachebackd")


def split_targets(targets: str) -> list[str]:
    """One target or several separated by commas (as CACHEBACKD_URL may hold them)."""
    return [t.strip() for t in targets.split(",") if t.strip()]


def daemon_down(error: Any) -> bool:
    """Whether a failed call (a grpc.RpcError, sync or aio) found its daemon down rather
    than refused by it."""
    code = error.code() if hasattr(error, "code") else None
    if code is grpc.StatusCode.UNAVAILABLE:
        details = (error.details() if hasattr(error, "details") else "") or ""
        return details == SHUTTING_DOWN or not answered_by_daemon(error)
    return False


class Daemons:
    """The targets of a client and the index of the one in use (thread-safe)."""

    def __init__(self, targets: Sequence[str]) -> None:
        if not targets:
            raise ValueError("a client needs at least one cachebackd target")
        self.targets = list(targets)
        self._lock = threading.Lock()
        self._current = random.randrange(len(self.targets))
        #: How many times the client moved to another daemon.
        self.moves = 0

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def current(self) -> int:
        with self._lock:
            return self._current

    def fail_over(self, index: int) -> bool:
        """The daemon at `index` is down: if it is still the one in use, the next one is
        from now on. Whether this call moved the client (callers racing on one failure
        move it once)."""
        with self._lock:
            if self._current != index:
                return False
            self._current = (index + 1) % len(self.targets)
            self.moves += 1
            to = self.targets[self._current]
        log.warning("cachebackd at %s unreachable; failing over to %s", self.targets[index], to)
        return True
