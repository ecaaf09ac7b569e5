"""The node drainer on a real StateStore, the real scheduler and an injected clock.

Agents are played by the test: what the scheduler places is reported
running one step later, as a heartbeat would."""

import random
import types

import pytest

from orch.server.drainer import DEADLINE, DRAINED, MIGRATED, Drainer, new_drain, progress
from orch.server.scheduler.generic import compute_plan
from orch.server.state import StateStore
from orch.structs import (
    Allocation,
    AllocStatus,
    DesiredStatus,
    Evaluation,
    Job,
    JobType,
    Node,
    Resources,
    Task,
    TaskGroup,
    TriggeredBy,
    new_id,
    replace,
)

NODES = ("n1", "n2", "n3")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Planner:
    """Records the evaluations the drainer asks for (the scheduler runs in `settle`)."""

    def __init__(self):
        self.evals: list[tuple[str, TriggeredBy, str | None]] = []
        self.unblocked = 0

    def create_evals(self, job_ids, trigger, node_id=None):
        self.evals += [(j, trigger, node_id) for j in job_ids]
        return []

    def unblock(self):
        self.unblocked += 1


class Dispatch:
    def __init__(self):
        self.stopped: list[Allocation] = []

    def stop(self, allocs):
        self.stopped += allocs


@pytest.fixture
def env(tmp_path):
    clock = Clock()
    store = StateStore(str(tmp_path), now=clock)
    for node_id in NODES:
        store.upsert_node(
            Node(
                node_id=node_id,
                resources=Resources(4000, 4000),
                attributes={"driver.exec": True},
            )
        )
    planner, dispatch = Planner(), Dispatch()
    drainer = Drainer(store, planner, dispatch, now=clock)
    yield types.SimpleNamespace(
        store=store, clock=clock, planner=planner, dispatch=dispatch, drainer=drainer
    )
    store.close()


def make_job(job_id="web", count=3, job_type=JobType.SERVICE, max_parallel=1):
    task = Task("t", "exec", {"command": "sleep 60"}, Resources(100, 64))
    group = TaskGroup("g", count, (task,), migrate_max_parallel=max_parallel)
    return Job(job_id=job_id, task_groups=(group,), type=job_type)


def put_job(env, job, on_nodes):
    """Store the job with one running allocation per entry of ``on_nodes``."""
    ev = Evaluation(eval_id=new_id(), job_id=job.job_id, triggered_by=TriggeredBy.JOB_REGISTER)
    env.store.put_job(job, ev)
    group = job.task_groups[0]
    allocs = [
        Allocation(
            allocation_id=new_id(),
            job_id=job.job_id,
            task_group=group.name,
            node_id=node_id,
            index=index,
            resources=group.resources,
            client_status=AllocStatus.RUNNING,
            group_hash=group.spec_hash(),
            create_time=env.clock(),
        )
        for index, node_id in enumerate(on_nodes)
    ]
    env.store.commit_plan(types.SimpleNamespace(job_id=job.job_id, stop=[], place=allocs), [])
    return allocs


def schedule(env):
    """Run the real scheduler for every evaluation the drainer asked for."""
    jobs = sorted({job_id for job_id, _, _ in env.planner.evals})
    env.planner.evals.clear()
    for job_id in jobs:
        job = env.store.get_job(job_id)
        ev = Evaluation(eval_id=new_id(), job_id=job_id, triggered_by=TriggeredBy.NODE_DRAIN)
        plan, _ = compute_plan(
            job,
            env.store.allocs_for_job(job_id),
            env.store.cluster,
            ev,
            now=env.clock(),
            rng=random.Random(1),
        )
        env.store.commit_plan(plan, [])


def agents_report_running(env, job_id):
    """What the agents' heartbeats would say: every pending placement runs."""
    pending = [
        replace(a, client_status=AllocStatus.RUNNING)
        for a in env.store.allocs_for_job(job_id)
        if a.client_status == AllocStatus.PENDING and a.desired_status == DesiredStatus.RUN
    ]
    env.store.update_allocs(pending)


