"""Concurrent writes on one job against a real server and agent (orch.pyz).

Every acknowledged write must be reflected, as if the writes had been applied
in some serial order, and nothing purged may come back: no job, no running
task, no evaluation or allocation left in the store (issue #10 items 4 and 7,
issue #16 item 5).
"""

from __future__ import annotations

import re
import sqlite3
import threading

import pytest

from harness import Cluster, pid_alive, wait_until

# Rounds per racing pair: each round is one chance for the two requests to
# interleave badly; the windows are narrow, so a few of them are needed.
ROUNDS = 8
STOP_PUT_ROUNDS = 16
SETTLE_S = 30.0


@pytest.fixture
def cluster(tmp_path, pyz, state_database):
    c = Cluster(tmp_path, database=state_database)
    c.start_server()
    c.start_agent("a")
    yield c
    c.stop_all()


def body(cluster: Cluster, job_id: str, n: int, *, nowhere: bool = False) -> dict:
    """Job ``job_id``, its n-th spec (each n a different one)."""
    task = {
        "name": "t",
        "driver": "exec",
        "config": {"command": cluster.pid_command(job_id, f"exec sleep {300 + n}")},
        "resources": {"cpu": 20, "memory": 16},
    }
    out = {
        "job_id": job_id,
        "type": "service",
        "task_groups": [{"name": "g", "count": 1, "tasks": [task]}],
    }
    if nowhere:  # never placed: the versions are the point, not processes
        out["constraints"] = [{"attribute": "region", "operator": "=", "value": "nowhere"}]
    return out


def command_of(job: dict) -> str:
    return job["task_groups"][0]["tasks"][0]["config"]["command"]


def together(*calls) -> list:
    """Run the calls at once, one thread each; their results (or exceptions)."""
    barrier = threading.Barrier(len(calls))
    out: list = [None] * len(calls)

    def run(i, call):
        barrier.wait(timeout=30)
        try:
            out[i] = call()
        except Exception as exc:  # noqa: BLE001 - reported by the caller's asserts
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "requests stuck"
    return out


def codes(resps) -> list:
    return [getattr(r, "status_code", r) for r in resps]


def settle(cluster: Cluster) -> None:
    """Wait until no evaluation is queued or being planned."""

    def idle():
        text = cluster.get("/metrics").text
        busy = re.findall(r'orch_broker_evaluations\{state="(?:ready|inflight)"\} (\d+)', text)
        return len(busy) == 2 and busy == ["0", "0"]

    wait_until(idle, SETTLE_S, what="the broker to be idle")


def orphans(cluster: Cluster) -> dict:
    """Rows in the server's store that belong to no stored job (SQLite or PostgreSQL)."""
    queries = {
        table: f"SELECT count(*) FROM {table} WHERE job_id NOT IN (SELECT job_id FROM jobs)"
        for table in ("allocations", "evaluations")
    }
    if cluster.database:
        import psycopg

        with psycopg.connect(cluster.database) as conn:
            return {t: conn.execute(q).fetchone()[0] for t, q in queries.items()}
    path = cluster.tmp / "server" / "state.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {t: db.execute(q).fetchone()[0] for t, q in queries.items()}
    finally:
        db.close()


def test_concurrent_posts_of_one_new_job_all_land(cluster):
    job_id = "posted"
    resps = together(
        *[
            lambda n=n: cluster.post("/jobs", body(cluster, job_id, n, nowhere=True))
            for n in range(20)
        ]
    )
    assert codes(resps) == [200] * 20, [r.text for r in resps if r.status_code != 200]
    assert {r.json()["message"] for r in resps} == {"作业评估已加入队列"}
    acked = {r.json()["evaluation_id"] for r in resps}
    assert len(acked) == 20
    job = cluster.job(job_id)
    assert job["version"] == 19
    assert command_of(job) in {command_of(body(cluster, job_id, n)) for n in range(20)}
    stored = cluster.get(f"/jobs/{job_id}/evaluations").json()["evaluations"]
    assert acked <= {e["evaluation_id"] for e in stored}


