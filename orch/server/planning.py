"""POST /jobs/plan: the dry run of a job.

``dry_run`` is the scheduler's ``compute_plan`` on a job that is not stored.
compute_plan only reads the Cluster (the stack keeps its own placements in a
local overlay), so a dry run commits nothing: no job, evaluation or
allocation is written. It reads through ``SchedulerState`` only.
"""

from __future__ import annotations

import random
import time

from orch.jobspec import parse_job
from orch.server.planner import SchedulerState
from orch.server.scheduler import scheduler_for
from orch.server.scheduler.explain import failed_nodes, released_by
from orch.server.scheduler.reconcile import GROUP_CHANGED
from orch.structs import (
    Allocation,
    DesiredStatus,
    Evaluation,
    Job,
    Plan,
    TriggeredBy,
    new_id,
    replace,
)


def dry_run(state: SchedulerState, body, *, max_count: int) -> dict:
    """What submitting ``body`` would do now; nothing is stored."""
    job = parse_job(body, max_count=max_count)
    existing = state.get_job(job.job_id)
    # As submit_job: the same spec, on a running job, is no change at all.
    changed = existing is None or existing.stopped or existing.spec() != job.spec()
    if existing is not None:
        job = replace(job, version=existing.version + int(changed))
    allocs = state.allocs_for_job(job.job_id) if existing is not None else []
    now = time.time()
    evaluation = Evaluation(
        eval_id=new_id(),
        job_id=job.job_id,
        triggered_by=TriggeredBy.JOB_UPDATE if existing else TriggeredBy.JOB_REGISTER,
        create_time=now,
        modify_time=now,
    )
    compute_plan = scheduler_for(job)
    plan, _ = compute_plan(job, allocs, state.cluster, evaluation, now=now, rng=random.Random())
    details = failed_nodes(plan, job, state.cluster, released_by(plan, allocs))
    failures = {
        name: {
            "wanted": f.get("wanted", 0),
            "failures": dict(f.get("failures", {})),
            "nodes": details.get(name, []),
        }
        for name, f in plan.failed.items()
    }
    return {
        "job_id": job.job_id,
        "exists": existing is not None,
        "changed": changed,
        "version": job.version,
        "current_version": existing.version if existing is not None else None,
        "diff": plan_diff(plan, job, existing, allocs),
        "failures": failures,
    }


def plan_diff(
    plan: Plan, job: Job, existing: Job | None, allocs: list[Allocation]
) -> dict[str, dict]:
    """Per group: place, stop, keep, replace (destructive) and scale.

    As Nomad counts them: a destructive replacement is one ``replace``, not a
    stop plus a place; ``keep`` is what runs on untouched.
    """
    group_of = {a.allocation_id: a.task_group for a in allocs}
    wanted: dict[str, int] = {}
    for alloc in allocs:
        if alloc.desired_status == DesiredStatus.RUN:
            wanted[alloc.task_group] = wanted.get(alloc.task_group, 0) + 1
    names = [g.name for g in job.task_groups]
    names += [n for n in wanted if job.group(n) is None]
    diff = {name: {"place": 0, "stop": 0, "keep": 0, "replace": 0} for name in names}
    for alloc_id, reason in plan.stop:
        entry = diff.get(group_of.get(alloc_id, ""))
        if entry is not None:
            entry["replace" if reason == GROUP_CHANGED else "stop"] += 1
    for alloc in plan.place:
        diff[alloc.task_group]["place"] += 1
    for name, entry in diff.items():
        stopping = entry["stop"] + entry["replace"]
        entry["keep"] = max(0, wanted.get(name, 0) - stopping)
        # Replacements are placed too; count each once, as a replace.
        entry["place"] = max(0, entry["place"] - entry["replace"])
    return {name: {**entry, "scale": _scale(job, existing, name)} for name, entry in diff.items()}


def _scale(job: Job, existing: Job | None, name: str) -> str:
    new = job.group(name)
    old = existing.group(name) if existing is not None else None
    change = (new.count if new else 0) - (old.count if old else 0)
    return f"{change:+d}" if change else "0"
