"""The system scheduler: reconcile node by node, place on each node's own room."""

from __future__ import annotations

import random

import pytest

from orch.server.scheduler import scheduler_for
from orch.server.scheduler.explain import summarize
from orch.server.scheduler.generic import compute_plan
from orch.server.scheduler.reconcile import GROUP_CHANGED, RESCHEDULED
from orch.server.scheduler.system import (
    NOT_FEASIBLE,
    UPDATE_POLL_S,
    compute_system_plan,
    reconcile_system,
)
from orch.server.status import job_status
from orch.structs import (
    Allocation,
    AllocStatus,
    Constraint,
    DesiredStatus,
    Evaluation,
    Job,
    JobStatus,
    JobType,
    Resources,
    Task,
    TaskGroup,
    TriggeredBy,
    UpdateStrategy,
    replace,
)

from helpers import cluster_of

EVAL = Evaluation("e1", "sys", TriggeredBy.JOB_REGISTER)
NOW = 1000.0


def make_job(
    type=JobType.SYSTEM, command="x", cpu=100, memory=100, constraints=(), max_parallel=1
) -> Job:
    task = Task("t", "exec", {"command": command}, Resources(cpu, memory))
    group = TaskGroup("g", 1, (task,), tuple(constraints))
    return Job("sys", (group,), type=type, update=UpdateStrategy(max_parallel=max_parallel))


def alloc(job: Job, node_id: str, status=AllocStatus.RUNNING, *, created=1.0, **changes):
    group = job.task_groups[0]
    return Allocation(
        allocation_id=f"a-{node_id}-{created}",
        job_id=job.job_id,
        task_group=group.name,
        node_id=node_id,
        index=0,
        resources=group.resources,
        client_status=status,
        create_time=created,
        modify_time=created,
        group_hash=group.spec_hash(),
        **changes,
    )


def diff_of(job, allocs, feasible, infeasible=()):
    return reconcile_system(job, allocs, {"g": set(feasible)}, {"g": set(infeasible)}, now=NOW)


def placed_nodes(diff):
    return sorted(node_id for _, node_id, _ in diff.place)


def stopped(diff):
    return sorted((a.node_id, reason) for a, reason in diff.stop)


# ---- reconcile (pure) --------------------------------------------------------


def test_one_copy_per_feasible_node():
    job = make_job()
    diff = diff_of(job, [alloc(job, "n1")], ["n1", "n2", "n3"])
    assert placed_nodes(diff) == ["n2", "n3"]
    assert [a.node_id for a in diff.keep] == ["n1"]
    assert diff.stop == []


def test_lost_copy_is_not_placed_on_another_node():
    job = make_job()
    lost = alloc(job, "n3", AllocStatus.LOST, desired_status=DesiredStatus.STOP)
    diff = diff_of(job, [alloc(job, "n1"), alloc(job, "n2"), lost], ["n1", "n2"])
    assert diff.place == [] and diff.stop == []


def test_node_back_gets_a_new_copy_on_itself():
    job = make_job()
    lost = alloc(job, "n3", AllocStatus.LOST, desired_status=DesiredStatus.STOP)
    diff = diff_of(job, [alloc(job, "n1"), lost], ["n1", "n3"])
    assert [(n, prev.allocation_id) for _, n, prev in diff.place] == [("n3", lost.allocation_id)]


def test_copies_on_unlisted_nodes_are_kept_and_on_infeasible_ones_stopped():
    job = make_job()
    kept = alloc(job, "down")  # not yet marked lost, or ineligible, or suspect
    gone = alloc(job, "nope")
    diff = diff_of(job, [kept, gone], ["n1"], infeasible=["nope"])
    assert placed_nodes(diff) == ["n1"]
    assert stopped(diff) == [("nope", NOT_FEASIBLE)]
    assert diff.keep == [kept]


def test_sysbatch_completed_copy_is_not_run_again_but_new_nodes_get_one():
    job = make_job(JobType.SYSBATCH)
    done = alloc(job, "n1", AllocStatus.COMPLETE)
    failed = alloc(job, "n2", AllocStatus.FAILED)
    diff = diff_of(job, [done, failed], ["n1", "n2", "n3"])
    assert placed_nodes(diff) == ["n3"]
    assert diff.stop == []


def test_failed_system_copy_is_replaced_on_its_node_after_the_delay():
    job = make_job()
    fresh = alloc(job, "n1", AllocStatus.FAILED, created=NOW - 0.5)
    diff = diff_of(job, [fresh], ["n1"])
    assert diff.place == [] and diff.followup_at == pytest.approx(NOW + 0.5)
    old = alloc(job, "n1", AllocStatus.FAILED, created=NOW - 60)
    diff = diff_of(job, [old], ["n1"])
    assert placed_nodes(diff) == ["n1"] and stopped(diff) == [("n1", RESCHEDULED)]


def test_update_replaces_max_parallel_copies_then_waits_for_them():
    old_job = make_job(command="old", max_parallel=2)
    new_job = make_job(command="new", max_parallel=2)
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    allocs = [alloc(old_job, n) for n in nodes]
    diff = diff_of(new_job, allocs, nodes)
    assert placed_nodes(diff) == ["n1", "n2"]
    assert stopped(diff) == [("n1", GROUP_CHANGED), ("n2", GROUP_CHANGED)]
    assert diff.followup_at == NOW + UPDATE_POLL_S
    # The new copies are still starting: nothing more is replaced.
    allocs = [replace(a, desired_status=DesiredStatus.STOP) for a in allocs[:2]] + allocs[2:]
    starting = [alloc(new_job, n, AllocStatus.PENDING, created=2.0) for n in ("n1", "n2")]
    diff = diff_of(new_job, allocs + starting, nodes)
    assert diff.place == [] and diff.followup_at == NOW + UPDATE_POLL_S
    # One runs: one more node is replaced.
    starting[0] = replace(starting[0], client_status=AllocStatus.RUNNING)
    diff = diff_of(new_job, allocs + starting, nodes)
    assert placed_nodes(diff) == ["n3"]


