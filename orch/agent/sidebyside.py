"""Run one call per item at the same time and wait for them all.

Stops and kills wait out grace periods: side by side they overlap instead of
adding up. The first item runs in the caller's thread (one thread fewer).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def side_by_side(call: Callable[[T], object], items: Iterable[T], name: str) -> None:
    """``call(item)`` for every item at once; returns when all have returned."""
    items = list(items)
    threads = [
        threading.Thread(target=call, args=(item,), daemon=True, name=name) for item in items[1:]
    ]
    for thread in threads:
        thread.start()
    if items:
        call(items[0])
    for thread in threads:
        thread.join()
