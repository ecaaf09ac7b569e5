"""Every time in a heartbeat's reports is a finite number, named by its path when not."""

import pytest

from orch.errors import ValidationError
from orch.validation import bodies

BAD = [float("nan"), float("inf"), -float("inf"), 10**400, True, "1", [1.0]]


def beat(task: dict | None = None, **report) -> dict:
    report.setdefault("status", "running")
    if task is not None:
        report["tasks"] = {"t": task}
    return {"node_id": "n1", "allocations": {"a1": report}}


def refusal(body: dict) -> str:
    with pytest.raises(ValidationError) as info:
        bodies.heartbeat(body)
    return info.value.message


@pytest.mark.parametrize("value", BAD)
def test_bad_times_are_refused_by_path(value):
    prefix = "allocations.a1"
    cases = {
        f"{prefix}.start_time": beat(start_time=value),
        f"{prefix}.end_time": beat(end_time=value),
        f"{prefix}.tasks.t.start_time": beat({"start_time": value}),
        f"{prefix}.tasks.t.end_time": beat({"end_time": value}),
        f"{prefix}.tasks.t.events[1].time": beat({"events": [{"time": 1.0}, {"time": value}]}),
        "resources.cpu": {"node_id": "n1", "resources": {"cpu": value}},
    }
    for path, body in cases.items():
        if path == "resources.cpu" and isinstance(value, (str, list)):
            continue  # strings and lists in usage are left to the fields that read them
        assert refusal(body).startswith(f"{path}: must be a"), path


def test_good_times_pass_floats_and_integers_alike():
    good = [0, 1, 1.5, 1764547200.25, -3, 2**53]
    for value in good:
        body = beat(
            {"start_time": value, "end_time": value, "events": [{"time": value}, {"x": 1}, "odd"]},
            start_time=value,
            end_time=value,
        )
        body["resources"] = {"cpu": value, "memory": None}
        assert bodies.heartbeat(body).allocations["a1"]["start_time"] == value
