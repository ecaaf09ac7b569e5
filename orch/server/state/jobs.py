"""Job writes: submit, stop, restart, purge, and children of parent jobs.

Every accepted change of a job is also recorded as a version (``versions``)
in the same transaction. Each one checks and writes under the lock, in one transaction, so that
concurrent requests on a job apply in some serial order. ``on_commit`` runs
under the lock too, once the write is durable: the broker then sees enqueues
and cancellations in the order the writes were committed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from orch.errors import AlreadyDispatched, Conflict, NotFound
from orch.server.state.plans import PlanWrites
from orch.server.state.store import MakeEval, _dump
from orch.server.state.versions import JobVersions
from orch.structs import Allocation, DesiredStatus, Evaluation, Job, Plan, TriggeredBy, replace

# A new job's plan made at its submit (``orch.server.submitplan``): (the plan,
# its evaluation decided), or None to leave it to the broker.
PlanNow = Callable[[Job, Evaluation], "tuple[Plan, Evaluation] | None"]


class JobWrites(JobVersions, PlanWrites):
    """The store's job writes, each a check and a write under the lock
    (a new job planned at its submit checks its placements as a plan does)."""

    def submit_job(
        self,
        job: Job,
        make_eval: MakeEval,
        *,
        must_exist: bool = False,
        on_commit: Callable[[Evaluation], object] | None = None,
        plan_now: PlanNow | None = None,
        on_placed: Callable[[list[Allocation], Job], object] | None = None,
    ) -> tuple[Job, Evaluation, bool]:
        """Create or update a job; returns (job, evaluation, changed).

        ``make_eval(trigger)`` makes the evaluation of a change. An update gets
        version = stored version + 1. A job submitted again unchanged (and not
        stopped) is left alone, as Nomad does: no new version, no evaluation;
        the evaluation returned is then the job's latest one. A new job that
        ``plan_now`` plans (``submitplan``) is written with its decided
        evaluation and its allocations, and ``on_placed`` is called instead
        of ``on_commit``."""
        with self._writing():
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
            planned = plan_now(job, evaluation) if plan_now and existing is None else None
            if planned is not None:
                placed = self._put_planned(job, *planned)
                if placed is not None:
                    if on_placed is not None:
                        # After the COMMIT: a write of the I/O loop's group
                        # has none yet (orch.server.state.group).
                        self.after_commit(partial(on_placed, placed, job))
                    return job, planned[1], True
            self._put_job(job, evaluation)
            if on_commit is not None:
                self.after_commit(partial(on_commit, evaluation))
            return job, evaluation, True

    def put_job(self, job: Job, evaluation: Evaluation) -> None:
        """Store a job and the evaluation it triggers, atomically."""
        with self._writing():
            self._put_job(job, evaluation)

    def _put_job(self, job: Job, evaluation: Evaluation) -> None:
        body = _dump(job)  # the job's row and its version's: one encode
        self._write(
            [
                (self._UPSERT_JOB, [(job.job_id, body)]),
                (self._UPSERT_EVAL, self._eval_rows([evaluation])),
                *self._version_statements(job, body),
            ]
        )
        self._jobs[job.job_id] = job
        self._index_evals([evaluation])

    def _put_planned(self, job: Job, plan: Plan, decided: Evaluation) -> list[Allocation] | None:
        """A new job, its decided evaluation and its placements in one
        transaction; None (nothing written) if a placement no longer fits."""
        placed, rejected = self._verify_placements(plan.place, [])
        if rejected:
            return None
        body = _dump(job)
        self._write(
            [
                (self._UPSERT_JOB, [(job.job_id, body)]),
                (self._UPSERT_EVAL, self._eval_rows([decided])),
                *self._version_statements(job, body),
                (self._UPSERT_ALLOC, self._alloc_rows(placed)),
            ],
            fenced=True,  # as a plan's commit
        )
        self._jobs[job.job_id] = job  # before the allocations: the catalog reads it
        self._index_evals([decided])
        self._index_new_allocs(placed)
        return placed

    def _latest_eval(self, job_id: str) -> Evaluation | None:
        return max(self.evals_for_job(job_id), key=lambda e: e.create_time, default=None)

    def restart_job(
        self,
        job_id: str,
        make_eval: MakeEval,
        on_commit: Callable[[Evaluation], object] | None = None,
    ) -> Evaluation:
        """Run a stopped job again; Conflict if it is not stopped."""
        with self._writing():
            job = self.require_job(job_id)
            if not job.stopped:
                raise Conflict("只能重启已停止的作业")
            evaluation = make_eval(TriggeredBy.JOB_RESTART)
            if job.periodic is not None:
                # As Nomad's job start: launches that fell due while it was
                # stopped are not owed (a server restart's missed one still
                # is). Recorded before the job runs again, which the
                # launcher reads without the lock.
                self._skip_launch(job_id, evaluation.create_time)
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
        with self._writing():
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
        with self._writing():
            self.require_job(job_id)
            allocs = self.allocs_for_job(job_id)
            evals = list(self._evals_by_job.get(job_id, ()))
            self._write(
                [
                    ("DELETE FROM jobs WHERE job_id = ?", [(job_id,)]),
                    ("DELETE FROM allocations WHERE job_id = ?", [(job_id,)]),
                    ("DELETE FROM evaluations WHERE job_id = ?", [(job_id,)]),
                    ("DELETE FROM periodic_launches WHERE job_id = ?", [(job_id,)]),
                    (self._PURGE_VERSIONS, [(job_id,)]),
                    ("DELETE FROM deployments WHERE job_id = ?", [(job_id,)]),
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
        # A copy first (one C call, atomic under the GIL): writers add and
        # remove jobs without waiting for readers.
        return [j for j in list(self._jobs.values()) if j.parent_id == job_id]

    def launch_child(
        self, child: Job, evaluation: Evaluation, launch: float | None = None, on_commit=None
    ) -> bool:
        """Store a child job of a live parent with its evaluation; False if not launched.

        With ``launch`` (a periodic launch), the parent's last launch time is
        written in the same transaction, and a launch not later than the
        stored one is refused: a due launch fires once, restarts included."""
        with self._writing():
            parent = self.require_job(child.parent_id or "")
            if parent.stopped:
                raise Conflict(f"job {parent.job_id} is stopped")
            if child.job_id in self._jobs:
                raise Conflict(f"job {child.job_id} exists already")
            if child.dispatch_token:
                for job in list(self._jobs.values()):
                    if (
                        job.parent_id == parent.job_id
                        and job.dispatch_token == child.dispatch_token
                    ):
                        raise AlreadyDispatched(job)
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
                    *self._version_statements(child),
                ],
                also=[parent.job_id],  # its view lists its children
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
        with self._writing():
            if job_id in self._jobs:
                self._skip_launch(job_id, launch)

    def _skip_launch(self, job_id: str, launch: float) -> None:
        last = self._launches.get(job_id)
        if last is not None and launch <= last[0]:
            return
        child_id = last[1] if last is not None else ""
        self._write([(self._UPSERT_LAUNCH, [(job_id, launch, child_id)])])
        self._launches[job_id] = (launch, child_id)
