"""The seed's routes end to end: real server and agent processes (orch.pyz).

Each runs twice: the server on SQLite, and on PostgreSQL (``--database``).
"""

from __future__ import annotations

import pytest
import requests

from tests.jobspec import exec_job as job_body

from harness import Cluster, pid_alive, wait_until


@pytest.fixture
def cluster(tmp_path, pyz, state_database):
    c = Cluster(tmp_path, database=state_database)
    c.start_server()
    yield c
    c.stop_all()


def submit(cluster: Cluster, body: dict) -> dict:
    resp = cluster.post("/jobs", body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["message"] == "作业评估已加入队列"
    assert out["job_id"] == body["job_id"] and out["evaluation_id"]
    return out


def test_register_heartbeat_and_nodes_over_the_wire(cluster):
    node = {
        "node_id": "seed-node",
        "region": "eu",
        "resources": {"cpu": 2000, "memory": 1024},
        "healthy": True,
        "endpoint": "http://127.0.0.1:9",
    }
    resp = cluster.post("/register", node)
    assert resp.json() == {"message": "Node registered successfully"}
    beat = {
        "node_id": "seed-node",
        "healthy": True,
        "timestamp": 1.0,
        "resources": {"cpu": 2000, "memory": 1024, "cpu_used": 0, "memory_used": 0},
        "allocations": {},
    }
    assert cluster.post("/heartbeat", beat).json() == {"message": "Heartbeat received"}
    unknown = cluster.post("/heartbeat", dict(beat, node_id="nobody"))
    assert unknown.status_code == 404 and "error" in unknown.json()
    nodes = cluster.get("/nodes").json()
    assert nodes["count"] == 1
    shown = nodes["nodes"][0]
    assert shown["node_id"] == "seed-node" and shown["region"] == "eu"
    assert shown["resources"] == {"cpu": 2000, "memory": 1024}
    assert shown["healthy"] is True and shown["last_heartbeat"] > 0
    assert shown["allocations"] == [] and shown["endpoint"] == node["endpoint"]


def test_bad_input_is_json_4xx_over_http(cluster):
    for resp in (
        requests.post(cluster.url + "/jobs", data="{oops", timeout=5),
        cluster.post("/jobs", {"task_groups": [{"name": "g", "count": 0, "tasks": []}]}),
        cluster.get("/no/such/route"),
        requests.patch(cluster.url + "/jobs", timeout=5),
    ):
        assert 400 <= resp.status_code < 500
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.json()["error"]
    assert cluster.get("/jobs/missing").json() == {"error": "作业不存在"}


def test_batch_job_completes_with_logs(cluster):
    cluster.start_agent("a")
    submit(cluster, job_body("hello", "echo hello from $ORCH_TASK_NAME", count=2))
    job = cluster.wait_job("hello", "complete")
    assert len(job["allocations"]) == 2
    for alloc in job["allocations"]:
        task = alloc["tasks"]["t"]
        assert alloc["status"] == "complete" and task["status"] == "complete"
        assert task["exit_code"] == 0 and task["config"] == {
            "command": "echo hello from $ORCH_TASK_NAME"
        }
        logs = cluster.get(f"/allocations/{alloc['allocation_id']}/logs/t")
        assert logs.text == "hello from t\n"
    listed = cluster.get("/jobs").json()
    assert listed["count"] == 1 and listed["jobs"][0]["status"] == "complete"


def test_failing_job_reports_its_exit_code(cluster):
    cluster.start_agent("a")
    submit(cluster, job_body("fails", "echo bad >&2; exit 3"))
    job = cluster.wait_job("fails", "failed")
    task = job["allocations"][0]["tasks"]["t"]
    assert task["status"] == "failed" and task["exit_code"] == 3
    alloc_id = job["allocations"][0]["allocation_id"]
    assert cluster.get(f"/allocations/{alloc_id}/logs/t?type=stderr").text == "bad\n"


def test_stop_kills_task_trees_then_restart(cluster):
    cluster.start_agent("a")
    child = f"sleep 300 & echo $! > {cluster.task_pid_dir}/child.$ORCH_ALLOC_ID; wait"
    body = job_body("svc", cluster.pid_command("main", child), count=2, type_="service")
    submit(cluster, body)
    cluster.wait_job("svc", "running")
    wait_until(lambda: len(cluster.task_pids("child")) == 2, what="child pids")
    pids = [*cluster.task_pids("main").values(), *cluster.task_pids("child").values()]
    assert all(pid_alive(p) for p in pids)

    assert cluster.post("/jobs/svc/restart").json() == {"error": "只能重启已停止的作业"}
    assert cluster.delete("/jobs/svc").json() == {"message": "作业 svc 已停止"}
    job = cluster.wait_job("svc", "dead")
    assert {a["desired_status"] for a in job["allocations"]} == {"stop"}
    wait_until(lambda: not any(pid_alive(p) for p in pids), what="task trees gone")

    old_ids = {a["allocation_id"] for a in job["allocations"]}
    resp = cluster.post("/jobs/svc/restart")
    assert resp.status_code == 200
    assert resp.json()["message"] == "作业重启评估已加入队列"
    job = cluster.wait_job("svc", "running")
    live = {a["allocation_id"] for a in cluster.live_allocs("svc")}
    assert len(live) == 2 and not live & old_ids


def test_update_keeps_unchanged_groups_and_replaces_changed(cluster):
    cluster.start_agent("a")
    body = job_body("web", cluster.pid_command("v1"), count=2, type_="service")
    submit(cluster, body)
    cluster.wait_job("web", "running")
    wait_until(
        lambda: (
            len(cluster.live_allocs("web")) == 2
            and all(a["status"] == "running" for a in cluster.live_allocs("web"))
        )
    )
    first = {a["allocation_id"] for a in cluster.live_allocs("web")}

    body["task_groups"][0]["count"] = 3
    resp = cluster.put("/jobs/web", body)
    assert resp.json()["message"] == "作业更新评估已加入队列"
    wait_until(lambda: len(cluster.live_allocs("web")) == 3, what="scaled to 3")
    scaled = {a["allocation_id"] for a in cluster.live_allocs("web")}
    assert first < scaled

    body["task_groups"][0]["count"] = 1
    cluster.put("/jobs/web", body)
    wait_until(lambda: len(cluster.live_allocs("web")) == 1, what="scaled to 1")
    assert {a["index"] for a in cluster.live_allocs("web")} == {0}

    v1_pids = cluster.task_pids("v1")
    body["task_groups"][0]["tasks"][0]["config"]["command"] = cluster.pid_command("v2")
    cluster.put("/jobs/web", body)
    wait_until(lambda: cluster.task_pids("v2"), what="v2 started")
    replaced = {a["allocation_id"] for a in cluster.live_allocs("web")}
    assert len(replaced) == 1 and not replaced & scaled
    wait_until(lambda: not any(pid_alive(p) for p in v1_pids.values()), what="v1 tasks gone")
    assert cluster.put("/jobs/nope", body).json() == {"error": "作业不存在"}


def test_delete_purges_job_allocations_and_evaluations(cluster):
    cluster.start_agent("a")
    out = submit(cluster, job_body("gone", cluster.pid_command("gone"), type_="service"))
    cluster.wait_job("gone", "running")
    pids = wait_until(lambda: cluster.task_pids("gone"))
    alloc_id = cluster.job("gone")["allocations"][0]["allocation_id"]
    resp = cluster.post("/jobs/gone/delete")
    assert resp.json() == {"message": "作业 gone 及其相关资源已删除"}
    assert cluster.get("/jobs/gone").status_code == 404
    assert cluster.get(f"/evaluations/{out['evaluation_id']}").status_code == 404
    assert cluster.get(f"/allocations/{alloc_id}").status_code == 404
    wait_until(lambda: not any(pid_alive(p) for p in pids.values()), what="task gone")


def test_unplaceable_job_waits_with_reasons_then_places(cluster):
    cluster.start_agent("a", "--region", "us")
    body = job_body(
        "eu-only",
        cluster.pid_command("eu"),
        type_="service",
        constraints=[{"attribute": "region", "operator": "=", "value": "eu"}],
    )
    out = submit(cluster, body)
    ev = wait_until(
        lambda: (
            cluster.get(f"/evaluations/{out['evaluation_id']}").json()["status"] == "blocked"
            and cluster.get(f"/evaluations/{out['evaluation_id']}").json()
        )
    )
    assert ev["failures"] == {"constraint region = eu": 1}
    assert cluster.job("eu-only")["status"] == "pending"
    cluster.start_agent("b", "--region", "eu")
    cluster.wait_job("eu-only", "running")
    ev = cluster.get(f"/evaluations/{out['evaluation_id']}").json()
    assert ev["status"] == "complete" and ev["placed"] == 1


def test_failing_service_restarts_then_is_replaced(cluster):
    cluster.start_agent("a")
    submit(cluster, job_body("crashy", "exit 1", type_="service"))

    def replaced():
        allocs = cluster.job("crashy")["allocations"]
        return len(allocs) >= 2 and allocs

    allocs = wait_until(replaced, timeout=30, what="failed allocation replaced")
    first, second = allocs[0], allocs[1]
    assert first["status"] == "failed"
    task = first["tasks"]["t"]
    assert task["restarts"] >= 1 and task["exit_code"] == 1
    assert any(e["type"] == "Restarting" for e in task["events"])
    assert second["previous_allocation"] == first["allocation_id"]
    assert second["reschedule_count"] == 1


def test_no_path_traversal_through_any_route(cluster):
    node_id = cluster.start_agent("a")
    agent_url = cluster.node(node_id)["endpoint"]
    submit(cluster, job_body("real", "echo secret-free"))
    alloc_id = cluster.wait_job("real", "complete")["allocations"][0]["allocation_id"]
    evil = ["..", "../../etc", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "a/../../b"]
    for name in evil:
        body = job_body("evil", "true")
        body["task_groups"][0]["tasks"][0]["name"] = name
        assert cluster.post("/jobs", body).status_code == 400
        assert cluster.post("/jobs", job_body(name, "true")).status_code in (400, 404, 405)
        spec = {
            "allocation_id": name,
            "job_id": "x",
            "task_group": {"name": "g", "tasks": [{"name": "t", "config": {"command": "true"}}]},
        }
        assert requests.post(f"{agent_url}/allocations", json=spec, timeout=5).status_code == 400
        for base in (cluster.url, agent_url):
            for path in (
                f"/allocations/{name}/logs/t",
                f"/allocations/{alloc_id}/logs/{name}",
                f"/allocations/{alloc_id}/logs/t?type={name}",
            ):
                resp = requests.get(base + path, timeout=5)
                assert 400 <= resp.status_code < 500, (base, path, resp.status_code)
                assert "root:" not in resp.text
                assert resp.headers["Content-Type"].startswith("application/json")
