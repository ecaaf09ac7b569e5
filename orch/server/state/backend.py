"""The store's engines behind one small interface: SQLite (default) or PostgreSQL.

The store's modules write their SQL once, in SQLite's form (``?``
placeholders, ``INSERT OR REPLACE``); a backend runs it in its own dialect.
The interface, all of it called under the store's lock:

- ``begin(after)``: open a write transaction; on a shared database also take
  the cluster-wide write lock and return the change log after ``after`` (the
  floor and the rows), so memory is caught up before the write computes;
- ``run(statements, fence, log)``: run (sql, rows) pairs, commit, and return
  the change-log position written (None when the engine keeps no log);
- ``rollback()``: drop an open transaction (a write that wrote nothing);
- ``execute(sql, args)``: one statement, its rows (reads of rarely read rows);
- ``changes_after(seq)``, ``snapshot()``, ``log_position()``: the change log
  (shared engines only; SQLite answers "nothing");
- ``follow(catch_up)``: call ``catch_up()`` whenever another server commits
  (a thread of the backend's; ``stop_following()`` ends it);
- ``close()``.

psycopg is imported by the PostgreSQL backend only: a server without
``--database`` never loads it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Protocol

# A leader's fence: the SQL (in the engine's own dialect) and its parameters.
Fence = Callable[[], tuple[str, tuple]]


class Backend(Protocol):
    """What the store needs of an engine; see the module docstring."""

    engine: str
    where: str
    shared: bool

    def begin(self, after: int) -> tuple[int, list[tuple[int, str]]]: ...

    def run(
        self, statements: Iterable[tuple[str, list]], fence: Fence | None, log: str | None
    ) -> int | None: ...

    def rollback(self) -> None: ...

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]: ...

    def changes_after(self, seq: int) -> tuple[int, list[tuple[int, str]]]: ...

    def snapshot(self) -> AbstractContextManager: ...

    def log_position(self) -> int: ...

    def in_transaction(self) -> bool: ...

    def follow(self, catch_up: Callable[[], None]) -> None: ...

    def stop_following(self) -> None: ...

    def close(self) -> None: ...


def is_postgres(database: str | None) -> bool:
    return database is not None and database.split(":", 1)[0] in ("postgresql", "postgres")


def open_backend(data_dir: str, database: str | None) -> Backend:
    """PostgreSQL for a postgresql:// URL, else SQLite in ``data_dir``."""
    if is_postgres(database):
        from orch.server.state.postgres import PostgresBackend

        return PostgresBackend(database or "")
    from orch.server.state.sqlite import SqliteBackend

    os.makedirs(data_dir, exist_ok=True)
    return SqliteBackend(os.path.join(data_dir, "state.db"))
