"""PostgreSQL itself lost: writes answer 503, tasks keep running, nothing is lost.

Two servers and an agent on a PostgreSQL of the test's own, which is shut
down while a service runs. Meanwhile every server answers a submit with a
503 JSON error (never a 500 or a hang), reads still answer from memory, and
the task keeps running for longer than the node TTL (the leader, unable to
renew its lease, stopped its heartbeat monitor rather than call nodes down).
PostgreSQL comes back on the same port: a leader is elected again, the job
acknowledged before the loss still runs as the same allocation, and new
submits are placed.
"""

from __future__ import annotations

import time

import pytest

from orch.dev.postgres import ThrowawayPostgres

from ha_cluster import HaCluster, running_allocs, service_job
from harness import pid_alive, wait_until

NODE_TTL = 4.0

pytestmark = [
    pytest.mark.usefixtures("postgres_programs"),
    pytest.mark.slow,
    pytest.mark.timeout(300),
]


@pytest.fixture
def pg(tmp_path):
    server = ThrowawayPostgres(str(tmp_path / "pg"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ha(tmp_path, pg, pyz):
    cluster = HaCluster(tmp_path, pg.url, servers=2, node_ttl=NODE_TTL, lease=2.0)
    yield cluster
    cluster.stop_all()


def job(ha: HaCluster, job_id: str) -> dict:
    return service_job(job_id, f"echo $$ >> {ha.pid_dir}/{job_id}; exec sleep 600")


def test_database_lost_and_back(ha: HaCluster, pg: ThrowawayPostgres):
    ha.start_servers()
    ha.start_agent("a")
    assert ha.post("/jobs", job(ha, "svc-before")).status_code == 200
    wait_until(lambda: running_allocs(ha, "svc-before"), 60, what="svc-before running")
    alloc_id = running_allocs(ha, "svc-before")[0]["allocation_id"]
    pid = int((ha.pid_dir / "svc-before").read_text().split()[0])

    pg.stop()
    lost_at = time.monotonic()
    for url in ha.urls:
        resp = ha.post("/jobs", job(ha, "svc-during"), url=url)
        assert resp.status_code == 503, (url, resp.status_code, resp.text)
        assert "error" in resp.json()
        assert ha.get("/jobs/svc-before", url).status_code == 200  # memory answers
    # Well past the node TTL: the task runs on, the agent keeps it.
    while time.monotonic() - lost_at < 3 * NODE_TTL:
        assert pid_alive(pid)
        time.sleep(0.5)

    pg.start(port=pg.port)  # where the servers look for it
    ha.wait_leader(timeout=60)
    wait_until(lambda: ha.post("/jobs", job(ha, "svc-after")).status_code == 200, 60,
               what="a submit accepted again")  # fmt: skip
    wait_until(lambda: running_allocs(ha, "svc-after"), 60, what="svc-after running")
    # The job from before: the same allocation, the same process, nothing replaced.
    assert [a["allocation_id"] for a in running_allocs(ha, "svc-before")] == [alloc_id]
    assert len(ha.job("svc-before")["allocations"]) == 1
    assert pid_alive(pid)
    assert (ha.pid_dir / "svc-before").read_text().split() == [str(pid)]
    assert ha.job("svc-during") is None  # refused, so never stored
