"""Prints what each example's reads return, and how long they took."""

from __future__ import annotations

import time
from typing import Any, Callable

from cachebackd import Item, Job


def show(what: str, read: Callable[[], Any]) -> Any:
    """Run one read and print its result and its duration."""
    started = time.monotonic()
    result = read()
    took = time.monotonic() - started
    if isinstance(result, Item):
        print(f"{what:<44} {result.state.name:<5} {result.data!r} ({took:.2f}s)")
    else:
        print(f"{what:<44} {result!r} ({took:.2f}s)")
    return result


def wait_for_refresh(job: Job, *args: Any, timeout: float = 30.0) -> Item:
    """Read until the background refresh has landed (the item is FRESH again)."""
    deadline = time.monotonic() + timeout
    while True:
        item = job.get_item(*args)
        if item.state.name == "FRESH" or time.monotonic() > deadline:
            return item
        time.sleep(0.05)
