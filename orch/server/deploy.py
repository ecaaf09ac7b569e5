"""Deployment rules shared by the scheduler and the watcher (pure functions).

A deployment exists while a service job with an ``update`` block replaces
copies of a changed group, as Nomad's do; batch and system jobs never get one.
"""

from __future__ import annotations

import uuid

from orch.structs import (
    Allocation,
    AllocStatus,
    Deployment,
    DeploymentStatus,
    DesiredStatus,
    Job,
    JobType,
    TaskGroup,
    UpdateStrategy,
)


def rolling(job: Job, group: TaskGroup) -> bool:
    """Does the group replace its copies under an update block?"""
    return job.type == JobType.SERVICE and (group.update or job.update) is not None


def group_hash(job: Job, group: TaskGroup) -> str:
    """The hash allocations are placed for: the spec's, and the job's rollout number."""
    base = group.spec_hash()
    return f"{base}-r{job.rollout}" if job.rollout else base


def _checks_based(group: TaskGroup, strategy: UpdateStrategy) -> bool:
    # A group without checks is judged by its tasks, as Nomad's is; so is
    # "manual" (orch has no route to set a copy's health by hand).
    has_checks = any(s.get("checks") for s in group.services)
    return strategy.health_check == "checks" and has_checks


def healthy_at(alloc: Allocation, group: TaskGroup, strategy: UpdateStrategy) -> float | None:
    """When the copy counts as healthy for a deployment (None: not on its way)."""
    if alloc.client_status != AllocStatus.RUNNING or alloc.desired_status != DesiredStatus.RUN:
        return None
    if _checks_based(group, strategy):
        since = alloc.healthy_since
    else:
        since = alloc.start_time or alloc.modify_time
    return None if since is None else since + strategy.min_healthy_time


def is_healthy(alloc: Allocation, group: TaskGroup, strategy: UpdateStrategy, now: float) -> bool:
    at = healthy_at(alloc, group, strategy)
    return at is not None and at <= now


def is_unhealthy(alloc: Allocation, group: TaskGroup, strategy: UpdateStrategy, now: float) -> str:
    """Why a new copy failed the deployment ("" if it has not)."""
    if alloc.client_status in (AllocStatus.FAILED, AllocStatus.LOST):
        return f"allocation {alloc.allocation_id[:8]} {alloc.client_status.value}"
    if healthy_at(alloc, group, strategy) is None:
        if now - alloc.create_time > strategy.healthy_deadline:
            return (
                f"allocation {alloc.allocation_id[:8]} not healthy within "
                f"healthy_deadline {strategy.healthy_deadline:g}s"
            )
    return ""


def needs_deployment(job: Job, allocs: list[Allocation]) -> list[TaskGroup]:
    """The rolling groups with running copies of an older spec."""
    out = []
    for group in job.task_groups:
        if not rolling(job, group):
            continue
        spec = group_hash(job, group)
        if any(
            a.task_group == group.name
            and a.desired_status == DesiredStatus.RUN
            and a.group_hash != spec
            for a in allocs
        ):
            out.append(group)
    return out


def new_deployment(job: Job, groups: list[TaskGroup], now: float) -> Deployment:
    """A running deployment of the job's current version for these groups."""
    state = {}
    for group in groups:
        strategy = job.update_for(group)
        state[group.name] = {
            "desired_total": group.count,
            "desired_canaries": strategy.canary,
            "placed_canaries": 0,
            "placed": 0,
            "healthy": 0,
            "unhealthy": 0,
            "promoted": strategy.canary == 0,
            "progress_deadline": now + strategy.progress_deadline,
        }
    return Deployment(
        deployment_id=str(uuid.uuid4()),
        job_id=job.job_id,
        job_version=job.version,
        status=DeploymentStatus.RUNNING,
        status_description="deployment is running",
        groups=state,
        create_time=now,
        modify_time=now,
    )
