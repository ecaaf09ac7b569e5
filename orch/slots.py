"""A count of holders with a cap: who may start a long wait or a stream.

The server's blocking queries and its UI streams each hold a thread (or a
waiter) for a long time, so each kind is capped. A holder that finds the
cap reached is answered at once its own way (a query without waiting, a
stream with a 503); shutdown waits for the holders to leave.
"""

from __future__ import annotations

import threading


class Slots:
    """At most ``cap`` holders at once."""

    def __init__(self, cap: int):
        self.cap = cap
        self._held = 0
        self._cond = threading.Condition()

    @property
    def held(self) -> int:
        """How many slots are held now."""
        return self._held

    def try_take(self) -> bool:
        """Take a slot if one is free."""
        with self._cond:
            if self._held >= self.cap:
                return False
            self._held += 1
            return True

    def give(self) -> None:
        """Give a slot back."""
        with self._cond:
            self._held -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every slot was given back within ``timeout`` s."""
        with self._cond:
            return self._cond.wait_for(lambda: self._held == 0, timeout)
