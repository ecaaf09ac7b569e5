"""The store's core: opening, load, the one write path, indexes, reads.

The write mixins (nodes, jobs, plans) build on this class; the package's
docstring explains the durability and locking design they all follow.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext

from orch import codec
from orch.errors import NotFound, StorageError
from orch.server import catalog, quarantine
from orch.server.changes import ChangeFeed
from orch.server.scheduler.cluster import Cluster
from orch.server.state.backend import Fence, open_backend
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


def _dump(obj) -> str:
    # allow_nan=False: a NaN written is a row that cannot be read back.
    return codec.dumps_compact(obj.to_dict())


# Tables whose rows name a job, and the column that does (statements keyed by
# job_id put it first): a write to them changes what GET /jobs/<id> shows, or
# its deployment (a follower learns of a deployment's write only from its
# table, not the change log: its job index does not move there).
_JOB_COLUMN = {
    "jobs": 0,
    "allocations": 1,
    "evaluations": 1,
    "periodic_launches": 0,
    "deployments": 1,
}
_TABLE = re.compile(r"^\s*(?:INSERT (?:OR \w+ )?INTO|DELETE FROM|UPDATE) (\w+) ")


@functools.lru_cache(maxsize=256)
def _job_column(sql: str) -> int | None:
    """The column of a statement's rows that holds the job id, None if none does."""
    table = _TABLE.match(sql)
    if table is None or table.group(1) not in _JOB_COLUMN:
        return None
    return 0 if sql.lstrip().startswith("DELETE") else _JOB_COLUMN[table.group(1)]


def jobs_written(statements: list[tuple[str, list]]) -> set[str]:
    """The job ids a write's statements touch (the jobs' modify indexes move)."""
    touched: set[str] = set()
    for sql, rows in statements:
        column = _job_column(sql) if rows else None
        if column is not None:
            touched.update(row[column] for row in rows)
    return touched


# On a shared database a write can be stuck in a database that answers
# nothing (its host hung): what waits for the store's lock behind it gives
# up, a write or an SQL read after WRITE_WAIT seconds (503), a read of
# memory after SETTLE_WAIT (it answers what memory holds).
WRITE_WAIT = 10.0
SETTLE_WAIT = 1.0


class _BoundedLock:
    """The store's lock as writes take it on a shared database: StorageError after ``wait``."""

    def __init__(self, lock: threading.RLock, wait: float):
        self._lock = lock
        self._wait = wait

    def __enter__(self) -> None:
        if not self._lock.acquire(timeout=self._wait):
            raise StorageError(
                f"state store unavailable: a write has waited {self._wait:g}s for the database"
            )

    def __exit__(self, *exc) -> None:
        self._lock.release()


# The evaluation a job write makes, given why (the store picks the trigger).
MakeEval = Callable[[TriggeredBy], Evaluation]


