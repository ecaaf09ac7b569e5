"""The generic scheduler: one evaluation of one job becomes one Plan.

Reconcile decides what must change; the stack places each new allocation.
Like Nomad, once a group fails to place in an evaluation its remaining
placements are not tried again (nothing in the same evaluation frees room),
they are counted as wanted under the first failure's reasons.
"""
from __future__ import annotations

from orch.server.scheduler.cluster import Cluster
from orch.server.scheduler.reconcile import reconcile
from orch.server.scheduler.stack import Stack
from orch.structs import (
    Allocation, AllocStatus, DesiredStatus, Evaluation, Job, Plan, TaskGroup,
    TaskState, new_id,
)


def compute_plan(job: Job, allocs: list[Allocation], cluster: Cluster,
                 evaluation: Evaluation, *, now: float, rng
                 ) -> tuple[Plan, float | None]:
    """Plan the evaluation; also return when to look again (delayed reschedules)."""
    diff = reconcile(job, allocs, now=now)
    plan = Plan(eval_id=evaluation.eval_id, job_id=job.job_id,
                stop=[(alloc.allocation_id, reason) for alloc, reason in diff.stop])
    stack = Stack(cluster, job, rng=rng, releasing=[a for a, _ in diff.stop])
    templates: dict[str, tuple] = {}    # group -> (demand, spec hash)
    for group, index, previous in diff.place:
        failed = plan.failed.get(group.name)
        if failed is not None:
            failed["wanted"] += 1
            continue
        if group.name not in templates:
            templates[group.name] = (group.resources, group.spec_hash())
        demand, spec_hash = templates[group.name]
        node_id, failures = stack.select(
            group, demand, previous.node_id if previous else None)
        if node_id is None:
            plan.failed[group.name] = {"wanted": 1, "failures": failures}
            continue
        plan.place.append(_allocation(job, group, index, previous, node_id,
                                      (demand, spec_hash), evaluation, now))
    return plan, diff.followup_at


def _allocation(job: Job, group: TaskGroup, index: int,
                previous: Allocation | None, node_id: str, template: tuple,
                evaluation: Evaluation, now: float) -> Allocation:
    demand, spec_hash = template
    return Allocation(
        allocation_id=new_id(), job_id=job.job_id, task_group=group.name,
        node_id=node_id, index=index, resources=demand,
        desired_status=DesiredStatus.RUN, client_status=AllocStatus.PENDING,
        tasks={task.name: TaskState() for task in group.tasks},
        create_time=now, modify_time=now, job_version=job.version,
        group_hash=spec_hash, eval_id=evaluation.eval_id,
        previous_allocation=previous.allocation_id if previous else None,
        reschedule_count=previous.reschedule_count + 1 if previous else 0)
