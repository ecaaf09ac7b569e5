"""The deployment watcher: moves running deployments on, or fails them.

Each pass reads every running deployment and the allocations of its job
from the store (the state lives there, never here). A pass runs as soon as
the store's change feed moves (a heartbeat reporting a copy healthy, a plan
committed), and at least every ``TICK`` for the clock's own events
(``min_healthy_time`` ending, deadlines). Each new copy turning healthy
makes an evaluation at once, so the scheduler stops the old copy it replaces
and places the next one: replacements are pipelined, ``max_parallel`` in
flight, not batched (as Nomad's watcher creates an evaluation whenever an
allocation's health changes). A new
copy failing, or no progress within ``progress_deadline``, fails the
deployment, and with ``auto_revert`` the last stable version is submitted
again. All groups healthy with no old copy left: successful, and the job's
version is marked stable (after Nomad's nomad/deploymentwatcher).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from orch.errors import Conflict, StorageError
from orch.server import deploy
from orch.structs import (
    Allocation,
    Deployment,
    DeploymentStatus,
    DesiredStatus,
    Job,
    TaskGroup,
    replace,
)

log = logging.getLogger(__name__)

# A user's promote or fail read the deployment while the watcher wrote it:
# read again, this many times at most.
CHANGE_RETRIES = 5
TICK = 0.25  # seconds between passes without a change: well under a heartbeat
# A burst of commits (a heartbeat's allocations, then the plan they cause)
# gives one pass, not one per commit; it also bounds the store reads a busy
# cluster's change feed can cause.
SPACING = 0.01


class DeploymentWatcher:
    """Advances deployments; ``evaluate(job_id)`` and ``revert(job_id, version)`` act."""

    def __init__(
        self,
        store,
        evaluate: Callable[[str], object],
        revert: Callable[[str, int], object],
        *,
        clock: Callable[[], float] = time.time,
        interval: float = TICK,
    ):
        self._store = store
        self._evaluate = evaluate
        self._revert = revert
        self._clock = clock
        self._interval = interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="deploy-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._store.deployment_written.set()  # an idle watcher waits on it
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        feed = self._store.changes
        started = self._store.deployment_written
        seen = feed.index
        running = True  # the first pass looks
        lost = False  # the last pass found the database away
        while not self._stopped.is_set():
            if running:
                seen = feed.wait(seen, self._interval)
            else:
                # No deployment runs: no write matters here until one starts,
                # and its write sets ``started``. Waiting on the feed instead
                # woke this thread at every commit (a batch job's submit, its
                # reports) for a pass and a store read that found nothing.
                started.wait(self._interval)
                seen = feed.index
            if self._stopped.is_set() or feed.closed:
                return
            started.clear()  # before the pass: a deployment started during it wakes the next
            self._store.settle()  # the woken write is in memory too
            try:
                running = self.tick()
                lost = False
            except StorageError as exc:
                # The database is away: said once, not with a traceback at
                # every pass (4 a second) until the leader steps down.
                if not lost:
                    log.warning("deployment watcher: %s; passes resume when it is back", exc)
                running = lost = True
            except Exception:  # a bad pass must not end the watcher
                running = True
                log.exception("deployment watcher pass failed")
            self._stopped.wait(SPACING)

    def tick(self) -> bool:
        """One pass over every running deployment; whether any ran."""
        deployments = self._store.running_deployments()
        for deployment in deployments:
            self._watch(deployment, self._clock())
        return bool(deployments)

    # ---- one deployment ----------------------------------------------------

    def _watch(self, d: Deployment, now: float) -> None:
        job = self._store.get_job(d.job_id)
        if job is None or job.stopped or job.version != d.job_version:
            why = "job stopped" if job is None or job.stopped else "superseded by a newer version"
            self._finish(d, DeploymentStatus.CANCELLED, why, now, read=d)
            return
        allocs = self._store.allocs_for_job(d.job_id)
        groups: dict[str, dict] = {}
        why = ""
        done, moved = True, False
        for name, state in d.groups.items():
            group = job.group(name)
            if group is None:
                continue
            state, reason, finished = _group_progress(job, group, state, allocs, d, now)
            moved = moved or state["healthy"] > d.groups[name].get("healthy", 0)
            moved = moved or (state["promoted"] and not d.groups[name].get("promoted"))
            done = done and finished
            why = why or reason
            groups[name] = state
        # Each write is conditional on the deployment as this pass read it: a
        # user's promote or fail in between wins, and the next pass starts
        # from it.
        if why:
            self._fail(replace(d, groups=groups), job, why, now, read=d)
        elif done:
            self._finish(replace(d, groups=groups), DeploymentStatus.SUCCESSFUL, "", now, read=d)
        elif groups != d.groups:
            written = self._store.put_deployment(
                replace(d, groups=groups, modify_time=now), expect=d
            )
            if written and moved:
                self._evaluate(d.job_id)

    def fail(self, deployment_id: str) -> Deployment:
        """`orch deployment fail`: fail a running deployment (and auto-revert)."""
        for _ in range(CHANGE_RETRIES):
            d = self._store.get_deployment(deployment_id)
            if not d.active:
                raise Conflict(f"deployment {deployment_id} is {d.status.value}, not running")
            job = self._store.require_job(d.job_id)
            if self._fail(d, job, "deployment marked failed by user", self._clock(), read=d):
                return self._store.get_deployment(deployment_id)
        raise Conflict(f"deployment {deployment_id} is changing; try again")

    def _finish(
        self, d: Deployment, status: DeploymentStatus, why: str, now: float, read: Deployment
    ) -> bool:
        """Write the deployment's end if it is still as ``read``; False if not."""
        text = why or "deployment completed successfully"
        stable = status == DeploymentStatus.SUCCESSFUL
        if not self._store.put_deployment(
            replace(d, status=status, status_description=text, modify_time=now),
            stable_version=stable,
            expect=read,
        ):
            return False
        log.info("deployment %s job=%s %s: %s", d.deployment_id[:8], d.job_id, status.value, text)
        return True

    def _fail(self, d: Deployment, job: Job, why: str, now: float, read: Deployment) -> bool:
        revert = any(job.update_for(g).auto_revert for g in job.task_groups if g.name in d.groups)
        target = self._store.last_stable_version(job.job_id, job.version) if revert else None
        if revert:
            why += (
                f"; rolling back to job version {target}"
                if target is not None
                else "; no stable version to roll back to"
            )
        if not self._finish(d, DeploymentStatus.FAILED, why, now, read):
            return False
        if target is not None:
            try:
                self._revert(job.job_id, target)
                return True  # the revert's submit evaluates the job
            except Conflict as exc:
                log.warning("auto-revert of %s failed: %s", job.job_id, exc)
        # As Nomad's: the scheduler looks again and stops the unpromoted canaries.
        self._evaluate(job.job_id)
        return True