def running(env, job_id):
    return [
        a
        for a in env.store.allocs_for_job(job_id)
        if a.client_status == AllocStatus.RUNNING and a.desired_status == DesiredStatus.RUN
    ]


def start_drain(env, node_id="n1", deadline_s=60.0, ignore_system=False):
    env.store.set_node_scheduling(
        node_id, eligible=False, drain=new_drain(deadline_s, ignore_system, env.clock())
    )


@pytest.mark.parametrize("max_parallel", [1, 2])
def test_service_moves_max_parallel_at_a_time_and_never_drops(env, max_parallel):
    put_job(env, make_job(count=5, max_parallel=max_parallel), ["n1", "n1", "n1", "n2", "n3"])
    start_drain(env)
    most_marked = 0
    for _step in range(20):
        env.drainer.tick()
        marked = [a for a in env.store.allocs_for_job("web") if a.migrate]
        live_marked = [a for a in marked if a.desired_status == DesiredStatus.RUN]
        most_marked = max(most_marked, len(live_marked))
        schedule(env)
        # Placed but not running yet: the old copies keep running meanwhile.
        assert len(running(env, "web")) >= 5
        agents_report_running(env, "web")
        env.clock.t += 1
        if env.store.get_node("n1").drain is None:
            break
    assert most_marked == max_parallel
    node = env.store.get_node("n1")
    assert node.drain is None and not node.eligible and node.drain_complete is not None
    assert env.store.live_allocs_for_node("n1") == []
    assert len(running(env, "web")) == 5
    assert {a.node_id for a in running(env, "web")} <= {"n2", "n3"}
    assert {a.description for a in env.dispatch.stopped} == {MIGRATED}
    assert len(env.dispatch.stopped) == 3


def test_old_copy_waits_for_its_replacement_to_run(env):
    (old,) = put_job(env, make_job(count=1), ["n1"])
    start_drain(env)
    env.drainer.tick()
    assert env.store.get_alloc(old.allocation_id).migrate
    assert env.planner.evals == [("web", TriggeredBy.NODE_DRAIN, "n1")]
    schedule(env)
    for _ in range(3):  # the replacement is pending: nothing stops
        env.drainer.tick()
        env.clock.t += 1
    assert env.store.get_alloc(old.allocation_id).desired_status == DesiredStatus.RUN
    assert env.dispatch.stopped == []
    agents_report_running(env, "web")
    env.drainer.tick()
    assert env.store.get_alloc(old.allocation_id).desired_status == DesiredStatus.STOP
    assert env.store.get_node("n1").drain is None


def test_a_heartbeat_read_before_the_mark_does_not_erase_it(env):
    (old,) = put_job(env, make_job(count=1), ["n1"])
    stale = env.store.get_alloc(old.allocation_id)
    start_drain(env)
    env.drainer.tick()
    env.store.update_allocs([replace(stale, modify_time=5.0)])
    assert env.store.get_alloc(old.allocation_id).migrate


def test_batch_finishes_until_the_deadline_then_is_placed_again(env):
    (work,) = put_job(env, make_job("nightly", count=1, job_type=JobType.BATCH), ["n1"])
    start_drain(env, deadline_s=60)
    env.drainer.tick()
    env.clock.t += 59
    env.drainer.tick()
    assert env.store.get_alloc(work.allocation_id).desired_status == DesiredStatus.RUN
    assert env.store.get_node("n1").drain is not None
    env.clock.t += 2
    env.drainer.tick()
    stopped = env.store.get_alloc(work.allocation_id)
    assert stopped.desired_status == DesiredStatus.STOP and stopped.description == DEADLINE
    assert env.planner.evals == [("nightly", TriggeredBy.NODE_DRAIN, "n1")]
    schedule(env)
    (again,) = [a for a in env.store.allocs_for_job("nightly") if a.holds_resources()]
    assert again.node_id in ("n2", "n3") and again.index == 0
    assert env.store.get_node("n1").drain is None


