"""The exceptions and warnings of the package.

`CachebackError` is a failed call, keeping the gRPC status. `FetchFailed`, its subclass, is
a fetch that failed in the worker: it carries the origin exception's type name and message
and, when that type is importable here, is raised as a subclass of it too, so that
`except User.DoesNotExist` goes on matching as it did with django-cacheback, where the
fetch ran in the reader's own process.
"""

from __future__ import annotations

import builtins
import re
import sys
import threading
import warnings
from typing import Any, Optional

import grpc

#: What the daemon says while it drains: UNAVAILABLE, but no fetch failed.
SHUTTING_DOWN = "cachebackd is shutting down"

#: A worker's FetchError message by the convention of the Python worker (and of any
#: worker that wants typed errors): `module.QualifiedName: message`, builtins unqualified.
#: The last segment of the type starts with a capital, which keeps a free-text message
#: such as "fetch panicked: boom" from passing for a type.
_REMOTE = re.compile(r"((?:[A-Za-z_<][\w<>]*\.)*[A-Z]\w*)(?:: (.*))?", re.S)


class CachebackError(Exception):
    """A call to the daemon failed.

    `code` is the gRPC status code and `details` the daemon's message, so callers can
    tell the cases of PROTOCOL.md's error table apart: `NOT_FOUND` (job never
    registered), `INVALID_ARGUMENT` (bad name, args or data too large), `UNAVAILABLE`
    (the fetch failed, carrying the worker's message, or the daemon is unreachable),
    `DEADLINE_EXCEEDED` (the client's deadline passed first).
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        # Not super(): in a FetchFailed that also derives from the origin's exception
        # type, the next __init__ in the MRO is that type's, with its own signature.
        Exception.__init__(self, f"{code.name}: {details}")
        self.code = code
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "CachebackError":
        """Wrap a grpc error; unary call errors are also grpc.Call, with code() and details().

        An UNAVAILABLE that the daemon itself answered (not one gRPC made up for a
        connection that failed) is a failed fetch: a FetchFailed.
        """
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = (error.details() if hasattr(error, "details") else str(error)) or ""
        if code == grpc.StatusCode.UNAVAILABLE and answered_by_daemon(error):
            return of_status(code, details)
        return cls(code, details)


def answered_by_daemon(error: grpc.RpcError) -> bool:
    """Whether the status came from the daemon (its response carries headers: at least
    `date`), not from gRPC for a connection that failed or broke (no headers at all)."""
    for read in ("trailing_metadata", "initial_metadata"):
        metadata = getattr(error, read, None)
        if metadata is not None and metadata():
            return True
    return False


class NoDaemonError(CachebackError):
    """None of several daemons could be reached: each was tried once, in turn (the
    connection refused or broken). `tried` holds their targets in that order; `code` is
    the last failure's (UNAVAILABLE)."""

    def __init__(self, rpc: str, tried: list[str], code: grpc.StatusCode, details: str) -> None:
        CachebackError.__init__(
            self, code, f"no cachebackd daemon answered {rpc} (tried {', '.join(tried)}): {details}"
        )
        self.rpc = rpc
        self.tried = tried


class FetchFailed(CachebackError):
    """The fetch of an item failed and there was no data to serve instead.

    `remote_type` is the origin exception's type name as the worker reported it
    (`ValueError`, `myapp.errors.RateLimited`, `User.DoesNotExist`), None when the
    worker's message names none (a Rust worker's free text, a fetch that timed out);
    `remote_message` is the rest of its message. When that type is an exception class
    already imported in this process, the error raised is an instance of a class
    deriving from both FetchFailed and that type.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        remote_type: Optional[str] = None,
        remote_message: str = "",
    ) -> None:
        CachebackError.__init__(self, code, details)
        self.remote_type = remote_type
        self.remote_message = remote_message


class CodecError(ValueError):
    """Stored data that the job's codec cannot read (say, pickle data read as JSON)."""


class CachebackdWarning(UserWarning):
    """A django-cacheback setting that means nothing with the daemon, accepted and ignored."""


def of_status(code: grpc.StatusCode, details: str) -> CachebackError:
    """The error for a status the daemon answered: a FetchFailed for a failed fetch
    (UNAVAILABLE, other than the daemon's drain), else a CachebackError."""
    if code != grpc.StatusCode.UNAVAILABLE or details == SHUTTING_DOWN:
        return CachebackError(code, details)
    match = _REMOTE.fullmatch(details)
    if match is None:
        return FetchFailed(code, details, None, details)
    remote_type, remote_message = match.group(1), match.group(2) or ""
    origin = _exception_type(remote_type)
    klass = _typed(origin) if origin is not None else FetchFailed
    return klass(code, details, remote_type, remote_message)


def _exception_type(name: str) -> Optional[type[Exception]]:
    """The exception class `name` denotes, if it is importable without importing anything:
    a builtin, or an attribute path in a module already loaded. A remote string never
    makes this process import a module (that would run code a worker chose)."""
    parts = name.split(".")
    found: Any = None
    if len(parts) == 1:
        found = getattr(builtins, name, None)
    else:
        for split in range(len(parts) - 1, 0, -1):
            module = sys.modules.get(".".join(parts[:split]))
            if module is None:
                continue
            found = module
            for attribute in parts[split:]:
                found = getattr(found, attribute, None)
            break
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    return None


_typed_lock = threading.Lock()
_typed_classes: dict[type[Exception], type[FetchFailed]] = {}


def _typed(origin: type[Exception]) -> type[FetchFailed]:
    """FetchFailed and `origin` in one class (made once per origin); FetchFailed alone
    when the two cannot be combined (an exception type with an incompatible layout)."""
    if issubclass(origin, FetchFailed):
        return origin
    with _typed_lock:
        klass = _typed_classes.get(origin)
        if klass is None:
            try:
                klass = type(
                    f"FetchFailed[{origin.__qualname__}]",
                    (FetchFailed, origin),
                    {"__module__": __name__, "__qualname__": f"FetchFailed[{origin.__qualname__}]"},
                )
            except TypeError:
                klass = FetchFailed
            _typed_classes[origin] = klass
        return klass


_warned_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()


def warn_once(job: str, setting: str, why: str, stacklevel: int = 3) -> None:
    """Warn, once per process for each job and setting, that a setting is ignored."""
    with _warned_lock:
        if (job, setting) in _warned:
            return
        _warned.add((job, setting))
    warnings.warn(
        f"{job}: {setting} is ignored by cachebackd: {why}", CachebackdWarning, stacklevel
    )
