"""Agents collect finished allocations (issue #16 item 6), with real processes.

Many short batch jobs through one agent with `--gc-keep`: once the server has
each one, only the newest few keep their files, and the agent's memory,
threads, open files and data dir stay flat. ORCH_TEST_GC_JOBS sets how many
jobs run after the warm-up (default 200; the report's figures used 500).
"""

from __future__ import annotations

import os
import time

import psutil
import pytest
import requests

from orch.agent.drivers.cgroups import POOL_MAX

from harness import Cluster, wait_until
from test_end_to_end import job_body, submit

KEEP = 20
WARMUP = 40
JOBS = int(os.environ.get("ORCH_TEST_GC_JOBS", "200"))


@pytest.fixture
def cluster(tmp_path, pyz):
    c = Cluster(tmp_path, node_ttl=5.0, heartbeat_interval=0.5)
    c.start_server()
    yield c
    c.stop_all()


def run_batch_jobs(cluster: Cluster, prefix: str, count: int) -> None:
    for i in range(count):
        submit(cluster, job_body(f"{prefix}-{i}", "echo done"))

    def all_complete():
        jobs = cluster.get("/jobs").json()["jobs"]
        mine = [j for j in jobs if j["job_id"].startswith(f"{prefix}-")]
        return len(mine) == count and all(j["status"] == "complete" for j in mine)

    wait_until(
        all_complete, timeout=60 + count * 0.5, interval=0.5, what=f"{count} {prefix} jobs complete"
    )


def measure(proc: psutil.Process, data_dir) -> dict:
    allocs = os.listdir(data_dir / "allocs")
    size = sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(data_dir)
        for f in files
    )
    opened = [f.path for f in proc.open_files()]
    # The cgroup pool keeps two files of each idle cgroup open (bounded by
    # its size, which follows the most tasks run at once, not the job count).
    cgroup_files = sum(1 for path in opened if path.startswith("/sys/fs/cgroup/"))
    return {
        "rss_mb": round(proc.memory_info().rss / 2**20, 1),
        "threads": proc.num_threads(),
        "fds": proc.num_fds() - cgroup_files,
        "files": len(opened) - cgroup_files,
        "cgroup_files": cgroup_files,
        "sockets": len(proc.net_connections(kind="inet")),
        "alloc_dirs": len(allocs),
        "data_kb": round(size / 1024),
    }


def test_finished_allocations_are_collected_and_the_agent_stays_flat(cluster, tmp_path):
    cluster.start_agent("a", "--gc-keep", str(KEEP))
    agent = psutil.Process(cluster.agents["a"].pid)
    data_dir = tmp_path / "agent-a"
    run_batch_jobs(cluster, "warm", WARMUP)
    wait_until(
        lambda: len(os.listdir(data_dir / "allocs")) <= KEEP,
        timeout=10,
        what="warm-up allocations collected",
    )
    before = measure(agent, data_dir)

    run_batch_jobs(cluster, "gc", JOBS)
    wait_until(
        lambda: len(os.listdir(data_dir / "allocs")) <= KEEP,
        timeout=10,
        what="allocations collected",
    )
    after = measure(agent, data_dir)
    print(
        f"\nagent gc ({JOBS} batch jobs after {WARMUP}, --gc-keep {KEEP}): "
        f"before {before} after {after}"
    )

    assert after["alloc_dirs"] == KEEP
    # The newest are the ones kept, and their logs can still be read.
    allocs = [a for j in cluster.get("/jobs").json()["jobs"] for a in j["allocations"]]
    newest = sorted(allocs, key=lambda a: a["end_time"])[-KEEP:]
    assert set(os.listdir(data_dir / "allocs")) == {a["allocation_id"] for a in newest}
    last = newest[-1]["allocation_id"]
    assert cluster.get(f"/allocations/{last}/logs/t").text == "done\n"
    assert after["threads"] <= before["threads"] + 2
    assert after["files"] <= before["files"]
    # Sockets: the server's push threads keep a connection each (16 at most).
    assert after["fds"] - after["sockets"] <= before["fds"] - before["sockets"] + 2
    assert after["rss_mb"] <= before["rss_mb"] + 8
    assert after["cgroup_files"] <= 2 * POOL_MAX
    assert after["data_kb"] <= before["data_kb"] * 1.5 + 16


def test_a_purged_jobs_allocations_leave_the_agent_for_good(cluster, tmp_path):
    node_a = cluster.start_agent("a")
    endpoint = cluster.node(node_a)["endpoint"]
    submit(cluster, job_body("done", "echo done"))
    submit(cluster, job_body("svc", cluster.pid_command("svc"), type_="service"))
    cluster.wait_job("done", "complete")
    cluster.wait_job("svc", "running")
    ids = [cluster.job(j)["allocations"][0]["allocation_id"] for j in ("done", "svc")]
    allocs_dir = tmp_path / "agent-a" / "allocs"
    assert set(ids) <= set(os.listdir(allocs_dir))
    for job_id in ("done", "svc"):
        assert cluster.post(f"/jobs/{job_id}/delete").status_code == 200
    wait_until(
        lambda: not set(ids) & set(os.listdir(allocs_dir)),
        timeout=15,
        what="the purged allocations' files removed",
    )
    for alloc_id in ids:
        resp = requests.get(f"{endpoint}/allocations/{alloc_id}", timeout=5)
        assert resp.status_code == 404
    # ... and they stay gone: the agent no longer reports them, nothing is sent back.
    time.sleep(2.0)
    assert not set(ids) & set(os.listdir(allocs_dir))
    stops = cluster.server.log().count("stop failed")
    assert stops == 0
    assert requests.get(f"{endpoint}/health", timeout=5).json()["allocations"] == 0
