"""Helpers shared by the CLI's unit tests (test_cli_*.py): parsing and canned bodies."""

from orch import __main__ as entry


def parse(*argv):
    return entry.build_parser().parse_args(list(argv))


def job_body(status="running", allocs=(), count=3, job_type="service", version=0):
    return {
        "job_id": "web",
        "type": job_type,
        "status": status,
        "version": version,
        "task_groups": [{"name": "g", "count": count, "tasks": []}],
        "allocations": list(allocs),
    }


def alloc(i, status="running", desired="run", version=0, node="node-1234567890"):
    return {
        "allocation_id": f"alloc-{i}-0000000",
        "node_id": node,
        "task_group": "g",
        "name": f"web.g[{i}]",
        "status": status,
        "client_status": status,
        "desired_status": desired,
        "job_version": version,
        "create_time": 90.0 - i,
    }
