"""Only the leader pushes: a job stopped or purged through a follower is stopped by the leader.

Two servers on a real PostgreSQL, one agent. The follower commits the stop
(or the purge) and pushes nothing; the leader applies the change from the
change log and pushes the stops, so the task is gone from the agent within
seconds, long before a full heartbeat (every 30 s) would repair it.
"""

from __future__ import annotations

import time

import pytest
import requests

from ha_cluster import HaCluster, service_job
from harness import pid_alive, wait_until

# Well under the agent's 30 s full-beat repair: the leader's push did it.
PROMPT_S = 10.0

pytestmark = [pytest.mark.timeout(240)]


@pytest.fixture
def ha(tmp_path, postgres_url, pyz):
    cluster = HaCluster(tmp_path, postgres_url, servers=2, node_ttl=10.0)
    yield cluster
    cluster.stop_all()


def run_job(ha: HaCluster, job_id: str, via: str) -> int:
    """Submit a service job through ``via``; the PID of its running task."""
    command = f"echo $$ >> {ha.pid_dir}/{job_id}.$ORCH_ALLOC_ID; exec sleep 600"
    assert ha.post("/jobs", service_job(job_id, command), url=via).status_code == 200

    def task_pid():
        files = list(ha.pid_dir.glob(f"{job_id}.*"))
        return int(files[0].read_text().split()[0]) if files else None

    pid = wait_until(task_pid, 60, what=f"{job_id} task started")
    wait_until(lambda: (ha.job(job_id) or {}).get("status") == "running", 60, what=f"{job_id} up")
    return pid


def gone_within(pid: int, since: float) -> float:
    wait_until(lambda: not pid_alive(pid), 60, what=f"task {pid} stopped")
    took = time.monotonic() - since
    assert took < PROMPT_S, f"task stopped after {took:.1f}s: not by a push"
    return took


def test_a_followers_stop_and_purge_are_pushed_by_the_leader(ha: HaCluster):
    ha.start_servers()
    ha.start_agent("a")
    leader = ha.wait_leader()
    follower = next(u for u in ha.urls if u != leader)

    pid = run_job(ha, "svc-stop", follower)
    since = time.monotonic()
    assert requests.delete(f"{follower}/jobs/svc-stop", timeout=5).status_code == 200
    stopped = gone_within(pid, since)

    pid = run_job(ha, "svc-purge", follower)
    since = time.monotonic()
    assert ha.post("/jobs/svc-purge/delete", None, url=follower).status_code == 200
    purged = gone_within(pid, since)
    print(f"task gone after a follower's stop: {stopped:.2f}s, purge: {purged:.2f}s")

    follower_log = ha.servers[follower].log()
    leader_log = ha.servers[leader].log()
    assert follower_log.count("left to the leader to push") == 2, follower_log[-3000:]
    assert "committed by another server" not in follower_log
    assert leader_log.count("stops committed by another server") == 2, leader_log[-3000:]


def test_a_drain_started_on_a_follower_is_driven_by_the_leader(ha: HaCluster):
    ha.start_servers()
    first = ha.start_agent("a")
    leader = ha.wait_leader()
    follower = next(u for u in ha.urls if u != leader)
    run_job(ha, "svc-drained", follower)
    alloc = ha.job("svc-drained")["allocations"][0]
    source = alloc["node_id"]
    second = ha.start_agent("b")
    target = second if source == first else first

    resp = ha.post(f"/nodes/{source}/drain", {"deadline_s": 60}, url=follower)
    assert resp.status_code == 200, resp.text

    def moved():
        allocs = (ha.job("svc-drained") or {}).get("allocations", [])
        running = [a for a in allocs if a["status"] == "running" and a["desired_status"] == "run"]
        return [a["node_id"] for a in running] == [target]

    # Migrated by the leader's drainer: a replacement on the other node runs,
    # the old copy is stopped (without the leader hearing of the drain,
    # nothing would move before a failover).
    wait_until(moved, 60, what="the drained job's copy on the other node")
    assert "drain started on another server" in ha.servers[leader].log()
