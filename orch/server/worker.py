"""Scheduler workers: evaluation in, plan committed, allocations pushed."""
from __future__ import annotations

import logging
import random
import threading
import time

from orch.server.planning import failed_nodes, released_by
from orch.errors import StorageError
from orch.server.scheduler.generic import compute_plan
from orch.structs import EvalStatus, Evaluation, TriggeredBy, new_id, replace

log = logging.getLogger(__name__)


def summarize(plan, job) -> dict:
    """Evaluation fields after a plan: placed, queued, failures, groups."""
    failures: dict[str, int] = {}
    groups: dict[str, dict] = {}
    placed_by_group: dict[str, int] = {}
    for alloc in plan.place:
        placed_by_group[alloc.task_group] = placed_by_group.get(alloc.task_group, 0) + 1
    for tg in job.task_groups:
        failed = plan.failed.get(tg.name, {})
        groups[tg.name] = {"wanted": tg.count,
                           "placed": placed_by_group.get(tg.name, 0),
                           "failed": failed.get("wanted", 0)}
        for reason, count in failed.get("failures", {}).items():
            failures[reason] = failures.get(reason, 0) + count
    queued = sum(f.get("wanted", 0) for f in plan.failed.values())
    return {"failures": failures, "groups": groups, "queued": queued}


def describe(summary: dict) -> str:
    if not summary["queued"]:
        return "all allocations placed"
    reasons = "; ".join(f"{reason} on {n} node{'s' if n != 1 else ''}"
                        for reason, n in summary["failures"].items())
    return f"{summary['queued']} allocation(s) not placed: {reasons or 'no nodes'}"


class SchedulerWorker(threading.Thread):
    """Dequeues evaluations of one job at a time and applies their plan."""

    def __init__(self, server, index: int, *, seed: int | None = None):
        super().__init__(name=f"scheduler-{index}", daemon=True)
        self._server = server
        self._rng = random.Random(seed)
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        broker = self._server.broker
        while not self._stopped.is_set():
            work = broker.dequeue(timeout=0.5)
            if work is None:
                continue
            token, evals = work
            try:
                self.process(evals)
            except StorageError as exc:
                # Not the evaluation's fault (a full disk): keep it, try later.
                log.warning("state store cannot write (%s); evaluations of job "
                            "%s kept for a retry", exc.message, evals[0].job_id)
                broker.ack(token)
                self._server.retry_later(evals)
            except Exception:
                log.exception("evaluation failed job=%s evals=%s",
                              evals[0].job_id, [e.eval_id[:8] for e in evals])
                for ev in broker.nack(token):
                    self._server.fail_eval(ev, "scheduler error; gave up after retries")
            else:
                broker.ack(token)

    def process(self, evals: list[Evaluation]) -> None:
        server = self._server
        store = server.store
        now = time.time()
        job = store.get_job(evals[0].job_id)
        if job is None or job.stopped:
            # Stopping already stopped the allocations; a purged job's
            # evaluations are not stored again (put_evals drops them).
            why = "job not found" if job is None else "job stopped"
            store.put_evals([replace(e, status=EvalStatus.CANCELED, modify_time=now,
                                     status_description=why)
                             for e in evals])
            return
        allocs = store.allocs_for_job(job.job_id)
        plan, followup = compute_plan(job, allocs, store.cluster, evals[-1],
                                      now=now, rng=self._rng)
        placed, stopped, rejected = self._commit(plan, evals, job, now)
        if placed:
            server.pusher.place(placed, job)
        if stopped:
            server.pusher.stop(stopped)
            server.broker.unblock()      # stopping freed capacity elsewhere
        if rejected:
            # The cluster changed under the plan (a node went down): plan again.
            server.create_evals([job.job_id], TriggeredBy.QUEUED_ALLOCS)
        if followup is not None:
            server.schedule_followup(job.job_id, followup)
        log.debug("eval job=%s placed=%d stopped=%d rejected=%d",
                  job.job_id, len(placed), len(stopped), rejected)

    def _commit(self, plan, evals, job, now):
        summary = summarize(plan, job)
        status = EvalStatus.BLOCKED if summary["queued"] else EvalStatus.COMPLETE
        nearest = {}
        if plan.failed:
            # Which nodes came closest, for `orch job run` to name (only on
            # failure: it reads the job's allocations again).
            store = self._server.store
            nearest = failed_nodes(plan, job, store.cluster,
                                   released_by(plan, store.allocs_for_job(job.job_id)))
        updated = [replace(e, status=status, modify_time=now,
                           placed=e.placed + len(plan.place),
                           queued=summary["queued"], failures=summary["failures"],
                           groups=summary["groups"], failed_nodes=nearest,
                           status_description=describe(summary))
                   for e in evals]
        placed, stopped, rejected = self._server.store.commit_plan(plan, updated)
        if status == EvalStatus.BLOCKED:
            self._server.broker.block(updated[-1])
        return placed, stopped, rejected


def new_eval(job_id: str, trigger: TriggeredBy, now: float,
             node_id: str | None = None) -> Evaluation:
    return Evaluation(eval_id=new_id(), job_id=job_id, triggered_by=trigger,
                      node_id=node_id, create_time=now, modify_time=now)
