"""The CLI's output: placement failures, tables, job and node summaries."""

import pytest
from cli_helpers import alloc, job_body

from orch import errors
from orch.cli.commands import alloc_summary, load_job_file
from orch.cli.format import (
    ago,
    alloc_counts,
    describe_failures,
    describe_placement_failure,
    node_row,
    table,
)
from orch.cli.job import job_summary

pytestmark = pytest.mark.usefixtures("clean_env")


def test_placement_failure_in_words():
    ev = {
        "status": "blocked",
        "placed": 1,
        "queued": 2,
        "failures": {"memory exhausted": 2, "constraint region = eu": 1},
        "groups": {"web": {"wanted": 3, "placed": 1, "failed": 2}},
    }
    assert describe_placement_failure(ev) == [
        "2 of 3 not placed: memory exhausted on 2 nodes; 1 node filtered by constraint region = eu"
    ]


def test_placement_failure_names_the_nearest_nodes():
    near = [
        {
            "node_id": "a1b2c3d4-0000-4000-8000-000000000000",
            "reason": "memory exhausted",
            "needs": {"cpu": 100, "memory": 512},
            "free": {"cpu": 900, "memory": 300},
        },
        {
            "node_id": "ffff0000-0000-4000-8000-000000000000",
            "reason": "memory exhausted",
            "needs": {"cpu": 100, "memory": 512},
            "free": {"cpu": 900, "memory": 200},
        },
    ]
    ev = {
        "failures": {"memory exhausted": 1, "constraint region = eu": 1},
        "groups": {"web": {"wanted": 3, "placed": 1, "failed": 2}},
        "failed_nodes": {"web": near[:1]},
    }
    assert describe_placement_failure(ev) == [
        "2 of 3 not placed: memory exhausted on node a1b2c3d4 (needs 512 MB, 300 free); "
        "1 node filtered by constraint region = eu"
    ]
    assert describe_failures({"memory exhausted": 4}, near) == (
        "memory exhausted on 4 nodes (needs 512 MB; free: a1b2c3d4 300, ffff0000 200)"
    )
    cpu = [dict(near[0], reason="cpu exhausted", needs={"cpu": 5000}, free={"cpu": 40})]
    assert (
        describe_failures({"cpu exhausted": 1}, cpu)
        == "cpu exhausted on node a1b2c3d4 (needs 5000 MHz, 40 free)"
    )
    two = {
        "failures": {"memory exhausted": 2},
        "groups": {"a": {"wanted": 1, "failed": 1}, "b": {"wanted": 1, "failed": 1}},
        "failed_nodes": {"a": near[:1]},
    }
    assert describe_placement_failure(two)[1] == (
        'group "a": 1 of 1 not placed: memory exhausted on node a1b2c3d4 (needs 512 MB, 300 free)'
    )


def test_placement_failure_per_group_and_without_reasons():
    ev = {
        "failures": {},
        "groups": {"a": {"wanted": 1, "failed": 1}, "b": {"wanted": 2, "failed": 2}},
    }
    assert describe_placement_failure(ev) == [
        "3 of 3 not placed: no eligible node",
        'group "a": 1 of 1 not placed',
        'group "b": 2 of 2 not placed',
    ]
    assert describe_placement_failure(
        {"queued": 2, "placed": 0, "failures": {"missing drivers": 3}}
    ) == ["2 of 2 not placed: 3 nodes filtered by missing drivers"]
    assert describe_failures({"cpu exhausted": 1}) == "cpu exhausted on 1 node"


def test_table_and_ages():
    assert (
        table(["ID", "Status"], [["a", "running"], ["bbbb", None]])
        == "ID    Status\na     running\nbbbb  -"
    )
    assert ago(None, 100) == "-"
    assert ago(97, 100) == "3s ago"
    assert ago(100 - 125, 100) == "2m5s ago"
    assert ago(100 - 3720, 100) == "1h2m ago"
    assert ago(100 - 3 * 86400, 100) == "3d ago"
    assert ago(105, 100) == "0s ago"


def test_alloc_counts_ignore_stopped_but_keep_unchanged_ones():
    # An update that leaves the group unchanged keeps its version-0 allocation.
    job = job_body(
        version=1,
        allocs=[alloc(0, version=1), alloc(1, version=0), alloc(2, desired="stop", version=1)],
    )
    assert alloc_counts(job) == "2/3"
    assert alloc_counts(job_body(status="dead")) == "0/0"


def test_job_summary_lists_allocations():
    text = job_summary(job_body(allocs=[alloc(0), alloc(1, "pending")]), now=100.0)
    assert "ID        = web" in text and "Allocs    = 1/3" in text
    lines = text.splitlines()
    header = lines.index("Allocations") + 1
    assert lines[header].split() == ["ID", "Node", "Group", "Status", "Desired", "Created"]
    assert lines[header + 1].split() == [
        "alloc-0-",
        "node-123",
        "g",
        "running",
        "run",
        "10s",
        "ago",
    ]


def test_node_row_counts_live_allocations():
    node = {
        "node_id": "abcdef0123",
        "region": "eu",
        "endpoint": "http://h:1",
        "healthy": True,
        "resources": {"cpu": 4000, "memory": 8192},
        "allocations": [
            {"status": "running", "resources": {"cpu": 100, "memory": 64}},
            {"status": "complete", "resources": {"cpu": 500, "memory": 500}},
        ],
    }
    assert node_row(node) == [
        "abcdef01",
        "eu",
        "http://h:1",
        "true",
        "100/4000 MHz",
        "64/8192 MB",
        1,
    ]
    node["allocations"] = [{"status": "running"}]
    assert node_row(node)[4:] == ["4000 MHz", "8192 MB", 1]
    # The server's own count wins: one unit, MB, as job files and the API use.
    node["allocated"] = {"cpu": 300, "memory": 128}
    assert node_row(node)[4:] == ["300/4000 MHz", "128/8192 MB", 1]


def test_alloc_summary_shows_tasks_and_events():
    body = dict(
        alloc(0, "failed"),
        tasks={
            "main": {
                "status": "failed",
                "exit_code": 3,
                "error": "exit status 3",
                "restarts": 2,
                "events": [
                    {"time": 95.0, "type": "Started", "message": "task started"},
                    {"time": 98.0, "type": "Terminated", "message": "exit code 3"},
                ],
            }
        },
    )
    text = alloc_summary(body, now=100.0)
    assert 'Task "main" is "failed"' in text
    assert "Exit Code = 3" in text and "Error     = exit status 3" in text
    assert text.index("exit code 3") < text.index("task started")  # newest first


def test_load_job_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(errors.ValidationError, match="bad.json: invalid JSON"):
        load_job_file(str(bad))
    bad.write_text("[]")
    with pytest.raises(errors.ValidationError, match="JSON object"):
        load_job_file(str(bad))
    with pytest.raises(errors.ValidationError, match="missing.json"):
        load_job_file(str(tmp_path / "missing.json"))
