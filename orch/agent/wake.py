"""An Event whose waiter can be told to look at its deadline again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Wake:
    """threading.Event's set, is_set, clear and wait, and ``poke``: a waiter
    with a ``due`` callable looks at its deadline again."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._flag = False

    def poke(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait(self, timeout: float, due: Callable[[], float] | None = None) -> bool:
        """True once set; False when ``timeout`` or the time ``due()`` gives
        (monotonic) has passed first."""
        end = time.monotonic() + timeout
        with self._cond:
            while not self._flag:
                left = (end if due is None else min(end, due())) - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
