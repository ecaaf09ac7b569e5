"""The CLI's service commands (parsing) and its health views (alloc and job status)."""

from cli_helpers import alloc, job_body, parse

from orch.cli.commands import alloc_summary
from orch.cli.job import job_summary


def test_service_commands_parse():
    args = parse("service", "info", "web", "--healthy", "--json")
    assert (args.name, args.healthy, args.json) == ("web", True, True)
    assert parse("service", "list").service_command == "list"


def test_alloc_status_shows_health_and_the_checks():
    body = {
        **alloc(0),
        "health": "unhealthy",
        "checks": {"web/http-0": {"status": "failing", "output": "HTTP 500:\nboom", "time": 90}},
    }
    text = alloc_summary(body, now=100.0)
    assert "Health" in text and "unhealthy" in text
    lines = text.splitlines()
    header = lines.index("Checks") + 1
    assert lines[header].split() == ["Check", "Status", "Since", "Output"]
    assert lines[header + 1].split() == [
        "web/http-0",
        "failing",
        "10s",
        "ago",
        "HTTP",
        "500:",
        "boom",
    ]
    assert "Health" not in alloc_summary(alloc(1), now=100.0)  # no checks: no line


def test_job_status_has_a_health_column_where_a_group_has_services():
    job = job_body(allocs=[{**alloc(0), "health": "healthy"}, alloc(1)])
    job["task_groups"][0]["services"] = [{"name": "web"}]
    lines = job_summary(job, now=100.0).splitlines()
    header = lines.index("Allocations") + 1
    assert lines[header].split() == [
        "ID",
        "Node",
        "Group",
        "Status",
        "Health",
        "Desired",
        "Created",
    ]
    healths = sorted(line.split()[4] for line in lines[header + 1 : header + 3])
    assert healths == ["healthy", "unknown"]
