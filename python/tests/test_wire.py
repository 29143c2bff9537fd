"""The Python package's wire conventions are the protocol crate's: every constant of
`src/wire.rs` written as a literal has the same value in `cachebackd._wire`, and the
package uses them where it sets the matching defaults."""

from __future__ import annotations

import re
from pathlib import Path

from cachebackd import _wire
from cachebackd.client import MAX_MESSAGE_BYTES
from cachebackd.job import Job
from cachebackd.worker import Worker

WIRE_RS = Path(__file__).resolve().parents[2] / "src" / "wire.rs"

# `pub const NAME: type = literal;`, the literal made of digits, `_`, `*`, spaces or a bool.
CONST = re.compile(r"^pub const ([A-Z_]+): (?:u32|u64|usize|bool) = ([0-9_* ]+|true|false);$", re.M)


def rust_constants() -> dict[str, object]:
    found: dict[str, object] = {}
    for name, literal in CONST.findall(WIRE_RS.read_text()):
        if literal in ("true", "false"):
            found[name] = literal == "true"
        else:
            value = 1
            for factor in literal.replace("_", "").split("*"):
                value *= int(factor)
            found[name] = value
    return found


def test_every_rust_wire_constant_has_the_same_value_in_python() -> None:
    rust = rust_constants()
    assert len(rust) == 14, sorted(rust)
    python = {name: getattr(_wire, name, None) for name in rust}
    assert python == rust
    extra = {n for n in vars(_wire) if n.isupper()} - set(rust)
    assert extra == set()


def test_the_package_defaults_come_from_the_wire_module() -> None:
    assert MAX_MESSAGE_BYTES == _wire.CLIENT_MAX_MESSAGE_BYTES
    # The one deliberate difference: cacheback's own default, so a ported job keeps it.
    assert Job.lifetime == 600 != _wire.JOB_LIFETIME_SECS
    assert Job.refresh_timeout == _wire.JOB_REFRESH_TIMEOUT_SECS
    assert Job.fetch_on_miss is _wire.JOB_FETCH_ON_MISS
    assert Job.max_in_flight == _wire.DEFAULT_MAX_IN_FLIGHT
    worker = Worker.__init__.__kwdefaults__ or {}
    assert worker["reconnect_initial"] == _wire.RECONNECT_MIN_MILLIS / 1000
    assert worker["reconnect_max"] == _wire.RECONNECT_MAX_MILLIS / 1000
