"""Node events evaluate system jobs at once: register, back healthy, not suspect.

On an in-process Server (no threads started) whose pushes are recorded; the
broker is drained by hand through a real SchedulerWorker.
"""

from __future__ import annotations

import pytest

from orch.config import ServerConfig
from orch.server.server import Server
from orch.server.worker import SchedulerWorker
from orch.structs import AllocStatus, DesiredStatus, TriggeredBy


def node(node_id: str, port: int) -> dict:
    return {
        "node_id": node_id,
        "resources": {"cpu": 4000, "memory": 4000},
        "endpoint": f"http://127.0.0.1:{port}",
        "attributes": {"driver.exec": True},
    }


def system_body(job_id: str = "sys", type_: str = "system") -> dict:
    return {
        "job_id": job_id,
        "type": type_,
        "task_groups": [{"name": "g", "tasks": [{"name": "t", "config": {"command": "sleep 60"}}]}],
    }


@pytest.fixture
def server(tmp_path):
    srv = Server(ServerConfig(data_dir=str(tmp_path)))
    srv.pusher.place = lambda allocs, job: None
    srv.pusher.stop = lambda allocs: None
    srv.worker = SchedulerWorker(srv.broker, srv.store, srv.planner, 0, seed=1)
    yield srv
    srv.stop()


def drain(server) -> list:
    """Process every ready evaluation; returns them."""
    seen = []
    while (work := server.broker.dequeue(timeout=0)) is not None:
        token, evals = work
        server.worker.process(evals)
        server.broker.ack(token)
        seen += evals
    return seen


def wanted_nodes(server, job_id: str) -> list[str]:
    return sorted(
        a.node_id
        for a in server.store.allocs_for_job(job_id)
        if a.desired_status == DesiredStatus.RUN
    )


def test_a_registering_node_gets_an_evaluation_of_each_system_job(server):
    server.register(node("a", 9001))
    server.submit_job(system_body())
    server.submit_job(system_body("once", "sysbatch"))
    server.submit_job({**system_body("plain", "service")})
    drain(server)
    assert wanted_nodes(server, "sys") == ["a"]
    server.register(node("b", 9002))
    evals = drain(server)
    assert sorted(e.job_id for e in evals) == ["once", "sys"]
    assert {(e.triggered_by, e.node_id) for e in evals} == {(TriggeredBy.NODE_UPDATE, "b")}
    assert wanted_nodes(server, "sys") == ["a", "b"]
    assert wanted_nodes(server, "once") == ["a", "b"]


def test_a_lost_node_coming_back_gets_a_new_copy_there(server):
    server.register(node("a", 9001))
    server.register(node("b", 9002))
    server.submit_job(system_body())
    drain(server)
    server.node_down("b")
    drain(server)
    allocs = server.store.allocs_for_job("sys")
    assert wanted_nodes(server, "sys") == ["a"]
    assert [a.client_status for a in allocs if a.node_id == "b"] == [AllocStatus.LOST]
    server.heartbeat({"node_id": "b", "healthy": True, "allocations": {}})
    evals = drain(server)
    assert [e.job_id for e in evals] == ["sys"]
    assert wanted_nodes(server, "sys") == ["a", "b"]


def test_a_stopped_system_job_is_not_evaluated_on_node_events(server):
    server.register(node("a", 9001))
    server.submit_job(system_body())
    drain(server)
    server.stop_job("sys")
    server.register(node("b", 9002))
    assert drain(server) == []
