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

import psycopg

from orch.errors import NotLeader, StorageError
from orch.server.state import migrations
from orch.server.state.backend import Fence

log = logging.getLogger(__name__)

# Any constant both sides agree on: the cluster-wide write lock's key.
WRITE_LOCK = 0x6F726368  # "orch"
CHANNEL = "orch_changes"
CONNECT_TIMEOUT = 3  # seconds: a write on a lost database fails fast (503)
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
        return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)

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

    def begin(self) -> None:
        """BEGIN and take the cluster-wide write lock; StorageError if unreachable."""
        try:
            conn = self._connection()
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                conn.execute("BEGIN")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
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
        """Run (sql, rows) pairs and the change-log row in the open transaction; commit."""
        self.begin()
        conn = self._conn
        assert conn is not None
        seq = None
        try:
            with conn.cursor() as cur:
                if fence is not None:
                    cur.execute(*fence())
                    if cur.fetchone() is None:
                        raise NotLeader("not the leader: the plan was not committed")
                for sql, rows in statements:
                    if rows:
                        # executemany pipelines the rows: one round trip, not one each.
                        cur.executemany(dialect(sql), rows)
                if log_body is not None:
                    cur.execute("INSERT INTO changes (body) VALUES (%s) RETURNING seq", (log_body,))
                    seq = cur.fetchone()[0]  # type: ignore[index]
                    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(seq)))
                    self._writes += 1
                    if self._writes % TRIM_EVERY == 0:
                        self._trim(cur)
            conn.execute("COMMIT")
        except NotLeader:
            self._drop_transaction()
            raise
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        return seq

    @staticmethod
    def _trim(cur: psycopg.Cursor) -> None:
        """Drop old change-log rows; the floor tells a server that lags behind them."""
        cur.execute(
            "WITH gone AS (DELETE FROM changes WHERE at < now() - make_interval(secs => %s) "
            "RETURNING seq) UPDATE change_floor SET seq = GREATEST(seq, "
            "(SELECT COALESCE(MAX(seq), 0) FROM gone))",
            (LOG_RETENTION,),
        )

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
        rows = self.execute("SELECT seq, body FROM changes WHERE seq > ? ORDER BY seq", (seq,))
        # The floor after the rows: a trim between the two reads is then seen.
        floor = self.execute("SELECT seq FROM change_floor")
        return (floor[0][0] if floor else 0), rows

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
