"""The periodic launcher: child jobs of periodic jobs, launched when due.

Nomad's design (nomad/periodic.go) in our terms: a periodic job is never
placed itself; at each due time of its crons the server stores a child job
``<id>-periodic-<unix time>`` (the parent's spec without ``periodic``, plus
``parent_id``) with its evaluation. The launch time is written in the same
transaction as the child (StateStore.launch_child), so a restart neither loses
a launch that fell due while the server was down (the latest missed one fires,
once, as Nomad does) nor fires one twice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from orch.errors import Conflict, NotFound, ValidationError
from orch.server.planner import new_eval
from orch.server.status import job_status
from orch.structs import Job, JobStatus, TriggeredBy, replace

log = logging.getLogger(__name__)

# A child in one of these still runs: prohibit_overlap skips the launch.
UNFINISHED = frozenset({JobStatus.PENDING, JobStatus.RUNNING})


def _start(periodic: dict, at: float) -> datetime:
    return datetime.fromtimestamp(at, ZoneInfo(periodic["time_zone"]))


def croniter(cron: str, start: datetime):
    """croniter's iterator, imported at the first periodic job: croniter and
    dateutil are ~12 ms of a server's start, on `orch dev`'s critical path."""
    from croniter import croniter as iterator

    return iterator(cron, start)


def _step(cron: str, periodic: dict, at: float, forward: bool) -> float | None:
    """The cron's due time after (or before) ``at``; None when it has none: a
    date no calendar has (`0 0 30 2 *`), which croniter answers with an error
    after searching. Validation refuses such crons; one stored before that
    must not stop every launch (or fail every read of its job)."""
    from croniter import CroniterError

    try:
        it = croniter(cron, _start(periodic, at))
        return it.get_next(float) if forward else it.get_prev(float)
    except CroniterError:
        return None


def latest_due(periodic: dict, now: float) -> float | None:
    """The latest due time not after ``now`` over the job's crons."""
    best = None
    for cron in periodic["crons"]:
        # get_prev is strictly before its start: start a second later, and
        # step back once more if that lands after now (now between seconds).
        due = _step(cron, periodic, math.floor(now) + 1, forward=False)
        if due is not None and due > now:
            due = _step(cron, periodic, due, forward=False)
        if due is not None:
            best = due if best is None else max(best, due)
    return best


def next_launch(periodic: dict, now: float) -> float | None:
    """The next due time after ``now``; None when launches are disabled or never due."""
    if not periodic["enabled"]:
        return None
    times = [_step(c, periodic, now, forward=True) for c in periodic["crons"]]
    return min((t for t in times if t is not None), default=None)


class PeriodicLauncher:
    """Launches the children of periodic jobs; ``tick`` does one round."""

    def __init__(self, store, enqueue, *, now=time.time, interval: float = 1.0):
        self._store = store
        self._enqueue = enqueue  # broker.enqueue, called under the store's lock
        self._now = now
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="periodic", daemon=True)
        # job id -> (its spec and last launch, the next due time after the
        # last look): what tick skips until then (None: never due again).
        self._wake_at: dict[str, tuple[object, float | None]] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception:  # the launcher must outlive one bad round
                log.exception("periodic launcher round failed")

    def tick(self) -> list[str]:
        """Launch every child that is due now; returns their ids.

        A job is looked at again only once its next due time has come (kept
        per job and spec): an idle periodic job costs a comparison a round,
        not two cron evaluations per cron (150 idle jobs of 16 crons held
        ~45% of a core)."""
        now = self._now()
        launched = []
        wake_at: dict[str, tuple[object, float | None]] = {}
        for job in self._store.list_jobs():
            periodic = job.periodic
            if periodic is None or job.stopped or not periodic["enabled"]:
                continue
            key = (job.version, job.submit_time, self._store.last_launch(job.job_id))
            known = self._wake_at.get(job.job_id)
            if known is not None and known[0] == key and (known[1] is None or now < known[1]):
                wake_at[job.job_id] = known
                continue
            try:
                child_id = self._check(job, periodic, now)
            except Exception:  # one job's trouble must not stop the others' launches
                log.exception("periodic job %s: launch check failed", job.job_id)
                child_id = None
            if child_id is not None:
                launched.append(child_id)
            key = (job.version, job.submit_time, self._store.last_launch(job.job_id))
            wake_at[job.job_id] = (key, next_launch(periodic, now))
        self._wake_at = wake_at
        return launched

    def _check(self, job: Job, periodic: dict, now: float) -> str | None:
        last = self._store.last_launch(job.job_id)
        # An update moves the start: launches due before it are not owed.
        since = max(last[0] if last else 0.0, job.submit_time)
        due = latest_due(periodic, now)
        if due is None or due <= since:
            return None
        if periodic["prohibit_overlap"] and last and self._unfinished(last[1]):
            log.info(
                "periodic job %s: launch at %d skipped, %s still runs", job.job_id, due, last[1]
            )
            self._store.skip_launch(job.job_id, due)
            return None
        try:
            child = self.launch(job, due)
        except (Conflict, NotFound) as exc:  # stopped or purged meanwhile, id taken by force
            log.warning("periodic job %s: launch at %d failed: %s", job.job_id, due, exc.message)
            self._store.skip_launch(job.job_id, due)
            return None
        return child.job_id if child else None

    def _unfinished(self, child_id: str) -> bool:
        child = self._store.get_job(child_id)
        if child is None:
            return False
        return job_status(child, self._store.allocs_for_job(child_id)) in UNFINISHED

    def launch(self, job: Job, at: float) -> Job | None:
        """Store the child for launch time ``at``; None if that launch was made already."""
        now = self._now()
        child = replace(
            job,
            job_id=f"{job.job_id}-periodic-{int(at)}",
            periodic=None,
            parent_id=job.job_id,
            version=0,
            stopped=False,
            submit_time=now,
            status=JobStatus.PENDING,
        )
        ev = new_eval(child.job_id, TriggeredBy.JOB_REGISTER, now)
        if not self._store.launch_child(child, ev, at, on_commit=self._enqueue):
            return None
        log.info("periodic job %s: launched %s", job.job_id, child.job_id)
        return child

    def force(self, job_id: str) -> Job:
        """Launch a child now (`orch job periodic force`)."""
        job = self._store.require_job(job_id)
        if job.periodic is None:
            raise ValidationError(f"job {job_id} is not periodic")
        if job.stopped:
            raise Conflict(f"job {job_id} is stopped")
        if not job.periodic["enabled"]:
            # As Nomad's force (IsPeriodicActive): enabled false launches nothing.
            raise Conflict(f"job {job_id} is not enabled (periodic.enabled is false)")
        child = self.launch(job, self._now())
        if child is None:
            raise Conflict(f"job {job_id} was launched at this time already")
        return child
