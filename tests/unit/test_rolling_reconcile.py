"""Rolling updates in reconcile: max_parallel, healthy-before-stop, canaries."""

from orch.server import deploy
from orch.server.scheduler.reconcile import reconcile
from orch.server.scheduler.rolling import CANARY_OF_FAILED, SUPERSEDED
from orch.structs import (
    Allocation,
    Deployment,
    DeploymentStatus,
    Job,
    JobType,
    Task,
    TaskGroup,
    UpdateStrategy,
    replace,
)
from orch.structs import AllocStatus as A
from orch.structs import DesiredStatus as D

CHECKS = ({"name": "web", "port": "http", "checks": [{"type": "tcp"}]},)
OLD = TaskGroup("web", 4, (Task("t", "exec", {"command": "v1"}),), services=CHECKS)
NEW_TASK = (Task("t", "exec", {"command": "v2"}),)


def job(max_parallel=2, canary=0, min_healthy=5.0):
    strategy = UpdateStrategy(
        max_parallel=max_parallel, canary=canary, min_healthy_time=min_healthy
    )
    group = TaskGroup("web", 4, NEW_TASK, services=CHECKS, update=strategy)
    return Job("j", (group,), type=JobType.SERVICE, version=1)


def alloc(index, spec, created=1.0, status=A.RUNNING, healthy_since=None):
    return Allocation(
        f"a{index}@{created}",
        "j",
        "web",
        "n1",
        index,
        client_status=status,
        desired_status=D.RUN,
        create_time=created,
        group_hash=spec,
        healthy_since=healthy_since,
    )


def deployment(j, promoted=True, status=DeploymentStatus.RUNNING):
    groups = {"web": {"promoted": promoted}}
    return Deployment("d1", "j", j.version, status=status, groups=groups, create_time=10.0)


def olds():
    return [alloc(i, OLD.spec_hash(), healthy_since=0.0) for i in range(4)]


def placed(diff):
    return sorted(index for _, index, _ in diff.place)


def test_places_max_parallel_and_keeps_old_copies_running():
    j = job(max_parallel=2)
    diff = reconcile(j, olds(), now=20.0, deployment=deployment(j))
    assert placed(diff) == [0, 1]
    assert diff.stop == []  # nothing stops before a replacement is healthy
    assert len(diff.keep) == 4


def test_old_copy_stops_only_after_replacement_healthy_for_min_healthy_time():
    j = job(max_parallel=2, min_healthy=5.0)
    spec = deploy.group_hash(j, j.task_groups[0])
    allocs = olds() + [
        alloc(0, spec, created=11.0, healthy_since=12.0),  # healthy since 12: 17 at the earliest
        alloc(1, spec, created=11.0),  # not yet healthy
    ]
    early = reconcile(j, allocs, now=15.0, deployment=deployment(j))
    assert early.stop == [] and placed(early) == []  # two in flight: no budget
    assert early.followup_at == 17.0
    later = reconcile(j, allocs, now=18.0, deployment=deployment(j))
    assert [a.allocation_id for a, _ in later.stop] == ["a0@1.0"]
    assert placed(later) == [2]  # one slot freed in the window of max_parallel


def test_canary_places_n_and_waits_for_promotion():
    j = job(max_parallel=2, canary=1, min_healthy=0.0)
    spec = deploy.group_hash(j, j.task_groups[0])
    first = reconcile(j, olds(), now=20.0, deployment=deployment(j, promoted=False))
    assert placed(first) == [0]
    allocs = olds() + [alloc(0, spec, created=11.0, healthy_since=12.0)]
    unpromoted = reconcile(j, allocs, now=20.0, deployment=deployment(j, promoted=False))
    assert unpromoted.stop == [] and placed(unpromoted) == []  # old copy kept beside the canary
    promoted = reconcile(j, allocs, now=20.0, deployment=deployment(j, promoted=True))
    assert [a.allocation_id for a, _ in promoted.stop] == ["a0@1.0"]
    assert placed(promoted) == [1, 2]


def test_failed_deployment_places_nothing_more():
    j = job(max_parallel=2)
    failed = deployment(j, status=DeploymentStatus.FAILED)
    diff = reconcile(j, olds(), now=20.0, deployment=failed)
    assert diff.place == [] and diff.stop == []


