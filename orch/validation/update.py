"""The ``update`` block (job and group level, group wins), as Nomad's.

A group's block is read over the job's: the fields it leaves out come from
the job's block, then from the defaults, so the stored group block is the
complete strategy the group follows.
"""

from __future__ import annotations

import dataclasses
import operator

from orch.structs import DEFAULT_UPDATE, SYSTEM_TYPES, Job, JobType, UpdateStrategy, replace
from orch.validation.fields import duration, fail, is_int, obj

HEALTH_CHECKS = ("checks", "task_states", "manual")
FIELDS = tuple(f.name for f in dataclasses.fields(UpdateStrategy))
# Bounds that keep a typo from meaning "forever": a week, and a large fleet.
MAX_DURATION = 7 * 86400.0
MAX_COUNT = 10_000


def update_block(
    value, path: str, job_type: JobType, base: UpdateStrategy | None = None
) -> UpdateStrategy | None:
    """Validate an update block read over ``base``; None when absent."""
    if value is None:
        return None
    raw = obj(value, path)
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        fail(f"{path}.{unknown[0]}", f"unknown field (known: {', '.join(FIELDS)})")
    given = {key: raw[key] for key in FIELDS if raw.get(key) is not None}
    start = base or DEFAULT_UPDATE
    strategy = UpdateStrategy(
        max_parallel=_count(given.get("max_parallel", start.max_parallel), f"{path}.max_parallel"),
        health_check=_health_check(given.get("health_check", start.health_check), path),
        min_healthy_time=_seconds(given, "min_healthy_time", start, path),
        healthy_deadline=_seconds(given, "healthy_deadline", start, path),
        progress_deadline=_seconds(given, "progress_deadline", start, path),
        auto_revert=_flag(given.get("auto_revert", start.auto_revert), f"{path}.auto_revert"),
        canary=_count(given.get("canary", start.canary), f"{path}.canary"),
        auto_promote=_flag(given.get("auto_promote", start.auto_promote), f"{path}.auto_promote"),
    )
    _check_together(strategy, path, job_type)
    return strategy


def _count(value, path: str) -> int:
    if not is_int(value) or not 0 <= value <= MAX_COUNT:
        fail(path, f"must be an integer in 0..{MAX_COUNT}")
    return value


def _flag(value, path: str) -> bool:
    if not isinstance(value, bool):
        fail(path, "must be true or false")
    return value


def _health_check(value, path: str) -> str:
    if value not in HEALTH_CHECKS:
        fail(f"{path}.health_check", f"must be one of {', '.join(HEALTH_CHECKS)}")
    return value


def _seconds(given: dict, key: str, start: UpdateStrategy, path: str) -> float:
    if key not in given:
        return getattr(start, key)
    seconds = duration(given[key], f"{path}.{key}")
    if not 0 <= seconds <= MAX_DURATION:
        fail(f"{path}.{key}", "must be at least 0 and at most 7 days")
    return seconds


def _check_together(strategy: UpdateStrategy, path: str, job_type: JobType) -> None:
    """Rules between fields, as Nomad's UpdateStrategy.Validate."""
    if strategy.healthy_deadline <= 0:
        fail(f"{path}.healthy_deadline", "must be more than 0")
    if strategy.min_healthy_time >= strategy.healthy_deadline:
        fail(f"{path}.min_healthy_time", "must be less than healthy_deadline")
    if strategy.progress_deadline and strategy.progress_deadline < strategy.healthy_deadline:
        fail(f"{path}.progress_deadline", "must be 0 (none) or at least healthy_deadline")
    if strategy.auto_promote and not strategy.canary:
        fail(f"{path}.auto_promote", "requires canary to be more than 0")
    if strategy.canary and job_type in SYSTEM_TYPES:
        fail(f"{path}.canary", f"is not supported by {job_type.value} jobs")


def with_updates(job: Job, body: dict) -> Job:
    """The job with its update blocks (job level, then each group's over it)."""
    job_update = update_block(body.get("update"), "update", job.type)
    groups = []
    for i, group in enumerate(job.task_groups):
        raw = body["task_groups"][i]  # _groups validated these already
        path = f"task_groups[{i}].update"
        strategy = update_block(raw.get("update"), path, job.type, job_update)
        groups.append(group if strategy == group.update else replace(group, update=strategy))
    if job_update == job.update and all(map(operator.is_, groups, job.task_groups)):
        return job  # no block anywhere (most jobs): no copies to build
    return replace(job, update=job_update, task_groups=tuple(groups))
