"""Per-node heartbeat deadlines: a node silent past its TTL is declared down.

Deadlines sit in a heap with lazy deletion, so a heartbeat costs O(log n)
and the monitor wakes only when the earliest deadline may have passed.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time

from orch.errors import OrchError

log = logging.getLogger(__name__)

# A node whose expiry could not be recorded (the state store failed to write,
# say a full disk) is tried again this soon, unless it heartbeats first.
EXPIRY_RETRY_S = 1.0
# The monitor waking later than it asked by half a TTL (and at least this)
# means the process itself stalled (a GIL hog, SIGSTOP, swap) long enough to
# expire nodes that beat on time. Shorter delays are ordinary scheduling and
# must not keep postponing real expiries.
STALL_S = 0.5


class HeartbeatMonitor:
    """Calls ``on_expired(node_id)`` when a node misses its deadline."""

    def __init__(self, ttl: float, on_expired, *, now=time.monotonic):
        self._ttl = ttl
        self._on_expired = on_expired
        self._now = now
        self._deadlines: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._wake_at: float | None = None  # when the monitor asked to wake
        self._stall_after = max(STALL_S, ttl / 2)
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def reset(self, node_id: str) -> None:
        """A sign of life: push the node's deadline one TTL ahead."""
        deadline = self._now() + self._ttl
        with self._cond:
            self._deadlines[node_id] = deadline
            heapq.heappush(self._heap, (deadline, node_id))
            if len(self._heap) > 4 * len(self._deadlines) + 64:
                self._compact()

    def _compact(self) -> None:
        self._heap = [(d, n) for n, d in self._deadlines.items()]
        heapq.heapify(self._heap)

    def _sleep_until(self, wake_at: float) -> None:
        """Note when the monitor means to wake, so that a late wake shows."""
        self._wake_at = wake_at

    def _absorb_stall(self) -> float:
        """After the process stood still, give every node a full TTL again.

        A node is down when *it* was silent, not when the server was: while
        the process stalled, heartbeats queued unanswered, and expiring
        nodes now would blame them for the server's own silence. Every
        deadline moves to one TTL from now, which is at least its old one
        plus the stall, and leaves the queued heartbeats (answered by other
        threads after this one wakes) time to land; Nomad likewise re-arms
        all heartbeat timers when a new leader takes over. Returns the stall.
        """
        if self._wake_at is None:
            return 0.0
        now = self._now()
        late = now - self._wake_at
        self._wake_at = None
        if late < self._stall_after:
            return 0.0
        log.warning(
            "heartbeat monitor woke %.1fs late: the server stalled; re-arming %d node deadlines",
            late,
            len(self._deadlines),
        )
        for node_id in self._deadlines:
            self._deadlines[node_id] = now + self._ttl
        self._compact()
        return late

    def _expired(self) -> list[str]:
        now = self._now()
        expired = []
        while self._heap and self._heap[0][0] <= now:
            deadline, node_id = heapq.heappop(self._heap)
            if self._deadlines.get(node_id) == deadline:
                del self._deadlines[node_id]
                expired.append(node_id)
        # Entries superseded by a later heartbeat go now, not when they fall
        # due: the head is then a live deadline, and the monitor sleeps until
        # it instead of waking for every node that beat (500 times a second
        # with 5,000 nodes every 10 s).
        while self._heap and self._deadlines.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return expired

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                self._absorb_stall()
                expired = self._expired()
                if not expired:
                    wait = self._heap[0][0] - self._now() if self._heap else 1.0
                    wait = min(max(wait, 0.01), 1.0)
                    self._sleep_until(self._now() + wait)
                    self._cond.wait(wait)
                    continue
            for node_id in expired:
                try:
                    self._on_expired(node_id)
                except Exception as exc:
                    # Dropping it would leave the node healthy for good, its
                    # allocations never lost nor replaced: try again.
                    log.error(
                        "node expiry failed node=%s: %s; retrying in %.1fs",
                        node_id,
                        exc,
                        min(self._ttl, EXPIRY_RETRY_S),
                        exc_info=not isinstance(exc, OrchError),
                    )
                    self._retry(node_id)

    def _retry(self, node_id: str) -> None:
        with self._cond:
            if node_id in self._deadlines:
                return  # a heartbeat came in meanwhile
            deadline = self._now() + min(self._ttl, EXPIRY_RETRY_S)
            self._deadlines[node_id] = deadline
            heapq.heappush(self._heap, (deadline, node_id))

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
