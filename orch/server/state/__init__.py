"""The server's state: SQLite on disk, indexes in memory, one writer.

Every write goes to SQLite in one transaction first and only then to memory,
so a request is acknowledged only after its state is durable, and a failed
write (disk full) leaves memory exactly as it was. Reads come from memory.
Stored objects are never mutated: a change is a new object written back.

One class, ``StateStore``, owns the lock, the SQL and the indexes; its
methods live in modules by concept, all on the one RLock and the one write
path (``StoreCore._write``):

- ``store``: opening, schema, load, the write path, the indexes, the reads;
- ``nodes``: node writes (register, health, eligibility and drain, node down);
- ``jobs``: job writes (submit, stop, restart, purge, periodic launches);
- ``versions``: the last N versions of each job, written with the job;
- ``plans``: evaluations, plan commits, allocation updates, drain marks;
- ``deployments``: rolling updates, and the `stable` mark of job versions.
"""

from orch.server.state.deployments import Deployments
from orch.server.state.jobs import JobWrites
from orch.server.state.nodes import NodeWrites
from orch.server.state.plans import PlanWrites
from orch.server.state.store import SCHEMA, MakeEval, StoreCore

__all__ = ["SCHEMA", "MakeEval", "StateStore", "StoreCore"]


class StateStore(NodeWrites, JobWrites, PlanWrites, Deployments):
    """SQLite-backed store of nodes, jobs, allocations and evaluations."""
