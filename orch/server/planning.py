"""Explaining placement: per-node failure detail, and the dry run of a job.

``failed_nodes`` says, for each group a plan could not place, which nodes came
closest and what they lacked (the evaluation's ``failed_nodes`` field, read
by ``orch job run``). ``dry_run`` is ``POST /jobs/plan``: the scheduler's
``compute_plan`` on a job that is not stored. compute_plan only reads the
Cluster (the stack keeps its own placements in a local overlay), so a dry run
commits nothing: no job, evaluation or allocation is written.
"""
from __future__ import annotations

import random
import time
from itertools import islice

from orch.jobspec import parse_job
from orch.server.scheduler.feasible import feasible_parts
from orch.server.scheduler.generic import compute_plan
from orch.server.scheduler.reconcile import GROUP_CHANGED
from orch.structs import (
    DesiredStatus, Evaluation, Job, Resources, TriggeredBy, new_id, replace,
)

CPU_EXHAUSTED = "cpu exhausted"
MEMORY_EXHAUSTED = "memory exhausted"
# Nodes named per failed group: enough to show the nearest misses.
MAX_FAILED_NODES = 3
# Nodes looked at per failed group: the detail is an illustration, and a
# blocked evaluation is planned again whenever capacity changes, so it must
# stay cheap however large the cluster is.
MAX_SCAN = 1000


def failed_nodes(plan, job: Job, cluster, released: dict[str, Resources] | None = None,
                 limit: int = MAX_FAILED_NODES) -> dict[str, list[dict]]:
    """{group: [{"node_id", "reason", "needs", "free"}]} for the plan's failed
    groups: the feasible nodes without room that came closest to fitting.

    ``free`` is what the node had for this evaluation: capacity minus
    reservations, minus the plan's own placements there, plus what the plan
    stops there (``released``: node -> resources freed).
    """
    if not plan.failed:
        return {}
    placed: dict[str, Resources] = {}
    for alloc in plan.place:
        placed[alloc.node_id] = placed.get(alloc.node_id, Resources()) + alloc.resources
    released = released or {}
    out: dict[str, list[dict]] = {}
    for group_name in plan.failed:
        group = job.group(group_name)
        if group is None:
            continue
        needs = group.resources
        parts, _ = feasible_parts(cluster, job, group)
        ids = islice((node_id for _, part in parts for node_id in part), MAX_SCAN)
        misses = []
        for node_id in ids:
            free = (cluster.free(node_id) - placed.get(node_id, Resources())
                    + released.get(node_id, Resources()))
            reason = _lacking(needs, free)
            if reason is not None:
                misses.append((_shortfall(needs, free), node_id, reason, free))
        misses.sort(key=lambda m: (m[0], m[1]))
        out[group_name] = [{"node_id": node_id, "reason": reason,
                            "needs": needs.to_dict(), "free": free.to_dict()}
                           for _, node_id, reason, free in misses[:limit]]
    return out


def _lacking(needs: Resources, free: Resources) -> str | None:
    # CPU first, as the stack counts it.
    if free.cpu < needs.cpu:
        return CPU_EXHAUSTED
    if free.memory < needs.memory:
        return MEMORY_EXHAUSTED
    return None


def _shortfall(needs: Resources, free: Resources) -> float:
    """How far from fitting, as a share of the demand (0: it fits)."""
    cpu = max(0, needs.cpu - free.cpu) / needs.cpu if needs.cpu else 0.0
    memory = max(0, needs.memory - free.memory) / needs.memory if needs.memory else 0.0
    return cpu + memory


def released_by(plan, allocs) -> dict[str, Resources]:
    """node -> resources the plan's stops give back there."""
    stopping = {alloc_id for alloc_id, _ in plan.stop}
    out: dict[str, Resources] = {}
    for alloc in allocs:
        if alloc.allocation_id in stopping and alloc.holds_resources():
            out[alloc.node_id] = out.get(alloc.node_id, Resources()) + alloc.resources
    return out


# ---- POST /jobs/plan ---------------------------------------------------------

def dry_run(server, body) -> dict:
    """What submitting ``body`` would do now; nothing is stored."""
    store = server.store
    job = parse_job(body, max_count=server.config.max_count)
    existing = store.get_job(job.job_id)
    # As submit_job: the same spec, on a running job, is no change at all.
    changed = existing is None or existing.stopped or existing.spec() != job.spec()
    if existing is not None:
        job = replace(job, version=existing.version + int(changed))
    allocs = store.allocs_for_job(job.job_id) if existing is not None else []
    now = time.time()
    evaluation = Evaluation(eval_id=new_id(), job_id=job.job_id,
                            triggered_by=TriggeredBy.JOB_UPDATE if existing
                            else TriggeredBy.JOB_REGISTER,
                            create_time=now, modify_time=now)
    plan, _ = compute_plan(job, allocs, store.cluster, evaluation, now=now,
                           rng=random.Random())
    details = failed_nodes(plan, job, store.cluster, released_by(plan, allocs))
    failures = {name: {"wanted": f.get("wanted", 0), "failures": dict(f.get("failures", {})),
                       "nodes": details.get(name, [])}
                for name, f in plan.failed.items()}
    return {"job_id": job.job_id, "exists": existing is not None, "changed": changed,
            "version": job.version,
            "current_version": existing.version if existing is not None else None,
            "diff": plan_diff(plan, job, existing, allocs), "failures": failures}


def plan_diff(plan, job: Job, existing: Job | None, allocs) -> dict[str, dict]:
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
    diff = {name: {"place": 0, "stop": 0, "keep": 0, "replace": 0, "scale": "0"}
            for name in names}
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
        entry["scale"] = _scale(job, existing, name)
    return diff


def _scale(job: Job, existing: Job | None, name: str) -> str:
    new = job.group(name)
    old = existing.group(name) if existing is not None else None
    change = (new.count if new else 0) - (old.count if old else 0)
    return f"{change:+d}" if change else "0"
