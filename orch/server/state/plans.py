"""Evaluations, plans and allocation updates: the scheduler's and the agents' writes."""

from __future__ import annotations

from collections.abc import Iterable

from orch.server.scheduler.ports import PlanPorts
from orch.server.state.store import StoreCore
from orch.structs import Allocation, DesiredStatus, Evaluation, Plan, replace


class PlanWrites(StoreCore):
    """The store's writes of evaluations, plans, allocation updates and drain marks."""

    def put_evals(self, evals: list[Evaluation], *, fenced: bool = False) -> list[Evaluation]:
        """Store evaluations of jobs that exist; returns those stored.

        An evaluation of a purged job (a worker finishing it, a follow-up)
        is dropped: nothing of a purged job may come back. ``fenced``: the
        leader's verdict on an evaluation (a worker's), refused (NotLeader)
        from a term no longer current, as a plan commit is."""
        with self._writing():
            evals = [e for e in evals if e.job_id in self._jobs]
            if evals:
                self._write([(self._UPSERT_EVAL, self._eval_rows(evals))], fenced=fenced)
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
        with self._writing():
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
                ],
                fenced=True,  # a deposed leader's late plan is refused (NotLeader)
            )
            for alloc in stopped:
                self._index_alloc(alloc)
            self._index_new_allocs(placed)
            self._index_evals(evals)
            return placed, stopped, rejected

    def _verify_placements(self, allocs: list[Allocation], stopping: list[Allocation]):
        # Room freed by the plan's own stops counts (a replaced group may reuse it).
        freed: dict[str, list[int]] = {}
        releasing = [a for a in stopping if self._allocs[a.allocation_id].holds_resources()]
        for alloc in releasing:
            gone = freed.setdefault(alloc.node_id, [0, 0])
            gone[0] -= alloc.resources.cpu
            gone[1] -= alloc.resources.memory
        ports = PlanPorts(releasing)
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
            if cpu > room.cpu or memory > room.memory:
                rejected += 1
                continue
            if alloc.ports:
                # Another plan may have taken a port since this one was computed.
                if ports.clash(alloc, room):
                    rejected += 1
                    continue
                ports.hold(alloc)
            mine[0], mine[1] = cpu, memory
            ok.append(alloc)
        return ok, rejected

    def update_allocs(self, allocs: list[Allocation]) -> None:
        """Persist allocation changes (client status from heartbeats, push failures)."""
        if not allocs:
            return
        with self._writing():
            # Updates are built from a read made before the lock: one that
            # would undo a stop committed meanwhile (job stopped) is stale.
            live = [self._keep_migrate(a) for a in allocs if self._still_current(a)]
            # Each one stored (_still_current): on SQLite its row is updated in
            # place; PostgreSQL's change log replays upserts only.
            sql = self._UPSERT_ALLOC if self.backend.shared else self._UPDATE_ALLOC
            self._write([(sql, self._alloc_rows(live))])
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
        with self._writing():
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
        with self._writing():
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
