"""The deployment watcher on a real StateStore with an injected clock."""

import types

import pytest

from orch.errors import Conflict, NotFound
from orch.server import deploy
from orch.server.deploywatcher import DeploymentWatcher, promote
from orch.server.state import StateStore
from orch.structs import (
    Allocation,
    AllocStatus,
    DeploymentStatus,
    Evaluation,
    Job,
    JobType,
    Node,
    Resources,
    Task,
    TaskGroup,
    UpdateStrategy,
    new_id,
)

from waiting import wait_for

CHECKS = ({"name": "web", "port": "http", "checks": [{"type": "tcp"}]},)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make_job(command, auto_revert=True, canary=0, auto_promote=False):
    strategy = UpdateStrategy(
        max_parallel=1,
        min_healthy_time=2.0,
        healthy_deadline=30.0,
        progress_deadline=60.0,
        auto_revert=auto_revert,
        canary=canary,
        auto_promote=auto_promote,
    )
    task = Task("t", "exec", {"command": command})
    group = TaskGroup("web", 2, (task,), services=CHECKS, update=strategy)
    return Job("web", (group,), type=JobType.SERVICE)


@pytest.fixture
def env(tmp_path, state_database):
    clock = Clock()
    store = StateStore(str(tmp_path), database=state_database, now=clock)
    store.upsert_node(Node("n1", resources=Resources(4000, 4000), attributes={"driver.exec": True}))
    evaluated, reverted = [], []
    watcher = DeploymentWatcher(
        store,
        evaluated.append,
        lambda job_id, version: reverted.append((job_id, version)),
        clock=clock,
    )
    env = types.SimpleNamespace(
        store=store, clock=clock, watcher=watcher, evaluated=evaluated, reverted=reverted
    )
    yield env
    env.store.close()  # a test may have reopened it


def submit(env, job):
    def make_eval(trigger):
        return Evaluation(eval_id=new_id(), job_id=job.job_id, triggered_by=trigger)

    stored, _, _ = env.store.submit_job(job, make_eval)
    return stored


def place(env, job, index, *, status=AllocStatus.RUNNING, healthy_since=None):
    group = job.task_groups[0]
    alloc = Allocation(
        allocation_id=new_id(),
        job_id=job.job_id,
        task_group="web",
        node_id="n1",
        index=index,
        client_status=status,
        group_hash=deploy.group_hash(job, group),
        create_time=env.clock(),
        healthy_since=healthy_since,
        job_version=job.version,
    )
    env.store.commit_plan(types.SimpleNamespace(job_id=job.job_id, stop=[], place=[alloc]), [])
    return alloc


def start(env, **kwargs):
    """Version 0 runs two healthy copies; version 1 is submitted with a deployment."""
    v0 = submit(env, make_job("v0", **kwargs))
    old = [place(env, v0, i, healthy_since=env.clock()) for i in range(2)]
    env.clock.t += 10
    v1 = submit(env, make_job("v1", **kwargs))
    d = deploy.new_deployment(v1, list(v1.task_groups), env.clock())
    env.store.put_deployment(d)
    return v1, old, d


def test_healthy_copies_advance_then_succeed_and_mark_the_version_stable(env):
    v1, old, d = start(env)
    place(env, v1, 0, healthy_since=env.clock())
    env.watcher.tick()
    assert env.evaluated == []  # healthy for less than min_healthy_time
    env.clock.t += 2.5
    env.watcher.tick()
    assert env.evaluated == ["web"]
    assert env.store.get_deployment(d.deployment_id).groups["web"]["healthy"] == 1
    env.store.stop_allocs([a.allocation_id for a in old], "replaced")
    place(env, v1, 1, healthy_since=env.clock())
    env.clock.t += 2.5
    env.watcher.tick()
    done = env.store.get_deployment(d.deployment_id)
    assert done.status == DeploymentStatus.SUCCESSFUL
    assert [stable for job, stable in env.store.job_versions("web")] == [True, False]
    assert env.store.last_stable_version("web", 5) == 1


