"""The server's state: a database (SQLite, or PostgreSQL shared), indexes in memory.

Every write goes to the database in one transaction first and only then to
memory, so a request is acknowledged only after its state is durable, and a
failed write (disk full, database lost: StorageError, 503) leaves memory
exactly as it was (in a group commit, ``group``, a failed COMMIT instead
reloads memory from the database). Reads come from memory (versions and deployments, read
rarely, from SQL). Stored objects are never mutated: a change is a new
object written back.

One class, ``StateStore``, owns the lock, the SQL and the indexes; its
methods live in modules by concept, all on the one RLock and the one write
path (``StoreCore._writing`` around the computation, ``StoreCore._write``):

- ``store``: opening, load, the write path, the indexes, the reads;
- ``backend``, ``sqlite``, ``postgres``: the engines behind one interface
  (the SQL is written once, SQLite's form; PostgreSQL's backend translates);
- ``migrations``: the versioned schema, checked at start on both engines;
- ``follow``: on PostgreSQL, every server's memory follows the change log;
- ``nodes``: node writes (register, health, eligibility and drain, node down);
- ``jobs``: job writes (submit, stop, restart, purge, periodic launches);
- ``versions``: the last N versions of each job, written with the job;
- ``plans``: evaluations, plan commits, allocation updates, drain marks;
- ``deployments``: rolling updates, and the `stable` mark of job versions;
- ``group``: on SQLite, the inline writes of one I/O loop turn in one
  transaction (group commit); ``after_commit`` holds their effects.

Several servers on one PostgreSQL database: every write transaction takes
one advisory lock first (``pg_advisory_xact_lock``) and applies the change
log up to now before the write computes, so writes are serial cluster-wide
and never computed on stale memory; the writer sees its own write at once.
Other servers apply it within milliseconds (LISTEN/NOTIFY, a slow poll).

Hooks for the leader's services (set by whoever runs them):

- ``store.fence``: None, or a callable returning ``(sql, params)`` in the
  engine's own dialect (``%s`` on PostgreSQL). Fenced writes -- plan commits
  and ``mark_node_down`` -- run it first in their transaction and raise
  ``NotLeader`` (503), writing nothing, when it returns no row.
- ``store.on_remote_evals``: callables given the evaluations the store
  applied from other servers' commits, as stored when read (one may be
  complete already: skip terminal ones); called under the store's lock, so
  keep them short (the broker's enqueue).
- ``store.on_remote_stops``: callables given the allocations another
  server's commit stopped (desired run -> stop) or purged, as they are now
  (purged: as they were); under the lock too (the leader's pusher queues).
- ``store.on_remote_nodes``: callables given the nodes another server's
  commit added or whose eligibility or drain it changed; under the lock too.
- ``store.catch_up()``: apply now what other servers committed.
- ``store.changes``: bumped after every commit, local or followed.
"""

from orch.server.state.deployments import Deployments
from orch.server.state.follow import Following
from orch.server.state.group import GroupCommit
from orch.server.state.jobs import JobWrites
from orch.server.state.nodes import NodeWrites
from orch.server.state.plans import PlanWrites
from orch.server.state.store import MakeEval, StoreCore

__all__ = ["MakeEval", "StateStore", "StoreCore"]


class StateStore(Following, NodeWrites, JobWrites, PlanWrites, Deployments, GroupCommit):
    """The store of nodes, jobs, allocations and evaluations (SQLite or PostgreSQL)."""
