"""A flag set once and never cleared, waited on like a `threading.Event`.

An Event is a Lock and a Condition (whose constructor probes its lock for
three methods a plain Lock lacks, each an AttributeError caught): ~3 us to
make, and the agent made four per allocation (two per allocation runner, two
per task runner) on the push thread. A `Flag` is one Lock, held until set:
a waiter acquires it and at once lets it go to the next waiter.
"""

from __future__ import annotations

import threading

# Serialises setting (rare: once per flag): two setters must not both release.
_SETTING = threading.Lock()


class Flag:
    """`set`, `is_set` and `wait` of a threading.Event that is never cleared."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._set = False
        self._lock = threading.Lock()
        self._lock.acquire()  # released once, by set()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with _SETTING:
            if self._set:
                return
            self._set = True
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; False if `timeout` seconds pass first."""
        if self._set:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self._lock.release()  # for the next waiter
            return True
        return self._set
