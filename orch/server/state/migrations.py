"""Versioned schema migrations, the same mechanism on SQLite and PostgreSQL.

The ``schema_version`` table holds one row per migration applied. A store
opening a database applies the migrations it lacks, in order, each in its
own transaction, and refuses (StorageError, the server exits 1) a database
whose version is newer than the newest it knows: an older orch must never
write rows whose meaning it does not know.

Migration 1 is the schema orch had before versions existed, written with
``IF NOT EXISTS``: a ``state.db`` made before is adopted as version 1 as is.
"""

from __future__ import annotations

from dataclasses import dataclass

from orch.errors import StorageError
from orch.server import quarantine

SQLITE_V1 = (
    """
CREATE TABLE IF NOT EXISTS nodes (node_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS allocations (
    allocation_id TEXT PRIMARY KEY, job_id TEXT NOT NULL, node_id TEXT NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS allocations_job ON allocations (job_id);
CREATE TABLE IF NOT EXISTS evaluations (
    eval_id TEXT PRIMARY KEY, job_id TEXT NOT NULL, status TEXT NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS evaluations_job ON evaluations (job_id);
CREATE TABLE IF NOT EXISTS periodic_launches (
    job_id TEXT PRIMARY KEY, launch REAL NOT NULL, child_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_versions (
    job_id TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL,
    submit_time REAL NOT NULL, stable INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, version));
CREATE TABLE IF NOT EXISTS deployments (
    deployment_id TEXT PRIMARY KEY, job_id TEXT NOT NULL, job_version INTEGER NOT NULL,
    status TEXT NOT NULL, create_time REAL NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS deployments_job ON deployments (job_id);
"""
    + quarantine.SCHEMA
)

# The same tables in PostgreSQL's types. `rowid` stands in for SQLite's
# implicit one: deployments created in the same instant keep their order.
POSTGRES_V1 = """
CREATE TABLE IF NOT EXISTS nodes (node_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS allocations (
    allocation_id TEXT PRIMARY KEY, job_id TEXT NOT NULL, node_id TEXT NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS allocations_job ON allocations (job_id);
CREATE TABLE IF NOT EXISTS evaluations (
    eval_id TEXT PRIMARY KEY, job_id TEXT NOT NULL, status TEXT NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS evaluations_job ON evaluations (job_id);
CREATE TABLE IF NOT EXISTS periodic_launches (
    job_id TEXT PRIMARY KEY, launch DOUBLE PRECISION NOT NULL, child_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_versions (
    job_id TEXT NOT NULL, version BIGINT NOT NULL, body TEXT NOT NULL,
    submit_time DOUBLE PRECISION NOT NULL, stable BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, version));
CREATE TABLE IF NOT EXISTS deployments (
    rowid BIGSERIAL, deployment_id TEXT PRIMARY KEY, job_id TEXT NOT NULL,
    job_version BIGINT NOT NULL, status TEXT NOT NULL, create_time DOUBLE PRECISION NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS deployments_job ON deployments (job_id);
CREATE TABLE IF NOT EXISTS quarantine (
    tbl TEXT NOT NULL, row_key TEXT, body TEXT, reason TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL);
"""

# The change log several servers follow (orch.server.state.follow). SQLite
# has one server per file: it gets the version number, not the table.
POSTGRES_V2 = """
CREATE TABLE IF NOT EXISTS changes (
    seq BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now(), body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS change_floor (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL);
INSERT INTO change_floor (id, seq) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
"""

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)"


@dataclass(frozen=True)
class Migration:
    """One schema step: its number, what it does, and its SQL per engine."""

    version: int
    summary: str
    sqlite: str
    postgresql: str

    def statements(self, engine: str) -> list[str]:
        script = self.sqlite if engine == "sqlite" else self.postgresql
        return [s.strip() for s in script.split(";") if s.strip()]


MIGRATIONS = (
    Migration(1, "nodes, jobs, allocations, evaluations, versions, deployments", SQLITE_V1,
              POSTGRES_V1),
    Migration(2, "the change log followed by several servers", "", POSTGRES_V2),
)  # fmt: skip
LATEST = MIGRATIONS[-1].version


def pending(current: int, where: str) -> list[Migration]:
    """The migrations a database at ``current`` lacks; StorageError if it is newer."""
    if current > LATEST:
        raise StorageError(
            f"state database {where} has schema version {current}, newer than this "
            f"orch knows ({LATEST}): refusing to start; run a newer orch"
        )
    return [m for m in MIGRATIONS if m.version > current]
