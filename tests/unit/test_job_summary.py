"""Nomad's job summary per group, from allocations and the latest evaluation."""

from orch.server.status import job_summary
from orch.structs import (
    Allocation,
    AllocStatus,
    DesiredStatus,
    EvalStatus,
    Evaluation,
    Job,
    Resources,
    Task,
    TaskGroup,
    TriggeredBy,
    replace,
)


def job(count=3):
    task = Task("t", "exec", {"command": "true"}, Resources(100, 64))
    return Job("j", (TaskGroup("g", count, (task,)), TaskGroup("h", 1, (task,))))


def alloc(n, status, desired=DesiredStatus.RUN, group="g"):
    return Allocation(f"a{n}", "j", group, "n1", n, client_status=status, desired_status=desired)


def evaluation(status, groups=None):
    return Evaluation("e", "j", TriggeredBy.JOB_REGISTER, status=status, groups=groups or {})


def test_allocations_counted_by_client_status():
    allocs = [
        alloc(0, AllocStatus.RUNNING),
        alloc(1, AllocStatus.PENDING),
        alloc(2, AllocStatus.FAILED, DesiredStatus.STOP),
        alloc(2, AllocStatus.COMPLETE),
        alloc(3, AllocStatus.STOPPED, DesiredStatus.STOP),
        alloc(0, AllocStatus.LOST, DesiredStatus.STOP, group="h"),
    ]
    summary = job_summary(job(), allocs, evaluation(EvalStatus.COMPLETE))
    assert summary["g"] == {
        "queued": 0,
        "starting": 1,
        "running": 1,
        "complete": 2,
        "failed": 1,
        "lost": 0,
    }
    assert summary["h"]["lost"] == 1 and summary["h"]["queued"] == 0


def test_queued_from_a_blocked_or_pending_evaluation():
    blocked = evaluation(EvalStatus.BLOCKED, {"g": {"wanted": 3, "placed": 1, "failed": 2}})
    allocs = [alloc(0, AllocStatus.RUNNING)]
    summary = job_summary(job(), allocs, blocked)
    assert summary["g"]["queued"] == 2 and summary["h"]["queued"] == 0
    pending = job_summary(job(), allocs, evaluation(EvalStatus.PENDING))
    assert pending["g"]["queued"] == 2 and pending["h"]["queued"] == 1
    stopped = job_summary(replace(job(), stopped=True), allocs, blocked)
    assert stopped["g"]["queued"] == 0
    assert job_summary(job(), [], None)["g"]["queued"] == 0