def test_the_running_watcher_acts_on_a_store_change_not_on_its_tick(env):
    v1, _old, d = start(env)
    watcher = DeploymentWatcher(
        env.store, env.evaluated.append, lambda *a: None, clock=env.clock, interval=60
    )
    watcher.start()
    try:
        # Healthy past min_healthy_time already: its commit alone must wake the
        # watcher, well before the minute-long tick.
        place(env, v1, 0, healthy_since=env.clock() - 5)
        assert wait_for(lambda: env.evaluated == ["web"], 10)
        assert env.store.get_deployment(d.deployment_id).groups["web"]["healthy"] == 1
    finally:
        watcher.stop()


def test_a_lost_database_is_logged_once_not_at_every_pass(env, monkeypatch, caplog):
    """Each pass logged a traceback, ~4 a second, while PostgreSQL was away."""
    import logging

    from orch.errors import StorageError

    start(env)
    watcher = DeploymentWatcher(
        env.store, env.evaluated.append, lambda *a: None, clock=env.clock, interval=0.01
    )
    passes = []

    def lost():
        passes.append(1)
        raise StorageError("state store unavailable: connection failed")

    monkeypatch.setattr(watcher, "tick", lost)
    caplog.set_level(logging.WARNING, logger="orch.server.deploywatcher")
    watcher.start()
    try:
        assert wait_for(lambda: len(passes) >= 5, 10)
    finally:
        watcher.stop()
    said = [r for r in caplog.records if r.name == "orch.server.deploywatcher"]
    assert len(said) == 1 and "connection failed" in said[0].getMessage()
    assert said[0].exc_info is None


def test_old_copy_still_running_keeps_it_running(env):
    v1, _old, d = start(env)
    for i in range(2):
        place(env, v1, i, healthy_since=env.clock())
    env.clock.t += 3
    env.watcher.tick()
    assert env.store.get_deployment(d.deployment_id).status == DeploymentStatus.RUNNING


def test_a_failed_copy_fails_it_and_reverts_to_the_last_stable_version(env):
    v1, _old, d = start(env)
    place(env, v1, 0, status=AllocStatus.FAILED)
    env.watcher.tick()
    failed = env.store.get_deployment(d.deployment_id)
    assert failed.status == DeploymentStatus.FAILED
    assert "failed" in failed.status_description
    assert "rolling back to job version 0" in failed.status_description
    assert env.reverted == [("web", 0)]


def test_not_healthy_within_healthy_deadline_fails_without_revert(env):
    v1, _old, d = start(env, auto_revert=False)
    place(env, v1, 0)  # never healthy
    env.clock.t += 29
    env.watcher.tick()
    assert env.store.get_deployment(d.deployment_id).status == DeploymentStatus.RUNNING
    env.clock.t += 2
    env.watcher.tick()
    failed = env.store.get_deployment(d.deployment_id)
    assert failed.status == DeploymentStatus.FAILED
    assert "healthy_deadline" in failed.status_description
    assert env.reverted == []


def test_no_progress_within_progress_deadline_fails(env):
    _v1, _old, d = start(env, auto_revert=False)
    env.clock.t += 61
    env.watcher.tick()
    failed = env.store.get_deployment(d.deployment_id)
    assert failed.status == DeploymentStatus.FAILED
    assert "progress_deadline" in failed.status_description


def test_canaries_wait_for_promotion_or_auto_promote(env):
    v1, _old, d = start(env, canary=1)
    place(env, v1, 0, healthy_since=env.clock())
    env.clock.t += 3
    env.watcher.tick()
    assert env.store.get_deployment(d.deployment_id).groups["web"]["promoted"] is False
    promoted = promote(env.store, d.deployment_id, env.clock())
    assert promoted.groups["web"]["promoted"] is True


