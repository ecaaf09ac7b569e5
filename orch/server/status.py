"""Derived statuses: a job's from its allocations, an allocation's from its tasks.

Pure functions, shared by the server (job status) and the agent (allocation
status from its task states).
"""
from __future__ import annotations

from typing import Iterable

from orch.structs import (
    TERMINAL_TASK, Allocation, AllocStatus, Job, JobStatus, TaskState,
    TaskStatus,
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
    newest = newest_by_slot(allocs)
    slots = {_slot_status(newest.get((group.name, index)))
             for group in job.task_groups for index in range(group.count)}
    if AllocStatus.RUNNING in slots:
        return JobStatus.RUNNING
    if AllocStatus.LOST in slots:
        return JobStatus.LOST
    if AllocStatus.PENDING in slots:
        return JobStatus.PENDING
    if slots <= {AllocStatus.COMPLETE}:
        return JobStatus.COMPLETE
    return JobStatus.FAILED


def alloc_status_from_tasks(task_states: dict[str, TaskState]) -> AllocStatus:
    """An allocation's client status from the states of its tasks."""
    statuses = {state.status for state in task_states.values()}
    if TaskStatus.RUNNING in statuses:
        return AllocStatus.RUNNING
    if not statuses or not statuses <= TERMINAL_TASK:
        return AllocStatus.PENDING
    if TaskStatus.FAILED in statuses:
        return AllocStatus.FAILED
    return AllocStatus.COMPLETE
