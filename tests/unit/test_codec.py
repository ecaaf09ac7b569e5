"""Stored allocation and evaluation JSON: compact, and read back to the same struct."""

import json
import math
import os
import uuid

import pytest

from orch import codec
from orch.server.scheduler.generic import AllocIds
from orch.structs import (
    Allocation,
    AllocStatus,
    DesiredStatus,
    EvalStatus,
    Evaluation,
    Resources,
    TaskState,
    TaskStatus,
    TriggeredBy,
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


def test_allocation_ids_read_randomness_as_the_plan_grows(monkeypatch):
    # A one-placement plan (most) reads 8 random bytes, not a 2 KiB batch;
    # ids across each read's boundary keep distinct random bits.
    from orch.server.scheduler import generic

    reads = []
    real = os.urandom

    def urandom(n):
        reads.append(n)
        return real(n)

    monkeypatch.setattr(generic.os, "urandom", urandom)
    AllocIds(1_700_000_000.0).next()
    assert reads == [8]
    reads.clear()
    ids = AllocIds(1_700_000_000.0)
    made = [ids.next() for _ in range(1 + 16 + 256 * 3)]
    assert reads == [8, 8 * 16, 8 * 256, 8 * 256, 8 * 256]
    noise = [text[-17:] for text in made]  # the 62 random bits' digits and the variant
    assert len(set(noise)) == len(noise)
    assert made == sorted(made)


def test_fresh_task_states_are_written_as_the_general_path_writes_them():
    def general(tasks):
        # _tasks_json's general path: each state without its default fields.
        defaults = TaskState().to_dict()
        return json.dumps(
            {
                name: {k: v for k, v in state.to_dict().items() if v != defaults[k]}
                for name, state in tasks.items()
            },
            separators=(",", ":"),
        )

    running = TaskState(status=TaskStatus.RUNNING, start_time=2.5)
    for tasks in (
        {"t": TaskState()},
        {"web": TaskState(), '日志-"x"': TaskState(), "z": TaskState(restarts=0)},
        {"a": TaskState(), "b": running},
        {"a": TaskState(events=[{"time": 1.0, "type": "Received", "message": "收到"}])},
        {},
    ):
        alloc = Allocation("a1", "job", "g", "n1", 0, tasks=tasks)
        (body,) = codec.allocs_json([alloc])
        assert body.endswith(f',"tasks":{general(tasks)}}}')
        assert codec.alloc_from(json.loads(body)) == alloc


def test_non_finite_numbers_are_never_written():
    for field in ("start_time", "end_time", "create_time", "modify_time"):
        for bad in (math.nan, math.inf, -math.inf):
            alloc = Allocation("a1", "job", "g", "n1", 0, **{field: bad})
            with pytest.raises(ValueError):
                codec.allocs_json([alloc])
    alloc = Allocation("a1", "job", "g", "n1", 0, tasks={"t": TaskState(start_time=math.nan)})
    with pytest.raises(ValueError):
        codec.allocs_json([alloc])


def test_rows_refuse_nan_anywhere_and_keep_their_text_otherwise():
    strict = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    for bad in (math.nan, math.inf, -math.inf):
        for doc in ({"meta": {"x": [1, bad]}}, [bad], {"t": {"events": [{"time": bad}]}}):
            with pytest.raises(ValueError):
                codec.dumps_compact(doc)
        state = TaskState(TaskStatus.RUNNING, events=[{"time": bad, "type": "x", "message": ""}])
        with pytest.raises(ValueError):
            codec.allocs_json([Allocation("a1", "job", "g", "n1", 0, tasks={"t": state})])
    for doc in (
        {"job_id": "j", "meta": {"k": "v"}, "count": 3, "submit_time": 1764790000.125},
        {"job_id": "作业", "x": None},  # non-ASCII, a null: the strict encoder's own text
        {"message": 'quote " backslash \\ tab \t'},
    ):
        assert codec.dumps_compact(doc) == strict(doc)


def _generic(ev: Evaluation) -> str:
    """What the store wrote before eval_json: the generic encoder's output."""
    return json.dumps(ev.to_dict(), separators=(",", ":"), allow_nan=False)


def _evaluations():
    yield Evaluation("e1", "job", TriggeredBy.JOB_REGISTER)
    yield Evaluation(
        "e2", "job", TriggeredBy.NODE_UPDATE, node_id="n1", create_time=1.5, modify_time=7
    )
    yield Evaluation(
        str(uuid.uuid4()),
        '作业-"quoted"\\x',
        TriggeredBy.QUEUED_ALLOCS,
        status=EvalStatus.BLOCKED,
        status_description="资源不足: 2 placements failed\n",
        placed=3,
        queued=2,
        failures={"memory exhausted": 2, "constraint ${attr.x} = é": 1},
        groups={"g": {"wanted": 5, "placed": 3, "failed": 2}, "h": {}},
        create_time=1e-7,
        modify_time=1735689600.123456,
        failed_nodes={"g": [{"node_id": "n", "reason": "memory", "free": {"cpu": 0}}]},
    )
    for status in EvalStatus:
        yield Evaluation("e3", "j", TriggeredBy.JOB_DEREGISTER, status=status, modify_time=2.0)


def test_evaluation_json_is_the_generic_encoders_byte_for_byte():
    # Rows written before and after the fast encoder must read the same, and
    # the change log (followers) carries these bytes.
    for ev in _evaluations():
        body = codec.eval_json(ev)
        assert body == _generic(ev)
        assert codec.eval_from(json.loads(body)) == ev


def test_evaluation_maps_of_any_shape_are_written_as_the_generic_encoder_writes_them():
    # Counts ({str: int}, one level deep) are written by hand; every other
    # shape (bools, floats, None, lists, int keys, deeper maps) by json.
    import random

    rng = random.Random(17)
    leaves = [0, 7, -3, 2**70, True, False, None, 1.5, "x", "资源", [1, "a"], {}]
    keys = ["g", "内存 exhausted", 'q"\\', "", 3, 2.5, None, False]

    def mapping(depth):
        out = {}
        for _ in range(rng.randrange(4)):
            key = rng.choice(keys[:4] if rng.random() < 0.8 else keys)
            if depth and rng.random() < 0.5:
                out[key] = mapping(depth - 1)
            else:
                out[key] = rng.choice(leaves[:3] if rng.random() < 0.7 else leaves)
        return out

    for _ in range(3000):
        ev = Evaluation(
            "e",
            "j",
            TriggeredBy.JOB_REGISTER,
            failures=mapping(0),
            groups=mapping(2),
            failed_nodes=mapping(1),
        )
        assert codec.eval_json(ev) == _generic(ev)


def test_evaluation_with_non_finite_time_is_never_written():
    for field in ("create_time", "modify_time"):
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ValueError):
                codec.eval_json(Evaluation("e", "j", TriggeredBy.JOB_REGISTER, **{field: bad}))
    nan_in_map = Evaluation("e", "j", TriggeredBy.JOB_REGISTER, failures={"x": math.nan})
    with pytest.raises(ValueError):
        codec.eval_json(nan_in_map)
