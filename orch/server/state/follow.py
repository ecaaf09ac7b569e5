"""Following the change log: every server's memory tracks what the others commit.

On a shared database (PostgreSQL) each write appends one row to ``changes``:
the keys it wrote to, and deleted from, the tables memory holds (not the
bodies: a plan's thousand allocations would be written twice). A server
applies the rows after its position, in order, reading the bodies of the
keys put from their tables (a key no longer there is gone), and moves its
position on: its follower thread does so when NOTIFY wakes it (and on a slow
safety poll), and every write does so first, under the cluster's write lock,
so no write computes on stale memory. A server that fell behind the log's
trimmed floor loads its memory again from the tables.

The hooks for the leader's services: ``on_remote_evals`` listeners get the
evaluations applied from other servers (the broker enqueues them),
``on_remote_stops`` listeners the allocations another server stopped or
purged (only the leader pushes: a follower that stops a job commits, and the
leader tells the agents), ``on_remote_nodes`` the nodes another server
added or whose eligibility or drain it changed (the leader's drainer and
blocked evaluations), and ``changes.bump()`` wakes the UI's streams.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from orch import codec
from orch.errors import StorageError
from orch.server.state.store import StoreCore
from orch.structs import Allocation, DesiredStatus, Evaluation, Node, replace

log = logging.getLogger(__name__)

_INSERT = re.compile(r"^\s*INSERT (?:OR \w+ )?INTO (\w+) ")
_DELETE = re.compile(r"^\s*DELETE FROM (\w+) WHERE (\w+) = \?\s*$")
# The tables memory holds, by key column; the others (versions, deployments)
# are read from SQL. periodic_launches rows are small: logged whole.
BODY_TABLES = {
    "nodes": "node_id",
    "jobs": "job_id",
    "allocations": "allocation_id",
    "evaluations": "eval_id",
}
MEMORY_TABLES = frozenset({*BODY_TABLES, "periodic_launches"})


def change_body(statements: list[tuple[str, list]]) -> str:
    """A write's change-log row: [table, "put", keys], [table, "rows", rows] (small
    tables) and [table, "del", column, keys]."""
    entries: list[list] = []
    for sql, rows in statements:
        if not rows:
            continue
        put = _INSERT.match(sql)
        if put and put.group(1) in BODY_TABLES:
            entries.append([put.group(1), "put", [r[0] for r in rows]])
            continue
        if put and put.group(1) in MEMORY_TABLES:
            entries.append([put.group(1), "rows", [list(r) for r in rows]])
            continue
        gone = _DELETE.match(sql)
        if gone and gone.group(1) in MEMORY_TABLES:
            entries.append([gone.group(1), "del", gone.group(2), [r[0] for r in rows]])
    return json.dumps(entries, separators=(",", ":"))


@dataclass
class Applied:
    """What one catch-up applied that the leader's services act on."""

    touched: set[str] = field(default_factory=set)  # job ids whose views changed
    evals: list[Evaluation] = field(default_factory=list)
    stops: list[Allocation] = field(default_factory=list)  # stopped or purged
    nodes: list[Node] = field(default_factory=list)  # new, or scheduling changed


