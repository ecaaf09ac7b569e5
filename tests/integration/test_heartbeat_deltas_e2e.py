"""Heartbeats carrying only changes and batched pushes (issue #17), with real
processes: an evaluation's allocations reach their node, changes made after
the server was killed (-9) and restarted still reach it, and a node back
from the dead is asked for its whole picture at once."""

from __future__ import annotations

import signal

import pytest

from tests.jobspec import exec_job

from harness import Cluster, pid_alive, wait_until

COUNT = 10


@pytest.fixture
def cluster(tmp_path, pyz):
    c = Cluster(tmp_path, node_ttl=5.0, heartbeat_interval=0.2)
    c.start_server()
    yield c
    c.stop_all()


def test_changes_after_a_server_restart_reach_it(cluster, tmp_path):
    node_id = cluster.start_agent("a")
    flag = tmp_path / "go"
    # Each task waits for the flag, then ends well: the batch job completes.
    body = f"while [ ! -e {flag} ]; do sleep 0.05; done"
    job = exec_job("waiters", cluster.pid_command("w", body), count=COUNT, cpu=1, memory=1)
    assert cluster.post("/jobs", job).ok
    wait_until(lambda: len(cluster.task_pids("w")) == COUNT, timeout=30, what="every task started")
    cluster.wait_job("waiters", "running", timeout=30)
    # Unchanged allocations are left out of the beats from now on; the
    # server, killed and started again, asks for them all (resync).
    cluster.server.kill9()
    cluster.start_server()
    flag.touch()
    done = cluster.wait_job("waiters", "complete", timeout=30)
    assert {a["status"] for a in done["allocations"]} == {"complete"}
    assert {a["node_id"] for a in done["allocations"]} == {node_id}
    assert cluster.node(node_id)["healthy"] is True


def test_a_node_back_from_the_dead_stops_its_lost_allocations_at_once(cluster):
    node_id = cluster.start_agent("a")
    job = exec_job("svc", cluster.pid_command("s"), count=2, type_="service", cpu=1, memory=1)
    assert cluster.post("/jobs", job).ok
    wait_until(lambda: len(cluster.task_pids("s")) == 2, timeout=30, what="both tasks started")
    cluster.wait_job("svc", "running", timeout=30)
    pids = list(cluster.task_pids("s").values())
    agent = cluster.agents["a"]
    agent.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: not cluster.node(node_id)["healthy"], timeout=20, what="node down")
    finally:
        agent.signal(signal.SIGCONT)
    # Its allocations are lost (desired stop) but unchanged on the node, so
    # absent from its delta beats: the server's resync brings them, and the
    # stop, well before the agent's own periodic full beat (30 s).
    wait_until(
        lambda: not any(pid_alive(pid) for pid in pids), timeout=12, what="lost tasks stopped"
    )
