"""A node speaks only for itself (issue #10): heartbeat reports about other
nodes' allocations, allocations stopped behind the server's back, and who may
register a node id; on an in-process Server whose pushes are recorded."""

import copy

import pytest

from orch.config import ServerConfig
from orch.server.api import make_app
from orch.server.server import Server
from orch.server.sync import UNASKED_STOP
from orch.server.worker import SchedulerWorker
from orch.structs import AllocStatus, TriggeredBy

from helpers import call

SECRET_A = "a" * 64


def node(node_id, endpoint, secret=None):
    body = {
        "node_id": node_id,
        "resources": {"cpu": 4000, "memory": 4000},
        "endpoint": endpoint,
        "attributes": {"driver.exec": True, "driver.docker": False},
    }
    if secret is not None:
        body["secret_id"] = secret
    return body


def beat(node_id, allocations=None, secret=None):
    body = {"node_id": node_id, "healthy": True, "allocations": allocations or {}}
    if secret is not None:
        body["secret_id"] = secret
    return body


@pytest.fixture
def server(tmp_path):
    srv = Server(ServerConfig(data_dir=str(tmp_path)))
    srv.pushed = {"place": [], "stop": []}
    # No agents: record what would be sent to them.
    srv.pusher.place = lambda allocs, job: srv.pushed["place"].extend(allocs)
    srv.pusher.stop = lambda allocs: srv.pushed["stop"].extend(allocs)
    srv.register(node("node-a", "http://127.0.0.1:9001", SECRET_A))
    yield srv
    srv.stop()


def place_service(server):
    body = {
        "job_id": "web",
        "type": "service",
        "task_groups": [
            {"name": "g", "count": 1, "tasks": [{"name": "t", "config": {"command": "sleep 60"}}]}
        ],
    }
    _, ev = server.submit_job(copy.deepcopy(body))
    SchedulerWorker(server.broker, server.store, server.planner, 0, seed=1).process([ev])
    (alloc,) = server.store.allocs_for_job("web")
    return alloc


def report(status):
    return {"status": status, "start_time": 1.0, "end_time": None, "tasks": {}}


def test_a_report_about_another_nodes_allocation_is_ignored(server):
    alloc = place_service(server)
    assert alloc.node_id == "node-a"
    server.heartbeat(beat("node-a", {alloc.allocation_id: report("running")}, SECRET_A))
    server.register(node("node-b", "http://127.0.0.1:9002"))
    for status in ("running", "complete", "failed"):
        server.heartbeat(beat("node-b", {alloc.allocation_id: report(status)}))
    assert server.pushed["stop"] == []
    assert server.store.get_alloc(alloc.allocation_id).client_status == AllocStatus.RUNNING


def test_an_unknown_allocation_is_stopped_on_the_reporting_node_only(server):
    server.register(node("node-b", "http://127.0.0.1:9002"))
    server.heartbeat(beat("node-b", {"purged-1": report("complete")}))
    assert [(a.allocation_id, a.node_id) for a in server.pushed["stop"]] == [("purged-1", "node-b")]
    # Its `stopped` report after the DELETE is not answered with another one.
    server.heartbeat(beat("node-b", {"purged-1": report("stopped")}))
    assert len(server.pushed["stop"]) == 1


def test_a_wanted_allocation_stopped_behind_the_servers_back_is_replaced(server):
    alloc = place_service(server)
    server.heartbeat(beat("node-a", {alloc.allocation_id: report("running")}, SECRET_A))
    server.heartbeat(beat("node-a", {alloc.allocation_id: report("stopped")}, SECRET_A))
    stored = server.store.get_alloc(alloc.allocation_id)
    assert stored.client_status == AllocStatus.FAILED
    assert stored.description == UNASKED_STOP
    evals = [
        e for e in server.store.evals_for_job("web") if e.triggered_by == TriggeredBy.ALLOC_FAILURE
    ]
    assert len(evals) == 1
    # Repeating the report (until the agent hears the ack) changes nothing more.
    server.heartbeat(beat("node-a", {alloc.allocation_id: report("stopped")}, SECRET_A))
    assert server.store.get_alloc(alloc.allocation_id).modify_time == stored.modify_time


def test_a_node_with_a_secret_is_taken_only_with_it(server):
    app = make_app(server)
    # Its own agent, restarted on another port: same secret, accepted.
    moved = node("node-a", "http://127.0.0.1:9009", SECRET_A)
    assert call(app, "POST", "/register", moved)[0] == 200
    for secret in ("b" * 64, None):
        status, body = call(
            app, "POST", "/register", node("node-a", "http://127.0.0.1:9666", secret)
        )
        assert status == 403 and "secret_id" in body["error"]
    assert server.store.get_node("node-a").endpoint == "http://127.0.0.1:9009"
    status, body = call(app, "POST", "/heartbeat", beat("node-a"))
    assert status == 403 and "secret_id" in body["error"]
    status, _ = call(app, "POST", "/heartbeat", beat("node-a", secret="b" * 64))
    assert status == 403
    assert call(app, "POST", "/heartbeat", beat("node-a", secret=SECRET_A))[0] == 200
    status, body = call(app, "POST", "/heartbeat", beat("node-a", secret=7))
    assert status == 400 and body["error"].startswith("secret_id:")
    status, shown = call(app, "GET", "/nodes/node-a")
    assert status == 200 and "secret_digest" not in shown and "secret_id" not in shown
    assert SECRET_A not in str(call(app, "GET", "/nodes")[1])


def test_a_node_without_a_secret_is_not_taken_from_elsewhere_while_healthy(server):
    app = make_app(server)
    hand = node("hand", "http://127.0.0.1:9100")
    assert call(app, "POST", "/register", hand)[0] == 200
    assert call(app, "POST", "/register", hand)[0] == 200  # same endpoint: fine
    status, body = call(app, "POST", "/register", node("hand", "http://127.0.0.1:9200"))
    assert status == 403 and "another endpoint" in body["error"]
    assert server.store.get_node("hand").endpoint == "http://127.0.0.1:9100"
    server.node_down("hand")
    assert call(app, "POST", "/register", node("hand", "http://127.0.0.1:9200"))[0] == 200
    assert server.store.get_node("hand").endpoint == "http://127.0.0.1:9200"


def test_a_bad_secret_id_is_a_field_error(server):
    app = make_app(server)
    for bad in (5, "", "x" * 300, ["x"]):
        status, body = call(app, "POST", "/register", node("other", "http://127.0.0.1:9300", bad))
        assert status == 400 and body["error"].startswith("secret_id:"), body