class Following(StoreCore):
    """The store's side of the change log: catching memory up."""

    @staticmethod
    def _change_body(statements: list[tuple[str, list]]) -> str:
        return change_body(statements)

    def _follow(self) -> None:
        with self._lock:
            self._catch_up()

    def catch_up(self) -> None:
        """Apply now what other servers committed (a new leader, before it schedules)."""
        self._follow()

    def _catch_up(self, log_rows: tuple[int, list] | None = None) -> None:
        """Apply the log after our position (read now, unless given); StorageError if lost."""
        if not self.backend.shared:
            return
        floor, rows = log_rows if log_rows is not None else self.backend.changes_after(self._seq)
        if floor > self._seq:
            log.warning("state change log trimmed past position=%d (floor %d): reloading",
                        self._seq, floor)  # fmt: skip
            self._reset_memory()
            self._load()
            self.changes.bump(seq=self._seq, all_jobs=True)
            return
        if not rows:
            return
        applied = Applied()
        for seq, body in rows:
            for entry in json.loads(body):
                self._apply(entry, applied)
            self._seq = seq
        self.changes.bump(self._with_parents(applied.touched), self._seq)
        for listeners, items, what in (
            (self.on_remote_evals, applied.evals, "evaluation"),
            (self.on_remote_stops, applied.stops, "stop"),
            (self.on_remote_nodes, applied.nodes, "node"),
        ):
            if items:
                self._tell_remote(listeners, items, what)

    @staticmethod
    def _tell_remote(listeners: list, items: list, what: str) -> None:
        for listener in list(listeners):
            try:
                listener(items)
            except (StorageError, RuntimeError, ValueError) as exc:
                log.error("remote %s listener failed: %s", what, exc)

    def _apply(self, entry: list, applied: Applied) -> None:
        """Apply one entry, noting in ``applied`` what it changed."""
        table, op = entry[0], entry[1]
        if op == "put":
            self._apply_put(table, entry[2], applied)
        elif op == "rows":
            for job_id, launch, child_id in entry[2]:
                self._launches[job_id] = (float(launch), child_id)
                applied.touched.add(job_id)
        else:
            if entry[2] == "job_id" or table == "jobs":
                applied.touched.update(entry[3])
            self._apply_delete(table, entry[2], entry[3], applied.stops)

    def _apply_put(self, table: str, keys: list, applied: Applied) -> None:
        """Read the keys' rows as they are now; a key no longer stored is gone."""
        key = BODY_TABLES[table]
        found = dict(
            self.backend.execute(f"SELECT {key}, body FROM {table} WHERE {key} = ANY(?)", (keys,))
        )
        bodies = [json.loads(found[k]) for k in keys if k in found]
        touched = applied.touched
        if table == "nodes":
            for body in bodies:
                self._put_remote_node(codec.node_from(body), applied.nodes)
        elif table == "jobs":
            for body in bodies:
                job = codec.job_from(body)
                self._jobs[job.job_id] = job
                touched.add(job.job_id)
        elif table == "allocations":
            for body in bodies:
                alloc = codec.alloc_from(body)
                if self._newly_stopped(alloc):
                    applied.stops.append(alloc)
                self._index_alloc(alloc)
                touched.add(alloc.job_id)
        else:
            fresh = [codec.eval_from(body) for body in bodies]
            self._index_evals(fresh)
            applied.evals.extend(fresh)
            touched.update(ev.job_id for ev in fresh)
        gone = [k for k in keys if k not in found]
        if table == "jobs":
            touched.update(gone)
        if gone:
            self._apply_delete(table, key, gone, applied.stops)

    def _newly_stopped(self, alloc: Allocation) -> bool:
        """Whether the write turned a wanted allocation we know into a stop."""
        old = self._allocs.get(alloc.allocation_id)
        return (
            old is not None
            and old.desired_status == DesiredStatus.RUN
            and alloc.desired_status == DesiredStatus.STOP
        )

    def _put_remote_node(self, node: Node, changed: list[Node]) -> None:
        """Apply a node written elsewhere; into ``changed`` if its scheduling
        (eligibility, drain) did change: the leader's drainer and blocked
        evaluations act on it."""
        # Heartbeats live in the memory of the server that got them: a newer
        # one seen here is not undone by another server's node write.
        mine = self._nodes.get(node.node_id)
        if mine is not None and mine.last_heartbeat > node.last_heartbeat:
            node = replace(node, last_heartbeat=mine.last_heartbeat, usage=mine.usage)
        if mine is None or (mine.eligible, mine.drain) != (node.eligible, node.drain):
            changed.append(node)
        self._nodes[node.node_id] = node
        self.cluster.upsert_node(node)

    def _apply_delete(
        self, table: str, column: str, keys: list, stops: list[Allocation] | None = None
    ) -> None:
        """Forget the keys; purged allocations go into ``stops`` (their agents forget them too)."""
        for key in keys:
            if table == "jobs":
                self._jobs.pop(key, None)
            elif table == "periodic_launches":
                self._launches.pop(key, None)
            elif table == "nodes":
                self._nodes.pop(key, None)
            elif table == "allocations":
                ids = self._allocs_by_job.pop(key, {}) if column == "job_id" else {key: None}
                for alloc_id in list(ids):
                    alloc = self._allocs.get(alloc_id)
                    if alloc is not None and stops is not None:
                        stops.append(alloc)
                    self._unindex_alloc(alloc_id)
            elif table == "evaluations":
                self._delete_evals(column, key)

    def _delete_evals(self, column: str, key: str) -> None:
        if column == "job_id":
            for eval_id in self._evals_by_job.pop(key, {}):
                self._evals.pop(eval_id, None)
            return
        ev = self._evals.pop(key, None)
        if ev is not None:
            self._evals_by_job.get(ev.job_id, {}).pop(key, None)