def test_canaries_that_are_not_healthy_yet_are_not_promoted(env):
    """A promote took any canary, a failing one too, and the rollout then
    replaced the old copies with the failing version (Nomad refuses it)."""
    from orch.errors import Conflict

    v1, _old, d = start(env, canary=1)
    place(env, v1, 0)  # placed, never healthy
    env.watcher.tick()
    with pytest.raises(Conflict) as refused:
        promote(env.store, d.deployment_id, env.clock())
    assert "group web has 0/1 healthy canaries" in refused.value.message
    assert env.store.get_deployment(d.deployment_id).groups["web"]["promoted"] is False


def test_auto_promote_once_canaries_are_healthy(env):
    v1, _old, d = start(env, canary=1, auto_promote=True)
    place(env, v1, 0, healthy_since=env.clock())
    env.clock.t += 3
    env.watcher.tick()
    assert env.store.get_deployment(d.deployment_id).groups["web"]["promoted"] is True
    assert env.evaluated == ["web"]


def test_a_newer_version_cancels_it(env):
    _v1, _old, d = start(env)
    submit(env, make_job("v2"))
    env.watcher.tick()
    assert env.store.get_deployment(d.deployment_id).status == DeploymentStatus.CANCELLED


def test_deployments_survive_a_restart(env, tmp_path, state_database):
    _v1, _old, d = start(env)
    env.store.close()
    again = StateStore(str(tmp_path), database=state_database)
    try:
        assert again.latest_deployment("web").deployment_id == d.deployment_id
        assert again.running_deployments()[0].groups["web"]["desired_total"] == 2
    finally:
        again.close()
    env.store = StateStore(str(tmp_path), database=state_database)  # the fixture closes it


def test_progress_deadline_zero_means_none(env):
    v0 = submit(env, make_job("v0"))
    place(env, v0, 0, healthy_since=env.clock())
    job = make_job("v1")
    group = job.task_groups[0]
    strategy = UpdateStrategy(max_parallel=1, min_healthy_time=1.0, progress_deadline=0)
    job = Job(
        "web",
        (TaskGroup("web", 2, group.tasks, services=CHECKS, update=strategy),),
        type=JobType.SERVICE,
    )
    v1 = submit(env, job)
    d = deploy.new_deployment(v1, list(v1.task_groups), env.clock())
    env.store.put_deployment(d)
    env.clock.t += 10_000
    env.watcher.tick()
    assert env.store.get_deployment(d.deployment_id).status == DeploymentStatus.RUNNING


def test_deleting_the_job_purges_its_deployments(env):
    start(env)
    env.store.delete_job("web")
    assert env.store.deployments_for_job("web") == []


def test_the_server_stamps_when_a_copy_turned_healthy():
    from orch.server.sync import merge_report

    alloc = Allocation("a1", "j", "g", "n1", 0, client_status=AllocStatus.RUNNING)
    check = {"status": "passing", "output": "HTTP 200", "time": 1.0}
    healthy = merge_report(
        alloc, {"status": "running", "health": "healthy", "checks": {"c": check}}, 5.0
    )
    assert healthy.healthy_since == 5.0
    failing = {"status": "failing", "output": "HTTP 500", "time": 2.0}
    report = {"status": "running", "health": "healthy", "checks": {"c": failing}}
    assert merge_report(healthy, report, 6.0).healthy_since == 5.0  # still healthy: kept
    unhealthy = merge_report(healthy, {**report, "health": "unhealthy"}, 7.0)
    assert unhealthy.healthy_since is None


def test_failing_by_hand_reverts_and_a_second_fail_is_refused(env):
    _v1, _old, d = start(env)
    failed = env.watcher.fail(d.deployment_id)
    assert failed.status == DeploymentStatus.FAILED
    assert failed.status_description.startswith("deployment marked failed by user")
    assert env.reverted == [("web", 0)]
    with pytest.raises(Conflict, match="not running"):
        env.watcher.fail(d.deployment_id)
    with pytest.raises(NotFound):
        env.watcher.fail("nope")


