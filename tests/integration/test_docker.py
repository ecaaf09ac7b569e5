"""Docker tasks through a real cluster: the server and agents run from orch.pyz.

Three agents: `docker` talks to the local engine, `fallback` has DOCKER_HOST on
a socket that does not exist, `late` on a socket path the test makes appear.
Jobs are pinned to a node with a `node_id` constraint. Runs in CI (the engine
comes from `.ci/install-docker.sh`); elsewhere skips when no engine answers.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import requests

from harness import Cluster, Proc, free_port, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from orch.agent.drivers import DOCKER_FALLBACK, DOCKER_NO_COMMAND  # noqa: E402
from tests.docker_image import (
    TEST_IMAGE,
    ensure_test_image,  # noqa: E402
    remove_containers,
    require_engine,
)

NO_ENGINE = "unix:///nonexistent.sock"
ENGINE_SOCKET = "/var/run/docker.sock"
JOB_PREFIX = "dk-"

# The module's first test may build the test image and start three agents.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def engine():
    client = require_engine()
    ensure_test_image(client)
    yield client
    # Whatever a failed test left behind: containers of this module's jobs.
    for container in client.containers.list(
        all=True, ignore_removed=True, filters={"label": "orch.job_id"}
    ):
        if container.labels["orch.job_id"].startswith(JOB_PREFIX):
            remove_containers(client, container.labels.get("orch.alloc_id"))
    client.close()


@pytest.fixture(scope="module")
def cluster(engine, pyz, tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("docker"), heartbeat_interval=0.5)
    c.late_socket = c.tmp / "late" / "docker.sock"
    c.late_socket.parent.mkdir()
    try:
        c.start_server()
        c.nodes = {
            "docker": c.start_agent("docker"),
            "fallback": c.start_agent("fallback", env={"DOCKER_HOST": NO_ENGINE}),
            "late": c.start_agent("late", env={"DOCKER_HOST": f"unix://{c.late_socket}"}),
        }
        yield c
    finally:
        c.stop_all()


def run_job(cluster, node: str, config: dict, job_type: str = "batch") -> str:
    job_id = f"{JOB_PREFIX}{uuid.uuid4().hex[:10]}"
    resp = cluster.post(
        "/jobs",
        {
            "job_id": job_id,
            "type": job_type,
            "constraints": [
                {"attribute": "node_id", "operator": "=", "value": cluster.nodes[node]}
            ],
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
    return job_id


def wait_task(cluster, job_id: str, status: str, timeout: float = 30.0) -> dict:
    """The task state of the job's allocation once it reaches `status`."""

    def reached():
        allocs = cluster.job(job_id)["allocations"]
        task = allocs[-1]["tasks"]["t"] if allocs else {}
        return task if task.get("status") == status else None

    try:
        return wait_until(reached, timeout, what=f"task of {job_id} {status}")
    except AssertionError as exc:
        raise AssertionError(
            f"task never {status}: {cluster.job(job_id)}\n"
            + "\n".join(a.log()[-2000:] for a in cluster.agents.values())
        ) from exc


def containers(engine, job_id: str) -> list:
    return engine.containers.list(
        all=True, ignore_removed=True, filters={"label": f"orch.job_id={job_id}"}
    )


def http_text(port: int) -> str:
    try:
        return requests.get(f"http://127.0.0.1:{port}/", timeout=1).text
    except requests.RequestException:
        return ""


def test_fingerprints(cluster):
    assert cluster.node(cluster.nodes["docker"])["attributes"]["driver.docker"] is True
    fallback = cluster.node(cluster.nodes["fallback"])["attributes"]
    assert fallback["driver.docker"] is False and fallback["driver.exec"] is True


def test_httpd_port_answers_then_stop_removes_container(cluster, engine):
    port = free_port()
    job_id = run_job(
        cluster,
        "docker",
        {
            "image": TEST_IMAGE,
            "port": port,
            "container_port": 8080,
            "command": "echo served-by-orch > /www/index.html && exec httpd -f -p 8080 -h /www",
        },
        job_type="service",
    )
    wait_task(cluster, job_id, "running")
    wait_until(lambda: http_text(port) == "served-by-orch\n", what=f"HTTP on port {port}")
    [container] = containers(engine, job_id)
    alloc_id = cluster.job(job_id)["allocations"][0]["allocation_id"]
    assert container.name == f"orch-{alloc_id}-t"
    assert container.labels["orch.alloc_id"] == alloc_id
    assert container.labels["orch.task"] == "t"
    assert container.attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024

    resp = cluster.delete(f"/jobs/{job_id}")
    assert resp.status_code == 200, resp.text
    wait_until(lambda: containers(engine, job_id) == [], what="container removed")
    cluster.wait_job(job_id, "dead")
    assert http_text(port) == ""


