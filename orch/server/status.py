"""Derived status: a job's from its allocations (a pure function).

An allocation's status from its tasks is the agent's (AllocRunner.status).
"""

from __future__ import annotations

from collections.abc import Iterable

from orch.structs import Allocation, AllocStatus, Job, JobStatus


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
    newest = newest_by_slot(allocs)
    slots = {
        _slot_status(newest.get((group.name, index)))
        for group in job.task_groups
        for index in range(group.count)
    }
    if AllocStatus.RUNNING in slots:
        return JobStatus.RUNNING
    if AllocStatus.LOST in slots:
        return JobStatus.LOST
    if AllocStatus.PENDING in slots:
        return JobStatus.PENDING
    if slots <= {AllocStatus.COMPLETE}:
        return JobStatus.COMPLETE
    return JobStatus.FAILED
