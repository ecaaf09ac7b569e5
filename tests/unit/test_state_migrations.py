"""Versioned schema migrations on both engines, and the dialect layer."""

import sqlite3

import pytest

from orch.errors import StorageError
from orch.server.state import StateStore, migrations
from orch.server.state.postgres import dialect


def test_a_new_database_gets_every_migration(open_store, state_database):
    store = open_store()
    rows = store.backend.execute("SELECT version FROM schema_version ORDER BY version")
    assert [v for (v,) in rows] == [m.version for m in migrations.MIGRATIONS]
    store.close()
    open_store()  # opening again applies nothing and refuses nothing


def test_a_database_newer_than_this_orch_is_refused(open_store):
    store = open_store()
    newer = migrations.LATEST + 1
    store.backend.execute("INSERT INTO schema_version (version) VALUES (?)", (newer,))
    store.close()
    with pytest.raises(StorageError, match=f"schema version {newer}, newer than this orch"):
        open_store()


def test_a_state_db_from_before_versions_is_adopted_as_version_1(tmp_path):
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript(migrations.SQLITE_V1)
    db.execute("INSERT INTO jobs (job_id, body) VALUES ('j1', ?)", ('{"job_id":"j1"}',))
    db.commit()
    db.close()
    store = StateStore(str(tmp_path))
    assert store.backend.execute("SELECT version FROM schema_version") == [(1,), (2,)]
    # The row was kept (and quarantined, its body lacking fields): nothing lost.
    assert store.backend.execute("SELECT tbl, row_key FROM quarantine") == [("jobs", "j1")]
    store.close()


def test_the_dialect_turns_sqlite_upserts_into_on_conflict():
    upsert = dialect("INSERT OR REPLACE INTO jobs (job_id, body) VALUES (?,?)")
    assert upsert == (
        "INSERT INTO jobs (job_id, body) VALUES (%s,%s) "
        "ON CONFLICT (job_id) DO UPDATE SET body = EXCLUDED.body"
    )
    ignore = dialect("INSERT OR IGNORE INTO job_versions (job_id, version, body) VALUES (?,?,?)")
    assert ignore.endswith("ON CONFLICT (job_id, version) DO NOTHING")
    assert dialect("DELETE FROM jobs WHERE job_id = ?") == "DELETE FROM jobs WHERE job_id = %s"
