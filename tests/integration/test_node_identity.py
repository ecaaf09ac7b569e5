"""A node speaks only for itself (issue #10 item 3), with real processes.

Another node's heartbeat naming A's allocation, a DELETE sent straight to A's
agent, and a register of A's node id from another endpoint: none of them may
leave A's work dead and unreplaced.
"""

from __future__ import annotations

import threading

import pytest
import requests

from harness import Cluster, free_port, pid_alive, wait_until
from test_end_to_end import job_body, submit

HEARTBEAT = 0.3


@pytest.fixture
def cluster(tmp_path, pyz):
    c = Cluster(tmp_path, node_ttl=3.0, heartbeat_interval=HEARTBEAT)
    c.start_server()
    yield c
    c.stop_all()


def running_service(cluster: Cluster, job_id: str) -> tuple[dict, int]:
    """A count-1 service running on the cluster: (its allocation, its task's pid)."""
    submit(cluster, job_body(job_id, cluster.pid_command(job_id), type_="service"))
    cluster.wait_job(job_id, "running")
    (alloc,) = cluster.live_allocs(job_id)
    pid = wait_until(
        lambda: cluster.task_pids(job_id).get(alloc["allocation_id"]), what=f"{job_id} task pid"
    )
    return alloc, pid


def hand_node(node_id: str) -> dict:
    """A node registered by hand (the README's curl example): no secret."""
    return {
        "node_id": node_id,
        "resources": {"cpu": 1000, "memory": 1024},
        "endpoint": f"http://127.0.0.1:{free_port()}",
        "attributes": {"driver.exec": False, "driver.docker": False},
    }


def test_another_nodes_heartbeat_naming_an_allocation_stops_nothing(cluster):
    node_a = cluster.start_agent("a")
    alloc, pid = running_service(cluster, "one")
    assert alloc["node_id"] == node_a
    assert cluster.post("/register", hand_node("node-b")).status_code == 200
    stop = threading.Event()
    answers = []

    def beat():
        # Node B claims A's allocation in every state it could report.
        for status in ["running", "complete", "failed", "stopped"] * 5:
            if stop.wait(HEARTBEAT):
                return
            report = {"status": status, "start_time": 1.0, "end_time": None, "tasks": {}}
            answers.append(
                cluster.post(
                    "/heartbeat",
                    {
                        "node_id": "node-b",
                        "healthy": True,
                        "allocations": {alloc["allocation_id"]: report},
                    },
                ).status_code
            )

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        beater.join(30)
    finally:
        stop.set()
    assert answers == [200] * 20
    assert pid_alive(pid)
    job = cluster.job("one")
    assert job["status"] == "running" and len(job["allocations"]) == 1
    assert job["allocations"][0]["status"] == "running"
    assert "ignored" in cluster.server.log()


def test_a_delete_sent_straight_to_the_agent_is_replaced(cluster):
    node_a = cluster.start_agent("a")
    alloc, pid = running_service(cluster, "svc")
    endpoint = cluster.node(node_a)["endpoint"]
    resp = requests.delete(f"{endpoint}/allocations/{alloc['allocation_id']}", timeout=5)
    assert resp.status_code == 200
    wait_until(lambda: not pid_alive(pid), what="the deleted task stopped")

    def replaced():
        live = [a for a in cluster.live_allocs("svc") if a["status"] == "running"]
        return live[0] if live and live[0]["allocation_id"] != alloc["allocation_id"] else None

    replacement = wait_until(replaced, timeout=30, what="a replacement running")
    assert replacement["previous_allocation"] == alloc["allocation_id"]
    cluster.wait_job("svc", "running")
    old = cluster.get(f"/allocations/{alloc['allocation_id']}").json()
    assert old["status"] == "failed" and old["desired_status"] == "stop"
    new_pid = wait_until(lambda: cluster.task_pids("svc").get(replacement["allocation_id"]))
    assert pid_alive(new_pid)


def test_a_register_from_another_endpoint_does_not_take_a_healthy_node(cluster):
    node_a = cluster.start_agent("a")
    endpoint = cluster.node(node_a)["endpoint"]
    _, pid = running_service(cluster, "first")
    thief = dict(hand_node(node_a), attributes={"driver.exec": True})
    resp = cluster.post("/register", thief)
    assert resp.status_code == 403 and "secret_id" in resp.json()["error"]
    assert cluster.node(node_a)["endpoint"] == endpoint
    # A keeps its pushes: new work still reaches it, old work runs on.
    alloc, _ = running_service(cluster, "second")
    assert alloc["node_id"] == node_a
    assert pid_alive(pid)
    # A's own agent, restarted on another port (same data dir, same secret), is welcome.
    cluster.agents["a"].terminate()
    assert cluster.start_agent("a") == node_a
    wait_until(
        lambda: cluster.node(node_a)["endpoint"] != endpoint,
        what="a registered again from its new port",
    )