def _group_progress(
    job: Job, group: TaskGroup, state: dict, allocs: list[Allocation], d: Deployment, now: float
) -> tuple[dict, str, bool]:
    """The group's new state, why it failed ("" if not), whether it is done."""
    strategy = job.update_for(group)
    spec = deploy.group_hash(job, group)
    mine = [a for a in allocs if a.task_group == group.name]
    new = [a for a in mine if a.group_hash == spec]
    wanted_new = [a for a in new if a.desired_status == DesiredStatus.RUN]
    placed = [a for a in new if a.create_time >= d.create_time]
    healthy = sum(1 for a in wanted_new if deploy.is_healthy(a, group, strategy, now))
    reasons = [deploy.is_unhealthy(a, group, strategy, now) for a in placed]
    reasons = [r for r in reasons if r]
    state = dict(state)
    if healthy > state.get("healthy", 0):
        state["progress_deadline"] = now + strategy.progress_deadline
    promoted = bool(state.get("promoted"))
    if not promoted:
        state["placed_canaries"] = len([a for a in placed if a.desired_status == DesiredStatus.RUN])
        if strategy.auto_promote and healthy >= strategy.canary:
            promoted = True
    old_left = any(a.desired_status == DesiredStatus.RUN and a.group_hash != spec for a in mine)
    state.update(placed=len(placed), healthy=healthy, unhealthy=len(reasons), promoted=promoted)
    # Promotion lets canaries replace old copies: with none left (a revert to
    # the spec that runs, old copies all gone) there is nothing to wait for.
    finished = healthy >= group.count and not old_left
    why = f"group {group.name}: {reasons[0]}" if reasons else ""
    # progress_deadline 0: no deadline (the update block's rule, as Nomad's).
    deadline = float(state.get("progress_deadline") or 0) if strategy.progress_deadline else 0
    # Healthy canaries waiting for a promotion are not late: as Nomad's, the
    # deployment runs until someone promotes or fails it.
    awaiting = not promoted and healthy >= int(state.get("desired_canaries", strategy.canary))
    if not why and not finished and not awaiting and deadline and now > deadline:
        limit = strategy.progress_deadline
        why = f"group {group.name}: no progress within progress_deadline {limit:g}s"
    return state, why, finished


def promote(store, deployment_id: str, now: float) -> Deployment:
    """Promote a running deployment's canaries; Conflict if it is not running."""
    for _ in range(CHANGE_RETRIES):
        d = store.get_deployment(deployment_id)
        if not d.active:
            raise Conflict(f"deployment {deployment_id} is {d.status.value}, not running")
        # As Nomad's: canaries are promoted once they are healthy, all of them.
        short = [
            f"group {name} has {healthy}/{wanted} healthy canaries"
            for name, state in d.groups.items()
            if not state.get("promoted")
            and (healthy := int(state.get("healthy") or 0))
            < (wanted := int(state.get("desired_canaries") or 0))
        ]
        if short:
            raise Conflict(f"deployment {deployment_id} cannot be promoted: {'; '.join(short)}")
        job = store.get_job(d.job_id)
        groups = {
            name: state if state.get("promoted") else _promoted(state, job, name, now)
            for name, state in d.groups.items()
        }
        promoted = replace(
            d, groups=groups, modify_time=now, status_description="deployment promoted"
        )
        if store.put_deployment(promoted, expect=d):
            return promoted
    raise Conflict(f"deployment {deployment_id} is changing; try again")


def _promoted(state: dict, job: Job | None, name: str, now: float) -> dict:
    """A group's state once promoted: progress_deadline counts from now (as
    Nomad's promotion resets it), however long the promotion took."""
    state = {**state, "promoted": True}
    group = job.group(name) if job is not None else None
    if job is not None and group is not None and state.get("progress_deadline"):
        state["progress_deadline"] = now + job.update_for(group).progress_deadline
    return state