def test_a_pass_on_a_stale_read_never_undoes_a_users_fail_or_promote(env):
    """The watcher's pass reads a deployment, then writes what it computed:
    a user's fail or promote in between must survive that write."""
    v1, _old, d = start(env)
    place(env, v1, 0, healthy_since=env.clock())
    env.clock.t += 2.5
    stale = env.store.get_deployment(d.deployment_id)  # the pass's read
    promoted = promote(env.store, d.deployment_id, env.clock())
    assert promoted.groups["web"]["promoted"]
    env.watcher._watch(stale, env.clock())  # its write (one healthy copy) is refused
    stored = env.store.get_deployment(d.deployment_id)
    assert stored.groups["web"]["promoted"] and stored.groups["web"].get("healthy", 0) == 0
    assert env.evaluated == []
    env.watcher.tick()  # the next pass starts from the promoted one
    assert env.store.get_deployment(d.deployment_id).groups["web"]["healthy"] == 1
    stale = env.store.get_deployment(d.deployment_id)
    failed = env.watcher.fail(d.deployment_id)
    assert failed.status == DeploymentStatus.FAILED
    env.clock.t += 2.5
    place(env, v1, 1, healthy_since=env.clock())
    env.clock.t += 2.5
    env.watcher._watch(stale, env.clock())  # would finish it SUCCESSFUL from the stale read
    assert env.store.get_deployment(d.deployment_id).status == DeploymentStatus.FAILED
    with pytest.raises(Conflict):
        promote(env.store, d.deployment_id, env.clock())


def test_a_revert_to_the_running_spec_succeeds_without_a_promotion(env):
    """The revert's deployment has no canary to place (the copies it wants
    run): it waited for a promotion until progress_deadline failed it."""
    v1, old, _d = start(env, canary=1)
    canary = place(env, v1, 0, healthy_since=env.clock())
    env.clock.t += 5
    v2 = submit(env, make_job("v0", canary=1))  # the revert
    d = deploy.new_deployment(v2, list(v2.task_groups), env.clock())
    env.store.put_deployment(d)
    env.store.stop_allocs([canary.allocation_id], "superseded")  # as the scheduler does
    env.watcher.tick()
    assert env.store.get_deployment(d.deployment_id).status == DeploymentStatus.SUCCESSFUL


def test_a_failed_deployment_without_revert_evaluates_the_job(env):
    """The scheduler stops a failed deployment's canaries only when it looks:
    without a revert nothing made it look, and the canary kept running."""
    _v1, _old, d = start(env, canary=1, auto_revert=False)
    env.watcher.fail(d.deployment_id)
    assert env.reverted == [] and env.evaluated == ["web"]


def test_healthy_canaries_awaiting_promotion_outlive_progress_deadline(env):
    """As Nomad's: a deployment waiting for its promotion stays running until
    someone promotes or fails it (it failed, and auto-reverted, at the
    deadline); once promoted, it has progress_deadline from then on."""
    v1, _old, d = start(env, canary=1)
    place(env, v1, 0, healthy_since=env.clock())
    env.clock.t += 3
    env.watcher.tick()
    env.clock.t += 600
    env.watcher.tick()
    assert env.store.get_deployment(d.deployment_id).status == DeploymentStatus.RUNNING
    promote(env.store, d.deployment_id, env.clock())
    env.clock.t += 30
    env.watcher.tick()
    assert env.store.get_deployment(d.deployment_id).status == DeploymentStatus.RUNNING
    env.clock.t += 31
    env.watcher.tick()
    failed = env.store.get_deployment(d.deployment_id)
    assert failed.status == DeploymentStatus.FAILED
    assert "progress_deadline" in failed.status_description


def test_canaries_not_all_healthy_still_fail_at_progress_deadline(env):
    v1, _old, d = start(env, canary=2, auto_revert=False)
    place(env, v1, 0, healthy_since=env.clock())  # the second one never placed
    env.clock.t += 3
    env.watcher.tick()
    env.clock.t += 61
    env.watcher.tick()
    failed = env.store.get_deployment(d.deployment_id)
    assert failed.status == DeploymentStatus.FAILED
    assert "progress_deadline" in failed.status_description
