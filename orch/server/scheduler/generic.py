"""The generic scheduler: one evaluation of one job becomes one Plan.

Reconcile decides what must change; the stack places each new allocation.
Like Nomad, once a group fails to place in an evaluation its remaining
placements are not tried again (nothing in the same evaluation frees room),
they are counted as wanted under the first failure's reasons.

Allocation ids are UUIDs laid out as UUIDv7 (milliseconds first, then a
counter, then random bits): ids of one plan sort in creation order, so the
state store appends to the end of its primary-key index instead of touching
a random page per allocation, which is most of the cost of committing a
large plan to SQLite.
"""

from __future__ import annotations

import os

from orch.server import deploy
from orch.server.scheduler.cluster import Cluster
from orch.server.scheduler.reconcile import GROUP_CHANGED, Reconciliation, reconcile
from orch.server.scheduler.rolling import MAKES_ROOM
from orch.server.scheduler.stack import Stack
from orch.structs import (
    Allocation,
    AllocStatus,
    Deployment,
    DesiredStatus,
    Evaluation,
    Job,
    Plan,
    TaskGroup,
    TaskState,
)


def compute_plan(
    job: Job,
    allocs: list[Allocation],
    cluster: Cluster,
    evaluation: Evaluation,
    *,
    now: float,
    rng,
    deployment: Deployment | None = None,
) -> tuple[Plan, float | None]:
    """Plan the evaluation; also return when to look again (delayed reschedules)."""
    diff = reconcile(job, allocs, now=now, deployment=deployment)
    plan = _placed(job, diff, cluster, evaluation, now, rng)
    if _stop_blocking_copies(job, diff, plan, deployment):
        plan = _placed(job, diff, cluster, evaluation, now, rng)
    unplaced = _changed_but_unplaced(job, diff, plan)
    if unplaced:
        # A changed group replaces its copies outside a deployment by
        # stopping each and placing the new spec: where the new spec does
        # not fit, the old copy keeps running (as Nomad backs out the stop of
        # a destructive update it could not place) and the evaluation waits
        # for room. Planned again without them, so that nothing else is
        # placed on the room their stops would have freed.
        kept = {a.allocation_id for a in unplaced.values()}
        diff.stop = [(a, why) for a, why in diff.stop if a.allocation_id not in kept]
        diff.keep += unplaced.values()
        diff.place = [(g, i, p) for g, i, p in diff.place if (g.name, i) not in unplaced]
        failures = {name: dict(f) for name, f in plan.failed.items()}
        plan = _placed(job, diff, cluster, evaluation, now, rng)
        for name, _index in unplaced:
            failed = plan.failed.setdefault(name, {**failures[name], "wanted": 0})
            failed["wanted"] += 1
    return plan, diff.followup_at


def _changed_but_unplaced(
    job: Job, diff: Reconciliation, plan: Plan
) -> dict[tuple[str, int], Allocation]:
    """(group, index) -> the running copy of each slot whose group changed
    (no rolling update, or no room beside it: stopped and replaced at once)
    in a group some of whose placements failed."""
    out = {}
    for alloc, why in diff.stop:
        if why not in (GROUP_CHANGED, MAKES_ROOM) or alloc.task_group not in plan.failed:
            continue
        group = job.group(alloc.task_group)
        if group is not None and (why == MAKES_ROOM or not deploy.rolling(job, group)):
            out[(alloc.task_group, alloc.index)] = alloc
    return out


def _stop_blocking_copies(
    job: Job, diff: Reconciliation, plan: Plan, deployment: Deployment | None
) -> bool:
    """Stop the old copies whose replacements found no room beside them.

    A rolling update keeps an old copy until its replacement is healthy;
    where the replacement does not fit beside it (a static port, a full
    node), the old copy is stopped in the same plan, as Nomad's destructive
    update does, so that its ports and resources go to the replacement.
    Canaries are never placed this way: they run beside the old copies.
    """
    if not plan.failed or deployment is None or not deployment.active:
        return False
    slots = {
        (group.name, index)
        for group, index, _ in diff.place
        if group.name in plan.failed and (deployment.groups.get(group.name) or {}).get("promoted")
    }
    blocking = []
    for alloc in diff.keep:
        group = job.group(alloc.task_group)
        if (alloc.task_group, alloc.index) in slots and group is not None:
            if alloc.group_hash != deploy.group_hash(job, group):
                blocking.append(alloc)
    if not blocking:
        return False
    diff.keep = [a for a in diff.keep if a not in blocking]
    diff.stop += [(a, MAKES_ROOM) for a in blocking]
    return True


