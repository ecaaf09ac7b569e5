"""AllocSync's quick "nothing changed" check agrees with the full merge."""

from __future__ import annotations

import random

from orch.server.sync import _unchanged, merge_report
from orch.structs import Allocation, AllocStatus, TaskState, TaskStatus

NOW = 1_700_000_000.0
EVENTS = [{"time": NOW, "type": "Started", "message": "Task started by agent"}]


def alloc(**fields) -> Allocation:
    tasks = {"t": TaskState(status=TaskStatus.RUNNING, start_time=NOW, events=list(EVENTS))}
    base = dict(
        allocation_id="a1",
        job_id="j",
        task_group="g",
        node_id="n",
        index=0,
        client_status=AllocStatus.RUNNING,
        tasks=tasks,
        start_time=NOW,
    )
    base.update(fields)
    return Allocation(**base)


def report_of(a: Allocation) -> dict:
    return {
        "status": a.client_status.value,
        "start_time": a.start_time,
        "end_time": a.end_time,
        "tasks": {n: t.to_dict() for n, t in a.tasks.items()},
    }


def test_an_identical_report_is_unchanged():
    a = alloc()
    assert _unchanged(a, report_of(a))
    assert merge_report(a, report_of(a), NOW + 1) is None


def test_every_single_field_change_is_seen():
    a = alloc()
    variants = []
    for key, value in (("status", "complete"), ("start_time", NOW + 1), ("end_time", NOW + 2)):
        r = report_of(a)
        r[key] = value
        variants.append(r)
    for key, value in (
        ("status", "complete"),
        ("start_time", NOW + 1),
        ("end_time", NOW),
        ("exit_code", 0),
        ("error", "boom"),
        ("restarts", 1),
        ("events", EVENTS * 2),
    ):
        r = report_of(a)
        r["tasks"]["t"][key] = value
        variants.append(r)
    r = report_of(a)
    r["tasks"]["u"] = dict(r["tasks"]["t"])
    variants.append(r)
    r = report_of(a)
    r["tasks"] = {}
    variants.append(r)
    for r in variants:
        assert not _unchanged(a, r), r
        assert merge_report(a, r, NOW + 1) is not None, r


def test_quick_check_never_hides_a_change_randomized():
    rng = random.Random(7)
    choices = {
        "status": ["running", "complete", "failed", "pending", None, "bogus"],
        "start_time": [NOW, NOW + 1, None, "x"],
        "end_time": [None, NOW, 0],
        "exit_code": [None, 0, 1],
        "error": [None, "e"],
        "restarts": [0, None, 1, 0.0],
        "events": [EVENTS, [], None, EVENTS * 2],
    }
    a = alloc()
    for _ in range(3000):
        r = report_of(a)
        target = r if rng.random() < 0.3 else r["tasks"]["t"]
        key = rng.choice(list(choices))
        if target is r and key not in ("status", "start_time", "end_time"):
            continue
        target[key] = rng.choice(choices[key])
        if rng.random() < 0.1:
            r["tasks"] = rng.choice([None, "x", {}, r["tasks"]])
        if _unchanged(a, r):
            assert merge_report(a, r, NOW + 1) is None, r
