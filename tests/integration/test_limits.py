"""Exec memory limits through a real cluster: the task is killed and says why."""

from __future__ import annotations

import sys

import pytest

from harness import Cluster


@pytest.fixture
def cluster(tmp_path, pyz):
    c = Cluster(tmp_path, heartbeat_interval=0.3)
    c.start_server()
    c.start_agent("a")
    yield c
    c.stop_all()


def test_exec_task_past_its_memory_limit_fails_naming_the_limit(cluster):
    hog = f'{sys.executable} -c "b = bytearray(200 * 1024 * 1024); import time; time.sleep(5)"'
    resp = cluster.post(
        "/jobs",
        {
            "job_id": "hog",
            "task_groups": [
                {
                    "name": "g",
                    "count": 1,
                    "tasks": [
                        {
                            "name": "t",
                            "driver": "exec",
                            "config": {"command": hog},
                            "resources": {"cpu": 100, "memory": 64},
                        }
                    ],
                }
            ],
        },
    )
    assert resp.status_code == 200, resp.text
    job = cluster.wait_job("hog", "failed", timeout=20)
    task = job["allocations"][0]["tasks"]["t"]
    assert task["status"] == "failed" and task["exit_code"] == 137
    assert task["error"] == "OOM killed: memory limit 64 MB exceeded"
    assert "OOM" in [e["type"] for e in task["events"]]
