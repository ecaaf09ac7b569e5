"""Who leads the cluster: always this server on SQLite, a lease row on PostgreSQL.

On PostgreSQL several servers share one state and exactly one of them runs
the scheduling side (workers, heartbeat monitor, periodic launches, drains,
deployments). It holds a lease: the one row of the ``leadership`` table,
``(term, holder, url, expires)``, taken when it is free or expired by the
database's clock and renewed every ``lease/3`` seconds. Each take bumps the
term, as Raft's and Nomad's leader terms.

Fencing has two halves. The leader fences *itself*: it counts its lease from
the moment it *sent* the renewal, by its own monotonic clock, and gives up
``margin`` before the database would let anyone else take over, so a paused
or cut-off leader has stopped before a successor starts. And every plan
commit runs ``fence()``'s query in its own transaction: ``FOR SHARE`` on the
lease row of *our* term, so a takeover waits for a commit in flight, and a
deposed leader's late commit finds no row and is refused (NotLeader, 503).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orch.errors import NotLeader

log = logging.getLogger(__name__)

Transition = Callable[[int], None]

SCHEMA = """
CREATE TABLE IF NOT EXISTS leadership (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    term    BIGINT NOT NULL,
    holder  TEXT NOT NULL,
    url     TEXT NOT NULL DEFAULT '',
    expires TIMESTAMPTZ NOT NULL
)
"""
# Several servers starting at once would race on CREATE TABLE IF NOT EXISTS
# (a unique violation in pg_type): one at a time, under this advisory lock.
SCHEMA_LOCK = 0x6F7263686C6561  # "orchlea"

# Take the lease if it is free or expired; renew it if it is still ours.
# The term stays on a renewal and goes up on every take.
TAKE = """
INSERT INTO leadership AS l (id, term, holder, url, expires)
VALUES (1, 1, %(me)s, %(url)s, now() + make_interval(secs => %(lease)s))
ON CONFLICT (id) DO UPDATE SET
    term = CASE WHEN l.holder = %(me)s AND l.term = %(term)s AND l.expires > now()
                THEN l.term ELSE l.term + 1 END,
    holder = EXCLUDED.holder, url = EXCLUDED.url, expires = EXCLUDED.expires
