"""Tasks outlive a `kill -9` of their agent; the restarted agent reattaches.

Exec tasks run under a supervisor of their own that records their exit code;
containers are found again by id. The node's TTL is long, so the server never
marks the node down: it must see the same tasks keep running, then their true
exit codes, including that of a task that ended while no agent was there.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from harness import Cluster, pid_alive, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.docker_image import TEST_IMAGE, ensure_test_image, require_engine  # noqa: E402


@pytest.fixture
def engine():
    """The local engine, or None: then only the exec half of the test runs."""
    try:
        client = require_engine()
    except pytest.skip.Exception:
        yield None
        return
    ensure_test_image(client)
    yield client
    client.close()


@pytest.fixture
def cluster(tmp_path, pyz, engine):
    c = Cluster(tmp_path, node_ttl=60.0, heartbeat_interval=0.3)
    c.job_ids = []
    c.start_server()
    c.node_id = c.start_agent("a")
    yield c
    c.stop_all()
    for job_id in c.job_ids if engine is not None else ():
        for container in containers(engine, job_id):
            container.remove(force=True)


def containers(engine, job_id: str) -> list:
    return engine.containers.list(
        all=True, ignore_removed=True, filters={"label": f"orch.job_id={job_id}"}
    )


def submit(cluster, name: str, config: dict) -> str:
    job_id = f"ra-{name}-{uuid.uuid4().hex[:6]}"
    resp = cluster.post(
        "/jobs",
        {
            "job_id": job_id,
            "task_groups": [
                {
                    "name": "g",
                    "count": 1,
                    "tasks": [
                        {"name": "t", "config": config, "resources": {"cpu": 100, "memory": 64}}
                    ],
                }
            ],
        },
    )
    assert resp.status_code == 200, resp.text
    cluster.job_ids.append(job_id)
    return job_id


def task(cluster, job_id: str) -> dict:
    [alloc] = cluster.job(job_id)["allocations"]
    return {
        **alloc["tasks"]["t"],
        "alloc_status": alloc["status"],
        "allocation_id": alloc["allocation_id"],
    }


def wait_task(cluster, job_id: str, status: str, timeout: float = 20.0) -> dict:
    def reached():
        state = task(cluster, job_id)
        return state if state["status"] == status else None

    try:
        return wait_until(reached, timeout, what=f"task of {job_id} {status}")
    except AssertionError as exc:
        raise AssertionError(
            f"task never {status}: {cluster.job(job_id)}\n" + cluster.agents["a"].log()[-3000:]
        ) from exc


def gated(cluster, tag: str, gate: Path) -> str:
    """Records its pid, waits for the gate file, exits 7."""
    return cluster.pid_command(tag, f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 7")


def test_kill9_agent_then_restart_reattaches_and_reports_exit_codes(cluster, engine, tmp_path):
    gate, early_gate = tmp_path / "gate", tmp_path / "early-gate"
    exec_job = submit(cluster, "exec", {"command": gated(cluster, "exec", gate)})
    early_job = submit(cluster, "early", {"command": gated(cluster, "early", early_gate)})
    jobs = [exec_job]
    if engine is not None:
        docker_job = submit(
            cluster,
            "docker",
            {"image": TEST_IMAGE, "command": "while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 7"},
        )
        jobs.append(docker_job)
    for job_id in (*jobs, early_job):
        wait_task(cluster, job_id, "running")
    exec_alloc = task(cluster, exec_job)["allocation_id"]
    early_alloc = task(cluster, early_job)["allocation_id"]
    exec_pid = wait_until(lambda: cluster.task_pids("exec").get(exec_alloc), what="exec pid")
    early_pid = wait_until(lambda: cluster.task_pids("early").get(early_alloc), what="early pid")
    if engine is not None:
        [container] = containers(engine, docker_job)

    cluster.agents["a"].kill9()
    assert pid_alive(exec_pid) and pid_alive(early_pid)
    if engine is not None:
        container.reload()
        assert container.status == "running"
    early_gate.touch()  # this one ends while no agent is there
    wait_until(lambda: not pid_alive(early_pid), what="early task exit")

    assert cluster.start_agent("a") == cluster.node_id
    wait_until(
        lambda: f"restored {len(jobs) + 1} allocations" in cluster.agents["a"].log(),
        what="allocations restored",
    )
    early = wait_task(cluster, early_job, "failed")
    assert early["exit_code"] == 7 and early["error"] == "exit code 7"
    for job_id in jobs:
        state = wait_task(cluster, job_id, "running")
        assert state["alloc_status"] == "running"
        assert "Reattached" in [e["type"] for e in state["events"]]
    # The same processes, none started twice.
    assert pid_alive(exec_pid)
    assert cluster.task_pids("exec") == {exec_alloc: exec_pid}
    if engine is not None:
        assert [c.id for c in containers(engine, docker_job)] == [container.id]
        container.reload()
        assert container.status == "running"

    gate.touch()
    if engine is not None:
        container.exec_run(["touch", "/tmp/go"])
    for job_id in jobs:
        state = wait_task(cluster, job_id, "failed")
        assert state["exit_code"] == 7, state
        cluster.wait_job(job_id, "failed")
    assert not pid_alive(exec_pid)
    if engine is not None:
        wait_until(lambda: containers(engine, docker_job) == [], what="container removed")
