"""The system scheduler: one allocation of each group on every eligible node.

As Nomad's scheduler_system.go, in our own shape: ``reconcile_system`` is a
pure diff of the job against its allocations, node by node, given which
nodes each group may run on; ``compute_system_plan`` finds those nodes
(feasibility as for other jobs, once per node class) and checks each
placement against the node's room. Unlike the generic scheduler nothing is
ever moved to another node: a copy on a lost node is simply gone until the
node comes back, and a node without room is a placement failure with its
reason (the evaluation blocks until capacity changes).

``sysbatch`` jobs run once on every node: a copy that completed (or failed)
stays as it is, and a node that joins later gets its own. An update replaces
copies node by node, at most ``update.max_parallel`` at a time (0: all at
once); the rest follow in later evaluations, polled while copies of the new
version are still starting, and held back while one of them has failed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from orch.server.scheduler import ports as host_ports
from orch.server.scheduler.cluster import Cluster, Room
from orch.server.scheduler.feasible import class_feasible, feasible_rooms, node_feasible
from orch.server.scheduler.generic import AllocIds, _allocation
from orch.server.scheduler.reconcile import (
    DUPLICATE,
    GROUP_CHANGED,
    GROUP_REMOVED,
    JOB_STOPPED,
    RESCHEDULED,
    by_task_group,
    reschedule_delay,
)
from orch.server.scheduler.stack import CPU_EXHAUSTED, MEMORY_EXHAUSTED
from orch.structs import (
    Allocation,
    AllocStatus,
    DesiredStatus,
    Evaluation,
    Job,
    JobType,
    Plan,
    TaskGroup,
    TaskState,
)

NOT_FEASIBLE = "node no longer feasible"
# While copies of a new version start, the update is looked at again this often.
UPDATE_POLL_S = 1.0
# System allocations have no slots: every copy is index 0, as in Nomad.
SYSTEM_INDEX = 0


@dataclass
class SystemDiff:
    """What to do: place (group, node id, previous), stop (alloc, reason), keep."""

    place: list[tuple[TaskGroup, str, Allocation | None]] = field(default_factory=list)
    stop: list[tuple[Allocation, str]] = field(default_factory=list)
    keep: list[Allocation] = field(default_factory=list)
    followup_at: float | None = None

    def defer(self, when: float) -> None:
        if self.followup_at is None or when < self.followup_at:
            self.followup_at = when


def _wanted(allocs: Iterable[Allocation]) -> list[Allocation]:
    return sorted(
        (a for a in allocs if a.desired_status == DesiredStatus.RUN),
        key=lambda a: a.create_time,
    )


def reconcile_system(
    job: Job,
    allocs: Iterable[Allocation],
    feasible: Mapping[str, Collection[str]],
    infeasible: Mapping[str, Collection[str]],
    *,
    now: float,
) -> SystemDiff:
    """Diff the job against its allocations, node by node.

    ``feasible[group]``: nodes where the group may be placed (healthy,
    eligible, passing its checks); ``infeasible[group]``: healthy nodes that
    fail its checks (their copies stop). Any other node (down, ineligible,
    draining) keeps what it runs and gets nothing new.
    """
    diff = SystemDiff()
    allocs = list(allocs)
    if job.stopped:
        diff.stop = [(a, JOB_STOPPED) for a in _wanted(allocs)]
        return diff
    by_group = by_task_group(allocs)
    for name, group_allocs in by_group.items():
        if job.group(name) is None:
            diff.stop += [(a, GROUP_REMOVED) for a in _wanted(group_allocs)]
    for group in job.task_groups:
        _reconcile_group(
            job,
            group,
            by_group.get(group.name, []),
            set(feasible.get(group.name, ())),
            set(infeasible.get(group.name, ())),
            now,
            diff,
        )
    return diff


def _reconcile_group(
    job: Job,
    group: TaskGroup,
    allocs: list[Allocation],
    feasible: set[str],
    infeasible: set[str],
    now: float,
    diff: SystemDiff,
) -> None:
    by_node: dict[str, list[Allocation]] = defaultdict(list)
    for alloc in allocs:
        by_node[alloc.node_id].append(alloc)
    spec_hash = group.spec_hash()
    outdated: list[Allocation] = []  # running old-version copies, replaced in batches
    for node_id in sorted(feasible | set(by_node)):
        here = by_node.get(node_id, [])
        wanted = _wanted(here)
        if node_id not in feasible:
            reason = NOT_FEASIBLE if node_id in infeasible else None
            diff.stop += [(a, reason) for a in wanted if reason]
            diff.keep += [a for a in wanted if not reason]
            continue
        if not wanted:
            previous = max(here, key=lambda a: a.create_time, default=None)
            diff.place.append((group, node_id, previous))
            continue
        diff.stop += [(a, DUPLICATE) for a in wanted[:-1]]
        current = wanted[-1]
        if current.group_hash != spec_hash and current.holds_resources():
            outdated.append(current)
        else:
            _reconcile_copy(job, group, current, spec_hash, now, diff)
    _rolling_update(job, group, allocs, outdated, spec_hash, now, diff)


def _reconcile_copy(
    job: Job, group: TaskGroup, current: Allocation, spec_hash: str, now: float, diff: SystemDiff
) -> None:
    """One node's current copy: keep it, or replace it on the same node."""
    status = current.client_status
    if current.group_hash != spec_hash:
        # Finished under the old version (nothing runs): the new one runs now.
        diff.stop.append((current, GROUP_CHANGED))
        diff.place.append((group, current.node_id, None))
    elif status in (AllocStatus.LOST, AllocStatus.STOPPED):
        # Gone without the server asking while its node is (again) fine.
        diff.stop.append((current, RESCHEDULED))
        diff.place.append((group, current.node_id, current))
    elif status == AllocStatus.FAILED and job.type == JobType.SYSTEM:
        failed_at = current.modify_time or current.end_time or current.create_time
        ready_at = failed_at + reschedule_delay(current.reschedule_count)
        if ready_at <= now:
            diff.stop.append((current, RESCHEDULED))
            diff.place.append((group, current.node_id, current))
        else:
            diff.keep.append(current)
            diff.defer(ready_at)
    else:
        # Running, starting, or (sysbatch) done once: a failed sysbatch copy
        # is not run again, as a failed batch allocation is not.
        diff.keep.append(current)


