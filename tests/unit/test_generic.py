import random
from collections import Counter

from orch.server.scheduler.cluster import Cluster
from orch.server.scheduler.generic import compute_plan
from orch.structs import (
    Allocation,
    AllocStatus,
    Constraint,
    DesiredStatus,
    Evaluation,
    Job,
    JobType,
    Resources,
    Task,
    TaskGroup,
    TaskState,
    TriggeredBy,
)

from helpers import cluster_of

EVAL = Evaluation("e1", "j", TriggeredBy.JOB_REGISTER)


def make_job(
    count,
    cpu=100,
    memory=100,
    constraints=(),
    job_constraints=(),
    type=JobType.BATCH,
    stopped=False,
):
    task = Task("t", "exec", {"command": "x"}, Resources(cpu, memory))
    group = TaskGroup("g", count, (task,), tuple(constraints))
    return Job(
        "j", (group,), type=type, constraints=tuple(job_constraints), stopped=stopped, version=3
    )


def plan_for(job, cluster, allocs=(), now=50.0, seed=1):
    return compute_plan(job, list(allocs), cluster, EVAL, now=now, rng=random.Random(seed))


def test_new_allocations_are_filled_in():
    job = make_job(2)
    plan, followup = plan_for(job, cluster_of(("n1", "eu", 1000, 1000)))
    assert followup is None and plan.stop == [] and plan.failed == {}
    assert (plan.eval_id, plan.job_id) == ("e1", "j")
    assert sorted(a.index for a in plan.place) == [0, 1]
    a = plan.place[0]
    assert a.node_id == "n1" and a.resources == Resources(100, 100)
    assert a.desired_status == DesiredStatus.RUN
    assert a.client_status == AllocStatus.PENDING
    assert (a.create_time, a.modify_time, a.job_version) == (50.0, 50.0, 3)
    assert a.group_hash == job.task_groups[0].spec_hash()
    assert a.eval_id == "e1" and a.previous_allocation is None
    assert a.tasks == {"t": TaskState()}
    assert len({p.allocation_id for p in plan.place}) == 2


def test_placements_respect_capacity_across_one_eval():
    cluster = cluster_of(("n1", "eu", 1000, 1000), ("n2", "eu", 1000, 1000))
    plan, _ = plan_for(make_job(5, cpu=400), cluster)
    per_node = Counter(a.node_id for a in plan.place)
    assert per_node == {"n1": 2, "n2": 2}
    assert plan.failed == {"g": {"wanted": 1, "failures": {"cpu exhausted": 2}}}


def test_existing_reservations_are_respected():
    cluster = cluster_of(("n1", "eu", 1000, 1000), ("n2", "eu", 1000, 1000))
    cluster.reserve(Allocation("other", "k", "g", "n1", 0, resources=Resources(0, 950)))
    plan, _ = plan_for(make_job(2, memory=500), cluster)
    assert [a.node_id for a in plan.place] == ["n2", "n2"]


def test_failure_reasons_are_counted_once_per_node():
    cluster = cluster_of(
        ("us1", "us", 1000, 1000),
        ("us2", "us", 1000, 1000),
        ("eu1", "eu", 1000, 100),
        ("eu2", "eu", 1000, 100),
        ("eu3", "eu", 1000, 100),
    )
    job = make_job(4, memory=200, job_constraints=[Constraint("region", "=", "eu")])
    plan, _ = plan_for(job, cluster)
    assert plan.place == []
    assert plan.failed == {
        "g": {"wanted": 4, "failures": {"constraint region = eu": 2, "memory exhausted": 3}}
    }


def test_job_level_constraints_apply():
    cluster = cluster_of(
        *[(f"us{i}", "us", 1000, 1000) for i in range(3)],
        *[(f"eu{i}", "eu", 1000, 1000) for i in range(3)],
    )
    job = make_job(6, job_constraints=[Constraint("region", "=", "eu")])
    plan, _ = plan_for(job, cluster)
    assert len(plan.place) == 6
    assert all(a.node_id.startswith("eu") for a in plan.place)


def test_spread_penalty_spreads_a_job_over_equal_nodes():
    for seed in range(20):
        cluster = cluster_of(*[(f"n{i}", "eu", 1000, 1000) for i in range(3)])
        plan, _ = plan_for(make_job(3), cluster, seed=seed)
        assert sorted(a.node_id for a in plan.place) == ["n0", "n1", "n2"], seed


def test_service_job_spreads_too():
    cluster = cluster_of(*[(f"n{i}", "eu", 4000, 4000) for i in range(4)])
    plan, _ = plan_for(make_job(4, type=JobType.SERVICE), cluster)
    assert len({a.node_id for a in plan.place}) == 4


