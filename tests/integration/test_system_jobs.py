"""System and sysbatch jobs on the real zipapp: one copy per node, never moved."""

from __future__ import annotations

import time

import pytest
import requests

from harness import wait_until

pytestmark = pytest.mark.integration

NODE_TTL = 3.0  # the server fixture's --node-ttl
HEARTBEAT = 0.5
TIMEOUT = 5.0


def system_job(job_id: str, command: str, type_: str = "system", **extra) -> dict:
    return {
        "job_id": job_id,
        "type": type_,
        **extra,
        "task_groups": [
            {
                "name": "g",
                "tasks": [
                    {
                        "name": "t",
                        "driver": "exec",
                        "config": {"command": command},
                        "resources": {"cpu": 50, "memory": 16},
                    }
                ],
            }
        ],
    }


def submit(server, body: dict) -> None:
    resp = requests.post(f"{server.url}/jobs", json=body, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text


def get_job(server, job_id: str) -> dict:
    resp = requests.get(f"{server.url}/jobs/{job_id}", timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp.json()


def copies(server, job_id: str) -> dict[str, list[dict]]:
    """node id -> the job's allocations there that the server still wants."""
    out: dict[str, list[dict]] = {}
    for alloc in get_job(server, job_id)["allocations"]:
        if alloc["desired_status"] == "run":
            out.setdefault(alloc["node_id"], []).append(alloc)
    return out


def running_on(server, job_id: str, node_ids) -> bool:
    placed = copies(server, job_id)
    return all(
        [a["client_status"] for a in placed.get(node_id, [])] == ["running"] for node_id in node_ids
    )


def node_healthy(server, node_id: str) -> bool:
    resp = requests.get(f"{server.url}/nodes/{node_id}", timeout=TIMEOUT)
    return resp.status_code == 200 and resp.json()["healthy"]


@pytest.mark.timeout(180)
def test_system_job_runs_once_per_node_and_follows_nodes(server, agent_factory):
    agents = [agent_factory(heartbeat_interval=HEARTBEAT) for _ in range(3)]
    nodes = [a.node_id for a in agents]
    submit(server, system_job("sys", "sleep 300"))
    wait_until(lambda: running_on(server, "sys", nodes), 60, what="a running copy per node")
    assert sorted(copies(server, "sys")) == sorted(nodes)
    job = get_job(server, "sys")
    assert job["type"] == "system" and job["status"] == "running"

    # A node that registers gets its copy at once (an evaluation on register),
    # not at the next job change: placed within a node TTL of registering.
    fourth = agent_factory(heartbeat_interval=HEARTBEAT)
    registered_at = time.monotonic()
    wait_until(lambda: fourth.node_id in copies(server, "sys"), 30, what="a copy on the 4th node")
    assert time.monotonic() - registered_at < NODE_TTL
    wait_until(lambda: running_on(server, "sys", [fourth.node_id]), 60, what="4th copy running")

    # A lost node's copy is not placed anywhere else.
    lost = agents[1]
    lost.proc.stop()
    wait_until(lambda: not node_healthy(server, lost.node_id), 30, what="node down")
    live = [n for n in [*nodes, fourth.node_id] if n != lost.node_id]
    # The down node's evaluation has been planned once its copy is lost.
    wait_until(
        lambda: all(a["client_status"] == "lost" for a in allocs_on(server, "sys", lost.node_id)),
        30,
        what="the down node's copy lost",
    )
    wait_until(lambda: evals_settled(server, "sys"), 30, what="evaluations settled")
    placed = copies(server, "sys")
    assert sorted(placed) == sorted(live)
    assert all(len(allocs) == 1 for allocs in placed.values()), placed
    assert get_job(server, "sys")["status"] == "running"

    resp = requests.delete(f"{server.url}/jobs/sys", timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text


def allocs_on(server, job_id: str, node_id: str) -> list[dict]:
    allocs = [a for a in get_job(server, job_id)["allocations"] if a["node_id"] == node_id]
    assert allocs
    return allocs


def evals_settled(server, job_id: str) -> bool:
    resp = requests.get(f"{server.url}/jobs/{job_id}/evaluations", timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    evals = body if isinstance(body, list) else body.get("evaluations", [])
    return all(e["status"] in ("complete", "blocked", "canceled", "failed") for e in evals)


@pytest.mark.timeout(180)
def test_sysbatch_completes_once_on_every_node(server, agent_factory):
    nodes = [agent_factory(heartbeat_interval=HEARTBEAT).node_id for _ in range(3)]
    submit(server, system_job("once", "true", "sysbatch"))
    wait_until(
        lambda: get_job(server, "once")["status"] == "complete", 60, what="sysbatch complete"
    )
    job = get_job(server, "once")
    assert job["type"] == "sysbatch"
    assert sorted(a["node_id"] for a in job["allocations"]) == sorted(nodes)
    assert {a["client_status"] for a in job["allocations"]} == {"complete"}

    # A node that joins later runs it too, once; the others do not run again.
    late = agent_factory(heartbeat_interval=HEARTBEAT).node_id
    wait_until(
        lambda: [a["client_status"] for a in allocs_on_any(server, "once", late)] == ["complete"],
        60,
        what="the late node's copy complete",
    )
    wait_until(lambda: evals_settled(server, "once"), 30, what="evaluations settled")
    job = get_job(server, "once")
    assert sorted(a["node_id"] for a in job["allocations"]) == sorted([*nodes, late])
    assert job["status"] == "complete"


def allocs_on_any(server, job_id: str, node_id: str) -> list[dict]:
    return [a for a in get_job(server, job_id)["allocations"] if a["node_id"] == node_id]


@pytest.mark.timeout(180)
def test_system_update_replaces_copies_max_parallel_at_a_time(server, agent_factory):
    nodes = [agent_factory(heartbeat_interval=HEARTBEAT).node_id for _ in range(3)]
    update = {"update": {"max_parallel": 1}}
    submit(server, system_job("roll", "sleep 300", **update))
    wait_until(lambda: running_on(server, "roll", nodes), 60, what="version 0 running")
    submit(server, system_job("roll", "sleep 301", **update))
    widest = replacing = 0

    def updated() -> bool:
        nonlocal widest, replacing
        allocs = get_job(server, "roll")["allocations"]
        serving = {a["node_id"] for a in allocs if a["client_status"] == "running"}
        widest = max(widest, len(set(nodes) - serving))
        current = [a for a in allocs if a["desired_status"] == "run"]
        # Placed at version 1, not running yet: a node being replaced.
        started = [a for a in current if a["job_version"] == 1 and a["client_status"] != "running"]
        replacing = max(replacing, len(started))
        return len(current) == 3 and all(
            a["job_version"] == 1 and a["client_status"] == "running" for a in current
        )

    wait_until(updated, 90, interval=0.02, what="every copy at version 1")
    # One node at a time was without a running copy (or being replaced),
    # never more. Polls are samples: a gap between one copy's stop and the
    # next's start may fall between two (a loaded host's poll saw none, and
    # an agent may report the stop and the start in one beat), so none seen
    # is no failure.
    assert widest <= 1 and replacing <= 1
    assert sorted(copies(server, "roll")) == sorted(nodes)