def test_without_update_block_every_copy_is_replaced_at_once():
    group = TaskGroup("web", 4, NEW_TASK, services=CHECKS)
    j = Job("j", (group,), type=JobType.SERVICE, version=1)
    diff = reconcile(j, olds(), now=20.0)
    assert placed(diff) == [0, 1, 2, 3] and len(diff.stop) == 4


def test_rollout_number_changes_the_hash():
    j = job()
    assert deploy.group_hash(j, j.task_groups[0]) != deploy.group_hash(
        Job("j", j.task_groups, type=JobType.SERVICE, rollout=1), j.task_groups[0]
    )


def test_max_parallel_zero_places_every_copy_at_once():
    j = job(max_parallel=0)
    diff = reconcile(j, olds(), now=20.0, deployment=deployment(j))
    assert placed(diff) == [0, 1, 2, 3] and diff.stop == []


def stops(diff):
    return sorted((a.allocation_id, why) for a, why in diff.stop)


def test_a_failed_deployment_stops_its_unpromoted_canary_and_keeps_the_old_copies():
    """Nomad stops the canaries of a failed deployment: the canary stayed as a
    third copy for count 2, healthy in the catalog."""
    j = job(canary=1, min_healthy=0.0)
    spec = deploy.group_hash(j, j.task_groups[0])
    canary = alloc(0, spec, created=11.0, healthy_since=12.0)
    failed = deployment(j, promoted=False, status=DeploymentStatus.FAILED)
    diff = reconcile(j, olds() + [canary], now=20.0, deployment=failed)
    assert stops(diff) == [(canary.allocation_id, CANARY_OF_FAILED)]
    assert diff.place == [] and len(diff.keep) == 4


def test_a_superseded_canary_is_stopped_not_the_old_copy_beside_it():
    """Version 2 submitted while version 1's canary waited: the old copy of
    its slot was stopped as a duplicate and the stale canary kept."""
    v1 = job(canary=1, min_healthy=0.0)
    canary = alloc(0, deploy.group_hash(v1, v1.task_groups[0]), created=11.0, healthy_since=12.0)
    group = TaskGroup("web", 4, (Task("t", "exec", {"command": "v3"}),), services=CHECKS)
    v2 = Job("j", (replace(group, update=v1.task_groups[0].update),), type=JobType.SERVICE)
    v2 = replace(v2, version=2)
    diff = reconcile(v2, olds() + [canary], now=20.0, deployment=deployment(v2, promoted=False))
    assert stops(diff) == [(canary.allocation_id, SUPERSEDED)]
    assert placed(diff) == [0]  # version 2's own canary


def test_a_revert_to_the_running_spec_stops_the_canary_and_places_nothing():
    """After an auto_revert the stale canary was kept as the "old" copy and
    the revert's deployment waited on it until progress_deadline."""
    v1 = job(canary=1, min_healthy=0.0)
    canary = alloc(0, deploy.group_hash(v1, v1.task_groups[0]), created=11.0, healthy_since=12.0)
    group = replace(OLD, update=v1.task_groups[0].update)
    reverted = Job("j", (group,), type=JobType.SERVICE, version=2)
    d = deployment(reverted, promoted=False)
    diff = reconcile(reverted, olds() + [canary], now=20.0, deployment=d)
    assert stops(diff) == [(canary.allocation_id, SUPERSEDED)]
    assert diff.place == [] and len(diff.keep) == 4


def test_a_replacement_whose_old_copy_is_gone_counts_in_max_parallel():
    """A copy replaced in place (its old copy stopped for room) is in flight
    until healthy: the next evaluation does not start another one."""
    j = job(max_parallel=1)
    spec = deploy.group_hash(j, j.task_groups[0])
    allocs = olds()[1:] + [alloc(0, spec, created=11.0)]  # slot 0: old copy stopped
    diff = reconcile(j, allocs, now=20.0, deployment=deployment(j))
    assert placed(diff) == [] and diff.stop == []
    healthy = olds()[1:] + [alloc(0, spec, created=11.0, healthy_since=12.0)]
    assert placed(reconcile(j, healthy, now=20.0, deployment=deployment(j))) == [1]
