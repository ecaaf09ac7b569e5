"""Fencing with real processes: a paused leader is replaced and, resumed, schedules nothing.

Two servers on a real PostgreSQL, two agents. A burst of jobs goes to the
leader and the leader is frozen (SIGSTOP) at once, its queue full, past its
lease: the other server takes over and places the work. The old leader is
resumed: it follows (its own clock told it the lease was gone; a late plan
commit would find another term in the lease row), jobs submitted to it are
placed by the new leader, and no job is ever placed twice (each task appends
its PID to a file named after its allocation).
"""

from __future__ import annotations

import time

import pytest

from ha_cluster import HaCluster, placed_more_than_once, service_job
from harness import wait_until

LEASE = 2.0
BURST = 30

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def ha(tmp_path, postgres_url, pyz):
    cluster = HaCluster(tmp_path, postgres_url, servers=2, node_ttl=10.0, lease=LEASE)
    yield cluster
    cluster.stop_all()


def job(ha: HaCluster, job_id: str) -> dict:
    runs = ha.pid_dir
    return service_job(job_id, f"echo $$ >> {runs}/{job_id}.$ORCH_ALLOC_ID; exec sleep 600")


def wait_running(ha: HaCluster, job_ids: list[str]) -> None:
    for job_id in job_ids:
        wait_until(
            lambda j=job_id: (ha.job(j) or {}).get("status") == "running",
            90,
            what=f"{job_id} running",
        )


def test_paused_leader_is_fenced(ha: HaCluster):
    ha.start_servers()
    ha.start_agent("a")
    ha.start_agent("b")
    old = ha.wait_leader()
    new = next(u for u in ha.urls if u != old)
    first = [f"svc-old-{i:02d}" for i in range(BURST)]
    for job_id in first:
        assert ha.post("/jobs", job(ha, job_id), url=old).status_code == 200
    ha.pause(old)
    paused_at = time.monotonic()
    assert ha.wait_leader(timeout=30) == new
    took_over = time.monotonic() - paused_at
    second = [f"svc-new-{i:02d}" for i in range(5)]
    for job_id in second:
        assert ha.post("/jobs", job(ha, job_id), url=new).status_code == 200
    wait_running(ha, first + second)

    ha.resume(old)
    # The old leader follows the new term, by its own account.
    wait_until(
        lambda: (
            not ha.get("/status/leader", old).json()["this_server"]["leader"]
            and ha.leader(old) == new
        ),
        30,
        what="the old leader following",
    )
    third = [f"svc-back-{i:02d}" for i in range(5)]
    for job_id in third:  # stored by the follower, placed by the leader
        assert ha.post("/jobs", job(ha, job_id), url=old).status_code == 200
    wait_running(ha, third)
    # Room for any late plan of the old leader to land (it must not).
    time.sleep(2 * LEASE)
    everything = first + second + third
    twice = placed_more_than_once(ha, everything)
    assert not twice, f"placed more than once: {twice}"
    assert {p.name.split(".")[0] for p in ha.pid_dir.iterdir()} == set(everything)
    log = ha.servers[old].log()
    assert "leadership" in log and ("stepping down" in log or "leadership lost" in log)
    print(f"\nfencing: paused leader replaced after {took_over:.2f}s (lease {LEASE:g}s)")
