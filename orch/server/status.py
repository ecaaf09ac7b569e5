"""Derived status: a job's from its allocations (a pure function).

An allocation's status from its tasks is the agent's (AllocRunner.status).
"""

from __future__ import annotations

from collections.abc import Iterable

from orch.structs import (
    SYSTEM_TYPES,
    Allocation,
    AllocStatus,
    DesiredStatus,
    EvalStatus,
    Evaluation,
    Job,
    JobStatus,
)


def newest_by_slot(allocs: Iterable[Allocation]) -> dict[tuple[str, int], Allocation]:
    """The newest allocation (by create_time) of every (group, index) slot."""
    newest: dict[tuple[str, int], Allocation] = {}
    for alloc in allocs:
        key = (alloc.task_group, alloc.index)
        seen = newest.get(key)
        if seen is None or alloc.create_time >= seen.create_time:
            newest[key] = alloc
    return newest


def _slot_status(alloc: Allocation | None) -> AllocStatus:
    # A stopped or missing slot is waiting for its replacement.
    if alloc is None or alloc.client_status == AllocStatus.STOPPED:
        return AllocStatus.PENDING
    return alloc.client_status


def job_status(job: Job, allocs: Iterable[Allocation]) -> JobStatus:
    """The job's status from the newest allocation of each of its slots."""
    if job.stopped:
        return JobStatus.DEAD
    if job.type in SYSTEM_TYPES:
        return _from_copies(system_copies(job, allocs))
    # A slot runs while any copy the server wants in it runs: a drain's or a
    # rollout's old copy keeps running until its replacement does, and a
    # replacement that failed meanwhile must not make the job read failed.
    newest: dict[tuple[str, int], Allocation] = {}
    running: set[tuple[str, int]] = set()
    for alloc in allocs:
        key = (alloc.task_group, alloc.index)
        seen = newest.get(key)
        if seen is None or alloc.create_time >= seen.create_time:
            newest[key] = alloc
        if alloc.client_status == AllocStatus.RUNNING and alloc.desired_status == DesiredStatus.RUN:
            running.add(key)
    slots = {
        AllocStatus.RUNNING if key in running else _slot_status(newest.get(key))
        for group in job.task_groups
        for key in ((group.name, index) for index in range(group.count))
    }
    return _from_copies(slots)


def system_copies(job: Job, allocs: Iterable[Allocation]) -> set[AllocStatus]:
    """The statuses of a system job's current copies, one per group and node.

    A copy the server stopped (its node lost or no longer feasible) is not
    replaced elsewhere: it leaves the job's status. With no copy at all the
    job is pending (no eligible node yet).
    """
    groups = {group.name for group in job.task_groups}
    newest: dict[tuple[str, str], Allocation] = {}
    for alloc in allocs:
        if alloc.task_group not in groups or alloc.desired_status != DesiredStatus.RUN:
            continue
        key = (alloc.task_group, alloc.node_id)
        seen = newest.get(key)
        if seen is None or alloc.create_time >= seen.create_time:
            newest[key] = alloc
    return {_slot_status(alloc) for alloc in newest.values()} or {AllocStatus.PENDING}


def _from_copies(slots: set[AllocStatus]) -> JobStatus:
    """Running if anything runs; then lost, pending, complete, failed."""
    if AllocStatus.RUNNING in slots:
        return JobStatus.RUNNING
    if AllocStatus.LOST in slots:
        return JobStatus.LOST
    if AllocStatus.PENDING in slots:
        return JobStatus.PENDING
    if slots <= {AllocStatus.COMPLETE}:
        return JobStatus.COMPLETE
    return JobStatus.FAILED


# Nomad's job summary, per group. A stopped allocation counts as complete, as
# in Nomad (its client reports a stopped allocation complete).
SUMMARY_KEYS = ("queued", "starting", "running", "complete", "failed", "lost")
_SUMMARY_KEY = {
    AllocStatus.PENDING: "starting",
    AllocStatus.RUNNING: "running",
    AllocStatus.COMPLETE: "complete",
    AllocStatus.STOPPED: "complete",
    AllocStatus.FAILED: "failed",
    AllocStatus.LOST: "lost",
}


def job_summary(
    job: Job, allocs: Iterable[Allocation], latest: Evaluation | None
) -> dict[str, dict[str, int]]:
    """Per group: allocations by client status, and placements still queued.

    ``queued`` is what the latest evaluation could not place (blocked), or,
    while it waits for a worker, the slots without a wanted allocation."""
    summary = {g.name: dict.fromkeys(SUMMARY_KEYS, 0) for g in job.task_groups}
    wanted: dict[str, int] = {}
    for alloc in allocs:
        counts = summary.setdefault(alloc.task_group, dict.fromkeys(SUMMARY_KEYS, 0))
        counts[_SUMMARY_KEY[alloc.client_status]] += 1
        if alloc.desired_status == DesiredStatus.RUN:
            wanted[alloc.task_group] = wanted.get(alloc.task_group, 0) + 1
    if job.stopped or latest is None:
        return summary
    for group in job.task_groups:
        if latest.status == EvalStatus.BLOCKED:
            queued = int((latest.groups.get(group.name) or {}).get("failed") or 0)
        elif latest.status == EvalStatus.PENDING:
            queued = max(0, group.count - wanted.get(group.name, 0))
        else:
            queued = 0
        summary[group.name]["queued"] = queued
    return summary
