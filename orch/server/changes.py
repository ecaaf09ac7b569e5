"""The change feed: one index that grows with every committed state write.

The store bumps it after each commit that changes jobs, allocations, nodes
or evaluations; the UI's event stream waits on it. A heartbeat that changes
nothing writes nothing, so it does not bump: idle streams stay asleep.

It also keeps each job's modify index (the feed index of the last write that
touched the job, its allocations or evaluations), and runs blocking queries
for both HTTP faces (orch's ``?index=N`` and /v1's): an answer waits until
its index passes the client's or the wait runs out. On a shared database a
write's index is its change-log sequence number, the same on every server,
so a client may ask any of them (a follower bumps as it applies the log).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from orch.slots import Slots

log = logging.getLogger(__name__)

# A blocking query answered by a route holds an HTTP worker thread while it
# waits: only where the server's loop cannot park it (every blocking read
# waits parked on the I/O loop, holding no thread: orch.wsgipark,
# orch.server.parkedreads), or one with a query it does not read. Past this
# many at once a query is answered at once (still correct: the client asks
# again, but a client that loops spins). Not more threads for them: 64 more
# in the pool cost ~12% more server CPU per heartbeat (waitress wakes its
# threads in turn, each with a cold stack) and 4 MB (bench/README.md).
MAX_BLOCKING = 4
# Jobs whose modify index is remembered; past it the oldest half is dropped
# and their index becomes the floor (they changed at or before it).
MAX_TRACKED = 20_000

Answer = Callable[[], tuple[Any, "int | None"]]


class Waker(Protocol):
    """What a watcher of jobs is told a change by (``threading.Event`` is one)."""

    def set(self) -> None: ...


class ChangeFeed:
    """A monotonically increasing index with a condition to wait on."""

    def __init__(self, max_blocking: int = MAX_BLOCKING) -> None:
        self._cond = threading.Condition()
        self._index = 0
        self._closed = False
        self._jobs: dict[str, int] = {}
        self._floor = 0
        self._slots = Slots(max_blocking)  # one per blocking query waiting
        # job id -> the events of the blocking queries waiting on it (block_on)
        self._watchers: dict[str, set[Waker]] = {}
        # the parked blocking reads woken by any change (watch_any)
        self._any_watchers: set[Waker] = set()
        # When the last change was recorded (the /v1 API's list indexes).
        self.changed_at = time.time()
        # Called with the jobs of a blocking query about to wait (the server
        # asks their batch allocations' nodes to report at once).
        self.on_wait: Callable[[list[str]], None] | None = None

    def start_at(self, index: int) -> None:
        """Start counting at ``index``: every job's modify index is at most it.

        The store starts a shared database's feed at the change log's position
        and SQLite's at the wall clock in microseconds: either way above any
        index an earlier run of this server answered (a change a microsecond
        at most), so a client's index from before a restart is not mistaken
        for a recent one."""
        with self._cond:
            self._index = self._floor = index
            self._jobs.clear()

    @property
    def index(self) -> int:
        return self._index

    @property
    def closed(self) -> bool:
        return self._closed

    def bump(
        self,
        jobs: Iterable[str] = (),
        seq: int | None = None,
        *,
        all_jobs: bool = False,
        wake: bool = True,
    ) -> int:
        """Record one change to ``jobs`` (every job: ``all_jobs``) and wake every
        waiter; returns the new index.

        ``seq`` is the change log's number of the write (shared databases):
        the index jumps to it, so that servers agree on indexes. Without
        ``wake`` the waiters are woken by a later ``wake(jobs)``: the store
        wakes them once its lock is free, as a reader woken while the write
        still holds it would only go back to sleep on the lock."""
        jobs = list(jobs)
        with self._cond:
            self._index = max(self._index + 1, seq or 0)
            if all_jobs:
                self._jobs.clear()
                self._floor = self._index
            for job_id in jobs:
                self._jobs.pop(job_id, None)  # re-inserted last: the dict stays in age order
                self._jobs[job_id] = self._index
            if len(self._jobs) > MAX_TRACKED:
                self._forget_oldest()
            self.changed_at = time.time()
            if wake:
                self._cond.notify_all()
                self._wake_watchers(None if all_jobs else jobs)
            return self._index

    def wake(self, jobs: Iterable[str]) -> None:
        """Wake the waiters of changes to ``jobs`` bumped without waking."""
        with self._cond:
            self._cond.notify_all()
            self._wake_watchers(jobs)

    def _forget_oldest(self) -> None:
        drop = list(self._jobs)[: len(self._jobs) // 2]
        self._floor = max(self._jobs[job_id] for job_id in drop)
        for job_id in drop:
            del self._jobs[job_id]

    def job_index(self, job_id: str) -> int:
        """The index of the last change to the job (the floor if not remembered)."""
        return self._jobs.get(job_id, self._floor)

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

    def block(self, answer: Answer, after: int, wait_s: float) -> tuple[Any, int | None]:
        """``answer()``'s (payload, index) once its index passes ``after``, or when
        ``wait_s`` runs out; a query past the waiters' cap is answered at once."""
        if after <= 0 or not self._slots.try_take():
            return answer()
        deadline = time.monotonic() + wait_s
        try:
            while True:
                seen = self._index
                payload, index = answer()
                left = deadline - time.monotonic()
                if index is None or index > after or left <= 0 or self._closed:
                    return payload, index
                self.wait(seen, left)
        finally:
            self._slots.give()

    def block_on(
        self, jobs: list[str], answer: Answer, after: int, wait_s: float
    ) -> tuple[Any, int | None]:
        """``answer()`` once the greatest index of ``jobs`` passes ``after``, or
        when ``wait_s`` runs out. Only a write to one of the jobs wakes it: a
        busy cluster's other writes do not make it read again."""
        if after <= 0 or not self._slots.try_take():
            return answer()
        deadline = time.monotonic() + wait_s
        woken = threading.Event()
        # Registered before the first look: a bump in between sets the event.
        self.watch(jobs, woken)
        told = False
        try:
            while not self._closed:
                left = deadline - time.monotonic()
                if max(self.job_index(j) for j in jobs) > after or left <= 0:
                    break
                if not told:
                    told = True
                    self.tell_waiting(jobs)
                woken.wait(left)
                woken.clear()
            return answer()
        finally:
            self.unwatch(jobs, woken)
            self._slots.give()

    def watch(self, jobs: list[str], waker: Waker) -> None:
        """Call ``waker.set()`` (on the writer's thread, under the feed's lock:
        it must not block) at every change to one of ``jobs`` until
        ``unwatch``: a blocking query that holds no thread
        (``orch.server.inline``) waits so."""
        with self._cond:
            for job_id in jobs:
                self._watchers.setdefault(job_id, set()).add(waker)

    def watch_any(self, waker: Waker) -> None:
        """``watch`` every change (orch.server.parkedreads)."""
        with self._cond:
            self._any_watchers.add(waker)

    def unwatch_any(self, waker: Waker) -> None:
        with self._cond:
            self._any_watchers.discard(waker)

    def unwatch(self, jobs: list[str], waker: Waker) -> None:
        with self._cond:
            for job_id in jobs:
                watching = self._watchers.get(job_id)
                if watching is not None:
                    watching.discard(waker)
                    if not watching:
                        del self._watchers[job_id]

    def tell_waiting(self, jobs: list[str]) -> None:
        """``on_wait`` of a blocking query about to wait on ``jobs``."""
        on_wait = self.on_wait
        if on_wait is None:
            return
        try:
            on_wait(jobs)
        except Exception:  # a hint only: the query still waits and answers
            log.exception("blocking query's on_wait failed")

    @property
    def blocked(self) -> int:
        """How many blocking queries are waiting now (each holds a slot)."""
        return self._slots.held

    def _wake_watchers(self, jobs: Iterable[str] | None) -> None:
        """Set the events of the queries on ``jobs`` (None: on every job)."""
        for waker in self._any_watchers:
            waker.set()
        if not self._watchers:
            return
        if jobs is None:
            groups = list(self._watchers.values())
        else:
            groups = [self._watchers[j] for j in jobs if j in self._watchers]
        for group in groups:
            for woken in group:
                woken.set()

    def close(self) -> None:
        """Wake every waiter for good: streams end on server shutdown."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._wake_watchers(None)
