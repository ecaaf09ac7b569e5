"""orch.structs.replace: dataclasses.replace's answer, by copying the attributes."""

from __future__ import annotations

import dataclasses

import pytest

from orch.structs import (
    Allocation,
    AllocStatus,
    Job,
    Node,
    Resources,
    Task,
    TaskGroup,
    TaskState,
    TaskStatus,
    replace,
)

SAMPLES = [
    (Allocation("a1", "j", "g", "n1", 0), {"client_status": AllocStatus.RUNNING}),
    (Allocation("a2", "j", "g", "n1", 1), {"modify_time": 5.0, "node_id": "n2"}),
    (Resources(100, 64), {"cpu": 200}),
    (Task("t", "exec", {"command": "true"}), {"config": {"command": "false"}}),
    (TaskGroup("g", 1, (Task("t", "exec", {}),)), {"count": 3}),
    (TaskState(TaskStatus.PENDING), {"status": TaskStatus.RUNNING, "restarts": 2}),
]


def sample_job() -> Job:
    return Job("j", "batch", (TaskGroup("g", 1, (Task("t", "exec", {"command": "true"}),)),))


@pytest.mark.parametrize("obj,changes", SAMPLES + [(sample_job(), {"version": 4})])
def test_the_copy_equals_what_dataclasses_replace_builds(obj, changes):
    expected = dataclasses.replace(obj, **changes)
    got = replace(obj, **changes)
    assert type(got) is type(expected) and got == expected and got is not obj
    assert vars(got) == vars(expected)  # the same attributes, no more
    assert replace(obj) == obj and replace(obj) is not obj


def test_a_copy_is_independent_of_its_original():
    alloc = Allocation("a1", "j", "g", "n1", 0)
    copy = replace(alloc, client_status=AllocStatus.RUNNING)
    copy.desired_status = alloc.desired_status.__class__("stop")
    assert alloc.client_status == AllocStatus.PENDING and alloc.desired_status.value == "run"


def test_a_frozen_record_stays_frozen_and_hashes_by_its_fields():
    res = replace(Resources(100, 64), cpu=200)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.cpu = 1  # type: ignore[misc]
    assert hash(res) == hash(Resources(200, 64))


def test_a_name_that_is_no_field_is_refused_as_dataclasses_refuses_it():
    with pytest.raises(TypeError):
        replace(Allocation("a1", "j", "g", "n1", 0), no_such_field=1)
    with pytest.raises(TypeError):
        replace(Node("n1", "http://x", Resources(1, 1)), no_such_field=1)


@dataclasses.dataclass
class Checked:
    value: int
    doubled: int = 0

    def __post_init__(self):
        self.doubled = self.value * 2


@dataclasses.dataclass
class Derived:
    value: int
    cache: list = dataclasses.field(init=False, default_factory=list)


@dataclasses.dataclass(slots=True)
class Slotted:
    value: int


def test_classes_a_copy_would_get_wrong_go_to_dataclasses_replace():
    assert replace(Checked(2), value=5).doubled == 10  # __post_init__ ran again
    derived = Derived(1)
    derived.cache.append("stale")
    assert replace(derived, value=2).cache == []  # init=False: made anew, not copied
    with pytest.raises(ValueError):
        replace(derived, cache=[1])
    assert replace(Slotted(1), value=2) == Slotted(2)
    with pytest.raises(TypeError):
        replace(object())  # not a dataclass
