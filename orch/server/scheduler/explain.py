"""Explaining a plan: what it placed, what it could not, and why.

``summarize``/``describe`` give an evaluation's counters and one-line
description; ``failed_nodes`` says, for each group a plan could not place,
which nodes came closest and what they lacked (the evaluation's
``failed_nodes`` field, read by ``orch job run``). Pure functions of a plan,
its job and the capacity index, next to the scheduler that made the plan.
"""

from __future__ import annotations

from itertools import islice

from orch.server.scheduler.feasible import feasible_parts
from orch.server.scheduler.stack import CPU_EXHAUSTED, MEMORY_EXHAUSTED
from orch.structs import SYSTEM_TYPES, Job, Resources

# Nodes named per failed group: enough to show the nearest misses.
MAX_FAILED_NODES = 3
# Nodes looked at per failed group: the detail is an illustration, and a
# blocked evaluation is planned again whenever capacity changes, so it must
# stay cheap however large the cluster is.
MAX_SCAN = 1000


def summarize(plan, job) -> dict:
    """Evaluation fields after a plan: placed, queued, failures, groups."""
    failures: dict[str, int] = {}
    groups: dict[str, dict] = {}
    placed_by_group: dict[str, int] = {}
    for alloc in plan.place:
        placed_by_group[alloc.task_group] = placed_by_group.get(alloc.task_group, 0) + 1
    for tg in job.task_groups:
        failed = plan.failed.get(tg.name, {})
        groups[tg.name] = {
            # A system group wants a copy per node: what this plan tried to place.
            "wanted": tg.count
            if job.type not in SYSTEM_TYPES
            else placed_by_group.get(tg.name, 0) + failed.get("wanted", 0),
            "placed": placed_by_group.get(tg.name, 0),
            "failed": failed.get("wanted", 0),
        }
        for reason, count in failed.get("failures", {}).items():
            failures[reason] = failures.get(reason, 0) + count
    queued = sum(f.get("wanted", 0) for f in plan.failed.values())
    return {"failures": failures, "groups": groups, "queued": queued}


def describe(summary: dict) -> str:
    """The evaluation's status_description for a ``summarize`` result."""
    if not summary["queued"]:
        return "all allocations placed"
    reasons = "; ".join(
        f"{reason} on {n} node{'s' if n != 1 else ''}" for reason, n in summary["failures"].items()
    )
    return f"{summary['queued']} allocation(s) not placed: {reasons or 'no nodes'}"


def failed_nodes(
    plan,
    job: Job,
    cluster,
    released: dict[str, Resources] | None = None,
    limit: int = MAX_FAILED_NODES,
) -> dict[str, list[dict]]:
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
            free = (
                cluster.free(node_id)
                - placed.get(node_id, Resources())
                + released.get(node_id, Resources())
            )
            reason = _lacking(needs, free)
            if reason is not None:
                misses.append((_shortfall(needs, free), node_id, reason, free))
        misses.sort(key=lambda m: (m[0], m[1]))
        out[group_name] = [
            {"node_id": node_id, "reason": reason, "needs": needs.to_dict(), "free": free.to_dict()}
            for _, node_id, reason, free in misses[:limit]
        ]
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