def _rolling_update(
    job: Job,
    group: TaskGroup,
    allocs: list[Allocation],
    outdated: list[Allocation],
    spec_hash: str,
    now: float,
    diff: SystemDiff,
) -> None:
    """Replace old-version copies, at most update.max_parallel at a time."""
    if not outdated:
        return
    new = [a for a in allocs if a.desired_status == DesiredStatus.RUN and a.group_hash == spec_hash]
    if any(a.client_status == AllocStatus.FAILED for a in new):
        # A copy of the new version failed: the update goes no further (the
        # failed copy's own reschedule brings the next evaluation).
        diff.keep += outdated
        return
    starting = sum(1 for a in new if a.client_status == AllocStatus.PENDING)
    max_parallel = job.update_for(group).max_parallel
    budget = len(outdated) if max_parallel == 0 else max(0, max_parallel - starting)
    for alloc in outdated[:budget]:
        diff.stop.append((alloc, GROUP_CHANGED))
        diff.place.append((group, alloc.node_id, None))
    diff.keep += outdated[budget:]
    if len(outdated) > budget:
        diff.defer(now + UPDATE_POLL_S)


# ---- placement --------------------------------------------------------------


def placeable_rooms(cluster: Cluster, job: Job, group: TaskGroup) -> dict[str, Room]:
    """node id -> record of every node where the group may be placed now.

    The one place eligibility is decided: ``feasible_rooms`` walks the
    cluster's class sets, which hold only the nodes that may take new
    placements (healthy, not suspect, and eligible, not draining, once node
    eligibility leaves ineligible nodes out of them), and it applies the
    job's and group's constraints and drivers, once per node class.
    """
    parts, _filtered = feasible_rooms(cluster, job, group)
    return {room.node_id: room for _, rooms in parts for room in rooms if room.healthy}


