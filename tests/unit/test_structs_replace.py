"""structs.replace: the same copy as dataclasses.replace, without re-running __init__."""

import dataclasses

import pytest

from orch.structs import (
    Allocation,
    AllocStatus,
    Evaluation,
    EvalStatus,
    Job,
    Resources,
    Task,
    TaskGroup,
    TriggeredBy,
    replace,
)


def _job() -> Job:
    task = Task(name="t", driver="exec", config={"command": "true"}, resources=Resources(10, 8))
    return Job(job_id="j", task_groups=(TaskGroup(name="g", count=2, tasks=(task,)),))


@pytest.mark.parametrize(
    "obj,changes",
    [
        (_job(), {"version": 3, "stopped": True}),
        (_job().task_groups[0], {"count": 5, "restart": {"attempts": 1}}),
        (Resources(10, 8), {"cpu": 20}),  # frozen
        (
            Allocation(allocation_id="a", job_id="j", task_group="g", node_id="n", index=0),
            {"client_status": AllocStatus.RUNNING, "modify_time": 2.0},
        ),
        (
            Evaluation(eval_id="e", job_id="j", triggered_by=TriggeredBy.JOB_REGISTER),
            {"status": EvalStatus.COMPLETE},
        ),
    ],
)
def test_same_copy_as_dataclasses_replace(obj, changes):
    before = dataclasses.asdict(obj)
    copy = replace(obj, **changes)
    assert copy == dataclasses.replace(obj, **changes)
    assert type(copy) is type(obj) and copy is not obj
    for name, value in changes.items():
        assert getattr(copy, name) == value
    assert dataclasses.asdict(obj) == before  # the original is untouched
    assert replace(obj) == obj


def test_frozen_copy_stays_frozen():
    copy = replace(Resources(10, 8), memory=16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.cpu = 1  # type: ignore[misc]


def test_unknown_field_is_a_type_error():
    with pytest.raises(TypeError, match="no field nope"):
        replace(_job(), nope=1)


@dataclasses.dataclass
class _Checked:
    value: int
    doubled: int = dataclasses.field(init=False, default=0)

    def __post_init__(self):
        if self.value < 0:
            raise ValueError("negative")
        self.doubled = self.value * 2


def test_a_class_with_post_init_still_runs_it():
    copy = replace(_Checked(1), value=4)
    assert copy.doubled == 8
    with pytest.raises(ValueError):
        replace(_Checked(1), value=-1)
