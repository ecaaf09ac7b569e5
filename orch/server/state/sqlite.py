"""The SQLite backend: one file in the data directory, WAL, one server."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from contextlib import contextmanager

from orch.errors import NotLeader, StorageError
from orch.server.state import migrations
from orch.server.state.backend import Fence

log = logging.getLogger(__name__)


class SqliteBackend:
    """A state.db file; the store's SQL runs as written."""

    engine = "sqlite"
    shared = False  # one server per file: no change log to follow
    groups = True  # open_group / close_group: one transaction for several writes
    _group = False
    _group_lost: BaseException | None = None  # what ended a group's transaction early

    def __init__(self, path: str):
        self.where = self.path = path
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # WAL + NORMAL: a commit survives the process being killed.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # The WAL's automatic checkpoint stays at SQLite's 1,000 pages:
            # with NORMAL the WAL is synced only there, so a longer interval
            # (4,000 cut ~10% of SQLite's CPU a job) would let a power loss
            # take 4x more acknowledged writes (README, "What a crash may lose").
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self.db = db
            self._migrate()
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot open state database {path}: {exc}; refusing to start "
                f"(the file is left untouched)"
            ) from exc

    def _migrate(self) -> None:
        db = self.db
        db.execute(migrations.VERSION_TABLE)
        current = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        for step in migrations.pending(current, self.path):
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql in step.statements(self.engine):
                    db.execute(sql)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (step.version,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            log.info("state schema migrated path=%s version=%d (%s)", self.path, step.version,
                     step.summary)  # fmt: skip

    def begin(self, after: int) -> tuple[int, list[tuple[int, str]]]:
        """Nothing: one server per file, the store's lock serialises its writers."""
        return 0, []

    def rollback(self) -> None:
        """Nothing to drop: run() opens and ends its own transaction."""

    def run(
        self, statements: Iterable[tuple[str, list]], fence: Fence | None, log_body: str | None
    ) -> int | None:
        """Run (sql, rows) pairs in one transaction; StorageError on failure.

        In a group (``open_group``) the transaction is left open for the
        group's next writes and ``close_group``'s COMMIT; the group's first
        write opens it, each later one is a savepoint of its own, so a
        failing write takes back only its own rows."""
        if self._group:
            self._run_grouped(statements, fence)
            return None
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._statements(statements, fence)
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as exc:
            log.error("state write failed: %s", exc)
            raise StorageError(f"state store unavailable: {exc}") from exc
        return None

    def _statements(self, statements: Iterable[tuple[str, list]], fence: Fence | None) -> None:
        db = self.db
        if fence is not None and db.execute(*fence()).fetchone() is None:
            raise NotLeader("not the leader: the write was not committed")
        for sql, rows in statements:
            if rows:
                db.executemany(sql, rows)

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (SQLITE_FULL
        # does): a ROLLBACK then fails and would hide the real error.
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("state rollback failed: %s", exc)

    # ---- group commit (orch.server.state.group) ---------------------------

    def open_group(self) -> None:
        """Writes from now to ``close_group`` share one transaction."""
        self._group = True

    def _run_grouped(self, statements: Iterable[tuple[str, list]], fence: Fence | None) -> None:
        db = self.db
        if self._group_lost is not None:
            raise StorageError(f"state store unavailable: {self._group_lost}")
        first = not db.in_transaction
        try:
            # The first write needs no savepoint: failing, it rolls back a
            # transaction that holds nothing else.
            db.execute("BEGIN IMMEDIATE" if first else "SAVEPOINT grouped")
            try:
                self._statements(statements, fence)
                if not first:
                    db.execute("RELEASE grouped")
            except BaseException as exc:
                if first:
                    self._rollback()
                else:
                    self._undo_savepoint(exc)
                raise
        except sqlite3.Error as exc:
            log.error("state write failed: %s", exc)
            raise StorageError(f"state store unavailable: {exc}") from exc

    def _undo_savepoint(self, cause: BaseException) -> None:
        """Take back a grouped write's rows, keeping the group's others; if
        that cannot be done, the group is lost (``close_group`` says so)."""
        db = self.db
        if db.in_transaction:
            try:
                db.execute("ROLLBACK TO grouped")
                db.execute("RELEASE grouped")
                return
            except sqlite3.Error as exc:
                cause = exc
        # SQLite ended the whole transaction itself (a full disk, an I/O
        # error): the group's earlier writes are gone too.
        self._group_lost = cause

    def close_group(self) -> None:
        """COMMIT the group's writes; StorageError if any of them is lost."""
        db, lost = self.db, self._group_lost
        self._group, self._group_lost = False, None
        try:
            if lost is not None:
                raise StorageError(f"state store unavailable: {lost}")
            if db.in_transaction:  # else no write, or only failed ones
                try:
                    db.execute("COMMIT")
                except sqlite3.Error as exc:
                    log.error("state group commit failed: %s", exc)
                    raise StorageError(f"state store unavailable: {exc}") from exc
        except BaseException:
            self._rollback()
            raise

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"state store unavailable: {exc}") from exc

    def changes_after(self, seq: int) -> tuple[int, list[tuple[int, str]]]:
        return 0, []

    @contextmanager
    def snapshot(self):
        """Nothing: the only writer is this process, under the store's lock."""
        yield

    def log_position(self) -> int:
        return 0

    def in_transaction(self) -> bool:
        return False  # run() opens and ends its own

    def follow(self, catch_up) -> None:
        """Nothing to follow: no other server writes this file."""

    def stop_following(self) -> None:
        """Nothing started."""

    def close(self) -> None:
        self.db.close()
