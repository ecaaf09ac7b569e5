"""The server's state: SQLite on disk, indexes in memory, one writer.

Over 400 lines on purpose: one class owns the lock, the SQL and the indexes (one writer).

Every write goes to SQLite in one transaction first and only then to memory,
so a request is acknowledged only after its state is durable, and a failed
write (disk full) leaves memory exactly as it was. Reads come from memory.
Stored objects are never mutated: a change is a new object written back.
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
from orch.errors import Conflict, NotFound, StorageError
from orch.server import quarantine
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
    Plan,
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
"""
    + quarantine.SCHEMA
)


def _dump(obj) -> str:
    # allow_nan=False: a NaN written is a row that cannot be read back.
    return json.dumps(obj.to_dict(), separators=(",", ":"), allow_nan=False)


# The evaluation a job write makes, given why (the store picks the trigger).
MakeEval = Callable[[TriggeredBy], Evaluation]


class StateStore:
    """SQLite-backed store of nodes, jobs, allocations and evaluations."""

    def __init__(self, data_dir: str, *, now: Callable[[], float] = time.time):
        self._now = now
        self._lock = threading.RLock()
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
        with self._lock:
            self._db.close()

    # ---- the one write path ---------------------------------------------

    def _write(self, statements: Iterable[tuple[str, list]]) -> None:
        """Run (sql, rows) pairs in one transaction; StorageError on failure."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    if rows:
                        db.executemany(sql, rows)
                db.execute("COMMIT")
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
        self.cluster.reserve_many(fresh)

    def _unindex_alloc(self, alloc_id: str) -> None:
        alloc = self._allocs.pop(alloc_id, None)
        if alloc is None:
            return
        self._allocs_by_job.get(alloc.job_id, {}).pop(alloc_id, None)
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

    # ---- node writes --------------------------------------------------------

    def upsert_node(self, node: Node) -> Node | None:
        """Store a node (register); returns the previous version."""
        with self._lock:
            self._write([(self._UPSERT_NODE, [(node.node_id, _dump(node))])])
            previous = self._nodes.get(node.node_id)
            self._nodes[node.node_id] = node
            self.cluster.upsert_node(node)
            return previous

    def touch_node(self, node_id: str, timestamp: float, usage: dict) -> Node | None:
        """Record a heartbeat in memory only: it changes nothing durable."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None:
                return None
            node = replace(node, last_heartbeat=timestamp, usage=usage)
            self._nodes[node_id] = node
            return node

    def set_node_health(self, node_id: str, healthy: bool) -> Node:
        with self._lock:
            node = replace(self._nodes[node_id], healthy=healthy)
            self._write([(self._UPSERT_NODE, [(node_id, _dump(node))])])
            self._nodes[node_id] = node
            self.cluster.set_healthy(node_id, healthy)
            return node

    def set_node_scheduling(
        self, node_id: str, *, eligible: bool, drain: dict | None, drain_complete=None
    ) -> Node:
        """Write a node's eligibility and drain (durable); NotFound if unknown."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None:
                raise NotFound("Node not found")
            changes: dict = {"eligible": eligible, "drain": drain}
            if drain_complete is not None:
                changes["drain_complete"] = drain_complete
            node = replace(node, **changes)
            self._write([(self._UPSERT_NODE, [(node_id, _dump(node))])])
            self._nodes[node_id] = node
            self.cluster.upsert_node(node)
            return node

    def finish_drain(self, node_id: str, drain: dict, now: float) -> bool:
        """End the node's drain if it is still ``drain`` (not canceled or changed)."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None or node.drain != drain:
                return False
            self.set_node_scheduling(node_id, eligible=False, drain=None, drain_complete=now)
            return True

    def mark_node_down(
        self,
        node_id: str,
        reason: str,
        evals_for: Callable[[list[Allocation]], list[Evaluation]] | None = None,
    ) -> list[Allocation]:
        """Node unhealthy and its unfinished allocations lost, in one transaction.

        ``evals_for(lost) -> [Evaluation]``, if given, makes the evaluations
        that replace them, written in the same transaction: a failed write
        leaves neither, so the verdict can simply be tried again."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None:
                return []
            node = replace(node, healthy=False)
            now = self._now()
            lost = [
                replace(
                    a,
                    client_status=AllocStatus.LOST,
                    desired_status=DesiredStatus.STOP,
                    description=reason,
                    end_time=now,
                    modify_time=now,
                )
                for a in self.live_allocs_for_node(node_id)
            ]
            evals = evals_for(lost) if evals_for is not None else []
            self._write(
                [
                    (self._UPSERT_NODE, [(node_id, _dump(node))]),
                    (self._UPSERT_ALLOC, self._alloc_rows(lost)),
                    (self._UPSERT_EVAL, self._eval_rows(evals)),
                ]
            )
            self._nodes[node_id] = node
            self.cluster.set_healthy(node_id, False)
            for alloc in lost:
                self._index_alloc(alloc)
            self._index_evals(evals)
            return lost

    # ---- job writes -----------------------------------------------------------
    #
    # Each one checks and writes under the lock, in one transaction, so that
    # concurrent requests on a job apply in some serial order. ``on_commit``
    # runs under the lock too, once the write is durable: the broker then sees
    # enqueues and cancellations in the order the writes were committed.

    def submit_job(
        self,
        job: Job,
        make_eval: MakeEval,
        *,
        must_exist: bool = False,
        on_commit: Callable[[Evaluation], object] | None = None,
    ) -> tuple[Job, Evaluation, bool]:
        """Create or update a job; returns (job, evaluation, changed).

        ``make_eval(trigger)`` makes the evaluation of a change. An update gets
        version = stored version + 1. A job submitted again unchanged (and not
        stopped) is left alone, as Nomad does: no new version, no evaluation;
        the evaluation returned is then the job's latest one."""
        with self._lock:
            existing = self._jobs.get(job.job_id)
            if existing is None and must_exist:
                raise NotFound("作业不存在")
            trigger = TriggeredBy.JOB_REGISTER
            if existing is not None:
                if not existing.stopped and existing.spec() == job.spec():
                    latest = self._latest_eval(job.job_id)
                    # Every stored job has one; were it missing, write anew.
                    if latest is not None:
                        return existing, latest, False
                trigger = TriggeredBy.JOB_UPDATE
                job = replace(job, version=existing.version + 1)
            job = replace(job, stopped=False, submit_time=self._now())
            evaluation = make_eval(trigger)
            self._put_job(job, evaluation)
            if on_commit is not None:
                on_commit(evaluation)
            return job, evaluation, True

    def put_job(self, job: Job, evaluation: Evaluation) -> None:
        """Store a job and the evaluation it triggers, atomically."""
        with self._lock:
            self._put_job(job, evaluation)

    def _put_job(self, job: Job, evaluation: Evaluation) -> None:
        self._write(
            [
                (self._UPSERT_JOB, [(job.job_id, _dump(job))]),
                (self._UPSERT_EVAL, self._eval_rows([evaluation])),
            ]
        )
        self._jobs[job.job_id] = job
        self._index_evals([evaluation])

    def _latest_eval(self, job_id: str) -> Evaluation | None:
        return max(self.evals_for_job(job_id), key=lambda e: e.create_time, default=None)

    def restart_job(
        self,
        job_id: str,
        make_eval: MakeEval,
        on_commit: Callable[[Evaluation], object] | None = None,
    ) -> Evaluation:
        """Run a stopped job again; Conflict if it is not stopped."""
        with self._lock:
            job = self.require_job(job_id)
            if not job.stopped:
                raise Conflict("只能重启已停止的作业")
            evaluation = make_eval(TriggeredBy.JOB_RESTART)
            self._put_job(replace(job, stopped=False), evaluation)
            if on_commit is not None:
                on_commit(evaluation)
            return evaluation

    def stop_job(
        self,
        job_id: str,
        evaluation: Evaluation,
        on_commit: Callable[[], object] | None = None,
    ) -> list[Allocation]:
        """Mark a job stopped and all its allocations to stop; returns those stopped."""
        with self._lock:
            job = replace(self.require_job(job_id), stopped=True)
            now = self._now()
            stopped = [
                self._stopped(a, "job stopped", now)
                for a in self.allocs_for_job(job_id)
                if a.desired_status == DesiredStatus.RUN
            ]
            self._write(
                [
                    (self._UPSERT_JOB, [(job_id, _dump(job))]),
                    (self._UPSERT_EVAL, self._eval_rows([evaluation])),
                    (self._UPSERT_ALLOC, self._alloc_rows(stopped)),
                ]
            )
            self._jobs[job_id] = job
            self._index_evals([evaluation])
            for alloc in stopped:
                self._index_alloc(alloc)
            if on_commit is not None:
                on_commit()
            return stopped

    def delete_job(
        self, job_id: str, on_commit: Callable[[], object] | None = None
    ) -> list[Allocation]:
        """Purge a job, its allocations and evaluations; returns the allocations."""
        with self._lock:
            self.require_job(job_id)
            allocs = self.allocs_for_job(job_id)
            evals = list(self._evals_by_job.get(job_id, ()))
            self._write(
                [
                    ("DELETE FROM jobs WHERE job_id = ?", [(job_id,)]),
                    ("DELETE FROM allocations WHERE job_id = ?", [(job_id,)]),
                    ("DELETE FROM evaluations WHERE job_id = ?", [(job_id,)]),
                    ("DELETE FROM periodic_launches WHERE job_id = ?", [(job_id,)]),
                ]
            )
            self._jobs.pop(job_id, None)
            self._launches.pop(job_id, None)
            for alloc in allocs:
                self._unindex_alloc(alloc.allocation_id)
            self._allocs_by_job.pop(job_id, None)
            for eval_id in evals:
                self._evals.pop(eval_id, None)
            self._evals_by_job.pop(job_id, None)
            if on_commit is not None:
                on_commit()
            return allocs

    # ---- children of periodic and parameterized jobs ------------------------

    _UPSERT_LAUNCH = (
        "INSERT OR REPLACE INTO periodic_launches (job_id, launch, child_id) VALUES (?,?,?)"
    )

    def last_launch(self, job_id: str) -> tuple[float, str] | None:
        """A periodic job's last launch time and newest child id, if any."""
        return self._launches.get(job_id)

    def children_of(self, job_id: str) -> list[Job]:
        return [j for j in self._jobs.values() if j.parent_id == job_id]

    def launch_child(
        self, child: Job, evaluation: Evaluation, launch: float | None = None, on_commit=None
    ) -> bool:
        """Store a child job of a live parent with its evaluation; False if not launched.

        With ``launch`` (a periodic launch), the parent's last launch time is
        written in the same transaction, and a launch not later than the
        stored one is refused: a due launch fires once, restarts included."""
        with self._lock:
            parent = self.require_job(child.parent_id or "")
            if parent.stopped:
                raise Conflict(f"job {parent.job_id} is stopped")
            if child.job_id in self._jobs:
                raise Conflict(f"job {child.job_id} exists already")
            launches = []
            if launch is not None:
                last = self._launches.get(parent.job_id)
                if last is not None and launch <= last[0]:
                    return False
                launches = [(parent.job_id, launch, child.job_id)]
            self._write(
                [
                    (self._UPSERT_JOB, [(child.job_id, _dump(child))]),
                    (self._UPSERT_EVAL, self._eval_rows([evaluation])),
                    (self._UPSERT_LAUNCH, launches),
                ]
            )
            self._jobs[child.job_id] = child
            self._index_evals([evaluation])
            if launch is not None:
                self._launches[parent.job_id] = (launch, child.job_id)
            if on_commit is not None:
                on_commit(evaluation)
            return True

    def skip_launch(self, job_id: str, launch: float) -> None:
        """Record a launch that was skipped (prohibit_overlap): it is not due again."""
        with self._lock:
            last = self._launches.get(job_id)
            if job_id not in self._jobs or (last is not None and launch <= last[0]):
                return
            child_id = last[1] if last is not None else ""
            self._write([(self._UPSERT_LAUNCH, [(job_id, launch, child_id)])])
            self._launches[job_id] = (launch, child_id)

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

    # ---- evaluations, plans and allocation updates ------------------------------

    def put_evals(self, evals: list[Evaluation]) -> list[Evaluation]:
        """Store evaluations of jobs that exist; returns those stored.

        An evaluation of a purged job (a worker finishing it, a follow-up)
        is dropped: nothing of a purged job may come back."""
        with self._lock:
            evals = [e for e in evals if e.job_id in self._jobs]
            if evals:
                self._write([(self._UPSERT_EVAL, self._eval_rows(evals))])
                self._index_evals(evals)
            return evals

    def commit_plan(
        self, plan: Plan, evals: list[Evaluation]
    ) -> tuple[list[Allocation], list[Allocation], int]:
        """Apply a plan and its evaluations in one transaction.

        Placements are checked again against the live capacity index (a node
        may have gone down since the plan was computed); those that no longer
        fit are dropped and counted in the third return value.
        Returns (placed, stopped, rejected).
        """
        with self._lock:
            now = self._now()
            job = self._jobs.get(plan.job_id)
            stopped = []
            for alloc_id, reason in plan.stop:
                alloc = self._allocs.get(alloc_id)
                if alloc is not None and alloc.desired_status == DesiredStatus.RUN:
                    stopped.append(self._stopped(alloc, reason, now))
            placed, rejected = [], 0
            # A job stopped or deleted while the plan was computed gets nothing.
            if job is not None and not job.stopped:
                placed, rejected = self._verify_placements(plan.place, stopped)
            # A purged job's evaluations are not written back (its allocations
            # are gone from the index already, so nothing is stopped either).
            evals = [e for e in evals if e.job_id in self._jobs]
            self._write(
                [
                    (self._UPSERT_ALLOC, self._alloc_rows(stopped + placed)),
                    (self._UPSERT_EVAL, self._eval_rows(evals)),
                ]
            )
            for alloc in stopped:
                self._index_alloc(alloc)
            self._index_new_allocs(placed)
            self._index_evals(evals)
            return placed, stopped, rejected

    def _verify_placements(self, allocs: list[Allocation], stopping: list[Allocation]):
        # Room freed by the plan's own stops counts (a replaced group may reuse it).
        freed: dict[str, list[int]] = {}
        for alloc in stopping:
            if self._allocs[alloc.allocation_id].holds_resources():
                gone = freed.setdefault(alloc.node_id, [0, 0])
                gone[0] -= alloc.resources.cpu
                gone[1] -= alloc.resources.memory
        room_of, nodes = self.cluster.room, self._nodes
        used: dict[str, list[int]] = {}  # node -> [cpu, memory] with this plan
        ok, rejected = [], 0
        for alloc in allocs:
            node_id = alloc.node_id
            room = room_of(node_id)
            node = nodes.get(node_id)
            if (
                room is None
                or not room.healthy
                or node is None
                or not node.healthy
                or not node.eligible  # made ineligible (drained) under the plan
            ):
                rejected += 1
                continue
            mine = used.get(node_id)
            if mine is None:
                back = freed.get(node_id, (0, 0))
                mine = used[node_id] = [room.cpu_used + back[0], room.memory_used + back[1]]
            cpu = mine[0] + alloc.resources.cpu
            memory = mine[1] + alloc.resources.memory
            if cpu <= room.cpu and memory <= room.memory:
                mine[0], mine[1] = cpu, memory
                ok.append(alloc)
            else:
                rejected += 1
        return ok, rejected

    def update_allocs(self, allocs: list[Allocation]) -> None:
        """Persist allocation changes (client status from heartbeats, push failures)."""
        if not allocs:
            return
        with self._lock:
            # Updates are built from a read made before the lock: one that
            # would undo a stop committed meanwhile (job stopped) is stale.
            live = [self._keep_migrate(a) for a in allocs if self._still_current(a)]
            self._write([(self._UPSERT_ALLOC, self._alloc_rows(live))])
            for alloc in live:
                self._index_alloc(alloc)

    def _keep_migrate(self, alloc: Allocation) -> Allocation:
        # Only set_migrate changes the drain's mark: an update read before
        # the drainer marked the allocation must not erase it.
        stored = self._allocs[alloc.allocation_id]
        if stored.migrate != alloc.migrate:
            return replace(alloc, migrate=stored.migrate)
        return alloc

    def set_migrate(self, alloc_ids: Iterable[str], migrate: bool) -> list[Allocation]:
        """Mark (or unmark) wanted allocations for migration off a draining node."""
        with self._lock:
            now = self._now()
            changed = [
                replace(a, migrate=migrate, modify_time=now)
                for a in map(self._allocs.get, alloc_ids)
                if a is not None and a.desired_status == DesiredStatus.RUN and a.migrate != migrate
            ]
            self._write([(self._UPSERT_ALLOC, self._alloc_rows(changed))])
            for alloc in changed:
                self._index_alloc(alloc)
            return changed

    def stop_allocs(self, alloc_ids: Iterable[str], reason: str) -> list[Allocation]:
        """Stop wanted allocations (a drain); returns those stopped."""
        with self._lock:
            now = self._now()
            stopped = [
                self._stopped(a, reason, now)
                for a in map(self._allocs.get, alloc_ids)
                if a is not None and a.desired_status == DesiredStatus.RUN
            ]
            self._write([(self._UPSERT_ALLOC, self._alloc_rows(stopped))])
            for alloc in stopped:
                self._index_alloc(alloc)
            return stopped

    def _still_current(self, alloc: Allocation) -> bool:
        stored = self._allocs.get(alloc.allocation_id)
        return stored is not None and not (
            stored.desired_status == DesiredStatus.STOP
            and alloc.desired_status == DesiredStatus.RUN
        )
