"""The store's core: opening, schema, load, the one write path, indexes, reads.

The write mixins (nodes, jobs, plans) build on this class; the package's
docstring explains the durability and locking design they all follow.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable

from orch import codec
from orch.errors import NotFound, StorageError
from orch.server import catalog, quarantine
from orch.server.changes import ChangeFeed
from orch.server.scheduler.cluster import Cluster
from orch.structs import (
    TERMINAL_ALLOC,
    TERMINAL_EVAL,
    Allocation,
    AllocStatus,
    DesiredStatus,
    Evaluation,
    Job,
    Node,
    TriggeredBy,
    replace,
)

log = logging.getLogger(__name__)

SCHEMA = (
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


def _dump(obj) -> str:
    # allow_nan=False: a NaN written is a row that cannot be read back.
    return json.dumps(obj.to_dict(), separators=(",", ":"), allow_nan=False)


# The evaluation a job write makes, given why (the store picks the trigger).
MakeEval = Callable[[TriggeredBy], Evaluation]


class StoreCore:
    """The lock, the database, the memory indexes and the reads of the store."""

    def __init__(
        self, data_dir: str, *, now: Callable[[], float] = time.time, versions_kept: int = 10
    ):
        self._now = now
        self._lock = threading.RLock()
        # Bumped after every commit: the UI's event stream waits on it.
        self.changes = ChangeFeed()
        self.versions_kept = max(1, versions_kept)
        os.makedirs(data_dir, exist_ok=True)
        self.path = os.path.join(data_dir, "state.db")
        self._db = self._open(self.path)
        self.cluster = Cluster()
        self._nodes: dict[str, Node] = {}
        self._jobs: dict[str, Job] = {}
        self._allocs: dict[str, Allocation] = {}
        self._allocs_by_job: dict[str, dict[str, None]] = {}
        # Only allocations holding resources: heartbeats and node views walk
        # these, never a node's whole history.
        self._live_by_node: dict[str, dict[str, None]] = {}
        # The service catalog: service name -> live allocation ids, and the
        # services each one was entered with (as its job version declared
        # them: a later version may change them while it still runs).
        self._services: dict[str, dict[str, None]] = {}
        self._alloc_services: dict[str, tuple[dict, ...]] = {}
        self._evals: dict[str, Evaluation] = {}
        self._evals_by_job: dict[str, dict[str, None]] = {}
        # periodic job -> (its last launch time, its newest child's id)
        self._launches: dict[str, tuple[float, str]] = {}
        self._load()

    # ---- opening -------------------------------------------------------

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # WAL + NORMAL: a commit survives the process being killed.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot open state database {path}: {exc}; refusing to start "
                f"(the file is left untouched)"
            ) from exc
        return db

    def _load(self) -> None:
        for node in self._rows("nodes", "node_id", codec.node_from):
            self._nodes[node.node_id] = node
            self.cluster.upsert_node(node)
        for job in self._rows("jobs", "job_id", codec.job_from):
            self._jobs[job.job_id] = job
        for alloc in self._rows("allocations", "allocation_id", codec.alloc_from):
            self._index_alloc(alloc)
        for ev in self._rows("evaluations", "eval_id", codec.eval_from):
            self._evals[ev.eval_id] = ev
            self._evals_by_job.setdefault(ev.job_id, {})[ev.eval_id] = None
        for job_id, launch, child_id in self._db.execute(
            "SELECT job_id, launch, child_id FROM periodic_launches"
        ):
            self._launches[job_id] = (float(launch), child_id)
        log.info(
            "state loaded path=%s nodes=%d jobs=%d allocs=%d evals=%d",
            self.path,
            len(self._nodes),
            len(self._jobs),
            len(self._allocs),
            len(self._evals),
        )

    def _rows(self, table: str, key: str, decode) -> list:
        """The table's objects; rows that do not decode are quarantined."""
        objects, bad = quarantine.read_table(self._db, table, key, decode)
        if bad:
            self._write(quarantine.statements(table, key, bad, self._now()))
        return objects

    def close(self) -> None:
        self.changes.close()
        with self._lock:
            self._db.close()

    def settle(self) -> None:
        """Return once no write is half applied (its commit done, memory not yet).

        Writes bump the feed after the commit but before memory follows, all
        under the lock: a reader woken by the feed takes the lock once first."""
        with self._lock:
            pass

    # ---- the one write path ---------------------------------------------

    def _write(self, statements: Iterable[tuple[str, list]]) -> None:
        """Run (sql, rows) pairs in one transaction; StorageError on failure."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                wrote = False
                for sql, rows in statements:
                    if rows:
                        db.executemany(sql, rows)
                        wrote = True
                db.execute("COMMIT")
                if wrote:  # a write of nothing (all rows filtered out) is no change
                    self.changes.bump()
            except BaseException:
                # SQLite may already have rolled back by itself (SQLITE_FULL
                # does): a ROLLBACK then fails and would hide the real error.
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error as exc:
                        log.error("state rollback failed: %s", exc)
                raise
        except sqlite3.Error as exc:
            log.error("state write failed: %s", exc)
            raise StorageError(f"state store unavailable: {exc}") from exc

    @staticmethod
    def _alloc_rows(allocs: list[Allocation]) -> list:
        bodies = codec.allocs_json(allocs)
        return [
            (a.allocation_id, a.job_id, a.node_id, body)
            for a, body in zip(allocs, bodies, strict=True)
        ]

    _UPSERT_ALLOC = (
        "INSERT OR REPLACE INTO allocations (allocation_id, job_id, node_id, body) VALUES (?,?,?,?)"
    )
    _UPSERT_EVAL = (
        "INSERT OR REPLACE INTO evaluations (eval_id, job_id, status, body) VALUES (?,?,?,?)"
    )
    _UPSERT_JOB = "INSERT OR REPLACE INTO jobs (job_id, body) VALUES (?,?)"
    _UPSERT_NODE = "INSERT OR REPLACE INTO nodes (node_id, body) VALUES (?,?)"

    @staticmethod
    def _eval_rows(evals: Iterable[Evaluation]) -> list:
        return [(e.eval_id, e.job_id, e.status.value, _dump(e)) for e in evals]

    # ---- memory indexes ---------------------------------------------------

    def _index_alloc(self, alloc: Allocation) -> None:
        old = self._allocs.get(alloc.allocation_id)
        self._allocs[alloc.allocation_id] = alloc
        self._allocs_by_job.setdefault(alloc.job_id, {})[alloc.allocation_id] = None
        held = old is not None and old.holds_resources()
        if old is not None and held and not alloc.holds_resources():
            self.cluster.release(old)
            self._live_by_node.get(old.node_id, {}).pop(alloc.allocation_id, None)
        elif alloc.holds_resources() and not held:
            self.cluster.reserve(alloc)
            self._live_by_node.setdefault(alloc.node_id, {})[alloc.allocation_id] = None
        self._catalog(alloc)

    def _catalog(self, alloc: Allocation) -> None:
        """Keep the service index in step: live allocations are instances."""
        alloc_id = alloc.allocation_id
        entered = alloc_id in self._alloc_services
        if not alloc.holds_resources():
            if entered:
                self._uncatalog(alloc_id)
            return
        if entered:
            return
        services = catalog.group_services(self._jobs.get(alloc.job_id), alloc.task_group)
        if services:
            self._alloc_services[alloc_id] = services
            for service in services:
                self._services.setdefault(service["name"], {})[alloc_id] = None

    def _uncatalog(self, alloc_id: str) -> None:
        for service in self._alloc_services.pop(alloc_id, ()):
            name = service["name"]
            ids = self._services.get(name)
            if ids is not None:
                ids.pop(alloc_id, None)
                if not ids:
                    del self._services[name]

    def _index_new_allocs(self, allocs: list[Allocation]) -> None:
        """_index_alloc for a plan's placements, with one capacity-index call."""
        by_id, by_job, by_node = self._allocs, self._allocs_by_job, self._live_by_node
        # Placements come grouped by job and node: look their indexes up once a run.
        job_id: str | None = None
        node_id: str | None = None
        job_index: dict[str, None] = {}
        node_index: dict[str, None] = {}
        fresh = []
        for alloc in allocs:
            alloc_id = alloc.allocation_id
            if alloc_id in by_id:  # not new after all: the general path
                self._index_alloc(alloc)
                continue
            by_id[alloc_id] = alloc
            if alloc.job_id != job_id:
                job_id = alloc.job_id
                job_index = by_job.setdefault(job_id, {})
            job_index[alloc_id] = None
            if not alloc.holds_resources():
                continue
            if alloc.node_id != node_id:
                node_id = alloc.node_id
                node_index = by_node.setdefault(node_id, {})
            node_index[alloc_id] = None
            fresh.append(alloc)
            self._catalog(alloc)
        self.cluster.reserve_many(fresh)

    def _unindex_alloc(self, alloc_id: str) -> None:
        alloc = self._allocs.pop(alloc_id, None)
        if alloc is None:
            return
        self._allocs_by_job.get(alloc.job_id, {}).pop(alloc_id, None)
        self._uncatalog(alloc_id)
        if alloc.holds_resources():
            self.cluster.release(alloc)
            self._live_by_node.get(alloc.node_id, {}).pop(alloc_id, None)

    def _index_evals(self, evals: Iterable[Evaluation]) -> None:
        for ev in evals:
            self._evals[ev.eval_id] = ev
            self._evals_by_job.setdefault(ev.job_id, {})[ev.eval_id] = None

    # ---- reads ------------------------------------------------------------

    def get_node(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def list_nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def get_job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def require_job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound("作业不存在")
        return job

    def list_jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def get_alloc(self, alloc_id: str) -> Allocation | None:
        return self._allocs.get(alloc_id)

    def allocs_for_job(self, job_id: str) -> list[Allocation]:
        ids = list(self._allocs_by_job.get(job_id, ()))
        return [a for a in map(self._allocs.get, ids) if a is not None]

    def live_allocs_for_node(self, node_id: str) -> list[Allocation]:
        """A node's allocations that still hold resources (wanted, unfinished)."""
        ids = list(self._live_by_node.get(node_id, ()))
        return [a for a in map(self._allocs.get, ids) if a is not None]

    def service_names(self) -> list[str]:
        with self._lock:
            return sorted(self._services)

    def service_allocs(self, name: str) -> list[tuple[Allocation, dict]]:
        """(allocation, its service `name` as entered) of each live instance."""
        with self._lock:
            out = []
            for alloc_id in self._services.get(name, ()):
                alloc = self._allocs.get(alloc_id)
                for service in self._alloc_services.get(alloc_id, ()):
                    if alloc is not None and service["name"] == name:
                        out.append((alloc, service))
            return out

    def get_eval(self, eval_id: str) -> Evaluation | None:
        return self._evals.get(eval_id)

    def evals_for_job(self, job_id: str) -> list[Evaluation]:
        ids = list(self._evals_by_job.get(job_id, ()))
        return [e for e in map(self._evals.get, ids) if e is not None]

    def unfinished_evals(self) -> list[Evaluation]:
        return sorted(
            (e for e in self._evals.values() if e.status not in TERMINAL_EVAL),
            key=lambda e: e.create_time,
        )

    def counts(self) -> dict[str, int]:
        return {
            "nodes": len(self._nodes),
            "jobs": len(self._jobs),
            "allocations": len(self._allocs),
            "evaluations": len(self._evals),
        }

    # ---- helpers of the write mixins ----------------------------------------

    @staticmethod
    def _stopped(alloc: Allocation, reason: str, now: float) -> Allocation:
        status = alloc.client_status
        if status not in TERMINAL_ALLOC:
            status = AllocStatus.STOPPED
        return replace(
            alloc,
            desired_status=DesiredStatus.STOP,
            client_status=status,
            description=reason,
            end_time=alloc.end_time or now,
            modify_time=now,
        )
