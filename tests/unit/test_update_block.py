"""The update block: validation, job/group merge, stored round trip."""

from __future__ import annotations

import json

import pytest

from orch.codec import job_from
from orch.errors import ValidationError
from orch.jobspec import parse_job
from orch.structs import DEFAULT_UPDATE, UpdateStrategy

TASKS = [{"name": "t", "config": {"command": "true"}}]


def body(update=None, group_update=None, type="service"):
    group = {"name": "g", "tasks": TASKS}
    if group_update is not None:
        group["update"] = group_update
    out = {"job_id": "j", "type": type, "task_groups": [group, {"name": "h", "tasks": TASKS}]}
    if update is not None:
        out["update"] = update
    return out


def rejects(data, path):
    with pytest.raises(ValidationError) as info:
        parse_job(data)
    assert info.value.message.startswith(f"{path}: "), info.value.message


def test_full_block_is_read_with_durations():
    job = parse_job(
        body(
            {
                "max_parallel": 3,
                "health_check": "task_states",
                "min_healthy_time": "500ms",
                "healthy_deadline": "1m30s",
                "progress_deadline": "10m",
                "auto_revert": True,
                "canary": 2,
                "auto_promote": True,
            }
        )
    )
    assert job.update == UpdateStrategy(3, "task_states", 0.5, 90.0, 600.0, True, 2, True)


def test_group_wins_field_by_field_over_the_job():
    job = parse_job(body({"max_parallel": 4, "canary": 1}, {"max_parallel": 2}))
    g, h = job.task_groups
    assert g.update == UpdateStrategy(max_parallel=2, canary=1)
    assert h.update is None
    assert job.update_for(h) == UpdateStrategy(max_parallel=4, canary=1)
    assert job.update_for(g).max_parallel == 2


def test_without_update_nothing_changes():
    job = parse_job(body())
    assert job.update is None and job.update_for(job.task_groups[0]) == DEFAULT_UPDATE
    assert "update" not in job.to_dict()
    assert "update" not in job.to_dict()["task_groups"][0]


def test_round_trip_through_stored_json():
    job = parse_job(body({"max_parallel": 4}, {"min_healthy_time": 5}, type="system"))
    assert job_from(json.loads(json.dumps(job.to_dict()))) == job
    # A row stored before the field existed still loads.
    old = job.to_dict()
    del old["update"]
    for group in old["task_groups"]:
        group.pop("update", None)
    assert job_from(old).update is None


def test_update_does_not_change_the_group_hash():
    plain = parse_job(body())
    tuned = parse_job(body({"max_parallel": 5}))
    assert plain.task_groups[0].spec_hash() == tuned.task_groups[0].spec_hash()


@pytest.mark.parametrize(
    "update, path",
    [
        ("fast", "update"),
        ({"max_parallel": -1}, "update.max_parallel"),
        ({"max_parallel": True}, "update.max_parallel"),
        ({"max_parallel": 1.5}, "update.max_parallel"),
        ({"health_check": "http"}, "update.health_check"),
        ({"min_healthy_time": "soon"}, "update.min_healthy_time"),
        ({"min_healthy_time": -1}, "update.min_healthy_time"),
        ({"min_healthy_time": "6m"}, "update.min_healthy_time"),  # >= healthy_deadline
        ({"healthy_deadline": 0}, "update.healthy_deadline"),
        ({"progress_deadline": "1m"}, "update.progress_deadline"),
        ({"auto_revert": "yes"}, "update.auto_revert"),
        ({"canary": -2}, "update.canary"),
        ({"auto_promote": True}, "update.auto_promote"),
        ({"stagger": "30s"}, "update.stagger"),
        ({"min_healthy_time": "9999h"}, "update.min_healthy_time"),
    ],
)
def test_bad_blocks_are_rejected_with_their_path(update, path):
    rejects(body(update), path)


def test_bad_group_block_names_the_group():
    rejects(body(None, {"health_check": "tcp"}), "task_groups[0].update.health_check")


def test_canaries_are_not_for_system_jobs():
    rejects(body({"canary": 1}, type="system"), "update.canary")
    rejects(body(None, {"canary": 1}, type="sysbatch"), "task_groups[0].update.canary")


def test_progress_deadline_zero_means_none():
    job = parse_job(body({"progress_deadline": 0, "healthy_deadline": "20m"}))
    assert job.update.progress_deadline == 0 and job.update.healthy_deadline == 1200
    # "0" too, as Go's ParseDuration (Nomad's) reads it; "0x" still not.
    job = parse_job(body({"progress_deadline": "0", "healthy_deadline": "20m"}))
    assert job.update.progress_deadline == 0
    with pytest.raises(ValidationError):
        parse_job(body({"progress_deadline": "0x", "healthy_deadline": "20m"}))


def test_system_groups_run_once_per_node():
    data = body(type="system")
    data["task_groups"][1]["count"] = 3
    rejects(data, "task_groups[1].count")
    data["task_groups"][1]["count"] = 1
    assert parse_job(data).task_groups[1].count == 1


def test_a_job_without_blocks_is_returned_as_parsed_and_one_with_them_is_copied():
    from orch.validation.restart import with_restarts
    from orch.validation.update import with_updates

    plain = parse_job(body(type="batch"))
    assert with_updates(plain, body(type="batch")) is plain  # nothing to add: no copies
    assert with_restarts(plain, body(type="batch")) is plain
    data = body(type="batch")
    data["task_groups"][1]["restart"] = {"attempts": 1}
    restarted = with_restarts(plain, data)
    assert restarted is not plain and restarted.task_groups[0] is plain.task_groups[0]
    assert restarted.task_groups[1].restart["attempts"] == 1
    service = parse_job(body())
    updated = with_updates(service, body({"max_parallel": 2}))
    assert updated is not service and updated.update.max_parallel == 2
    grouped = with_updates(service, body(None, {"max_parallel": 3}))
    assert grouped.task_groups[0].update.max_parallel == 3
    assert grouped.task_groups[1] is service.task_groups[1]
