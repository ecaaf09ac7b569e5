"""Node loss and server kill -9, with real processes."""

from __future__ import annotations

import pytest

from harness import Cluster, pid_alive, wait_until
from test_end_to_end import job_body, submit


@pytest.fixture
def cluster(tmp_path, pyz):
    c = Cluster(tmp_path, node_ttl=2.0, heartbeat_interval=0.3)
    c.start_server()
    yield c
    c.stop_all()


def running_copies(cluster: Cluster, tag: str) -> list[int]:
    return [pid for pid in cluster.task_pids(tag).values() if pid_alive(pid)]


def test_node_loss_replaces_allocations_and_stops_stale_copies(cluster):
    node_a = cluster.start_agent("a")
    submit(cluster, job_body("one", cluster.pid_command("one"), type_="service"))
    cluster.wait_job("one", "running")
    first = cluster.job("one")["allocations"][0]
    assert first["node_id"] == node_a
    node_b = cluster.start_agent("b")

    cluster.agents["a"].kill9()  # its task lives on, orphaned
    wait_until(lambda: not cluster.node(node_a)["healthy"], timeout=10, what="node a unhealthy")
    lost = cluster.get(f"/allocations/{first['allocation_id']}").json()
    assert lost["status"] == "lost"
    cluster.wait_job("one", "running")
    live = cluster.live_allocs("one")
    assert len(live) == 1 and live[0]["node_id"] == node_b
    assert live[0]["previous_allocation"] == first["allocation_id"]
    wait_until(
        lambda: len(running_copies(cluster, "one")) == 2,
        what="replacement started (stale copy still orphaned)",
    )

    cluster.start_agent("a")  # same data dir: the same node comes back
    assert cluster.node(node_a)["healthy"]
    wait_until(
        lambda: len(running_copies(cluster, "one")) == 1, timeout=10, what="the stale copy stopped"
    )
    survivor = running_copies(cluster, "one")[0]
    assert survivor == cluster.task_pids("one")[live[0]["allocation_id"]]
    assert [a["allocation_id"] for a in cluster.live_allocs("one")] == [live[0]["allocation_id"]]


def test_server_kill9_keeps_state_and_leaves_tasks_alone(cluster):
    cluster.start_agent("a", "--meta", "zone=a")
    submit(cluster, job_body("svc", cluster.pid_command("svc"), count=2, type_="service"))
    submit(cluster, job_body("done", "true"))
    cluster.wait_job("svc", "running")
    cluster.wait_job("done", "complete")
    pids = wait_until(lambda: len(cluster.task_pids("svc")) == 2 and cluster.task_pids("svc"))
    # An evaluation that cannot finish yet: no node has zone b.
    blocked = submit(
        cluster,
        job_body(
            "later",
            cluster.pid_command("later"),
            type_="service",
            constraints=[{"attribute": "meta.zone", "operator": "=", "value": "b"}],
        ),
    )
    wait_until(
        lambda: (
            cluster.get(f"/evaluations/{blocked['evaluation_id']}").json()["status"] == "blocked"
        )
    )
    before = {j: cluster.job(j) for j in ("svc", "done", "later")}
    nodes_before = {n["node_id"] for n in cluster.get("/nodes").json()["nodes"]}

    cluster.server.kill9()
    cluster.start_server()

    for job_id, job in before.items():
        after = cluster.job(job_id)
        assert [a["allocation_id"] for a in after["allocations"]] == [
            a["allocation_id"] for a in job["allocations"]
        ]
    assert cluster.job("svc")["status"] == "running"
    assert cluster.job("done")["status"] == "complete"
    assert {n["node_id"] for n in cluster.get("/nodes").json()["nodes"]} == nodes_before
    assert cluster.task_pids("svc") == pids
    assert all(pid_alive(p) for p in pids.values())

    cluster.start_agent("b", "--meta", "zone=b")
    cluster.wait_job("later", "running")
    ev = cluster.get(f"/evaluations/{blocked['evaluation_id']}").json()
    assert ev["status"] == "complete"
    assert len(cluster.job("svc")["allocations"]) == 2


def test_unreachable_node_push_fails_and_is_placed_elsewhere(cluster):
    import threading

    from harness import free_port

    # A node that heartbeats but whose endpoint nobody listens on.
    dead_end = f"http://127.0.0.1:{free_port()}"
    node = {
        "node_id": "dead-end",
        "resources": {"cpu": 8000, "memory": 8192},
        "healthy": True,
        "endpoint": dead_end,
        "attributes": {"driver.exec": True, "driver.docker": False},
    }
    assert cluster.post("/register", node).ok
    stop = threading.Event()

    def beat():
        while not stop.wait(0.3):
            cluster.post("/heartbeat", {"node_id": "dead-end", "healthy": True, "allocations": {}})

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        submit(cluster, job_body("moved", cluster.pid_command("moved"), type_="service"))
        first = wait_until(lambda: cluster.job("moved")["allocations"]).pop()
        assert first["node_id"] == "dead-end"
        good = cluster.start_agent("a")
        cluster.wait_job("moved", "running", timeout=30)
        failed = cluster.get(f"/allocations/{first['allocation_id']}").json()
        assert failed["status"] == "failed"
        assert failed["description"].startswith("push to node failed")
        live = cluster.live_allocs("moved")
        assert len(live) == 1 and live[0]["node_id"] == good
        # The replacement links back to the first allocation. Until the good
        # agent registers (slow on a loaded host) a replacement may land on
        # dead-end again and fail the same way: each link must be one of those.
        link = live[0]
        for _ in range(20):
            if link["previous_allocation"] == first["allocation_id"]:
                break
            link = cluster.get(f"/allocations/{link['previous_allocation']}").json()
            assert link["node_id"] == "dead-end" and link["status"] == "failed", link
            assert link["description"].startswith("push to node failed"), link
        assert link["previous_allocation"] == first["allocation_id"]
    finally:
        stop.set()
        beater.join(5)