def infeasible_nodes(
    cluster: Cluster, job: Job, group: TaskGroup, node_ids: Iterable[str]
) -> list[str]:
    """Of the nodes given (those running copies), the healthy ones the group no longer fits."""
    out = []
    for node_id in node_ids:
        node = cluster.node(node_id)
        if node is None or not node.healthy:
            continue
        if class_feasible(node, job, group) or node_feasible(node, job, group):
            out.append(node_id)
    return out


def compute_system_plan(
    job: Job, allocs: list[Allocation], cluster: Cluster, evaluation: Evaluation, *, now: float, rng
) -> tuple[Plan, float | None]:
    """Plan the evaluation of a system or sysbatch job (``rng`` picks dynamic ports)."""
    feasible: dict[str, dict[str, Room]] = {}
    infeasible: dict[str, list[str]] = {}
    for group in job.task_groups:
        rooms = feasible[group.name] = placeable_rooms(cluster, job, group)
        running_elsewhere = {
            a.node_id
            for a in allocs
            if a.task_group == group.name
            and a.desired_status == DesiredStatus.RUN
            and a.node_id not in rooms
        }
        infeasible[group.name] = infeasible_nodes(cluster, job, group, running_elsewhere)
    diff = reconcile_system(job, allocs, feasible, infeasible, now=now)
    plan = Plan(
        eval_id=evaluation.eval_id,
        job_id=job.job_id,
        stop=[(alloc.allocation_id, reason) for alloc, reason in diff.stop],
    )
    _place(plan, diff, feasible, job, evaluation, now, rng)
    return plan, diff.followup_at


def _place(
    plan: Plan,
    diff: SystemDiff,
    feasible: dict[str, dict[str, Room]],
    job: Job,
    evaluation: Evaluation,
    now: float,
    rng,
) -> None:
    """Each placement on its node if the node has room, else a failure with its reason."""
    # node -> [cpu, memory] this plan takes there (negative: what its stops free).
    local: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for alloc, _ in diff.stop:
        if alloc.holds_resources():
            local[alloc.node_id][0] -= alloc.resources.cpu
            local[alloc.node_id][1] -= alloc.resources.memory
    ports = host_ports.PlanPorts(a for a, _ in diff.stop if a.holds_resources())
    ids = AllocIds(now)
    templates: dict[str, tuple] = {}
    for group, node_id, previous in diff.place:
        template = templates.get(group.name)
        if template is None:
            tasks = {task.name: TaskState() for task in group.tasks}
            template = templates[group.name] = (group.resources, group.spec_hash(), tasks)
        demand = template[0]
        room = feasible[group.name][node_id]
        mine = local[node_id]
        lacking = _lacking(room, mine, demand.cpu, demand.memory)
        if lacking is None and group.ports:
            lacking = ports.conflict(group, room)
        if lacking is not None:
            failed = plan.failed.setdefault(group.name, {"wanted": 0, "failures": Counter()})
            failed["wanted"] += 1
            failed["failures"][lacking] += 1
            continue
        mine[0] += demand.cpu
        mine[1] += demand.memory
        alloc = _allocation(
            ids.next(), job, group, SYSTEM_INDEX, previous, node_id, template, evaluation, now
        )
        if group.ports:
            alloc.ports = ports.take(group, room, rng)
        plan.place.append(alloc)
    for failed in plan.failed.values():
        failed["failures"] = dict(failed["failures"])


def _lacking(room: Room, mine: list[int], cpu: int, memory: int) -> str | None:
    if room.cpu - room.cpu_used - mine[0] < cpu:
        return CPU_EXHAUSTED
    if room.memory - room.memory_used - mine[1] < memory:
        return MEMORY_EXHAUSTED
    return None
