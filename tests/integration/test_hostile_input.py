"""Hostile input against the real zipapp: every answer a JSON 4xx, no stall,
and nothing stored that the server cannot read back (issue #10 items 1, 2, 5).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import statistics
import time

import pytest
import requests

from tests.jobspec import exec_job

from harness import nodes, wait_until

TIMEOUT = 10.0
JSON = {"Content-Type": "application/json"}
DEEP = b"[" * 10000 + b"]" * 10000


def service(job_id: str, command: str = "exec sleep 300", count: int = 1, constraints=()) -> dict:
    body = exec_job(job_id, command, count=count, type_="service", cpu=50)
    return {**body, "constraints": list(constraints)}


def post_raw(url: str, raw: bytes) -> requests.Response:
    return requests.post(url, data=raw, headers=JSON, timeout=TIMEOUT)


def assert_json_400(resp: requests.Response) -> dict:
    assert resp.status_code == 400, (resp.status_code, resp.text[:300])
    assert resp.headers["Content-Type"].startswith("application/json"), resp.text[:300]
    body = resp.json()
    assert isinstance(body["error"], str) and body["error"]
    return body


def running_allocs(url: str, job_id: str, count: int = 1) -> list[dict]:
    def running():
        job = requests.get(f"{url}/jobs/{job_id}", timeout=TIMEOUT).json()
        live = [a for a in job["allocations"] if a["status"] == "running"]
        return live if len(live) >= count else None

    return wait_until(running, 30.0, what=f"{count} running allocations of {job_id}")


@pytest.fixture
def cluster(server, agent_factory):
    """A server (node TTL 3 s) and one real agent running a service allocation."""
    agent = agent_factory()
    resp = requests.post(f"{server.url}/jobs", json=service("svc"), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    (alloc,) = running_allocs(server.url, "svc")
    return server, agent, alloc


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_heartbeat_times_are_400_and_the_server_restarts(cluster, literal):
    server, agent, alloc = cluster
    node_id, alloc_id = json.dumps(agent.node_id), json.dumps(alloc["allocation_id"])
    # A raw body: json.dumps cannot write these literals.
    raw = (
        f'{{"node_id": {node_id}, "allocations": {{{alloc_id}: {{"job_id": "svc",'
        f' "status": "complete", "end_time": {literal}}}}}}}'
    )
    assert_json_400(post_raw(f"{server.url}/heartbeat", raw.encode()))
    server.restart()
    job = requests.get(f"{server.url}/jobs/svc", timeout=TIMEOUT).json()
    assert job["allocations"][0]["end_time"] is None


def test_heartbeat_restarts_1e400_is_400(cluster):
    server, agent, alloc = cluster
    node_id, alloc_id = json.dumps(agent.node_id), json.dumps(alloc["allocation_id"])
    raw = (
        f'{{"node_id": {node_id}, "allocations": {{{alloc_id}: {{"status": "running", "tasks": '
        f'{{"t": {{"status": "running", "restarts": 1e400}}}}}}}}}}'
    )
    assert_json_400(post_raw(f"{server.url}/heartbeat", raw.encode()))


def test_log_offset_past_2_63_is_400(cluster):
    _server, agent, alloc = cluster
    url = f"{agent.url}/allocations/{alloc['allocation_id']}/logs/t"
    assert requests.get(url, timeout=TIMEOUT).status_code == 200
    for offset in (2**63, 2**64, -1, "1e3"):
        assert_json_400(requests.get(f"{url}?offset={offset}", timeout=TIMEOUT))


def test_lone_surrogate_in_env_is_400_and_reads_stay_json(cluster):
    server, _agent, alloc = cluster
    body = json.dumps(service("bad-env")).replace(
        '"command":', '"env": {"X": "\\ud800"}, "command":'
    )
    error = assert_json_400(post_raw(f"{server.url}/jobs", body.encode()))["error"]
    assert error.startswith("task_groups[0].tasks[0].config.env.X: ")
    for path in ("/jobs", "/jobs/svc", f"/allocations/{alloc['allocation_id']}"):
        resp = requests.get(server.url + path, timeout=TIMEOUT)
        assert resp.status_code == 200, (path, resp.text[:300])
    assert requests.get(f"{server.url}/jobs/bad-env", timeout=TIMEOUT).status_code == 404


def test_json_nested_10000_deep_is_400_on_every_post_route(cluster):
    server, agent, _alloc = cluster
    for path in ("/jobs", "/jobs/plan", "/register", "/heartbeat"):
        assert_json_400(post_raw(server.url + path, DEEP))
    assert_json_400(
        requests.put(f"{server.url}/jobs/svc", data=DEEP, headers=JSON, timeout=TIMEOUT)
    )
    assert_json_400(post_raw(f"{agent.url}/allocations", DEEP))
    assert requests.get(f"{server.url}/health", timeout=TIMEOUT).status_code == 200


def test_a_catastrophic_regex_neither_stalls_the_server_nor_downs_nodes(server, agent_factory):
    agent_factory()
    agent_factory()
    resp = requests.post(f"{server.url}/jobs", json=service("web", count=2), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    before = {a["allocation_id"] for a in running_allocs(server.url, "web", 2)}
    # Backtracking re needs an exponential number of steps on this pattern.
    evil = {"attribute": "kernel.version", "operator": "regex", "value": "(.*)" * 15 + "!"}
    resp = requests.post(
        f"{server.url}/jobs", json=service("evil", constraints=[evil]), timeout=TIMEOUT
    )
    assert resp.status_code == 200, resp.text
    latencies = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        start = time.monotonic()
        assert requests.get(f"{server.url}/health", timeout=TIMEOUT).status_code == 200
        latencies.append(time.monotonic() - start)
        time.sleep(0.1)
    assert statistics.median(latencies) < 0.1 and max(latencies) < 1.0, latencies

    def evaluated():
        evals = requests.get(f"{server.url}/jobs/evil", timeout=TIMEOUT).json()
        return evals["status"] == "pending" and not evals["allocations"]

    wait_until(evaluated, TIMEOUT, what="the regex job evaluated, unplaced")
    assert all(node["healthy"] for node in nodes(server.url)), nodes(server.url)
    after = {a["allocation_id"] for a in running_allocs(server.url, "web", 2)}
    assert after == before


def test_a_bad_row_is_quarantined_and_the_server_starts(cluster):
    server, _agent, _alloc = cluster
    server.proc.stop()
    db = sqlite3.connect(server.data_dir / "state.db")
    # What the old allocation encoder wrote for a NaN end time (repr: nan).
    db.execute(
        "INSERT INTO allocations (allocation_id, job_id, node_id, body) "
        "VALUES ('bad', 'svc', 'n', '{\"allocation_id\":\"bad\",\"end_time\":nan}')"
    )
    db.commit()
    db.close()
    server.restart()
    assert "state row unreadable table=allocations allocation_id=bad" in server.proc.stderr()
    assert requests.get(f"{server.url}/jobs/svc", timeout=TIMEOUT).json()["job_id"] == "svc"
    assert requests.get(f"{server.url}/allocations/bad", timeout=TIMEOUT).status_code == 404
    db = sqlite3.connect(server.data_dir / "state.db")
    assert db.execute("SELECT row_key FROM quarantine").fetchall() == [("bad",)]
    db.close()


def test_a_stopped_server_does_not_blame_its_nodes_when_it_resumes(cluster):
    """SIGSTOP the server past the node TTL: on SIGCONT its heartbeat monitor
    sees that it woke late, so the node is not declared down for the server's
    own silence and its allocation is not lost."""
    server, agent, alloc = cluster
    server.proc.signal(signal.SIGSTOP)
    try:
        time.sleep(3.0 * 2)  # the stall itself: twice the node TTL
    finally:
        server.proc.signal(signal.SIGCONT)
    wait_until(
        lambda: requests.get(f"{server.url}/health", timeout=TIMEOUT).ok,
        TIMEOUT,
        what="server answering after SIGCONT",
    )
    # Heartbeats flow again: two TTLs later the node must still never have gone down.
    end = time.monotonic() + 6.0
    while time.monotonic() < end:
        assert all(n["healthy"] for n in nodes(server.url)), nodes(server.url)
        time.sleep(0.2)
    assert "missed heartbeats: down" not in server.proc.stderr()
    assert "woke" in server.proc.stderr() and "late" in server.proc.stderr()
    (live,) = running_allocs(server.url, "svc")
    assert live["allocation_id"] == alloc["allocation_id"]
