"""The wire conventions shared by every cachebackd client (PROTOCOL.md, "Client conventions").

`args` is the compact JSON array of the positional arguments with sorted object keys, so
that a Python reader and a worker in another language address the same item; `data` is
JSON of the same shape unless a job says otherwise. Times cross the wire as protobuf
Timestamps and Durations; here they are aware UTC datetimes and timedeltas.
"""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence, Union

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from .errors import CodecError

#: A span given as seconds (int or float) or as a timedelta, as cacheback's attributes are.
Seconds = Union[int, float, timedelta]


def encode_json(value: Any) -> bytes:
    """Canonical JSON: no spaces, sorted keys; NaN and infinities are refused, since no
    other language's JSON parser reads them."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def encode_args(args: Sequence[Any]) -> bytes:
    """The `args` bytes of an item: `json.dumps(list(args), separators=(",", ":"), sort_keys=True)`."""
    return encode_json(list(args))


def decode_args(raw: bytes) -> list[Any]:
    """The positional arguments of a FetchRequest; anything but a JSON array is an error."""
    args = json.loads(raw) if raw else []
    if not isinstance(args, list):
        raise ValueError(f"args must be a JSON array, got {raw[:64]!r}")
    return args


def decode_json(raw: bytes) -> Any:
    """Inverse of encode_json; data that is not JSON is a CodecError that says what it is."""
    try:
        return json.loads(raw)
    except ValueError as error:
        hint = (
            " (it is pickle data: the job's worker uses codec = 'pickle')" if is_pickle(raw) else ""
        )
        raise CodecError(f"the stored data is not JSON{hint}: {error}") from None


#: The codecs a job may name (`Job.codec`).
CODECS = ("json", "pickle")
#: Every pickle since protocol 2 opens with the PROTO opcode.
_PICKLE_MAGIC = b"\x80"


def is_pickle(raw: bytes) -> bool:
    """Whether `raw` opens as a pickle of protocol 2 or later (never valid JSON or UTF-8)."""
    return raw[:1] == _PICKLE_MAGIC


def encode_data(codec: str, value: Any) -> bytes:
    """A job's data as stored: canonical JSON, or a pickle (protocol 5) for `codec = "pickle"`."""
    if codec == "pickle":
        return pickle.dumps(value, protocol=5)
    return encode_json(value)


def decode_data(codec: str, raw: bytes) -> Any:
    """Inverse of encode_data. A pickle job refuses data that is not a pickle (a worker in
    another language wrote JSON there), rather than guess."""
    if codec == "pickle":
        if not is_pickle(raw):
            raise CodecError(
                f"the stored data is not a pickle ({raw[:32]!r}...): it was written by a "
                "worker or a Set that does not use codec = 'pickle'"
            )
        return pickle.loads(raw)
    return decode_json(raw)


def to_timedelta(value: Seconds) -> timedelta:
    """Seconds or a timedelta, as a non-negative timedelta."""
    span = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if span < timedelta(0):
        raise ValueError(f"a span cannot be negative: {value!r}")
    return span


def to_duration(value: Seconds) -> Duration:
    """A protobuf Duration for seconds or a timedelta."""
    duration = Duration()
    duration.FromTimedelta(to_timedelta(value))
    return duration


def from_timestamp(ts: Timestamp) -> datetime:
    """An aware UTC datetime for a protobuf Timestamp."""
    return ts.ToDatetime(tzinfo=timezone.utc)