def test_lost_allocation_is_replaced_elsewhere():
    cluster = cluster_of(("n1", "eu", 1000, 1000), ("n2", "eu", 1000, 1000))
    job = make_job(1)
    lost = Allocation(
        "old",
        "j",
        "g",
        "n1",
        0,
        client_status=AllocStatus.LOST,
        desired_status=DesiredStatus.STOP,
        reschedule_count=1,
        group_hash=job.task_groups[0].spec_hash(),
    )
    for seed in range(10):
        plan, _ = plan_for(job, cluster, [lost], seed=seed)
        (placed,) = plan.place
        assert placed.node_id == "n2"
        assert placed.previous_allocation == "old"
        assert placed.reschedule_count == 2


def test_previous_node_is_used_when_it_is_the_only_one():
    cluster = cluster_of(("n1", "eu", 1000, 1000))
    job = make_job(1)
    lost = Allocation(
        "old", "j", "g", "n1", 0, client_status=AllocStatus.LOST, desired_status=DesiredStatus.STOP
    )
    plan, _ = plan_for(job, cluster, [lost])
    assert [a.node_id for a in plan.place] == ["n1"]


def test_stops_in_the_plan_free_their_room():
    cluster = cluster_of(("n1", "eu", 1000, 1000))
    old = Allocation(
        "old",
        "j",
        "g",
        "n1",
        0,
        resources=Resources(800, 800),
        client_status=AllocStatus.RUNNING,
        group_hash="stale",
    )
    cluster.reserve(old)
    plan, _ = plan_for(make_job(1, cpu=800, memory=800), cluster, [old])
    assert plan.stop == [("old", "group changed")]
    assert [a.node_id for a in plan.place] == ["n1"]


def _running(alloc_id, index, node="n1", cpu=100, memory=100):
    return Allocation(
        alloc_id,
        "j",
        "g",
        node,
        index,
        resources=Resources(cpu, memory),
        client_status=AllocStatus.RUNNING,
        group_hash="stale",
    )


def test_a_changed_group_that_does_not_fit_keeps_its_running_copies():
    """Without a rolling update a changed group stops each copy and places
    the new spec: where that spec fits nowhere, the stops were kept and the
    service went down (both copies stopped, nothing placed). As Nomad backs
    out a destructive update it could not place, the copies keep running and
    the evaluation waits (blocked) for room."""
    cluster = cluster_of(("n1", "eu", 1000, 1000), ("n2", "eu", 1000, 1000))
    olds = [_running("old0", 0), _running("old1", 1, node="n2")]
    for old in olds:
        cluster.reserve(old)
    job = make_job(2, memory=1_000_000, type=JobType.SERVICE)
    plan, _ = plan_for(job, cluster, olds)
    assert plan.stop == [] and plan.place == []
    assert plan.failed["g"]["wanted"] == 2
    assert plan.failed["g"]["failures"] == {"memory exhausted": 2}


def test_a_changed_group_that_half_fits_is_not_replaced_on_the_room_of_its_kept_copies():
    """Count 2 -> 3 with a new spec that fits once (on the room a stop frees):
    all or nothing for the changed copies, and the new slot is placed only
    where there is room with the old copies still running."""
    cluster = cluster_of(("n1", "eu", 1000, 1000))
    olds = [_running("old0", 0, cpu=400), _running("old1", 1, cpu=400)]
    for old in olds:
        cluster.reserve(old)
    plan, _ = plan_for(make_job(3, cpu=500, type=JobType.SERVICE), cluster, olds)
    assert plan.stop == [] and plan.place == []
    assert plan.failed["g"]["wanted"] == 3
    # With room for all, the copies are replaced as before.
    roomy = cluster_of(("n1", "eu", 1000, 1000), ("n2", "eu", 1000, 1000))
    for old in olds:
        roomy.reserve(old)
    plan, _ = plan_for(make_job(2, cpu=500, type=JobType.SERVICE), roomy, olds)
    assert sorted(plan.stop) == [("old0", "group changed"), ("old1", "group changed")]
    assert len(plan.place) == 2 and plan.failed == {}


def test_stopped_job_only_stops():
    cluster = cluster_of(("n1", "eu", 1000, 1000))
    running = Allocation("a", "j", "g", "n1", 0, client_status=AllocStatus.RUNNING)
    plan, _ = plan_for(make_job(1, stopped=True), cluster, [running])
    assert plan.stop == [("a", "job stopped")]
    assert plan.place == [] and plan.failed == {}


def test_followup_for_delayed_reschedule():
    cluster = cluster_of(("n1", "eu", 1000, 1000))
    job = make_job(1, type=JobType.SERVICE)
    failed = Allocation(
        "a",
        "j",
        "g",
        "n1",
        0,
        client_status=AllocStatus.FAILED,
        modify_time=49.5,
        group_hash=job.task_groups[0].spec_hash(),
    )
    plan, followup = plan_for(job, cluster, [failed], now=50.0)
    assert (plan.place, plan.stop, followup) == ([], [], 50.5)


def test_no_nodes_at_all_fails_with_no_reasons():
    plan, _ = plan_for(make_job(2), Cluster())
    assert plan.failed == {"g": {"wanted": 2, "failures": {}}}
