"""Tokens end to end: the server and its agents refuse callers without one."""

from __future__ import annotations

import pytest
import requests

from harness import Cluster, pid_alive, wait_until
from test_end_to_end import job_body


@pytest.fixture
def cluster(tmp_path, pyz):
    c = Cluster(tmp_path, token="s3cret-token")
    c.start_server()
    yield c
    c.stop_all()


def test_agent_runs_nothing_for_a_caller_without_the_token(cluster):
    node_id = cluster.start_agent("a")
    agent = cluster.node(node_id)["endpoint"]
    spec = {
        "allocation_id": "intruder",
        "job_id": "x",
        "task_group": {
            "name": "g",
            "tasks": [{"name": "t", "config": {"command": cluster.pid_command("intruder")}}],
        },
    }
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = requests.post(f"{agent}/allocations", json=spec, headers=headers, timeout=5)
        assert resp.status_code == 401 and resp.json()["error"]
        assert requests.get(f"{cluster.url}/jobs", headers=headers, timeout=5).status_code == 401
    assert requests.get(f"{cluster.url}/health", timeout=5).ok  # public
    assert requests.get(f"{agent}/health", timeout=5).ok

    # The cluster itself carries the token: server -> agent pushes work.
    resp = requests.post(
        f"{cluster.url}/jobs",
        headers=cluster.headers,
        timeout=5,
        json=job_body("ok", cluster.pid_command("ok"), type_="service"),
    )
    assert resp.ok
    wait_until(
        lambda: (
            requests.get(f"{cluster.url}/jobs/ok", headers=cluster.headers, timeout=5).json()[
                "status"
            ]
            == "running"
        )
    )
    pids = wait_until(lambda: cluster.task_pids("ok"))
    assert all(pid_alive(p) for p in pids.values())
    assert cluster.task_pids("intruder") == {}