WHERE (l.holder = %(me)s AND l.term = %(term)s AND l.expires > now()) OR l.expires <= now()
RETURNING term
"""
READ = """
SELECT term, holder, url, EXTRACT(EPOCH FROM expires - now())::float8
FROM leadership WHERE id = 1
"""
FENCE = (
    "SELECT 1 FROM leadership WHERE id = 1 AND term = %s AND holder = %s "
    "AND expires > now() FOR SHARE"
)
# A lease query that got no answer is tried again this soon.
RETRY_S = 0.25
RELEASE = "UPDATE leadership SET expires = now() WHERE id = 1 AND term = %s AND holder = %s"


@dataclass(frozen=True)
class LeaderInfo:
    """The lease as last read: who holds it, for which term, where it listens."""

    term: int = 0
    holder: str = ""
    url: str = ""


class SoleLeadership:
    """SQLite: one server, always the leader of term 1."""

    server_id = "local"

    def __init__(self, url: str = ""):
        self.url = url
        self._on_lose: Transition | None = None

    def start(self, on_gain: Transition, on_lose: Transition) -> None:
        self._on_lose = on_lose
        on_gain(1)

    def stop(self) -> None:
        """The leader-only services stop with the server."""
        on_lose, self._on_lose = self._on_lose, None
        if on_lose is not None:
            on_lose(1)

    def is_leader(self) -> bool:
        return True

    def leader(self) -> LeaderInfo:
        return LeaderInfo(1, self.server_id, self.url)

    def fence(self) -> tuple[str, tuple] | None:
        return None


class LeaseLeadership:
    """The lease row on PostgreSQL, kept by one thread; transitions on another."""

    def __init__(
        self,
        database_url: str,
        url: str,
        *,
        lease: float = 3.0,
        margin: float | None = None,
        server_id: str | None = None,
        now: Callable[[], float] = time.monotonic,
    ):
        self._database_url = database_url
        self.url = url
        self.server_id = server_id or uuid.uuid4().hex[:12]
        self.lease = lease
        self.renew_every = lease / 3
        # Given up this long before the database would let a successor in:
        # covers the clocks' drift and the time stopping takes.
        self.margin = lease / 4 if margin is None else margin
        self._now = now
        self._lock = threading.Lock()
        self._term = 0  # the term we lead, 0 when following
        self._valid_until = 0.0  # monotonic: our lease ends (with the margin)
        self._known = LeaderInfo()
        # Monotonic: the lease last seen (``_known``) ends, by our clock; no
        # server leads after it, as far as we know (the database may be lost).
        self._known_until = 0.0
        self._expires_in = 0.0  # seconds the lease read last had left
        self._failing = False  # the last lease query failed (no answer)
        self._conn: Any = None  # a psycopg connection, made when first needed
        self._stopped = threading.Event()
        self._events: queue.Queue = queue.Queue()
        self._on_gain: Transition = _nothing
        self._on_lose: Transition = _nothing
        self._threads: list[threading.Thread] = []

    # ---- what the server asks --------------------------------------------

    def is_leader(self) -> bool:
        """Leading, by our own clock: false as soon as the lease may be lost."""
        with self._lock:
            return self._term > 0 and self._now() < self._valid_until

    def leader(self) -> LeaderInfo:
        """Who leads; no one (holder and url empty, the last term) once the
        lease last seen has run out by our clock."""
        with self._lock:
            now = self._now()
            if self._term > 0 and now < self._valid_until:
                return LeaderInfo(self._term, self.server_id, self.url)
            if now < self._known_until:
                return self._known
            return LeaderInfo(self._known.term)

    def fence(self) -> tuple[str, tuple]:
        """The check run in every plan commit's transaction; NotLeader at once
        when our own clock says the lease may be gone."""
        with self._lock:
            term, valid = self._term, self._now() < self._valid_until
        if not term or not valid:
            raise NotLeader("this server is not the leader")
        return FENCE, (term, self.server_id)

    # ---- lifecycle --------------------------------------------------------

    def start(self, on_gain: Transition, on_lose: Transition) -> None:
        """Create the table, then keep the lease and call the transitions
        (in order, on their own thread, so a slow one never delays a renewal)."""
        self._on_gain, self._on_lose = on_gain, on_lose
        self.create_schema()
        for target, name in (
            (self._keep, "leadership"),
            (self._watchdog, "leadership-fence"),
            (self._transitions, "leadership-transitions"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Step down (the lease is released at once, so a successor need not
        wait for it to expire) and stop the threads."""
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            term, self._term = self._term, 0
        if term:
            import psycopg

            self._on_lose(term)
            try:
                self._connection().execute(RELEASE, (term, self.server_id))
            except psycopg.Error as exc:  # the lease expires on its own
                log.warning("leadership: could not release the lease: %s", exc)
        if self._conn is not None:
            self._conn.close()

    # ---- the lease thread -----------------------------------------------------

    def _connection(self):
        import psycopg  # only PostgreSQL servers import it

        if self._conn is None or self._conn.closed:
            # A statement stuck longer than the lease is no use to anyone.
            self._conn = psycopg.connect(
                self._database_url,
                autocommit=True,
                connect_timeout=max(2, int(self.lease)),
                options=f"-c statement_timeout={int(self.lease * 1000)}",
            )
        return self._conn

    def create_schema(self) -> None:
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute(SCHEMA)

    def _keep(self) -> None:
        while not self._stopped.is_set():
            sent = self._now()
            self.renew_once(sent)
            wait = RETRY_S if self._failing else self._next_attempt(sent)
            self._stopped.wait(wait)

    def renew_once(self, sent: float | None = None) -> bool:
        """One round: take or renew the lease (else learn who holds it);
        whether we lead. ``sent``: when the round began, by our clock."""
        import psycopg

        sent = self._now() if sent is None else sent
        try:
            term = self._attempt()
        except psycopg.Error as exc:
            # Not an answer: a leader keeps leading until its own deadline
            # (the watchdog's), retrying meanwhile; one slow query under load
            # must not hand the cluster over.
            (log.debug if self._failing else log.warning)("leadership: lease query failed: %s", exc)
            self._failing = True
            self._drop_connection()
            return self.is_leader()
        if self._failing:
            log.info("leadership: the database answers again")
            self._failing = False
        self._update(term, sent)
        return term is not None

    def _attempt(self) -> int | None:
        """One round trip: take or renew the lease; else read who holds it."""
        conn = self._connection()
        with self._lock:
            mine = self._term
        row = conn.execute(
            TAKE, {"me": self.server_id, "url": self.url, "lease": self.lease, "term": mine}
        ).fetchone()
        if row is not None:
            return int(row[0])
        asked = self._now()  # the lease ends no sooner than counted from here
        current = conn.execute(READ).fetchone()
        if current is not None:
            with self._lock:
                self._known = LeaderInfo(int(current[0]), current[1], current[2])
                self._expires_in = max(0.0, float(current[3]))
                self._known_until = asked + self._expires_in
        return None

    def _update(self, term: int | None, sent: float) -> None:
        with self._lock:
            before = self._term
            if term is not None:
                self._term = term
                self._valid_until = sent + self.lease - self.margin
                self._known = LeaderInfo(term, self.server_id, self.url)
                self._known_until = self._valid_until
            elif before:
                self._term = 0
        if before and before != term:
            log.warning("leadership lost: term %d", before)
            self._events.put((self._on_lose, before))
        if term is not None and term != before:
            log.info("leadership gained: term %d server=%s url=%s", term, self.server_id, self.url)
            self._events.put((self._on_gain, term))

    def _next_attempt(self, sent: float) -> float:
        """A leader renews every lease/3; a follower tries when the lease it
        saw runs out (a dead leader is replaced within the lease)."""
        wait = sent + self.renew_every - self._now()
        if not self.is_leader():
            with self._lock:
                wait = min(wait, self._expires_in + 0.05)
        return max(0.05, wait)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("leadership: closing a broken connection failed", exc_info=True)

    # ---- self-fencing and transitions ----------------------------------------

    def _watchdog(self) -> None:
        """Step down when the lease was not renewed in time, whatever the
        lease thread is doing (blocked on a dead database, say)."""
        while not self._stopped.is_set():
            with self._lock:
                term, valid_until = self._term, self._valid_until
                expired = term > 0 and self._now() >= valid_until
                if expired:
                    self._term = 0
            if expired:
                log.warning("leadership: lease of term %d not renewed in time: stepping down", term)
                self._events.put((self._on_lose, term))
            wait = valid_until - self._now() if term and not expired else self.renew_every / 2
            self._stopped.wait(min(max(wait, 0.01), self.renew_every / 2))

    def _transitions(self) -> None:
        while not self._stopped.is_set():
            try:
                call, term = self._events.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                call(term)
            except Exception:
                log.exception("leadership transition failed (term %d)", term)


def _nothing(term: int) -> None:
    """No transition callback given."""
