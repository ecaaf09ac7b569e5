"""The node drainer: moves work off draining nodes without losing it.

As Nomad's drainer (nomad/drainer/): a drain is state on the node (its
deadline, when it started, whether system jobs stay), so it survives a
server restart; a thread looks at every draining node on each tick:

- service allocations move ``migrate.max_parallel`` at a time per group: the
  drainer marks one ``migrate`` and asks for an evaluation; the scheduler
  places a replacement elsewhere and keeps the old copy (reconcile.py); once
  the replacement runs, the drainer stops the old copy. So the group never
  has fewer running copies than before, minus a replacement that failed;
- batch allocations may finish until the deadline;
- at the deadline whatever is left is stopped and placed again elsewhere;
- system allocations ("system"/"sysbatch" jobs) stop last, once nothing
  else is left, unless the drain ignores them;
- the drain ends when nothing it moves is left: the node stays ineligible.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

from orch.errors import StorageError
from orch.server.planner import Dispatch
from orch.structs import Allocation, AllocStatus, DesiredStatus, Job, JobType, Node, TriggeredBy

log = logging.getLogger(__name__)

SYSTEM_TYPES = frozenset({"system", "sysbatch"})
MIGRATED = "node drain: migrated"
DRAINED = "node drain"
DEADLINE = "node drain: deadline reached"
TICK_S = 0.25


class DrainPlanner(Protocol):
    """What the drainer asks of the scheduler side (orch.server.planner)."""

    def create_evals(self, job_ids, trigger: TriggeredBy, node_id: str | None = None) -> list: ...

    def unblock(self) -> None: ...


def is_system(job: Job | None) -> bool:
    return job is not None and getattr(job.type, "value", job.type) in SYSTEM_TYPES


def new_drain(deadline_s: float, ignore_system_jobs: bool, now: float, started=None) -> dict:
    """The drain record stored on the node (times are unix seconds)."""
    started = now if started is None else started
    return {
        "deadline_s": deadline_s,
        "deadline": now + deadline_s,
        "started": started,
        "ignore_system_jobs": ignore_system_jobs,
    }


def progress(
    node: Node, allocs: list[Allocation], job_of: Callable[[str], Job | None]
) -> dict | None:
    """The drain as GET /nodes shows it: the record plus what is left (what
    the drain will move or stop: not the system copies it ignores)."""
    if node.drain is None:
        return None
    allocs = to_drain(allocs, bool(node.drain.get("ignore_system_jobs")), job_of)
    return {
        **node.drain,
        "remaining_allocations": len(allocs),
        "migrating": sum(1 for a in allocs if a.migrate),
    }


def to_drain(
    allocs: list[Allocation], ignore_system: bool, job_of: Callable[[str], Job | None]
) -> list[Allocation]:
    """What a drain has yet to move or stop: all of it, but the system copies
    it was told to leave."""
    if not ignore_system:
        return allocs
    return [a for a in allocs if not is_system(job_of(a.job_id))]


class Drainer(threading.Thread):
    """Drives every node drain in the store, one tick at a time."""

    def __init__(self, store, planner: DrainPlanner, dispatch: Dispatch, *, now=time.time):
        super().__init__(name="drainer", daemon=True)
        self._store = store
        self._planner = planner
        self._dispatch = dispatch
        self._now = now
        self._wake = threading.Event()
        self._stopped = threading.Event()
        # Nodes to look at; the first tick finds the drains stored before a
        # restart, later ones only those it was told of: a tick does not walk
        # every node of a large cluster.
        self._draining: set[str] = set()
        self._scanned = False
        self._lock = threading.Lock()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def watch(self, node_id: str) -> None:
        """A drain was started on the node: look at it now."""
        with self._lock:
            self._draining.add(node_id)
        self._wake.set()

    def run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                self.tick()
            except StorageError as exc:
                log.warning("drainer: state store cannot write (%s); next tick retries", exc)
            except Exception:
                log.exception("drainer tick failed")

    def tick(self) -> None:
        """One pass over every draining node."""
        with self._lock:
            if not self._scanned:
                self._draining |= {n.node_id for n in self._store.list_nodes() if n.drain}
                self._scanned = True
            draining = sorted(self._draining)
        for node_id in draining:
            node = self._store.get_node(node_id)
            if node is None or node.drain is None:
                self._forget(node_id)
                continue
            self.drain_node(node)

    def _forget(self, node_id: str) -> None:
        # Read again under the lock: a drain started meanwhile is written
        # before watch() takes the lock, so it is either seen here or re-added.
        with self._lock:
            node = self._store.get_node(node_id)
            if node is None or node.drain is None:
                self._draining.discard(node_id)

    def drain_node(self, node: Node) -> None:
        """One step of one node's drain."""
        drain = node.drain or {}
        now = self._now()
        ignore_system = bool(drain.get("ignore_system_jobs"))
        service, batch, system = self._partition(self._store.live_allocs_for_node(node.node_id))
        if now >= float(drain.get("deadline", now)):
            left = service + batch + ([] if ignore_system else system)
            self._stop(left, DEADLINE, node.node_id)
        else:
            if service:
                self._migrate(node.node_id, service)
                # Copies replaced just now are gone: system ones may go this tick.
                service, batch, system = self._partition(
                    self._store.live_allocs_for_node(node.node_id)
                )
            if not service and not batch and system and not ignore_system:
                self._stop(system, DRAINED, node.node_id)
        if not self._remaining(node.node_id, ignore_system):
            # Checked and written under the store's lock: a drain canceled or
            # changed since this tick read the node is not ended here.
            if self._store.finish_drain(node.node_id, drain, now):
                log.info("node %s drained: ineligible and empty", node.node_id[:8])

    def _partition(self, allocs: list[Allocation]):
        service, batch, system = [], [], []
        for alloc in allocs:
            job = self._store.get_job(alloc.job_id)
            if is_system(job):
                system.append(alloc)
            elif job is not None and job.type == JobType.SERVICE:
                service.append(alloc)
            else:
                batch.append(alloc)
        return service, batch, system

    def _remaining(self, node_id: str, ignore_system: bool) -> bool:
        allocs = self._store.live_allocs_for_node(node_id)
        return bool(to_drain(allocs, ignore_system, self._store.get_job))

    def _migrate(self, node_id: str, allocs: list[Allocation]) -> None:
        """Stop the copies already replaced; mark the next ones, per group."""
        by_group: dict[tuple[str, str], list[Allocation]] = defaultdict(list)
        for alloc in allocs:
            by_group[(alloc.job_id, alloc.task_group)].append(alloc)
        for (job_id, group_name), mine in sorted(by_group.items()):
            job = self._store.get_job(job_id)
            group = job.group(group_name) if job is not None else None
            limit = group.migrate_max_parallel if group is not None else 1
            siblings = [
                a
                for a in self._store.allocs_for_job(job_id)
                if a.task_group == group_name and a.desired_status == DesiredStatus.RUN
            ]
            done = [a for a in mine if a.migrate and _replaced(a, siblings)]
            self._stop(done, MIGRATED, node_id, evaluate=False)
            done_ids = {a.allocation_id for a in done}
            # Counted over every node: two drains share the group's budget.
            in_flight = sum(1 for a in siblings if a.migrate and a.allocation_id not in done_ids)
            start = [a for a in mine if not a.migrate][: max(0, limit - in_flight)]
            if start:
                self._store.set_migrate([a.allocation_id for a in start], True)
                log.info(
                    "node %s drain: migrating %d allocations of %s.%s",
                    node_id[:8],
                    len(start),
                    job_id,
                    group_name,
                )
                self._planner.create_evals([job_id], TriggeredBy.NODE_DRAIN, node_id)

    def _stop(
        self, allocs: list[Allocation], reason: str, node_id: str, *, evaluate: bool = True
    ) -> None:
        """Stop allocations; with ``evaluate``, their jobs place them again elsewhere."""
        if not allocs:
            return
        stopped = self._store.stop_allocs([a.allocation_id for a in allocs], reason)
        if not stopped:
            return
        log.info("node %s drain: stopped %d allocations (%s)", node_id[:8], len(stopped), reason)
        self._dispatch.stop(stopped)
        if evaluate:
            jobs = sorted({a.job_id for a in stopped})
            self._planner.create_evals(jobs, TriggeredBy.NODE_DRAIN, node_id)
        self._planner.unblock()


def _replaced(old: Allocation, siblings: list[Allocation]) -> bool:
    """Does another copy of the old allocation's slot run (its replacement)?"""
    return any(
        a.index == old.index
        and a.allocation_id != old.allocation_id
        and a.node_id != old.node_id
        and a.client_status == AllocStatus.RUNNING
        and a.create_time >= old.create_time
        for a in siblings
    )