def test_concurrent_puts_each_make_a_version(cluster):
    job_id = "put"
    assert cluster.post("/jobs", body(cluster, job_id, 0, nowhere=True)).status_code == 200
    resps = together(
        *[
            lambda n=n: cluster.put(f"/jobs/{job_id}", body(cluster, job_id, n, nowhere=True))
            for n in range(1, 11)
        ]
    )
    assert codes(resps) == [200] * 10, [r.text for r in resps if r.status_code != 200]
    assert {r.json()["message"] for r in resps} == {"作业更新评估已加入队列"}
    assert len({r.json()["evaluation_id"] for r in resps}) == 10
    assert cluster.job(job_id)["version"] == 10


def test_stop_racing_put_applies_both_in_some_order(cluster):
    for rnd in range(STOP_PUT_ROUNDS):
        job_id = f"sp-{rnd}"
        assert cluster.post("/jobs", body(cluster, job_id, 0)).status_code == 200
        stop, put = together(
            lambda job_id=job_id: cluster.delete(f"/jobs/{job_id}"),
            lambda job_id=job_id: cluster.put(f"/jobs/{job_id}", body(cluster, job_id, 1)),
        )
        assert codes([stop, put]) == [200, 200], (stop.text, put.text)
        job = cluster.job(job_id)
        # Either order keeps the PUT: version 1 with its spec, stopped or not.
        assert (job["version"], command_of(job)) == (1, command_of(body(cluster, job_id, 1)))
        settle(cluster)
        if job["stopped"]:  # PUT then stop: nothing of the job may run
            wait_until(
                lambda job_id=job_id: not cluster.live_allocs(job_id),
                SETTLE_S,
                what=f"{job_id} stopped",
            )
        else:  # stop then PUT: version 1 runs
            wait_until(
                lambda job_id=job_id: [
                    a
                    for a in cluster.live_allocs(job_id)
                    if a["job_version"] == 1 and a["status"] == "running"
                ],
                SETTLE_S,
                what=f"{job_id} version 1 running",
            )
        assert cluster.job(job_id)["stopped"] == job["stopped"]
        assert cluster.post(f"/jobs/{job_id}/delete").status_code == 200


def purge_race(cluster: Cluster, job_id: str, other) -> None:
    """Purge racing ``other`` (restart or PUT); the purge wins in the end."""
    purge, resp = together(lambda: cluster.post(f"/jobs/{job_id}/delete"), other)
    assert purge.status_code == 200, purge.text
    # Before the purge it went through; after it, the job was unknown.
    assert resp.status_code in (200, 404), resp.text
    if resp.status_code == 404:
        assert resp.json() == {"error": "作业不存在"}
    assert cluster.get(f"/jobs/{job_id}").status_code == 404


def test_purge_racing_restart_or_put_brings_nothing_back(cluster):
    purged = []
    for rnd in range(ROUNDS):
        job_id = f"pr-{rnd}"
        assert cluster.post("/jobs", body(cluster, job_id, 0)).status_code == 200
        assert cluster.delete(f"/jobs/{job_id}").status_code == 200
        purge_race(cluster, job_id, lambda job_id=job_id: cluster.post(f"/jobs/{job_id}/restart"))
        job_id = f"pp-{rnd}"
        assert cluster.post("/jobs", body(cluster, job_id, 0)).status_code == 200
        purge_race(
            cluster,
            job_id,
            lambda job_id=job_id: cluster.put(f"/jobs/{job_id}", body(cluster, job_id, 1)),
        )
        purged += [f"pr-{rnd}", f"pp-{rnd}"]
    settle(cluster)
    assert [j for j in purged if cluster.get(f"/jobs/{j}").status_code != 404] == []
    assert orphans(cluster) == {"allocations": 0, "evaluations": 0}
    assert cluster.get("/jobs").json()["count"] == 0
    # Whatever was started before a purge is stopped by it; nothing restarts.
    wait_until(
        lambda: not [p for tag in purged for p in cluster.task_pids(tag).values() if pid_alive(p)],
        SETTLE_S,
        what="purged jobs' tasks to end",
    )
