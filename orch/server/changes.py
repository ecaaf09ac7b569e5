"""The change feed: one index that grows with every committed state write.

The store bumps it after each commit that changes jobs, allocations, nodes
or evaluations; the UI's event stream waits on it. A heartbeat that changes
nothing writes nothing, so it does not bump: idle streams stay asleep.
"""

from __future__ import annotations

import threading
import time


class ChangeFeed:
    """A monotonically increasing index with a condition to wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._index = 0
        self._closed = False
        # When the last change was recorded (the /v1 API's list indexes).
        self.changed_at = time.time()

    @property
    def index(self) -> int:
        return self._index

    @property
    def closed(self) -> bool:
        return self._closed

    def bump(self) -> int:
        """Record one change and wake every waiter; returns the new index."""
        with self._cond:
            self._index += 1
            self.changed_at = time.time()
            self._cond.notify_all()
            return self._index

    def wait(self, after: int, timeout: float) -> int:
        """The index once it is past ``after``, or as it is after ``timeout`` s.

        Returns at once when the feed is closed (server shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._index <= after and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._index

    def close(self) -> None:
        """Wake every waiter for good: streams end on server shutdown."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
