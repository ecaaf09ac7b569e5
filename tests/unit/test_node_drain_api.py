"""Eligibility and drain routes, and job summaries, on an in-process Server
whose pushes are recorded (no agents)."""

import copy

import pytest

from orch.config import ServerConfig
from orch.server.api import make_app
from orch.server.server import Server
from orch.server.worker import SchedulerWorker
from orch.structs import AllocStatus, replace

from helpers import call

NODE = {
    "node_id": "node-a",
    "resources": {"cpu": 4000, "memory": 4000},
    "endpoint": "http://127.0.0.1:9001",
    "attributes": {"driver.exec": True},
}
JOB = {
    "job_id": "web",
    "type": "service",
    "task_groups": [
        {
            "name": "g",
            "count": 2,
            "migrate": {"max_parallel": 1},
            "tasks": [{"name": "t", "config": {"command": "sleep 60"}}],
        }
    ],
}


@pytest.fixture
def server(tmp_path):
    srv = Server(ServerConfig(data_dir=str(tmp_path)))
    srv.pusher.place = lambda allocs, job: None
    srv.pusher.stop = lambda allocs: None
    srv.register(copy.deepcopy(NODE))
    yield srv
    srv.stop()


def run_evals(server):
    """Plan every queued evaluation now (no worker threads in these tests)."""
    worker = SchedulerWorker(server.broker, server.store, server.planner, 0, seed=1)
    while (work := server.broker.dequeue(timeout=0.01)) is not None:
        token, evals = work
        worker.process(evals)
        server.broker.ack(token)


def test_eligibility_round_trip_and_register_keeps_it(server):
    app = make_app(server)
    status, body = call(app, "POST", "/nodes/node-a/eligibility", {"eligible": False})
    assert status == 200 and body["eligibility"] == "ineligible"
    server.register(copy.deepcopy(NODE))  # the agent comes back: still ineligible
    status, node = call(app, "GET", "/nodes/node-a")
    assert node["eligibility"] == "ineligible" and node["drain"] is None
    server.submit_job(copy.deepcopy(JOB))
    run_evals(server)
    assert server.store.allocs_for_job("web") == []
    status, job = call(app, "GET", "/jobs/web")
    assert job["summary"] == {
        "g": {"queued": 2, "starting": 0, "running": 0, "complete": 0, "failed": 0, "lost": 0}
    }
    call(app, "POST", "/nodes/node-a/eligibility", {"eligible": True})
    run_evals(server)  # eligible again: the blocked evaluation is planned again
    assert len(server.store.allocs_for_job("web")) == 2
    status, job = call(app, "GET", "/jobs/web")
    assert job["summary"]["g"]["starting"] == 2 and job["summary"]["g"]["queued"] == 0
    assert job["type"] == "service" and job["parent_id"] is None and job["children"] == []


def test_drain_start_shows_progress_and_cancel_makes_eligible(server):
    app = make_app(server)
    server.submit_job(copy.deepcopy(JOB))
    run_evals(server)
    status, body = call(app, "POST", "/nodes/node-a/drain", {"deadline_s": "1m"})
    assert status == 200 and body["eligibility"] == "ineligible"
    assert body["drain"]["deadline_s"] == 60 and body["drain"]["remaining_allocations"] == 2
    status, body = call(app, "POST", "/nodes/node-a/eligibility", {"eligible": True})
    assert status == 400 and "draining" in body["error"]
    server.drainer.tick()  # marks one copy (max_parallel 1); nowhere to place it
    marked = [a for a in server.store.allocs_for_job("web") if a.migrate]
    assert len(marked) == 1
    status, body = call(app, "POST", "/nodes/node-a/drain", {"cancel": True})
    assert status == 200 and body["eligibility"] == "eligible" and body["drain"] is None
    assert not any(a.migrate for a in server.store.allocs_for_job("web"))


def test_drain_to_completion_then_node_status(server):
    app = make_app(server)
    server.submit_job(copy.deepcopy(JOB))
    run_evals(server)
    for alloc in server.store.allocs_for_job("web"):
        server.store.update_allocs([replace(alloc, client_status=AllocStatus.RUNNING)])
    call(app, "POST", "/nodes/node-a/drain", {"deadline_s": 0})
    server.drainer.tick()
    status, node = call(app, "GET", "/nodes/node-a")
    assert node["drain"] is None and node["drain_complete"] is not None
    assert node["eligibility"] == "ineligible" and node["allocations"] == []


@pytest.mark.parametrize(
    "path, body, fragment",
    [
        ("/nodes/node-a/eligibility", {}, "eligible: is required"),
        ("/nodes/node-a/eligibility", {"eligible": "no"}, "eligible: must be a boolean"),
        ("/nodes/node-a/eligibility", {"eligible": True, "x": 1}, "body.x: unknown field"),
        ("/nodes/node-a/eligibility", [1], "body: must be a JSON object"),
        ("/nodes/node-a/drain", {"deadline_s": -1}, "deadline_s: must be between"),
        ("/nodes/node-a/drain", {"deadline_s": "soon"}, "deadline_s: must be a number"),
        ("/nodes/node-a/drain", {"ignore_system_jobs": 1}, "ignore_system_jobs: must be"),
        ("/nodes/node-a/drain", {"cancel": "yes"}, "cancel: must be a boolean"),
    ],
)
def test_bad_bodies_are_400(server, path, body, fragment):
    status, answer = call(make_app(server), "POST", path, body)
    assert status == 400 and fragment in answer["error"]


def test_unknown_node_is_404(server):
    app = make_app(server)
    status, body = call(app, "POST", "/nodes/nope/eligibility", {"eligible": False})
    assert status == 404 and body["error"] == "Node not found"
    status, body = call(app, "POST", "/nodes/nope/drain", {})
    assert status == 404


def test_migrate_block_is_validated(server):
    job = copy.deepcopy(JOB)
    job["task_groups"][0]["migrate"] = {"max_parallel": 0}
    status, body = call(make_app(server), "POST", "/jobs", job)
    assert status == 400 and "task_groups[0].migrate.max_parallel" in body["error"]
