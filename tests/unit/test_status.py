from orch.server.status import job_status
from orch.structs import (
    Allocation,
    DesiredStatus,
    Job,
    JobStatus,
    Task,
    TaskGroup,
)
from orch.structs import (
    AllocStatus as A,
)


def job(count=2, stopped=False):
    task = Task("t", "exec", {"command": "true"})
    return Job("j", (TaskGroup("g", count, (task,)),), stopped=stopped)


def alloc(index, status, created=1.0, desired=DesiredStatus.RUN):
    return Allocation(
        f"a{index}-{created}",
        "j",
        "g",
        "n1",
        index,
        client_status=status,
        desired_status=desired,
        create_time=created,
    )


def test_stopped_job_is_dead():
    assert job_status(job(stopped=True), [alloc(0, A.RUNNING)]) == JobStatus.DEAD


def test_no_allocations_is_pending():
    assert job_status(job(), []) == JobStatus.PENDING


def test_any_running_slot_is_running():
    allocs = [alloc(0, A.RUNNING), alloc(1, A.LOST)]
    assert job_status(job(), allocs) == JobStatus.RUNNING


def test_lost_without_running_is_lost():
    allocs = [alloc(0, A.COMPLETE), alloc(1, A.LOST)]
    assert job_status(job(), allocs) == JobStatus.LOST


def test_missing_slot_is_pending():
    assert job_status(job(), [alloc(0, A.COMPLETE)]) == JobStatus.PENDING


def test_stopped_slot_counts_as_pending():
    allocs = [alloc(0, A.COMPLETE), alloc(1, A.STOPPED)]
    assert job_status(job(), allocs) == JobStatus.PENDING


def test_all_complete_is_complete():
    allocs = [alloc(0, A.COMPLETE), alloc(1, A.COMPLETE)]
    assert job_status(job(), allocs) == JobStatus.COMPLETE


def test_all_terminal_one_failed_is_failed():
    allocs = [alloc(0, A.COMPLETE), alloc(1, A.FAILED)]
    assert job_status(job(), allocs) == JobStatus.FAILED


def test_newest_allocation_of_a_slot_wins():
    allocs = [
        alloc(0, A.FAILED, created=1.0),
        alloc(0, A.RUNNING, created=2.0),
        alloc(1, A.COMPLETE, created=5.0),
        alloc(1, A.LOST, created=3.0),
    ]
    assert job_status(job(), allocs) == JobStatus.RUNNING
    replaced = [
        alloc(0, A.LOST, 1.0, DesiredStatus.STOP),
        alloc(0, A.COMPLETE, 2.0),
        alloc(1, A.COMPLETE),
    ]
    assert job_status(job(), replaced) == JobStatus.COMPLETE


def test_slots_beyond_count_are_ignored():
    allocs = [alloc(0, A.COMPLETE), alloc(5, A.RUNNING)]
    assert job_status(job(count=1), allocs) == JobStatus.COMPLETE


def test_a_slot_whose_old_copy_still_runs_is_running():
    """A drain keeps the old copy running while its replacement is placed;
    the replacement failing made the job read failed (/v1: dead)."""
    allocs = [alloc(0, A.RUNNING, 1.0), alloc(0, A.FAILED, 2.0)]
    assert job_status(job(count=1), allocs) == JobStatus.RUNNING
    # An old copy the server stopped no longer holds the slot.
    allocs = [alloc(0, A.RUNNING, 1.0, DesiredStatus.STOP), alloc(0, A.FAILED, 2.0)]
    assert job_status(job(count=1), allocs) == JobStatus.FAILED