class StoreCore:
    """The lock, the database, the memory indexes and the reads of the store."""

    def __init__(
        self,
        data_dir: str,
        *,
        database: str | None = None,
        now: Callable[[], float] = time.time,
        versions_kept: int = 10,
    ):
        self._now = now
        self._lock = threading.RLock()
        # Bumped after every commit: the UI's event stream waits on it.
        self.changes = ChangeFeed()
        # Set at every deployment write: wakes the deployment watcher while
        # no deployment runs (it then leaves the feed alone).
        self.deployment_written = threading.Event()
        self.versions_kept = max(1, versions_kept)
        self.backend = open_backend(data_dir, database)
        self.path = getattr(self.backend, "path", self.backend.where)
        # Set by the leader: plan commits check it in their transaction.
        self.fence: Fence | None = None
        # The lock as writes and SQL reads take it; on SQLite the lock itself
        # (nothing to wait out there, and no cost added to a write).
        shared = self.backend.shared
        self._guard = _BoundedLock(self._lock, WRITE_WAIT) if shared else self._lock
        self._settle_wait = SETTLE_WAIT if shared else -1  # -1: no bound
        # Called (under the lock) with evaluations other servers wrote.
        self.on_remote_evals: list[Callable[[list[Evaluation]], object]] = []
        # Called (under the lock) with allocations other servers stopped or purged.
        self.on_remote_stops: list[Callable[[list[Allocation]], object]] = []
        # ... and with nodes they added or whose eligibility or drain changed.
        self.on_remote_nodes: list[Callable[[list[Node]], object]] = []
        self._seq = 0  # the change-log position memory reflects (shared engines)
        self._depth = 0  # nesting of _writing() blocks
        # Changes the feed has counted whose readers wait for the lock's
        # release (None: none), and the jobs they touched.
        self._unwoken: set[str] | None = None
        # Group commit (``group.GroupCommit``): the thread whose writes join
        # the open group, and whether a group holds the lock now.
        self._group_thread: int | None = None
        self._grouped = False
        self._reset_memory()
        self._load()
        self.changes.start_at(self._seq if self.backend.shared else time.time_ns() // 1000)
        self.backend.follow(self._follow)

    def _reset_memory(self) -> None:
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

    @property
    def _db(self):
        """SQLite's connection (tests reach the file through it)."""
        return self.backend.db  # type: ignore[attr-defined]

    # ---- loading ---------------------------------------------------------

    def _load(self) -> None:
        """Fill memory from the tables, with the log position they reflect."""
        backend = self.backend
        bad: list = []
        # Inside a write transaction the cluster's write lock already holds
        # every writer off: the tables cannot move under the read.
        with nullcontext() if backend.in_transaction() else backend.snapshot():
            self._seq = backend.log_position()
            nodes = self._rows("nodes", "node_id", codec.node_from, bad)
            jobs = self._rows("jobs", "job_id", codec.job_from, bad)
            allocs = self._rows("allocations", "allocation_id", codec.alloc_from, bad)
            evals = self._rows("evaluations", "eval_id", codec.eval_from, bad)
            launches = backend.execute("SELECT job_id, launch, child_id FROM periodic_launches")
        for node in nodes:
            self._nodes[node.node_id] = node
            self.cluster.upsert_node(node)
        for job in jobs:
            self._jobs[job.job_id] = job
        for alloc in allocs:
            self._index_alloc(alloc)
        self._index_evals(evals)
        for job_id, launch, child_id in launches:
            self._launches[job_id] = (float(launch), child_id)
        for table, key, rows in bad:
            self._write(quarantine.statements(table, key, rows, self._now()))
        log.info(
            "state loaded database=%s nodes=%d jobs=%d allocs=%d evals=%d",
            backend.where,
            len(self._nodes),
            len(self._jobs),
            len(self._allocs),
            len(self._evals),
        )

    def _rows(self, table: str, key: str, decode, bad: list) -> list:
        """The table's objects; rows that do not decode are added to ``bad``."""
        objects, unreadable = quarantine.read_table(self.backend, table, key, decode)
        if unreadable:
            bad.append((table, key, unreadable))
        return objects

    def close(self) -> None:
        self.changes.close()
        self.backend.stop_following()
        with self._lock:
            self.backend.close()

    def settle(self) -> None:
        """Return once no write is half applied (its commit done, memory not yet).

        Writes bump the feed after the commit but before memory follows, all
        under the lock: a reader woken by the feed takes the lock once first.
        On a shared database it waits SETTLE_WAIT at most: a write that holds
        the lock longer is stuck in the database, before its commit."""
        if self._lock.acquire(timeout=self._settle_wait):
            self._lock.release()

    @contextmanager
    def settled_now(self, wait: float = 0.0) -> Iterator[bool]:
        """``settle`` without waiting (or ``wait`` seconds at most): holds the
        lock and yields True when no write holds it, yields False otherwise
        (waitress's I/O thread)."""
        lock = self._lock
        if not (lock.acquire(timeout=wait) if wait > 0 else lock.acquire(blocking=False)):
            yield False
            return
        try:
            yield True
        finally:
            self._lock.release()

    # ---- the one write path ---------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The lock of a write; on a shared database also the cluster's, memory caught up.

        Every write method computes inside this block: on PostgreSQL the
        transaction opens here, so what it reads from memory is the state
        every server has committed, and nobody commits until it is done.
        The readers of what it wrote are woken once the lock is released."""
        woken: set[str] | None = None
        try:
            with self._guard:
                outer = self._depth == 0
                self._depth += 1
                try:
                    if outer and self.backend.shared:
                        self._catch_up(self.backend.begin(self._seq))
                    yield
                finally:
                    self._depth -= 1
                    if outer:
                        self.backend.rollback()  # still open: the write wrote nothing
                    if self._depth == 0:  # not inside a group, which wakes them itself
                        woken, self._unwoken = self._unwoken, None
        finally:
            if woken is not None:
                self.changes.wake(woken)

    def _write(
        self,
        statements: Iterable[tuple[str, list]],
        *,
        fenced: bool = False,
        also: Iterable[str] = (),
    ) -> None:
        """Run (sql, rows) pairs in one transaction; StorageError on failure.

        ``fenced`` writes (the leader's) run ``self.fence`` first, if set;
        ``also``: jobs whose view changes beyond the rows' own (a child's parent)."""
        statements = list(statements)
        wrote = any(rows for _sql, rows in statements)
        backend = self.backend
        with self._guard:
            if backend.shared and not backend.in_transaction():
                self._catch_up(backend.begin(self._seq))
            if self._group_thread == threading.get_ident() and not self._grouped:
                self._join_group()
            body = self._change_body(statements) if backend.shared and wrote else None
            seq = backend.run(statements, self.fence if fenced else None, body)
            if seq is not None:
                # Caught up under the cluster's lock: ours is the next change.
                self._seq = seq
            if wrote:  # a write of nothing (all rows filtered out) is no change
                jobs = self._with_parents(jobs_written(statements), also)
                inside = self._depth > 0  # _writing() wakes the readers on its way out
                self.changes.bump(jobs, seq, wake=not inside)
                if inside:
                    self._unwoken = jobs if self._unwoken is None else self._unwoken | jobs

    def _with_parents(self, touched: set[str], also: Iterable[str] = ()) -> set[str]:
        """The jobs a write touched and their parents: a parent's view lists its children."""
        touched.update(also)
        for job_id in list(touched):
            job = self._jobs.get(job_id)
            if job is not None and job.parent_id:
                touched.add(job.parent_id)
        return touched

    def _join_group(self) -> None:
        """Open the group this thread's writes join (``group.GroupCommit``)."""

    def after_commit(self, effect: Callable[[], object]) -> None:
        """Run ``effect`` once what was written is durable (``group.GroupCommit``)."""
        effect()

    def _catch_up(self, log: tuple[int, list] | None = None) -> None:
        """Apply the changes other servers committed (``follow.Following``)."""

    def _follow(self) -> None:
        """Catch memory up now (the follower thread, on a NOTIFY or its slow poll)."""

    @staticmethod
    def _change_body(statements: list[tuple[str, list]]) -> str:
        """The change-log row of a write (``follow.Following``)."""
        raise NotImplementedError

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
    # A stored allocation's new body, from _alloc_rows' rows as they are. On
    # SQLite a REPLACE deletes the row and inserts it again, rewriting both of
    # its index entries (primary key, job) as well as the row: three b-tree
    # pages a report's commit writes where one does (the job never changes).
    _UPDATE_ALLOC = "UPDATE allocations SET node_id = ?3, body = ?4 WHERE allocation_id = ?1"
    _UPSERT_EVAL = (
        "INSERT OR REPLACE INTO evaluations (eval_id, job_id, status, body) VALUES (?,?,?,?)"
    )
    _UPSERT_JOB = "INSERT OR REPLACE INTO jobs (job_id, body) VALUES (?,?)"
    _UPSERT_NODE = "INSERT OR REPLACE INTO nodes (node_id, body) VALUES (?,?)"

    @staticmethod
    def _eval_rows(evals: Iterable[Evaluation]) -> list:
        # codec.eval_json: _dump's bytes, without the generic encoder.
        return [(e.eval_id, e.job_id, e.status.value, codec.eval_json(e)) for e in evals]

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
            (e for e in list(self._evals.values()) if e.status not in TERMINAL_EVAL),
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
