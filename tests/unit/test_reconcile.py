from orch.server.scheduler.reconcile import reconcile, reschedule_delay
from orch.structs import (
    Allocation,
    Job,
    JobType,
    Task,
    TaskGroup,
)
from orch.structs import (
    AllocStatus as A,
)
from orch.structs import (
    DesiredStatus as D,
)

WEB = TaskGroup("web", 3, (Task("t", "exec", {"command": "run"}),))
DB = TaskGroup("db", 1, (Task("d", "exec", {"command": "db"}),))


def job(*groups, type=JobType.BATCH, stopped=False):
    return Job("j", groups or (WEB,), type=type, stopped=stopped)


def alloc(
    index,
    status=A.RUNNING,
    group=WEB,
    desired=D.RUN,
    created=1.0,
    modified=None,
    reschedules=0,
    node="n1",
    spec_hash=None,
):
    return Allocation(
        f"{group.name}{index}@{created}",
        "j",
        group.name,
        node,
        index,
        desired_status=desired,
        client_status=status,
        create_time=created,
        modify_time=modified or created,
        group_hash=spec_hash or group.spec_hash(),
        reschedule_count=reschedules,
    )


def ids(allocs):
    return sorted(a.allocation_id for a in allocs)


def placed(result):
    return [(g.name, i, p.allocation_id if p else None) for g, i, p in result.place]


def stopped(result):
    return [(a.allocation_id, reason) for a, reason in result.stop]


def test_empty_job_places_every_slot():
    result = reconcile(job(), [], now=10)
    assert placed(result) == [("web", 0, None), ("web", 1, None), ("web", 2, None)]
    assert result.stop == [] and result.keep == [] and result.followup_at is None


def test_unchanged_group_keeps_its_allocations():
    allocs = [alloc(i) for i in range(3)]
    result = reconcile(job(), allocs, now=10)
    assert ids(result.keep) == ids(allocs)
    assert result.place == [] and result.stop == []


def test_changed_group_is_replaced():
    allocs = [alloc(i, spec_hash="old") for i in range(3)]
    result = reconcile(job(), allocs, now=10)
    assert stopped(result) == [(a.allocation_id, "group changed") for a in allocs]
    assert placed(result) == [("web", i, None) for i in range(3)]


def test_scale_up_places_new_slots_only():
    allocs = [alloc(0)]
    result = reconcile(job(), allocs, now=10)
    assert ids(result.keep) == ids(allocs)
    assert placed(result) == [("web", 1, None), ("web", 2, None)]


def test_scale_down_stops_highest_index_first():
    allocs = [alloc(i) for i in range(5)]
    result = reconcile(job(), allocs, now=10)
    assert stopped(result) == [("web4@1.0", "scaled down"), ("web3@1.0", "scaled down")]
    assert ids(result.keep) == ids(allocs[:3])


def test_stopped_job_stops_everything_wanted():
    allocs = [alloc(0), alloc(1, A.COMPLETE), alloc(2, A.STOPPED, desired=D.STOP)]
    result = reconcile(job(stopped=True), allocs, now=10)
    assert stopped(result) == [("web1@1.0", "job stopped"), ("web0@1.0", "job stopped")]
    assert result.place == [] and result.keep == []


def test_lost_slot_is_placed_with_previous():
    lost = alloc(1, A.LOST, desired=D.STOP, created=1.0)
    result = reconcile(job(), [alloc(0), lost, alloc(2)], now=10)
    assert placed(result) == [("web", 1, lost.allocation_id)]
    assert result.stop == []


def test_missing_slot_previous_is_newest_of_slot():
    old = alloc(0, A.COMPLETE, desired=D.STOP, created=1.0)
    newer = alloc(0, A.STOPPED, desired=D.STOP, created=2.0)
    result = reconcile(job(), [newer, old, alloc(1), alloc(2)], now=10)
    assert placed(result) == [("web", 0, newer.allocation_id)]


def test_lost_but_still_wanted_is_stopped_and_replaced():
    lost = alloc(0, A.LOST)
    result = reconcile(job(), [lost, alloc(1), alloc(2)], now=10)
    assert stopped(result) == [(lost.allocation_id, "rescheduled")]
    assert placed(result) == [("web", 0, lost.allocation_id)]


def test_batch_complete_and_failed_are_kept():
    allocs = [alloc(0, A.COMPLETE), alloc(1, A.FAILED), alloc(2, A.PENDING)]
    result = reconcile(job(), allocs, now=1000)
    assert ids(result.keep) == ids(allocs)
    assert result.place == [] and result.stop == []


def test_service_failed_is_rescheduled_after_delay():
    failed = alloc(1, A.FAILED, modified=100.0, reschedules=2)
    allocs = [alloc(0), failed, alloc(2)]
    early = reconcile(job(type=JobType.SERVICE), allocs, now=102.0)
    assert early.place == [] and early.stop == []
    assert failed in early.keep
    assert early.followup_at == 104.0
    due = reconcile(job(type=JobType.SERVICE), allocs, now=104.0)
    assert stopped(due) == [(failed.allocation_id, "rescheduled")]
    assert placed(due) == [("web", 1, failed.allocation_id)]
    assert due.followup_at is None


def test_followup_is_the_earliest_delay():
    allocs = [
        alloc(0, A.FAILED, modified=100.0, reschedules=3),
        alloc(1, A.FAILED, modified=100.0, reschedules=0),
        alloc(2),
    ]
    result = reconcile(job(type=JobType.SERVICE), allocs, now=100.5)
    assert result.followup_at == 101.0


def test_reschedule_delay_doubles_and_caps():
    assert [reschedule_delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert reschedule_delay(5000) == 30


def test_removed_group_is_stopped():
    allocs = [alloc(0, group=DB), alloc(0), alloc(1), alloc(2)]
    result = reconcile(job(WEB), allocs, now=10)
    assert stopped(result) == [("db0@1.0", "group removed")]
    assert len(result.keep) == 3


def test_newest_wanted_allocation_is_current_and_duplicates_stop():
    older, newer = alloc(0, created=1.0), alloc(0, created=2.0)
    result = reconcile(job(), [older, newer, alloc(1), alloc(2)], now=10)
    assert stopped(result) == [(older.allocation_id, "duplicate")]
    assert newer in result.keep and older not in result.keep


def test_groups_are_reconciled_independently():
    allocs = [alloc(0, group=DB, spec_hash="old"), alloc(0), alloc(1), alloc(2)]
    result = reconcile(job(WEB, DB), allocs, now=10)
    assert stopped(result) == [("db0@1.0", "group changed")]
    assert placed(result) == [("db", 0, None)]