def test_update_halts_while_a_new_copy_has_failed():
    old_job, new_job = make_job(command="old"), make_job(command="new")
    allocs = [alloc(old_job, "n2"), alloc(new_job, "n1", AllocStatus.FAILED, created=NOW)]
    diff = diff_of(new_job, allocs, ["n1", "n2"])
    assert diff.place == [] and diff.stop == []


def test_max_parallel_zero_replaces_everything_at_once():
    old_job, new_job = make_job(command="old"), make_job(command="new", max_parallel=0)
    nodes = ["n1", "n2", "n3"]
    diff = diff_of(new_job, [alloc(old_job, n) for n in nodes], nodes)
    assert placed_nodes(diff) == nodes and diff.followup_at is None


def test_stopped_job_stops_every_copy():
    job = replace(make_job(), stopped=True)
    diff = diff_of(job, [alloc(job, "n1"), alloc(job, "n2")], ["n1", "n2"])
    assert len(diff.stop) == 2 and diff.place == []


# ---- placement on a cluster ----------------------------------------------------


def plan_for(job, cluster, allocs=()):
    return compute_system_plan(job, list(allocs), cluster, EVAL, now=NOW, rng=random.Random(1))


def test_places_on_every_node_that_passes_the_constraints():
    job = make_job(constraints=[Constraint("region", "=", "eu")])
    cluster = cluster_of(("a", "eu", 1000, 1000), ("b", "eu", 1000, 1000), ("c", "us", 1000, 1000))
    plan, followup = plan_for(job, cluster)
    assert sorted(a.node_id for a in plan.place) == ["a", "b"]
    assert plan.failed == {} and followup is None
    assert {(a.index, a.job_version, a.desired_status) for a in plan.place} == {
        (0, job.version, DesiredStatus.RUN)
    }
    assert summarize(plan, job)["groups"]["g"] == {"wanted": 2, "placed": 2, "failed": 0}


def test_a_node_without_room_is_a_failure_with_its_reason():
    job = make_job(cpu=500, memory=100)
    cluster = cluster_of(("big", "eu", 1000, 1000), ("small", "eu", 200, 1000))
    plan, _ = plan_for(job, cluster)
    assert [a.node_id for a in plan.place] == ["big"]
    assert plan.failed == {"g": {"wanted": 1, "failures": {"cpu exhausted": 1}}}


def test_an_update_reuses_the_room_its_stop_frees():
    old_job, new_job = make_job(command="old", cpu=800), make_job(command="new", cpu=800)
    cluster = cluster_of(("a", "eu", 1000, 1000))
    old = alloc(old_job, "a")
    cluster.reserve(old)
    plan, _ = plan_for(new_job, cluster, [old])
    assert plan.stop == [(old.allocation_id, GROUP_CHANGED)]
    assert [a.node_id for a in plan.place] == ["a"] and plan.failed == {}


def test_unhealthy_node_gets_nothing_and_keeps_its_copy():
    job = make_job()
    cluster = cluster_of(("a", "eu", 1000, 1000), ("b", "eu", 1000, 1000))
    cluster.set_healthy("b", False)
    on_b = alloc(job, "b")
    plan, _ = plan_for(job, cluster, [on_b])
    assert [a.node_id for a in plan.place] == ["a"] and plan.stop == []


def test_a_constraint_change_stops_copies_on_nodes_that_no_longer_fit():
    before = make_job()
    after = make_job(constraints=[Constraint("region", "=", "eu")])
    cluster = cluster_of(("a", "eu", 1000, 1000), ("b", "us", 1000, 1000))
    allocs = [alloc(before, "a"), alloc(before, "b")]
    plan, _ = plan_for(after, cluster, allocs)
    assert (allocs[1].allocation_id, NOT_FEASIBLE) in plan.stop
    assert [a.node_id for a in plan.place] == ["a"]


def test_scheduler_for_dispatches_by_type():
    assert scheduler_for(make_job(JobType.SYSTEM)) is compute_system_plan
    assert scheduler_for(make_job(JobType.SYSBATCH)) is compute_system_plan
    assert scheduler_for(make_job(JobType.SERVICE)) is compute_plan
    assert scheduler_for(make_job(JobType.BATCH)) is compute_plan


# ---- status ------------------------------------------------------------------


def test_system_job_status():
    job = make_job()
    assert job_status(job, []) == JobStatus.PENDING
    running = [alloc(job, "n1"), alloc(job, "n2")]
    assert job_status(job, running) == JobStatus.RUNNING
    # A copy lost with its node leaves the job running on the others.
    lost = alloc(job, "n3", AllocStatus.LOST, desired_status=DesiredStatus.STOP)
    assert job_status(job, [*running, lost]) == JobStatus.RUNNING
    assert job_status(job, [alloc(job, "n1", AllocStatus.PENDING)]) == JobStatus.PENDING
    batch = make_job(JobType.SYSBATCH)
    done = [alloc(batch, "n1", AllocStatus.COMPLETE), alloc(batch, "n2", AllocStatus.COMPLETE)]
    assert job_status(batch, done) == JobStatus.COMPLETE
    assert job_status(batch, [*done, alloc(batch, "n3")]) == JobStatus.RUNNING
    assert job_status(batch, [*done, alloc(batch, "n3", AllocStatus.FAILED)]) == JobStatus.FAILED
