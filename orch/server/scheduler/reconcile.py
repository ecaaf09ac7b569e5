"""Reconcile: the pure diff of a job against its allocations.

For every group and slot ``0..count-1`` the *current* allocation is the
newest one the server still wants running (``desired_status == run``); the
rules of docs/DESIGN.md "Reconcile rules" decide what to place, stop and keep.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from orch.server import deploy
from orch.server.scheduler.rolling import reconcile_rolling
from orch.structs import (
    Allocation,
    AllocStatus,
    Deployment,
    DesiredStatus,
    Job,
    JobType,
    TaskGroup,
)

RESCHEDULE_BASE = 1.0  # seconds; doubles with every reschedule
RESCHEDULE_MAX = 30.0

JOB_STOPPED = "job stopped"
SCALED_DOWN = "scaled down"
GROUP_CHANGED = "group changed"
GROUP_REMOVED = "group removed"
RESCHEDULED = "rescheduled"
DUPLICATE = "duplicate"


@dataclass
class Reconciliation:
    """What to do: place (group, index, previous), stop (alloc, reason), keep."""

    place: list[tuple[TaskGroup, int, Allocation | None]] = field(default_factory=list)
    stop: list[tuple[Allocation, str]] = field(default_factory=list)
    keep: list[Allocation] = field(default_factory=list)
    followup_at: float | None = None  # earliest delayed reschedule, clock of `now`

    def defer(self, when: float) -> None:
        if self.followup_at is None or when < self.followup_at:
            self.followup_at = when


def reschedule_delay(reschedule_count: int) -> float:
    """1 s, 2 s, 4 s, ... capped at 30 s."""
    # The exponent is capped too: 2**1100 does not fit a float.
    return min(RESCHEDULE_MAX, RESCHEDULE_BASE * 2 ** min(reschedule_count, 16))


def _wanted(allocs: Iterable[Allocation]) -> list[Allocation]:
    return [a for a in allocs if a.desired_status == DesiredStatus.RUN]


def _highest_first(allocs: Iterable[Allocation]) -> list[Allocation]:
    return sorted(allocs, key=lambda a: (-a.index, -a.create_time))


def reconcile(
    job: Job,
    allocs: Iterable[Allocation],
    *,
    now: float,
    deployment: Deployment | None = None,
) -> Reconciliation:
    """Diff the job against all of its allocations (any status).

    ``deployment``: the job's latest, which paces groups with an update block."""
    result = Reconciliation()
    allocs = list(allocs)
    if job.stopped:
        result.stop = [(a, JOB_STOPPED) for a in _highest_first(_wanted(allocs))]
        return result
    by_group = by_task_group(allocs)
    for name, group_allocs in by_group.items():
        if job.group(name) is None:
            result.stop += [(a, GROUP_REMOVED) for a in _highest_first(_wanted(group_allocs))]
    for group in job.task_groups:
        _reconcile_group(job, group, by_group.get(group.name, []), now, result, deployment)
    return result


def by_task_group(allocs: list[Allocation]) -> dict[str, list[Allocation]]:
    """Allocations by the name of their task group, in the order given."""
    by_group: dict[str, list[Allocation]] = defaultdict(list)
    for alloc in allocs:
        by_group[alloc.task_group].append(alloc)
    return by_group


def _reconcile_group(
    job: Job,
    group: TaskGroup,
    allocs: list[Allocation],
    now: float,
    result: Reconciliation,
    deployment: Deployment | None,
) -> None:
    if not allocs:
        # A new group (the common case of a large submit): every slot is placed.
        result.place += [(group, index, None) for index in range(group.count)]
        return
    slots: dict[int, list[Allocation]] = defaultdict(list)
    for alloc in allocs:
        slots[alloc.index].append(alloc)
    extra = [a for a in allocs if a.index >= group.count]
    result.stop += [(a, SCALED_DOWN) for a in _highest_first(_wanted(extra))]
    spec_hash = deploy.group_hash(job, group)
    if deploy.rolling(job, group):
        slot_allocs = {i: slots.get(i, []) for i in range(group.count)}
        reconcile_rolling(
            job, group, slot_allocs, spec_hash, deployment, now, result, _reconcile_slot
        )
        return
    for index in range(group.count):
        _reconcile_slot(job, group, index, slots.get(index, []), spec_hash, now, result)


def _reconcile_slot(
    job: Job,
    group: TaskGroup,
    index: int,
    allocs: list[Allocation],
    spec_hash: str,
    now: float,
    result: Reconciliation,
) -> None:
    wanted = sorted(_wanted(allocs), key=lambda a: a.create_time)
    if not wanted:
        previous = max(allocs, key=lambda a: a.create_time, default=None)
        result.place.append((group, index, previous))
        return
    current = wanted[-1]
    # A node drain marks an allocation `migrate`: it keeps running beside its
    # replacement until the drainer (orch/server/drainer.py) stops it once the
    # replacement runs, so the group never drops by more than migrate.max_parallel.
    migrating = [a for a in wanted[:-1] if a.migrate]
    result.keep += migrating
    # Otherwise only a bug or a race leaves two wanted allocations in a slot; keep one.
    result.stop += [(a, DUPLICATE) for a in wanted[:-1] if not a.migrate]
    status = current.client_status
    if current.group_hash != spec_hash:
        result.stop.append((current, GROUP_CHANGED))
        result.place.append((group, index, None))
    elif current.migrate and status in (AllocStatus.PENDING, AllocStatus.RUNNING):
        # The replacement: placed elsewhere (the stack avoids `previous`'s node).
        result.keep.append(current)
        result.place.append((group, index, current))
    elif status in (AllocStatus.LOST, AllocStatus.STOPPED):
        # Gone without the server asking: the work is unfinished, place it again.
        result.stop.append((current, RESCHEDULED))
        result.place.append((group, index, current))
    elif status == AllocStatus.FAILED and job.type == JobType.SERVICE:
        _reschedule_failed(group, index, current, now, result)
    else:
        result.keep.append(current)


def _reschedule_failed(
    group: TaskGroup, index: int, alloc: Allocation, now: float, result: Reconciliation
) -> None:
    """Replace a failed service allocation once its back-off delay has passed."""
    failed_at = alloc.modify_time or alloc.end_time or alloc.create_time
    ready_at = failed_at + reschedule_delay(alloc.reschedule_count)
    if ready_at <= now:
        result.stop.append((alloc, RESCHEDULED))
        result.place.append((group, index, alloc))
    else:
        # Stopping it now would make the slot look empty and skip the delay.
        result.keep.append(alloc)
        result.defer(ready_at)
