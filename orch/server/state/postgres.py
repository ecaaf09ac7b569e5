"""The PostgreSQL backend: one database shared by several servers.

Writers of every server are serialised by one advisory lock taken at the
start of each write transaction (``pg_advisory_xact_lock``, released by the
commit), so the store can catch its memory up from the change log before it
computes a write: no server computes on stale memory. Each committed write
appends one row to ``changes`` (what it wrote, for the others' memory) and
NOTIFYs ``orch_changes``; ``follow`` applies them on the other servers.

The writer owns one dedicated connection (autocommit, explicit BEGIN and
COMMIT). A broken connection (the database restarted or unreachable) makes
the write fail with StorageError; the next call connects again by itself.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg

from orch.errors import NotLeader, StorageError
from orch.server.state import migrations
from orch.server.state.backend import Fence

log = logging.getLogger(__name__)

# Any constant both sides agree on: the cluster-wide write lock's key.
WRITE_LOCK = 0x6F726368  # "orch"
CHANNEL = "orch_changes"
CONNECT_TIMEOUT = 3  # seconds: a write on a lost database fails fast (503)
# A server that stalls inside a write (SIGSTOP, swapped out) holds the
# cluster's write lock: PostgreSQL ends its session after this long idle in
# the transaction, so the others go on (its write fails: 503, nothing half
# done). A write waiting longer than LOCK_WAIT for the lock fails the same way.
STALLED_WRITER_MS = 5_000
LOCK_WAIT_MS = 8_000
# A database that answers nothing (its host hung: TCP stays up, so neither
# keepalives nor its own timeouts end the wait) is given up after this long:
# the connection is closed and the write fails (503). Above LOCK_WAIT_MS, so
# a live database answers a long wait for the lock itself first.
REPLY_WAIT = 10.0
# A host that vanished (dropped off the network) is noticed by TCP within ~10 s.
_TCP: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": int(REPLY_WAIT * 1000),
}
# Change-log rows older than this are trimmed; a server further behind reloads.
LOG_RETENTION = 300.0
TRIM_EVERY = 500  # writes between two trims
# A NOTIFY wakes followers at once; the poll only covers one lost with its connection.
SAFETY_POLL = 5.0

PRIMARY_KEYS = {
    "nodes": ("node_id",),
    "jobs": ("job_id",),
    "allocations": ("allocation_id",),
    "evaluations": ("eval_id",),
    "periodic_launches": ("job_id",),
    "job_versions": ("job_id", "version"),
    "deployments": ("deployment_id",),
}

_UPSERT = re.compile(r"^\s*INSERT OR (REPLACE|IGNORE) INTO (\w+) \(([^)]*)\)(.*)$", re.S)


@lru_cache(maxsize=256)
def dialect(sql: str) -> str:
    """The store's SQLite-form statement in PostgreSQL's form."""
    match = _UPSERT.match(sql)
    if match:
        verb, table, cols, rest = match.groups()
        keys = PRIMARY_KEYS[table]
        if verb == "IGNORE":
            conflict = "DO NOTHING"
        else:
            names = [c.strip() for c in cols.split(",")]
            conflict = "DO UPDATE SET " + ", ".join(
                f"{c} = EXCLUDED.{c}" for c in names if c not in keys
            )
        sql = f"INSERT INTO {table} ({cols}){rest} ON CONFLICT ({', '.join(keys)}) {conflict}"
    return sql.replace("?", "%s")


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


# The floor and the rows in one statement: one snapshot, so a trim is seen.
_LOG_AFTER = (
    "SELECT f.seq, c.seq, c.body FROM change_floor f "
    "LEFT JOIN changes c ON c.seq > %s ORDER BY c.seq"
)
_LOG_INSERT = (
    "WITH c AS (INSERT INTO changes (body) VALUES (%s) RETURNING seq) "
    "SELECT seq, pg_notify(%s, seq::text) FROM c"
)
_TRIM = (
    "WITH gone AS (DELETE FROM changes WHERE at < now() - make_interval(secs => %s) "
    "RETURNING seq) UPDATE change_floor SET seq = GREATEST(seq, "
    "(SELECT COALESCE(MAX(seq), 0) FROM gone))"
)


def _log_rows(rows: list[tuple]) -> tuple[int, list[tuple[int, str]]]:
    floor = int(rows[0][0]) if rows else 0
    return floor, [(seq, body) for _floor, seq, body in rows if seq is not None]


# Tables whose columns are all TEXT: big upserts of them go as arrays.
_TEXT_TABLES = frozenset({"nodes", "jobs", "allocations", "evaluations"})
BULK_ROWS = 20  # from this many rows, one statement with arrays beats a row each


@lru_cache(maxsize=64)
def bulk(sql: str) -> str | None:
    """The unnest() form of a text-only upsert: all rows in one statement; else None."""
    match = _UPSERT.match(sql)
    if not match or match.group(1) != "REPLACE" or match.group(2) not in _TEXT_TABLES:
        return None
    _verb, table, cols, _rest = match.groups()
    names = [c.strip() for c in cols.split(",")]
    keys = PRIMARY_KEYS[table]
    # %b: arrays in binary form, their strings sent as they are (no escaping).
    arrays = ", ".join(["%b::text[]"] * len(names))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in names if c not in keys)
    return (
        f"INSERT INTO {table} ({cols}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )


def _put_rows(cur: psycopg.Cursor, sql: str, rows: list) -> None:
    """executemany (pipelined), or one unnest() statement for a big text upsert."""
    many = bulk(sql) if len(rows) >= BULK_ROWS else None
    if many is None:
        cur.executemany(dialect(sql), rows)
        return
    # One statement may not touch a row twice: the last write of a key wins,
    # as it would row by row.
    last = {row[0]: row for row in rows}
    cur.execute(many, [list(col) for col in zip(*last.values(), strict=True)])


class _Connection(psycopg.Connection):
    """A connection whose every wait for the database ends after REPLY_WAIT."""

    def wait(self, gen, interval=0.1, timeout=None):
        if timeout is not None:  # the caller's own (LISTEN's notifies)
            return super().wait(gen, interval, timeout)
        started = time.monotonic()
        try:
            return super().wait(gen, interval, REPLY_WAIT)
        except psycopg.OperationalError:
            if time.monotonic() - started < REPLY_WAIT:
                raise
            self.pgconn.finish()  # left mid-exchange: unusable
            raise psycopg.OperationalError(
                f"the database has not answered in {REPLY_WAIT:g}s"
            ) from None


class PostgresBackend:
    """A PostgreSQL database several servers share; see the module docstring."""

    engine = "postgresql"
    shared = True

    def __init__(self, url: str):
        self.url = url
        self.where = redact(url)
        self._conn: psycopg.Connection | None = None
        self._writes = 0
        self._follower: Follower | None = None
        try:
            self._migrate()
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot open state database {self.where}: {exc}; refusing to start"
            ) from exc

    # ---- connections ------------------------------------------------------

    def connect(self) -> psycopg.Connection:
        """A new autocommit connection (the follower's LISTEN uses one too)."""
        return _Connection.connect(
            self.url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            **_TCP,
            options=f"-c idle_in_transaction_session_timeout={STALLED_WRITER_MS} "
            f"-c lock_timeout={LOCK_WAIT_MS}",
        )

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
                log.warning("state database connection lost, reconnecting to %s", self.where)
            self._conn = conn = self.connect()
        return conn

    def _failed(self, exc: Exception) -> StorageError:
        log.error("state write failed: %s", exc)
        self._drop_transaction()
        return StorageError(f"state store unavailable: {exc}")

    def _drop_transaction(self) -> None:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error as exc:
                log.error("state rollback failed: %s", exc)
                conn.close()

    def _migrate(self) -> None:
        with self.connect() as conn:
            # One server migrates at a time; the others then find it done.
            conn.execute("BEGIN")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            conn.execute(migrations.VERSION_TABLE)
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = (row[0] if row else None) or 0
            for step in migrations.pending(current, self.where):
                for sql in step.statements(self.engine):
                    conn.execute(sql)
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (step.version,))
                log.info("state schema migrated database=%s version=%d (%s)", self.where,
                         step.version, step.summary)  # fmt: skip
            conn.execute("COMMIT")

    # ---- writes -----------------------------------------------------------

    def begin(self, after: int) -> tuple[int, list[tuple[int, str]]]:
        """BEGIN, the cluster-wide write lock, and the change log after ``after``.

        BEGIN and the lock go as one simple query (one round trip), the log
        read once the lock is held, so it holds every change committed before
        this write. Not a pipeline: PostgreSQL 15 then leaves the session's
        idle-in-transaction timeout unarmed, and a stalled writer's lock held."""
        try:
            conn = self._connection()
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
            return _log_rows(conn.execute(_LOG_AFTER, (after,)).fetchall())
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def in_transaction(self) -> bool:
        conn = self._conn
        return (
            conn is not None
            and not conn.closed
            and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        )

    def rollback(self) -> None:
        self._drop_transaction()

    def run(
        self, statements: Iterable[tuple[str, list]], fence: Fence | None, log_body: str | None
    ) -> int | None:
        """Run (sql, rows) pairs and the change-log row in the open transaction; commit.

        All in one pipeline: the write costs a round trip or two, not one a row."""
        conn = self._conn
        assert conn is not None and self.in_transaction(), "begin() first"
        try:
            with conn.pipeline(), conn.cursor() as cur:
                if fence is not None:
                    cur.execute(*fence())
                    if cur.fetchone() is None:
                        raise NotLeader("not the leader: the write was not committed")
                for sql, rows in statements:
                    if rows:
                        _put_rows(cur, sql, rows)
                logged = None
                if log_body is not None:
                    logged = conn.execute(_LOG_INSERT, (log_body, CHANNEL))
                    self._writes += 1
                    if self._writes % TRIM_EVERY == 0:
                        conn.execute(_TRIM, (LOG_RETENTION,))
                conn.execute("COMMIT")
            return None if logged is None else int(logged.fetchone()[0])  # type: ignore[index]
        except NotLeader:
            self._drop_transaction()
            raise
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    # ---- reads ------------------------------------------------------------

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        """One statement on the writer's connection (in its transaction, if open)."""
        try:
            cur = self._connection().execute(dialect(sql), args or None)
            return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def changes_after(self, seq: int) -> tuple[int, list[tuple[int, str]]]:
        """(the log's floor, its rows after ``seq`` in order)."""
        return _log_rows(self.execute(_LOG_AFTER, (seq,)))

    @contextmanager
    def snapshot(self):
        """One consistent read of the tables and the log position (the load)."""
        conn = self._connection()
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield
        finally:
            self._drop_transaction()

    def log_position(self) -> int:
        """Where the log stands: its newest row, or the floor when all are trimmed."""
        rows = self.execute(
            "SELECT GREATEST((SELECT COALESCE(MAX(seq), 0) FROM changes), "
            "(SELECT seq FROM change_floor))"
        )
        return int(rows[0][0])

    # ---- following other servers -------------------------------------------

    def follow(self, catch_up: Callable[[], None]) -> None:
        """Start the thread that calls ``catch_up()`` after other servers' commits."""
        self._follower = Follower(self.connect, catch_up)
        self._follower.start()

    def stop_following(self) -> None:
        if self._follower is not None:
            self._follower.stop()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class Follower:
    """LISTEN for commits and catch memory up; a slow poll in case one is missed."""

    def __init__(self, connect: Callable[[], psycopg.Connection], catch_up: Callable[[], None],
                 *, poll: float = SAFETY_POLL):  # fmt: skip
        self._connect = connect
        self._catch_up = catch_up
        self._poll = poll
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._listen()
            except (psycopg.Error, StorageError, OSError) as exc:
                log.warning("state follower: %s; retrying", exc)
                self._stopped.wait(1.0)
            except Exception:  # noqa: BLE001 - the thread must outlive any one bad change
                log.exception("state follower failed; retrying")
                self._stopped.wait(1.0)

    def _listen(self) -> None:
        with self._connect() as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._catch_up()  # whatever was committed before the LISTEN
            polled = time.monotonic()
            while not self._stopped.is_set():
                # Wakes on the first NOTIFY, or after a second to look at the flag.
                woke = any(True for _ in conn.notifies(timeout=1.0, stop_after=1))
                if woke or time.monotonic() - polled >= self._poll:
                    self._catch_up()
                    polled = time.monotonic()
