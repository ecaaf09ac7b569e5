"""Periodic and parameterized jobs end to end on real orch.pyz processes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import Cluster, clean_env, wait_until

pytestmark = pytest.mark.integration


def job_body(job_id: str, command: str, **extra) -> dict:
    return {
        "job_id": job_id,
        "meta": {"team": "blue", "user": "nobody"},
        "task_groups": [
            {
                "name": "g",
                "meta": {"tier": "gold"},
                "tasks": [
                    {
                        "name": "t",
                        "config": {"command": command},
                        "resources": {"cpu": 10, "memory": 8},
                        "dispatch_payload": {"file": "in/input.json"},
                    }
                ],
            }
        ],
        **extra,
    }


def logs_of(cluster: Cluster, job: dict) -> str:
    [alloc] = job["allocations"]
    return cluster.get(f"/allocations/{alloc['allocation_id']}/logs/t").text


PRINT = 'echo "$ORCH_META_USER $ORCH_META_TEAM $ORCH_META_TIER"; cat "$ORCH_TASK_DIR/in/input.json"'


def test_dispatch_runs_a_child_with_meta_and_payload(cluster):
    cluster.start_agent("a")
    params = {"meta_required": ["user"], "meta_optional": ["note"], "payload": "optional"}
    assert cluster.post("/jobs", job_body("work", PRINT, parameterized=params)).ok
    payload = base64.b64encode(b'{"n": 42}\n').decode()
    resp = cluster.post("/jobs/work/dispatch", {"meta": {"user": "ann"}, "payload": payload})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    child_id = out["dispatched_job_id"]
    assert out["job_id"] == child_id and out["evaluation_id"]
    assert child_id.startswith("work-dispatch-")
    child = cluster.wait_job(child_id, "complete", timeout=30)
    assert child["parent_id"] == "work"
    assert logs_of(cluster, child) == 'ann blue gold\n{"n": 42}\n'
    parent = cluster.job("work")
    # The parent itself is never placed; it shows its children.
    assert parent["allocations"] == [] and parent["status"] == "running"
    assert parent["children"] == [{"job_id": child_id, "status": "complete"}]
    listed = {j["job_id"]: j for j in cluster.get("/jobs").json()["jobs"]}
    assert listed[child_id]["parent_id"] == "work"


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "missing required keys: user"),
        ({"meta": {"user": "x", "other": "y"}}, "not allowed"),
        ({"meta": {"user": "x"}, "payload": "not base64!"}, "base64"),
        ({"meta": "user=x"}, "meta"),
        ([1, 2], "body"),
    ],
)
def test_bad_dispatches_get_a_clear_4xx(cluster, body, message):
    params = {"meta_required": ["user"], "payload": "optional"}
    assert cluster.post("/jobs", job_body("work", "true", parameterized=params)).ok
    resp = cluster.post("/jobs/work/dispatch", body)
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"]


def test_dispatch_4xx_for_forbidden_payload_plain_and_missing_jobs(cluster):
    params = {"payload": "forbidden"}
    assert cluster.post("/jobs", job_body("nopay", "true", parameterized=params)).ok
    assert cluster.post("/jobs", job_body("plain", "true")).ok
    resp = cluster.post("/jobs/nopay/dispatch", {"payload": "eA=="})
    assert resp.status_code == 400 and "forbidden" in resp.json()["error"]
    resp = cluster.post("/jobs/plain/dispatch", {})
    assert resp.status_code == 400 and "not parameterized" in resp.json()["error"]
    assert cluster.post("/jobs/missing/dispatch", {}).status_code == 404
    resp = cluster.post("/jobs/plain/periodic/force")
    assert resp.status_code == 400 and "not periodic" in resp.json()["error"]


def test_periodic_force_runs_a_child_and_a_restart_does_not_repeat_it(cluster):
    cluster.start_agent("a")
    periodic = {"crons": ["0 3 * * *"], "time_zone": "Europe/Berlin"}
    resp = cluster.post("/jobs", job_body("nightly", 'echo "$ORCH_META_TEAM"', periodic=periodic))
    assert resp.status_code == 200, resp.text
    resp = cluster.post("/jobs/nightly/periodic/force")
    assert resp.status_code == 200, resp.text
    child_id = resp.json()["job_id"]
    assert child_id.startswith("nightly-periodic-")
    child = cluster.wait_job(child_id, "complete", timeout=30)
    assert logs_of(cluster, child) == "blue\n" and child["parent_id"] == "nightly"
    parent = cluster.job("nightly")
    assert parent["allocations"] == [] and parent["children"][0]["job_id"] == child_id
    assert parent["next_launch"] > child["submit_time"]
    cluster.server.stop()
    cluster.start_server()
    # Nothing was due: the restarted server launches nothing.
    assert [c["job_id"] for c in cluster.job("nightly")["children"]] == [child_id]


@pytest.mark.timeout(300)
def test_a_hundred_dispatches_from_8_threads_all_complete(cluster):
    cluster.start_agent("a")
    assert cluster.post("/jobs", job_body("burst", "true", parameterized={})).ok

    def one(_):
        resp = cluster.post("/jobs/burst/dispatch", {})
        assert resp.status_code == 200, resp.text
        return resp.json()["dispatched_job_id"]

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(one, range(100)))
    assert len(ids) == 100

    def all_complete():
        jobs = cluster.get("/jobs").json()["jobs"]
        done = [j for j in jobs if j.get("parent_id") == "burst" and j["status"] == "complete"]
        return len(done) == 100

    wait_until(all_complete, 240, interval=1.0, what="100 dispatched jobs complete")


def orch(pyz, url, *args, stdin=None):
    return subprocess.run(
        [sys.executable, str(pyz), *args],
        input=stdin,
        capture_output=True,
        timeout=90,
        env={**clean_env(), "ORCH_ADDR": url},
    )


def test_cli_dispatch_with_meta_and_payload_from_stdin_and_status(cluster, pyz):
    cluster.start_agent("a")
    params = {"meta_required": ["user"], "payload": "required"}
    assert cluster.post("/jobs", job_body("work", PRINT, parameterized=params)).ok
    run = orch(pyz, cluster.url, "job", "dispatch", "work", "-meta", "user=cli", "-", stdin=b"42\n")
    assert run.returncode == 0, run.stderr
    child_id = run.stdout.decode().split('"')[1]
    assert child_id.startswith("work-dispatch-")
    child = cluster.wait_job(child_id, "complete", timeout=30)
    assert logs_of(cluster, child) == "cli blue gold\n42\n"
    status = orch(pyz, cluster.url, "job", "status", "work")
    assert status.returncode == 0 and child_id in status.stdout.decode()
    missing = orch(pyz, cluster.url, "job", "dispatch", "work", "-meta", "user=x")
    assert missing.returncode == 1 and b"payload: required" in missing.stderr


def test_cli_job_run_of_a_periodic_job_returns_at_once(cluster, pyz, tmp_path):
    path = tmp_path / "nightly.json"
    path.write_text(json.dumps(job_body("nightly", "true", periodic={"crons": ["@daily"]})))
    run = orch(pyz, cluster.url, "job", "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert b"orch job periodic force nightly" in run.stdout
    assert cluster.job("nightly")["status"] == "running"