def _placed(
    job: Job, diff: Reconciliation, cluster: Cluster, evaluation: Evaluation, now: float, rng
) -> Plan:
    """The plan of a reconciliation: its stops, and each placement on a node."""
    plan = Plan(
        eval_id=evaluation.eval_id,
        job_id=job.job_id,
        stop=[(alloc.allocation_id, reason) for alloc, reason in diff.stop],
    )
    stack = Stack(cluster, job, rng=rng, releasing=[a for a, _ in diff.stop])
    templates: dict[str, tuple] = {}  # group -> (demand, spec hash, tasks)
    ids = AllocIds(now)
    for group, index, previous in diff.place:
        failed = plan.failed.get(group.name)
        if failed is not None:
            failed["wanted"] += 1
            continue
        template = templates.get(group.name)
        if template is None:
            # New allocations are never mutated (copy on write), so those of
            # one group share their initial task states.
            template = templates[group.name] = (
                group.resources,
                deploy.group_hash(job, group),
                {task.name: TaskState() for task in group.tasks},
            )
        node_id, failures = stack.select(group, template[0], previous.node_id if previous else None)
        if node_id is None:
            plan.failed[group.name] = {"wanted": 1, "failures": failures}
            continue
        alloc = _allocation(
            ids.next(), job, group, index, previous, node_id, template, evaluation, now
        )
        if stack.ports:
            alloc.ports = stack.ports
        plan.place.append(alloc)
    return plan


def _allocation(
    allocation_id: str,
    job: Job,
    group: TaskGroup,
    index: int,
    previous: Allocation | None,
    node_id: str,
    template: tuple,
    evaluation: Evaluation,
    now: float,
) -> Allocation:
    demand, spec_hash, tasks = template
    return Allocation(
        allocation_id=allocation_id,
        job_id=job.job_id,
        task_group=group.name,
        node_id=node_id,
        index=index,
        resources=demand,
        desired_status=DesiredStatus.RUN,
        client_status=AllocStatus.PENDING,
        tasks=tasks,
        create_time=now,
        modify_time=now,
        job_version=job.version,
        group_hash=spec_hash,
        eval_id=evaluation.eval_id,
        previous_allocation=previous.allocation_id if previous else None,
        reschedule_count=previous.reschedule_count + 1 if previous else 0,
    )


class AllocIds:
    """UUIDv7-shaped ids for one plan: increasing, 62 random bits each."""

    _BATCH = 256  # ids' worth of random bytes read at a time, at most

    def __init__(self, now: float):
        self._millis = int(now * 1000)
        self._count = 0
        self._noise = ""  # hex of random bytes, 16 digits per id
        self._at = 0  # the next id's digits in _noise
        # Most plans place one allocation: reading 2 KiB for it cost more
        # than the rest of its id, so the reads grow with the plan (1, 16, 256).
        self._chunk = 1
        self._prefix = ""  # "mmmmmmmm-mmmm-7": millisecond field and version

    def next(self) -> str:
        i = self._count
        self._count = i + 1
        at = self._at
        if at == len(self._noise):
            self._noise = os.urandom(8 * self._chunk).hex()
            self._chunk = min(self._chunk * 16, self._BATCH)
            at = 0
        self._at = at + 16
        if i & 0xFFF == 0:
            # The 12-bit counter field (rand_a) orders ids within a millisecond;
            # past 4096 ids the millisecond field moves on instead.
            millis = f"{(self._millis + (i >> 12)) & (1 << 48) - 1:012x}"
            self._prefix = f"{millis[:8]}-{millis[8:]}-7"
        noise = self._noise[at : at + 16]
        return f"{self._prefix}{i & 0xFFF:03x}-{_VARIANT[noise[0]]}{noise[1:4]}-{noise[4:]}"


# First hex digit of the 4th group: variant bits 10, then 2 random bits.
_VARIANT = {f"{d:x}": f"{8 | d & 3:x}" for d in range(16)}