def test_a_batch_allocation_that_finishes_ends_the_drain(env):
    (work,) = put_job(env, make_job("nightly", count=1, job_type=JobType.BATCH), ["n1"])
    start_drain(env)
    env.drainer.tick()
    env.store.update_allocs([replace(work, client_status=AllocStatus.COMPLETE)])
    env.drainer.tick()
    assert env.store.get_node("n1").drain is None
    assert env.dispatch.stopped == [] and env.planner.evals == []


def system_job(env):
    # The "system" type is another change of issue #12: by value here.
    job = make_job("agent", count=1)
    job = replace(job, type=types.SimpleNamespace(value="system"))
    env.store._jobs["agent"] = job  # the codec cannot store a type it does not know yet
    group = job.task_groups[0]
    alloc = Allocation(
        allocation_id=new_id(),
        job_id="agent",
        task_group="g",
        node_id="n1",
        index=0,
        resources=group.resources,
        client_status=AllocStatus.RUNNING,
        group_hash=group.spec_hash(),
    )
    env.store.commit_plan(types.SimpleNamespace(job_id="agent", stop=[], place=[alloc]), [])
    return alloc


@pytest.mark.parametrize("ignore_system", [False, True])
def test_system_allocations_stop_last(env, ignore_system):
    put_job(env, make_job(count=1), ["n1"])
    agent = system_job(env)
    start_drain(env, ignore_system=ignore_system)
    env.drainer.tick()
    assert env.store.get_alloc(agent.allocation_id).desired_status == DesiredStatus.RUN
    schedule(env)
    agents_report_running(env, "web")
    env.drainer.tick()  # the service copy moved: now the system one goes
    state = env.store.get_alloc(agent.allocation_id).desired_status
    assert state == (DesiredStatus.RUN if ignore_system else DesiredStatus.STOP)
    if not ignore_system:
        assert env.dispatch.stopped[-1].description == DRAINED
    assert env.store.get_node("n1").drain is None


def test_a_drain_that_ignores_system_jobs_does_not_count_them_as_left(env):
    """remaining_allocations counted the system copy the drain leaves alone."""
    put_job(env, make_job(count=1), ["n1"])
    system_job(env)
    for ignore_system, left in ((True, 1), (False, 2)):
        start_drain(env, ignore_system=ignore_system)
        node = env.store.get_node("n1")
        allocs = env.store.live_allocs_for_node("n1")
        assert progress(node, allocs, env.store.get_job)["remaining_allocations"] == left


def test_an_ineligible_node_gets_no_placements(env):
    env.store.set_node_scheduling("n1", eligible=False, drain=None)
    put_job(env, make_job(count=0), [])
    env.store._jobs["web"] = make_job(count=6)
    env.planner.evals.append(("web", TriggeredBy.JOB_UPDATE, None))
    schedule(env)
    assert {a.node_id for a in env.store.allocs_for_job("web")} == {"n2", "n3"}
    env.store.set_node_scheduling("n1", eligible=True, drain=None)
    env.store._jobs["web"] = make_job(count=12)
    env.planner.evals.append(("web", TriggeredBy.JOB_UPDATE, None))
    schedule(env)
    assert "n1" in {a.node_id for a in env.store.allocs_for_job("web")}


def test_the_drain_and_eligibility_survive_a_restart(env, tmp_path):
    put_job(env, make_job(count=1), ["n1"])
    start_drain(env, deadline_s=30)
    env.store.close()
    store = StateStore(str(tmp_path), now=env.clock)
    node = store.get_node("n1")
    assert not node.eligible and node.drain["deadline"] == env.clock() + 30
    assert "n1" not in {r.node_id for rooms in store.cluster.members().values() for r in rooms}
    env.clock.t += 31
    Drainer(store, env.planner, env.dispatch, now=env.clock).tick()
    assert store.live_allocs_for_node("n1") == [] and store.get_node("n1").drain is None
    env.store = store


def test_a_drain_canceled_under_a_tick_is_not_ended_by_it(env):
    start_drain(env)
    stale = env.store.get_node("n1")
    env.store.set_node_scheduling("n1", eligible=True, drain=None)  # canceled meanwhile
    env.drainer.drain_node(stale)
    node = env.store.get_node("n1")
    assert node.eligible and node.drain is None and node.drain_complete is None
