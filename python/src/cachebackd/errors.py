"""The one exception the client raises for a failed call, keeping the gRPC status."""

from __future__ import annotations

import grpc


class CachebackError(Exception):
    """A call to the daemon failed.

    `code` is the gRPC status code and `details` the daemon's message, so callers can
    tell the cases of PROTOCOL.md's error table apart: `NOT_FOUND` (job never
    registered), `INVALID_ARGUMENT` (bad name, args or data too large), `UNAVAILABLE`
    (the fetch failed, carrying the worker's message, or the daemon is unreachable),
    `DEADLINE_EXCEEDED` (the client's deadline passed first).
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "CachebackError":
        """Wrap a grpc error; unary call errors are also grpc.Call, with code() and details()."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code, details or "")