def test_stats_of_a_busy_container_are_relayed(cluster, engine):
    job_id = run_job(
        cluster, "docker", {"image": TEST_IMAGE, "command": "while :; do :; done"}, "service"
    )
    wait_task(cluster, job_id, "running")
    alloc_id = cluster.job(job_id)["allocations"][0]["allocation_id"]

    def busy():
        resp = cluster.get(f"/allocations/{alloc_id}/stats")
        assert resp.status_code == 200, resp.text
        figures = resp.json()["tasks"]["t"]
        # The engine's first sample may lack a previous one: polled.
        ok = figures["cpu_percent"] > 20 and figures["memory_rss_mb"] > 0
        return figures if ok and figures["pids"] >= 1 else None

    wait_until(busy, 30, what="measured use of the busy container")

    # The page waits at most 2 s for the engine's stats (about 1 s when quiet):
    # on a busy machine a render may say "unavailable", the next one shows them.
    def page_with_stats():
        page = cluster.get(f"/ui/allocations/{alloc_id}?fragment=1")
        return page if page.status_code == 200 and 'data-stats="1"' in page.text else None

    page = wait_until(page_with_stats, 30, what="the allocation page with measured use")
    assert "MB of 64 MB" in page.text
    assert cluster.delete(f"/jobs/{job_id}").status_code == 200
    wait_until(lambda: containers(engine, job_id) == [], what="container removed")


def test_exit_code_fails_the_task(cluster, engine):
    job_id = run_job(
        cluster, "docker", {"image": TEST_IMAGE, "command": "echo about to fail; exit 3"}
    )
    task = wait_task(cluster, job_id, "failed")
    assert task["exit_code"] == 3
    cluster.wait_job(job_id, "failed")
    alloc_id = cluster.job(job_id)["allocations"][0]["allocation_id"]
    logs = cluster.get(f"/allocations/{alloc_id}/logs/t")
    assert logs.status_code == 200 and logs.text == "about to fail\n"
    wait_until(lambda: containers(engine, job_id) == [], what="container removed")


def test_fallback_runs_command_through_exec(cluster, engine):
    job_id = run_job(
        cluster,
        "fallback",
        {"image": TEST_IMAGE, "command": "echo fell back to $FROM", "env": {"FROM": "exec"}},
    )
    task = wait_task(cluster, job_id, "complete")
    assert DOCKER_FALLBACK in [e["message"] for e in task["events"]]
    alloc_id = cluster.job(job_id)["allocations"][0]["allocation_id"]
    assert cluster.get(f"/allocations/{alloc_id}/logs/t").text == "fell back to exec\n"
    assert containers(engine, job_id) == []


def test_without_command_no_docker_node_fails(cluster, tmp_path):
    # The scheduler does not place it where docker is missing ...
    job_id = run_job(cluster, "fallback", {"image": TEST_IMAGE})
    evals = wait_until(
        lambda: [
            e
            for e in cluster.get(f"/jobs/{job_id}/evaluations").json()["evaluations"]
            if e["failures"]
        ],
        what="a failed placement",
    )
    assert "missing drivers" in evals[0]["failures"]
    assert cluster.job(job_id)["status"] == "pending"
    # ... and an agent handed one anyway fails it, saying why. This agent has
    # no server (a cluster's server stops an allocation it never placed).
    port = free_port()
    agent = Proc(
        [
            "agent",
            "--port",
            str(port),
            "--server",
            f"http://127.0.0.1:{free_port()}",
            "--data-dir",
            str(tmp_path / "lone"),
        ],
        tmp_path / "lone.log",
        env={"DOCKER_HOST": NO_ENGINE},
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: requests.get(f"{endpoint}/health", timeout=1).ok, what="lone agent /health"
        )
        alloc_id = str(uuid.uuid4())
        resp = requests.post(
            f"{endpoint}/allocations",
            timeout=5,
            json={
                "allocation_id": alloc_id,
                "job_id": job_id,
                "task_group": {
                    "name": "g",
                    "tasks": [
                        {
                            "name": "t",
                            "driver": "docker",
                            "config": {"image": TEST_IMAGE},
                            "resources": {"cpu": 100, "memory": 64},
                        }
                    ],
                },
            },
        )
        assert resp.status_code == 200, resp.text
        alloc = wait_until(
            lambda: (
                (a := requests.get(f"{endpoint}/allocations/{alloc_id}", timeout=2).json())
                and a["status"] == "failed"
                and a
            ),
            what="allocation failed",
        )
        task = alloc["tasks"]["t"]
        assert task["status"] == "failed" and task["exit_code"] is None
        assert task["error"].startswith(DOCKER_NO_COMMAND)
        assert NO_ENGINE.removeprefix("unix://") in task["error"]
    finally:
        agent.cleanup()


def test_engine_appearing_reregisters_the_node(cluster):
    node_id = cluster.nodes["late"]
    assert cluster.node(node_id)["attributes"]["driver.docker"] is False
    os.symlink(ENGINE_SOCKET, cluster.late_socket)
    wait_until(
        lambda: cluster.node(node_id)["attributes"]["driver.docker"] is True,
        timeout=15,
        what="driver.docker true after the engine appeared",
    )
    job_id = run_job(cluster, "late", {"image": TEST_IMAGE, "command": "exit 0"})
    task = wait_task(cluster, job_id, "complete")
    assert not any("fallback" in e["message"] for e in task["events"])
