"""Rolling replacement of a changed service group (Nomad's update block).

Unlike Nomad, which stops an old copy first under max_parallel, an old copy
is stopped only once its replacement is healthy (issue #11): a slot holds the
old and the new copy side by side meanwhile, so the group never serves with
fewer than ``count`` copies minus those not yet replaced. At most
``max_parallel`` replacements are in flight; with ``canary: N`` only N are
placed until the deployment is promoted, and old copies are kept until then.
A replacement that fits nowhere beside its old copy takes its place instead
(orch.server.scheduler.generic: MAKES_ROOM).

A replacement that never took over is stopped, as Nomad's reconciler stops
the unpromoted canaries of a failed or older deployment: the canaries of a
failed deployment, and an older spec's copy placed after the copy that still
serves its slot (a canary or in-flight copy of a superseded version, or of
the version a revert went back from). The serving copy is kept.
"""

from __future__ import annotations

from collections.abc import Callable

from orch.server import deploy
from orch.structs import (
    Allocation,
    AllocStatus,
    Deployment,
    DesiredStatus,
    Job,
    TaskGroup,
    UpdateStrategy,
)

GROUP_CHANGED = "group changed"
DUPLICATE = "duplicate"
REPLACED = "replaced by a healthy copy"
CANARY_OF_FAILED = "canary of a failed deployment"
SUPERSEDED = "replacement superseded by a newer version"
MAKES_ROOM = "stopped for its replacement: no room beside it"

# _reconcile_slot's signature (job, group, index, allocs, spec_hash, now, result)
SlotRule = Callable[..., None]


def reconcile_rolling(
    job: Job,
    group: TaskGroup,
    slots: dict[int, list[Allocation]],
    spec_hash: str,
    deployment: Deployment | None,
    now: float,
    result,
    slot_rule: SlotRule,
) -> None:
    """Reconcile slots 0..count-1 of a group under its update strategy."""
    strategy = job.update_for(group)
    state = (deployment.groups.get(group.name) if deployment else None) or {}
    active = deployment is not None and deployment.active and deployment.job_version == job.version
    promoted = bool(state.get("promoted", strategy.canary == 0))
    # This version's deployment failed before promotion: its canaries go.
    failed_canaries = (
        deployment is not None
        and deployment.job_version == job.version
        and not deployment.active
        and not promoted
    )
    waiting: list[tuple[int, Allocation]] = []
    replacing = in_flight = 0
    for index in range(group.count):
        allocs = slots.get(index, [])
        wanted = sorted(
            (a for a in allocs if a.desired_status == DesiredStatus.RUN),
            key=lambda a: a.create_time,
        )
        stale = _superseded(wanted, spec_hash, result)
        new = [a for a in wanted if a.group_hash == spec_hash]
        old = [a for a in wanted if a.group_hash != spec_hash and a not in stale]
        if old and new and failed_canaries:
            stale += new
            result.stop += [(a, CANARY_OF_FAILED) for a in new]
            new = []
        if stale:
            allocs = [a for a in allocs if a not in stale]
        if not old:
            slot_rule(job, group, index, allocs, spec_hash, now, result)
            if promoted and active and _placed_unhealthy(new, deployment, group, strategy, now):
                in_flight += 1  # replaced in place: its old copy is gone already
            continue
        keep_old = old[-1]
        result.stop += [(a, DUPLICATE) for a in old[:-1]]
        if not new:
            if keep_old.client_status in (AllocStatus.RUNNING, AllocStatus.PENDING):
                waiting.append((index, keep_old))
            else:
                # Gone or failed: nothing to keep serving, replace it now.
                result.stop.append((keep_old, GROUP_CHANGED))
                result.place.append((group, index, None))
            continue
        replacing += 1
        slot_rule(job, group, index, new, spec_hash, now, result)
        if promoted and deploy.is_healthy(new[-1], group, strategy, now):
            result.stop.append((keep_old, REPLACED))
            continue
        result.keep.append(keep_old)
        if promoted:
            in_flight += 1
        at = deploy.healthy_at(new[-1], group, strategy)
        if at is not None and at > now:
            result.defer(at)  # min_healthy_time ends: look again then
    if not active:
        budget = 0  # failed, cancelled or not yet created: no new copies
    elif promoted:
        # max_parallel 0: every copy at once (old ones still wait for theirs).
        budget = (strategy.max_parallel or group.count) - in_flight
    else:
        budget = strategy.canary - replacing
    for index, alloc in waiting:
        if budget > 0:
            result.place.append((group, index, None))
            budget -= 1
        result.keep.append(alloc)


def _placed_unhealthy(
    new: list[Allocation],
    deployment: Deployment | None,
    group: TaskGroup,
    strategy: UpdateStrategy,
    now: float,
) -> bool:
    """Is the slot's copy one this deployment placed, not healthy yet?"""
    if not new or deployment is None or new[-1].create_time < deployment.create_time:
        return False
    return not deploy.is_healthy(new[-1], group, strategy, now)


def _superseded(wanted: list[Allocation], spec_hash: str, result) -> list[Allocation]:
    """Stop the copies of an older spec placed after the copy serving the slot."""
    # A copy a drain replaces is not the one serving: its replacement is.
    serving = next(
        (
            a
            for a in wanted
            if a.client_status in (AllocStatus.RUNNING, AllocStatus.PENDING) and not a.migrate
        ),
        None,
    )
    if serving is None:
        return []
    stale = [a for a in wanted if a.create_time > serving.create_time and a.group_hash != spec_hash]
    result.stop += [(a, SUPERSEDED) for a in stale]
    return stale
