"""Scheduler workers: evaluation in, plan committed, allocations pushed.

A worker sees only narrow interfaces (orch/server/planner.py): the queue it
takes evaluations from, the state it reads and the planner it submits to.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from orch.errors import NotLeader, StorageError
from orch.server import deploy
from orch.server.planner import EvalQueue, Planner, PlanResult, SchedulerState
from orch.server.scheduler import scheduler_for
from orch.server.scheduler.explain import (
    describe,
    failed_nodes,
    released_by,
    summarize,
)
from orch.structs import (
    Deployment,
    DeploymentStatus,
    EvalStatus,
    Evaluation,
    Job,
    JobType,
    Plan,
    TriggeredBy,
    replace,
)

log = logging.getLogger(__name__)


class SchedulerWorker(threading.Thread):
    """Dequeues evaluations of one job at a time and applies their plan."""

    def __init__(
        self,
        queue: EvalQueue,
        state: SchedulerState,
        planner: Planner,
        index: int,
        *,
        seed: int | None = None,
    ):
        super().__init__(name=f"scheduler-{index}", daemon=True)
        self._queue = queue
        self._state = state
        self._planner = planner
        self._rng = random.Random(seed)
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        broker = self._queue
        while not self._stopped.is_set():
            work = broker.dequeue(timeout=0.5)
            if work is None:
                continue
            token, evals = work
            try:
                self.process(evals)
            except NotLeader:
                # Deposed while planning: the plan (or the evaluations'
                # status) was refused, and the new leader restored these
                # evaluations from the store.
                log.info(
                    "no longer the leader: evaluations of job %s left to the new leader",
                    evals[0].job_id,
                )
                broker.ack(token)
            except StorageError as exc:
                # Not the evaluation's fault (a full disk): keep it, try later.
                log.warning(
                    "state store cannot write (%s); evaluations of job %s kept for a retry",
                    exc.message,
                    evals[0].job_id,
                )
                broker.ack(token)
                self._planner.retry_later(evals)
            except Exception:
                log.exception(
                    "evaluation failed job=%s evals=%s",
                    evals[0].job_id,
                    [e.eval_id[:8] for e in evals],
                )
                for ev in broker.nack(token):
                    self._planner.fail_eval(ev, "scheduler error; gave up after retries")
            else:
                broker.ack(token)

    def process(self, evals: list[Evaluation]) -> None:
        planner = self._planner
        state = self._state
        now = time.time()
        job = state.get_job(evals[0].job_id)
        if job is None or job.stopped:
            # Stopping already stopped the allocations; a purged job's
            # evaluations are not stored again (put_evals drops them).
            why = "job not found" if job is None else "job stopped"
            planner.update_evals(
                [
                    replace(e, status=EvalStatus.CANCELED, modify_time=now, status_description=why)
                    for e in evals
                ]
            )
            return
        if job.is_parent:
            # Periodic and parameterized jobs run through their children.
            why = "periodic or parameterized job: children are placed, not the job"
            planner.update_evals(
                [
                    replace(e, status=EvalStatus.COMPLETE, modify_time=now, status_description=why)
                    for e in evals
                ]
            )
            return
        allocs = state.allocs_for_job(job.job_id)
        compute_plan = scheduler_for(job)
        extra = {}
        if job.type == JobType.SERVICE:
            extra["deployment"] = self._deployment(job, allocs, now)
        plan, followup = compute_plan(
            job, allocs, state.cluster, evals[-1], now=now, rng=self._rng, **extra
        )
        placed, stopped, rejected = self._commit(plan, evals, job, now)
        if stopped:
            planner.unblock()  # stopping freed capacity elsewhere
        if rejected:
            # The cluster changed under the plan (a node went down): plan again.
            planner.create_evals([job.job_id], TriggeredBy.QUEUED_ALLOCS)
        if followup is not None:
            planner.schedule_followup(job.job_id, followup)
        log.debug(
            "eval job=%s placed=%d stopped=%d rejected=%d",
            job.job_id,
            len(placed),
            len(stopped),
            rejected,
        )

    def _deployment(self, job: Job, allocs: list, now: float) -> Deployment | None:
        """The job's latest deployment; a new one when a rolling group changed."""
        latest = getattr(self._state, "latest_deployment", None)
        if latest is None or not any(deploy.rolling(job, g) for g in job.task_groups):
            # No update block (or a state without deployments: scheduler
            # tests): no read of the deployments table on this evaluation.
            return None
        current = latest(job.job_id)
        groups = deploy.needs_deployment(job, allocs)
        if not groups or (current is not None and current.job_version == job.version):
            return current
        put = self._state.put_deployment  # type: ignore[attr-defined]
        if current is not None and current.active:
            put(
                replace(
                    current,
                    status=DeploymentStatus.CANCELLED,
                    status_description=f"cancelled by version {job.version}",
                    modify_time=now,
                ),
                expect=current,  # one a user failed meanwhile stays failed
            )
        created = deploy.new_deployment(job, groups, now)
        put(created)
        log.info(
            "deployment %s job=%s version=%d", created.deployment_id[:8], job.job_id, job.version
        )
        return created

    def _commit(self, plan: Plan, evals: list[Evaluation], job: Job, now: float) -> PlanResult:
        """Submit the plan with its evaluations' outcome; the planner pushes."""
        summary = summarize(plan, job)
        status = EvalStatus.BLOCKED if summary["queued"] else EvalStatus.COMPLETE
        nearest: dict[str, list[dict]] = {}
        if plan.failed:
            # Which nodes came closest, for `orch job run` to name (only on
            # failure: it reads the job's allocations again).
            state = self._state
            nearest = failed_nodes(
                plan, job, state.cluster, released_by(plan, state.allocs_for_job(job.job_id))
            )
        updated = [
            replace(
                e,
                status=status,
                modify_time=now,
                placed=e.placed + len(plan.place),
                queued=summary["queued"],
                failures=summary["failures"],
                groups=summary["groups"],
                failed_nodes=nearest,
                status_description=describe(summary),
            )
            for e in evals
        ]
        result = self._planner.submit_plan(plan, updated, job)
        if status == EvalStatus.BLOCKED:
            self._planner.reblock(updated[-1])
        return result
