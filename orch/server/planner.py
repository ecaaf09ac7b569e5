"""The scheduler side's narrow view of the server, as Nomad's State and Planner.

Scheduler workers, the heartbeat sync and the dry run never hold the Server.
They read through ``SchedulerState`` (the StateStore satisfies it), take
evaluations from an ``EvalQueue`` (the EvalBroker), and change things through
a ``Planner``: submit a plan and get what was committed, create, requeue,
fail or (re)block evaluations, schedule a follow-up, unblock. Whatever is
committed that agents must hear of goes to ``Dispatch``, the one place where
pushes and stops start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, NamedTuple, Protocol

from orch.errors import NotLeader, StorageError
from orch.server.scheduler.cluster import Cluster
from orch.structs import (
    Allocation,
    EvalStatus,
    Evaluation,
    Job,
    Plan,
    TriggeredBy,
    new_id,
    replace,
)

if TYPE_CHECKING:  # the concrete parts, for annotations only
    from orch.server.broker import EvalBroker
    from orch.server.push import Pusher
    from orch.server.state import StateStore

log = logging.getLogger(__name__)

# An evaluation that could not be committed because the state store could not
# write is queued again after this long.
STORAGE_RETRY_S = 2.0


class SchedulerState(Protocol):
    """What scheduling reads, never writes (Nomad's ``scheduler.State``)."""

    @property
    def cluster(self) -> Cluster: ...

    def get_job(self, job_id: str) -> Job | None: ...

    def allocs_for_job(self, job_id: str) -> list[Allocation]: ...


class NodeAllocState(SchedulerState, Protocol):
    """What folding a node's heartbeat reads and writes: its allocations."""

    def get_alloc(self, alloc_id: str) -> Allocation | None: ...

    def live_allocs_for_node(self, node_id: str) -> list[Allocation]: ...

    def update_allocs(self, allocs: list[Allocation]) -> None: ...


class EvalQueue(Protocol):
    """Where a worker takes evaluations from (the EvalBroker)."""

    def dequeue(self, timeout: float) -> tuple[str, list[Evaluation]] | None: ...

    def ack(self, token: str) -> None: ...

    def nack(self, token: str) -> list[Evaluation]: ...


class PlanResult(NamedTuple):
    """What the store committed of a plan (``StateStore.commit_plan``)."""

    placed: list[Allocation]
    stopped: list[Allocation]
    rejected: int  # placements that no longer fit at commit time


class Planner(Protocol):
    """What the scheduler side may change (Nomad's ``scheduler.Planner``)."""

    def submit_plan(self, plan: Plan, evals: list[Evaluation], job: Job) -> PlanResult: ...

    def update_evals(self, evals: list[Evaluation]) -> None: ...

    def create_evals(
        self, job_ids: Iterable[str], trigger: TriggeredBy, node_id: str | None = None
    ) -> list[Evaluation]: ...

    def schedule_followup(self, job_id: str, at: float) -> None: ...

    def reblock(self, ev: Evaluation) -> None: ...

    def unblock(self) -> None: ...

    def retry_later(self, evals: list[Evaluation]) -> None: ...

    def fail_eval(self, ev: Evaluation, why: str) -> None: ...


def new_eval(
    job_id: str, trigger: TriggeredBy, now: float, node_id: str | None = None
) -> Evaluation:
    return Evaluation(
        eval_id=new_id(),
        job_id=job_id,
        triggered_by=trigger,
        node_id=node_id,
        create_time=now,
        modify_time=now,
    )


def _at_once(effect: Callable[[], object]) -> None:
    effect()


class Dispatch:
    """The one place where committed changes become calls to agents.

    Only what the store has committed is handed here: a plan's placements and
    stops, the allocations of a job stopped or purged, allocations an agent
    runs that the server does not want (stopped already), and placements an
    agent does not know (pushed again). Agents accept repeats idempotently.
    """

    def __init__(
        self, pusher: Pusher, after_commit: Callable[[Callable[[], object]], None] | None = None
    ):
        self._pusher = pusher
        # The store's: a write of the I/O loop's group is durable only at
        # the group's COMMIT, and nothing of it may reach an agent before.
        self._after_commit = after_commit or _at_once

    def plan_committed(self, result: PlanResult, job: Job) -> None:
        if result.placed:
            self.place(result.placed, job)
        if result.stopped:
            self.stop(result.stopped)

    def place(self, allocs: list[Allocation], job: Job) -> None:
        self._after_commit(partial(self._pusher.place, allocs, job))

    def stop(self, allocs: list[Allocation]) -> None:
        self._after_commit(partial(self._pusher.stop, allocs))

    def busy(self, alloc_id: str, node_id: str | None = None) -> bool:
        """True while a push or stop of the allocation is under way."""
        return self._pusher.busy(alloc_id, node_id)


class ServerPlanner:
    """The Planner of one server: its state store, broker and dispatch."""

    def __init__(self, store: StateStore, broker: EvalBroker, dispatch: Dispatch):
        self._store = store
        self._broker = broker
        self._dispatch = dispatch
        self._followups: dict[str, float] = {}

    def submit_plan(self, plan: Plan, evals: list[Evaluation], job: Job) -> PlanResult:
        """Commit the plan with its evaluations, then tell the agents."""
        result = PlanResult(*self._store.commit_plan(plan, evals))
        self._dispatch.plan_committed(result, job)
        return result

    def update_evals(self, evals: list[Evaluation]) -> None:
        """A worker's verdict on evaluations; NotLeader from a deposed leader."""
        self._store.put_evals(evals, fenced=True)

    def create_evals(
        self, job_ids: Iterable[str], trigger: TriggeredBy, node_id: str | None = None
    ) -> list[Evaluation]:
        now = time.time()
        evals = [new_eval(job_id, trigger, now, node_id) for job_id in job_ids]
        if evals:
            # Those of a job purged meanwhile are not stored: not queued either.
            evals = self._store.put_evals(evals)
            self._store.after_commit(partial(self._broker.enqueue_many, evals))
        return evals

    def schedule_followup(self, job_id: str, at: float) -> None:
        """A delayed evaluation (service reschedule backoff), one per job and time."""
        known = self._followups.get(job_id)
        if known is not None and known <= at and known > time.time():
            return
        self._followups[job_id] = at
        ev = new_eval(job_id, TriggeredBy.ALLOC_FAILURE, time.time())
        if self._store.put_evals([ev]):
            self._broker.enqueue_delayed(ev, at)

    def reblock(self, ev: Evaluation) -> None:
        """Park a blocked evaluation until capacity changes."""
        self._broker.block(ev)

    def unblock(self) -> None:
        """Capacity changed: blocked evaluations are planned again."""
        self._broker.unblock()

    def fail_eval(self, ev: Evaluation, why: str) -> None:
        """Mark an evaluation the scheduler gave up on; a store that cannot
        write (full disk) is not the evaluation's fault: it is kept instead;
        a deposed leader's verdict is refused and the evaluation left to the
        new leader, which restored it from the store."""
        failed = replace(
            ev, status=EvalStatus.FAILED, status_description=why, modify_time=time.time()
        )
        try:
            self._store.put_evals([failed], fenced=True)
        except StorageError:
            self.retry_later([ev])
        except NotLeader:
            log.warning("eval %s: not marked failed, no longer the leader", ev.eval_id[:8])

    def retry_later(self, evals: list[Evaluation]) -> None:
        """Queue evaluations again after STORAGE_RETRY_S (the store was full)."""
        log.warning(
            "evaluations %s kept: the state store cannot write; retrying in %.0fs",
            [e.eval_id[:8] for e in evals],
            STORAGE_RETRY_S,
        )
        at = time.time() + STORAGE_RETRY_S
        for ev in evals:
            self._broker.enqueue_delayed(ev, at)
