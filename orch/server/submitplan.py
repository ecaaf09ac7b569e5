"""A new small batch or service job planned inside its submit's transaction (SQLite).

Through the broker a job costs two transactions (the submit writes the
job and its pending evaluation; the worker's plan writes the allocation and
rewrites the evaluation decided), the broker's enqueue and the scheduler
thread's wake-up, which then fights the I/O thread for the GIL. Nomad's
applier groups work for the same reason (``nomad/plan_apply.go``). Here the
thread that commits a new job, already holding the store's lock, plans it
against the same capacity index the worker would read and writes the job,
its version, its evaluation (decided) and its allocations in one
transaction; the pushes follow the commit as a worker's do. An
acknowledged job is as durable as before: the answer still follows that
commit.

Only what the worker would decide the same way and cheaply: a new batch
or service job of at most ``MAX_PLACEMENTS`` allocations (the I/O thread
serves nobody while it plans), no evaluation waiting in the broker (a job
planned here would jump the queue), and a plan that places every allocation
with no follow-up. The worker gives a new service job no deployment:
one exists only while copies of an older spec are replaced
(``deploy.needs_deployment``), and a group with no allocations is placed
whole whatever the deployment (``reconcile``), so its first version's plan
is the worker's. Anything else - a full cluster, a system job, an update, a
periodic parent - goes to the broker as before. PostgreSQL keeps the
broker: its writes are fenced round trips a follower may lose.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Protocol

from orch.server.scheduler import scheduler_for
from orch.server.scheduler.cluster import Cluster
from orch.server.scheduler.explain import describe, summarize
from orch.structs import EvalStatus, Evaluation, Job, JobType, Plan, replace

log = logging.getLogger(__name__)

# The worker's generic scheduler, no deployment read (see above).
PLANNED_TYPES = frozenset({JobType.BATCH, JobType.SERVICE})

# Placements planned on the submitting thread, at most: ~40 us each on a
# 5,000-node cluster (bench/scheduler.py), a few hundred us in all.
MAX_PLACEMENTS = 8


class Queue(Protocol):
    def quiet(self) -> bool: ...


class State(Protocol):
    cluster: Cluster


class SubmitPlanner:
    """Plans a new small batch or service job for the store's submit, or declines (None)."""

    def __init__(self, queue: Queue, state: State, *, seed: int | None = None):
        self._queue = queue
        self._state = state  # its cluster is read at each call: a reload replaces it
        self._rng = random.Random(seed)

    def __call__(self, job: Job, evaluation: Evaluation) -> tuple[Plan, Evaluation] | None:
        """(plan, the evaluation decided) for the submit's transaction; None:
        the evaluation goes to the broker. Called under the store's lock."""
        if (
            job.type not in PLANNED_TYPES
            or job.is_parent
            or sum(g.count for g in job.task_groups) > MAX_PLACEMENTS
            or not self._queue.quiet()
        ):
            return None
        now = time.time()
        plan, followup = scheduler_for(job)(
            job, [], self._state.cluster, evaluation, now=now, rng=self._rng
        )
        summary = summarize(plan, job)
        if followup is not None or plan.stop or plan.failed or summary["queued"]:
            return None  # the worker plans it again and blocks it if it must
        decided = replace(
            evaluation,
            status=EvalStatus.COMPLETE,
            modify_time=now,
            placed=len(plan.place),
            queued=0,
            failures=summary["failures"],
            groups=summary["groups"],
            status_description=describe(summary),
        )
        log.debug("eval job=%s placed=%d at submit", job.job_id, len(plan.place))
        return plan, decided
