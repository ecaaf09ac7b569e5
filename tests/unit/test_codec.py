"""Stored allocation JSON: compact, and read back to the same allocation."""

import json
import math
import uuid

import pytest

from orch import codec
from orch.server.scheduler.generic import AllocIds
from orch.structs import (
    Allocation,
    AllocStatus,
    DesiredStatus,
    Resources,
    TaskState,
    TaskStatus,
)


def test_fresh_allocation_round_trips_and_leaves_defaults_out():
    alloc = Allocation(
        "a1",
        "job",
        "g",
        "n1",
        3,
        resources=Resources(100, 64),
        tasks={"t": TaskState()},
        create_time=1.5,
        modify_time=1.5,
        group_hash="abc",
        eval_id="e1",
    )
    (body,) = codec.allocs_json([alloc])
    stored = json.loads(body)
    assert "name" not in stored and "previous_allocation" not in stored
    assert stored["tasks"] == {"t": {}}
    assert codec.alloc_from(stored) == alloc


def test_every_field_round_trips():
    tasks = {
        "web": TaskState(
            TaskStatus.FAILED, 1.0, 2.0, 0, "", 2, [{"time": 1.0, "type": "x", "message": 'é"\n'}]
        ),
        "side": TaskState(TaskStatus.RUNNING, start_time=0.0),
    }
    alloc = Allocation(
        "a2",
        "job",
        "g",
        'node "quoted" \\ é',
        0,
        resources=Resources(0, 0),
        desired_status=DesiredStatus.STOP,
        client_status=AllocStatus.LOST,
        description="lost: node 'x' \u2603",
        tasks=tasks,
        start_time=3.25,
        end_time=4.0,
        create_time=1.0,
        modify_time=5.0,
        job_version=7,
        group_hash="h",
        eval_id="e",
        previous_allocation="a0",
        reschedule_count=2,
    )
    (body,) = codec.allocs_json([alloc])
    assert codec.alloc_from(json.loads(body)) == alloc
    legacy = json.loads(json.dumps(alloc.to_dict()))
    assert codec.alloc_from(legacy) == alloc


def test_allocation_ids_are_uuids_in_creation_order():
    ids = AllocIds(1_700_000_000.123)
    made = [ids.next() for _ in range(10_000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    for text in made[:3] + made[4095:4098]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_non_finite_numbers_are_never_written():
    for field in ("start_time", "end_time", "create_time", "modify_time"):
        for bad in (math.nan, math.inf, -math.inf):
            alloc = Allocation("a1", "job", "g", "n1", 0, **{field: bad})
            with pytest.raises(ValueError):
                codec.allocs_json([alloc])
    alloc = Allocation("a1", "job", "g", "n1", 0, tasks={"t": TaskState(start_time=math.nan)})
    with pytest.raises(ValueError):
        codec.allocs_json([alloc])
