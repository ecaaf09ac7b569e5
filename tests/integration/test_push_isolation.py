"""Pushes to agents, with real processes: a hung agent delays only itself,
stops racing their places are never lost, a refusing node is left at once."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.jobspec import exec_job

from harness import Cluster, free_port, wait_until

TTL = 3.0
PURGED_WITHIN = 6.0  # seconds after the purge until the agents hold nothing


@pytest.fixture
def cluster(tmp_path, pyz):
    c = Cluster(tmp_path, node_ttl=TTL, heartbeat_interval=0.3)
    c.start_server()
    yield c
    c.stop_all()


def service(job_id: str, command: str, count: int) -> dict:
    return exec_job(job_id, command, count=count, type_="service", cpu=1, memory=1)


def running_on(cluster: Cluster, job_id: str, node_id: str) -> int:
    return sum(
        1
        for a in cluster.live_allocs(job_id)
        if a["node_id"] == node_id and a["status"] == "running"
    )


def test_a_hung_agent_does_not_delay_work_on_a_healthy_one(cluster):
    hung = cluster.start_agent("hung")
    healthy = cluster.start_agent("healthy")
    count = 40
    agent = cluster.agents["hung"]
    os.kill(agent.pid, signal.SIGSTOP)  # TCP still accepted, never answered
    stopped_at = time.monotonic()
    try:
        assert cluster.post("/jobs", service("spread", cluster.pid_command("spread"), count)).ok
        wait_until(
            lambda: any(a["node_id"] == hung for a in cluster.job("spread")["allocations"]),
            timeout=10,
            what="placements on the hung node too",
        )
        # Everything ends up on the healthy node: the hung node's share once
        # it missed its TTL, and no push to it holds up the healthy one's.
        wait_until(
            lambda: running_on(cluster, "spread", healthy) == count,
            timeout=60,
            interval=0.1,
            what=f"{count} running on the healthy node",
        )
        took = time.monotonic() - stopped_at
        print(f"all {count} running on the healthy node {took:.1f}s after the hang")
        assert took <= TTL + 2.0, (
            f"work on the healthy node ran {took:.1f}s after the other hung (TTL {TTL}s)"
        )
    finally:
        os.kill(agent.pid, signal.SIGCONT)


def agent_allocations(cluster: Cluster, name: str) -> tuple[int, list[str]]:
    """(allocations the agent holds per its /health, allocation dirs on disk)."""
    log = cluster.agents[name].log()
    url = log.split("agent listening on ", 1)[1].split()[0]
    held = requests.get(f"{url}/health", timeout=5).json()["allocations"]
    allocs_dir = Path(cluster.tmp) / f"agent-{name}" / "allocs"
    return held, sorted(os.listdir(allocs_dir)) if allocs_dir.exists() else []


def test_stopping_and_purging_while_pushes_are_in_flight_leaves_nothing(tmp_path, pyz):
    # Heartbeats 5 s apart: the stops must be delivered as such, not found
    # missing by a later heartbeat's reconciliation.
    cluster = Cluster(tmp_path, node_ttl=30.0, heartbeat_interval=5.0)
    try:
        cluster.start_server()
        _purge_while_pushing(cluster)
    finally:
        cluster.stop_all()


def _purge_while_pushing(cluster: Cluster) -> None:
    cluster.start_agent("a")
    cluster.start_agent("b")
    count = 300
    assert cluster.post("/jobs", service("big", cluster.pid_command("big"), count)).ok
    # Stop, then purge, while the placements are still being pushed.
    wait_until(
        lambda: any(a["status"] == "running" for a in cluster.job("big")["allocations"]),
        timeout=30,
        interval=0.02,
        what="the first allocation running",
    )
    assert cluster.delete("/jobs/big").ok
    assert cluster.post("/jobs/big/delete").ok
    purged = time.monotonic()

    def empty():
        return all(agent_allocations(cluster, name) == (0, []) for name in ("a", "b"))

    try:
        wait_until(empty, timeout=PURGED_WITHIN, interval=0.2, what="agents holding nothing")
    except AssertionError:
        held = {name: agent_allocations(cluster, name)[0] for name in ("a", "b")}
        raise AssertionError(f"allocations left on the agents: {held}") from None
    print(f"agents empty {time.monotonic() - purged:.1f}s after the purge")


def test_a_node_refusing_pushes_has_its_placements_moved_within_one_ttl(cluster):
    good = cluster.start_agent("good")
    # A node that heartbeats but on whose endpoint nothing listens; the good
    # node's twin, so that the job's placements spread over both.
    twin = cluster.node(good)
    node = {
        "node_id": "dead-end",
        "resources": {"cpu": twin["resources"]["cpu"], "memory": twin["resources"]["memory"]},
        "healthy": True,
        "endpoint": f"http://127.0.0.1:{free_port()}",
        "attributes": twin["attributes"],
    }
    assert cluster.post("/register", node).ok
    stop = threading.Event()

    def beat():
        while not stop.wait(0.3):
            cluster.post("/heartbeat", {"node_id": "dead-end", "healthy": True, "allocations": {}})

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        count = 10
        started = time.monotonic()
        assert cluster.post("/jobs", service("moved", cluster.pid_command("moved"), count)).ok
        wait_until(
            lambda: running_on(cluster, "moved", good) == count,
            timeout=30,
            interval=0.1,
            what=f"{count} running on the good node",
        )
        took = time.monotonic() - started
        print(f"{count} running on the good node {took:.1f}s after the submit")
        assert took <= TTL, f"placements moved after {took:.1f}s (TTL {TTL}s)"
        refused = [a for a in cluster.job("moved")["allocations"] if a["node_id"] == "dead-end"]
        assert refused, "some placements went to the refusing node first"
        assert all(a["status"] == "failed" for a in refused)
        # The log relay answers for such a node with JSON, and relays a live
        # node's answers as they are (status, content type, body).
        resp = cluster.get(f"/allocations/{refused[0]['allocation_id']}/logs/t")
        assert resp.status_code == 502 and "error" in resp.json()
        live = cluster.live_allocs("moved")[0]["allocation_id"]
        resp = cluster.get(f"/allocations/{live}/logs/t?offset=0")
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        resp = cluster.get(f"/allocations/{live}/logs/nope")
        assert resp.status_code == 404 and "error" in resp.json()
    finally:
        stop.set()
        beater.join(5)
