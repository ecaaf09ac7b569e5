"""The evaluation broker: a queue of evaluations with one job in flight.

As Nomad's eval broker: a worker dequeues (evaluations, token), then acks or
nacks. While one evaluation of a job is in flight, newer ones for that job
wait; when it is acked they are handed out *together* (the scheduler runs once
for all of them, which is what keeps a burst of updates to one job cheap).
Evaluations that could not place everything are parked as *blocked* and go
back to the queue whenever cluster capacity changes.

Only the leader's broker is enabled (Nomad's ``SetEnabled``): a follower's
drops what it is given, since the leader restores every unfinished
evaluation from the store when it takes over, and losing leadership
flushes the queue.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import OrderedDict, deque

from orch.structs import Evaluation


class EvalBroker:
    """Hands evaluations to scheduler workers, one job at a time."""

    def __init__(self, *, now=time.monotonic, max_deliveries: int = 3):
        self._now = now
        self._cond = threading.Condition()
        self._ready: deque[str] = deque()  # job ids with work
        self._pending: dict[str, OrderedDict] = {}  # job -> evals waiting
        self._inflight: dict[str, tuple[str, list]] = {}  # job -> (token, evals)
        self._blocked: dict[str, Evaluation] = {}  # job -> blocked eval
        self._delayed: list = []  # heap (time, seq, eval)
        self._seq = itertools.count()
        self._deliveries: dict[str, int] = {}
        self._max_deliveries = max_deliveries
        self._closed = False
        self._enabled = True

    def set_enabled(self, enabled: bool) -> None:
        """Leadership gained (True) or lost (False: everything queued is dropped)."""
        with self._cond:
            self._enabled = enabled
            if not enabled:
                self._ready.clear()
                self._pending.clear()
                self._inflight.clear()
                self._blocked.clear()
                self._delayed.clear()
                self._deliveries.clear()
            self._cond.notify_all()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def quiet(self) -> bool:
        """Leading and no evaluation waits to be planned (in flight is fine:
        its plan is checked again at commit)."""
        with self._cond:
            return self._enabled and not self._ready and not self._pending

    # ---- producers ----------------------------------------------------

    def enqueue(self, ev: Evaluation) -> None:
        with self._cond:
            if not self._enabled:
                return
            self._add(ev)
            self._cond.notify()

    def enqueue_many(self, evals: list[Evaluation]) -> None:
        with self._cond:
            if not self._enabled:
                return
            for ev in evals:
                self._add(ev)
            self._cond.notify_all()

    def enqueue_delayed(self, ev: Evaluation, at_wall: float) -> None:
        """Enqueue once the wall-clock time ``at_wall`` has come."""
        wait = max(0.0, at_wall - time.time())
        with self._cond:
            if not self._enabled:
                return
            heapq.heappush(self._delayed, (self._now() + wait, next(self._seq), ev))
            self._cond.notify()

    def _add(self, ev: Evaluation) -> None:
        waiting = self._pending.setdefault(ev.job_id, OrderedDict())
        was_idle = not waiting
        # A blocked evaluation rides along with newer work for its job, so
        # that whoever follows it sees it finish.
        blocked = self._blocked.pop(ev.job_id, None)
        if blocked is not None and blocked.eval_id != ev.eval_id:
            waiting[blocked.eval_id] = blocked
        waiting[ev.eval_id] = ev
        if ev.job_id not in self._inflight and was_idle:
            self._ready.append(ev.job_id)

    def block(self, ev: Evaluation) -> None:
        """Park an evaluation until capacity changes (see ``unblock``)."""
        with self._cond:
            if not self._enabled:
                return
            pending = self._pending.get(ev.job_id)
            if pending:
                return  # newer work for this job will re-plan anyway
            self._blocked[ev.job_id] = ev

    def unblock(self) -> int:
        """Capacity changed: every blocked evaluation is tried again."""
        with self._cond:
            blocked = list(self._blocked.values())
            self._blocked.clear()
            for ev in blocked:
                self._add(ev)
            if blocked:
                self._cond.notify_all()
            return len(blocked)

    def cancel_job(self, job_id: str) -> list[Evaluation]:
        """Drop queued, blocked and delayed evaluations of a job; returns them.

        One in flight stays with its worker, which finds the job stopped or
        gone when it commits."""
        with self._cond:
            dropped = list(self._pending.pop(job_id, {}).values())
            blocked = self._blocked.pop(job_id, None)
            if blocked is not None:
                dropped.append(blocked)
            if any(entry[2].job_id == job_id for entry in self._delayed):
                dropped += [e for _, _, e in self._delayed if e.job_id == job_id]
                self._delayed = [d for d in self._delayed if d[2].job_id != job_id]
                heapq.heapify(self._delayed)
            return dropped

    # ---- consumers ------------------------------------------------------

    def dequeue(self, timeout: float) -> tuple[str, list[Evaluation]] | None:
        """Wait for work; returns (token, evaluations of one job) or None."""
        deadline = self._now() + timeout
        with self._cond:
            while not self._closed:
                if not self._enabled:
                    remaining = deadline - self._now()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)
                    continue
                self._promote_delayed()
                job_id = self._next_ready_job()
                if job_id is not None:
                    evals = list(self._pending.pop(job_id).values())
                    token = f"{job_id}/{next(self._seq)}"
                    self._inflight[job_id] = (token, evals)
                    return token, evals
                remaining = deadline - self._now()
                if remaining <= 0:
                    return None
                if self._delayed:
                    remaining = min(remaining, max(0.0, self._delayed[0][0] - self._now()))
                self._cond.wait(remaining)
            return None

    def _next_ready_job(self) -> str | None:
        while self._ready:
            job_id = self._ready.popleft()
            if self._pending.get(job_id) and job_id not in self._inflight:
                return job_id
        return None

    def _promote_delayed(self) -> None:
        now = self._now()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, ev = heapq.heappop(self._delayed)
            self._add(ev)

    def ack(self, token: str) -> None:
        with self._cond:
            job_id = token.rsplit("/", 1)[0]
            entry = self._inflight.get(job_id)
            if entry is None or entry[0] != token:
                return
            del self._inflight[job_id]
            for ev in entry[1]:
                self._deliveries.pop(ev.eval_id, None)
            if self._pending.get(job_id):
                self._ready.append(job_id)
                self._cond.notify()

    def nack(self, token: str) -> list[Evaluation]:
        """Give evaluations back; returns those delivered too often (dropped)."""
        with self._cond:
            job_id = token.rsplit("/", 1)[0]
            entry = self._inflight.get(job_id)
            if entry is None or entry[0] != token:
                return []
            del self._inflight[job_id]
            given_up = []
            retry = OrderedDict()
            for ev in entry[1]:
                n = self._deliveries.get(ev.eval_id, 0) + 1
                self._deliveries[ev.eval_id] = n
                if n >= self._max_deliveries:
                    self._deliveries.pop(ev.eval_id, None)
                    given_up.append(ev)
                else:
                    retry[ev.eval_id] = ev
            retry.update(self._pending.get(job_id, {}))
            if retry:
                self._pending[job_id] = retry
                self._ready.append(job_id)
                self._cond.notify()
            return given_up

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict:
        with self._cond:
            return {
                "ready": sum(len(v) for v in self._pending.values()),
                "inflight": len(self._inflight),
                "blocked": len(self._blocked),
                "delayed": len(self._delayed),
            }
