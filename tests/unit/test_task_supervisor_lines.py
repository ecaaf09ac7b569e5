"""The supervisor's hot lines, formatted without json.dumps: still the JSON json would write."""

import json
import os

import pytest

from orch.agent.tasksup.protocol import encode
from orch.agent.tasksup.records import claim, read_record, start_line


@pytest.mark.parametrize(
    "doc",
    [
        {"pid": 4242, "create_time": 1796251479.35, "id": 7},
        {"pid": 1, "create_time": 1796251479.123456789, "id": 123456789},
        {"pid": 99, "create_time": None, "id": 3},
        {"id": 3, "create_time": 0.1, "pid": 99},  # keys in another order
        {"pid": 99, "create_time": 1.0, "id": None},  # a request without an id
        {"pid": 99, "create_time": float("nan"), "id": 1},
        {"pid": 99, "create_time": 1.0, "id": True},  # a bool is not a line id
        {"error": "failed to start task: executable not found: x", "id": 4},
        {"claimed": True, "id": 5},
    ],
)
def test_an_encoded_line_reads_back_as_the_doc_it_came_from(doc):
    line = encode(doc)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = json.loads(line)
    if doc.get("create_time") != doc.get("create_time"):
        # NaN is not JSON: written as null, it reads back as a create time
        # not known, which the agent then takes from /proc.
        assert back == {**doc, "create_time": None}
    else:
        assert back == doc and [type(v) for v in back.values()] == [type(doc[k]) for k in back]


@pytest.mark.parametrize("memory_mb", [0, 64, 10**12, 1.5, "64"])
def test_a_start_line_reads_back_as_its_pid_and_memory(memory_mb):
    line = start_line(31337, memory_mb)
    assert line.endswith(b"\n") and json.loads(line) == {"pid": 31337, "memory_mb": memory_mb}


def test_a_claimed_record_names_the_supervisor_given_or_this_process(tmp_path):
    given, own = str(tmp_path / "given.json"), str(tmp_path / "own.json")
    for path, pid in ((given, 4242), (own, None)):
        fd = claim(path, pid)
        assert fd is not None
        os.write(fd, start_line(12, 0))
        os.close(fd)
    assert read_record(given) == {"supervisor_pid": 4242, "pid": 12, "memory_mb": 0}
    assert read_record(own)["supervisor_pid"] == os.getpid()
