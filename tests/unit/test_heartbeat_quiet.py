"""The quiet heartbeat (NodeOps.inline_heartbeat): a beat that changes nothing
durable is answered from memory, exactly as the full path answers it; any
other beat is declined (None) and left to the full path."""

import copy
import json

import pytest
from inline_pair import store_lock_held

from orch import fastjson
from orch.config import ServerConfig
from orch.httpjson import dumps
from orch.server.inline import inline_routes
from orch.server.server import Server
from orch.server.worker import SchedulerWorker
from orch.structs import AllocStatus

NODE = {
    "node_id": "node-a",
    "resources": {"cpu": 4000, "memory": 4000},
    "endpoint": "http://127.0.0.1:9001",
    "attributes": {"driver.exec": True, "driver.docker": False},
}
IDLE = {**NODE, "node_id": "node-b", "endpoint": "http://127.0.0.1:9002"}
JOB = {
    "job_id": "web",
    "type": "service",
    "task_groups": [
        {"name": "g", "count": 1, "tasks": [{"name": "t", "config": {"command": "sleep 60"}}]}
    ],
}


def raw(node="node-a", **fields) -> bytes:
    body = {"node_id": node, "healthy": True, "resources": {"cpu": 100}, **fields}
    return json.dumps(body).encode()


@pytest.fixture
def server(tmp_path):
    srv = Server(ServerConfig(data_dir=str(tmp_path)))
    srv.pusher.place = lambda allocs, job: None
    srv.pusher.stop = lambda allocs: None
    srv.register(copy.deepcopy(NODE))
    _, ev = srv.submit_job(copy.deepcopy(JOB))
    SchedulerWorker(srv.broker, srv.store, srv.planner, 0, seed=1).process([ev])
    (srv.alloc,) = srv.store.allocs_for_job("web")
    srv.register(copy.deepcopy(IDLE))  # after the placement: it holds nothing
    yield srv
    srv.stop()


def test_an_empty_delta_is_answered_as_the_full_path_answers_it(server):
    server.heartbeat(json.loads(raw(seq=1)))  # the full beat the delta needs
    before = server.store.get_node("node-a").last_heartbeat
    deadline = server.monitor._deadlines["node-a"]
    body = raw(seq=2, delta=True, resources={"cpu": 123})
    answer = server.inline_heartbeat(body)
    assert answer == {"message": "Heartbeat received", "ack": 2, "resync": False}
    assert answer == server.heartbeat(json.loads(body))
    node = server.store.get_node("node-a")
    assert node.last_heartbeat >= before and node.usage == {"cpu": 123}
    assert server.monitor._deadlines["node-a"] > deadline


def test_a_delta_before_a_full_beat_still_asks_for_a_resync(server):
    assert server.inline_heartbeat(raw(seq=1, delta=True))["resync"] is True


def test_the_seed_beat_of_a_node_without_allocations(server):
    assert server.inline_heartbeat(raw("node-b")) == {"message": "Heartbeat received"}
    # Its full beat counted: a delta now needs no resync.
    assert server.inline_heartbeat(raw("node-b", seq=1, delta=True))["resync"] is False


@pytest.mark.parametrize(
    "body",
    [
        raw(seq=1),  # a full beat on a node holding an allocation: repairs may be due
        raw("node-x", seq=1, delta=True),  # unknown node: 404 from the full path
        raw(seq=1, delta="yes"),  # invalid: 400 from the full path
        b'{"node_id": "node-a", ',  # not JSON
        raw("node-b", allocations={"a1": {"status": "running"}}),  # a report to fold in
    ],
)
def test_declined(server, body):
    assert server.inline_heartbeat(body) is None


def test_a_report_is_folded_in_by_the_full_path(server):
    alloc_id = server.alloc.allocation_id
    report = {"status": "running", "start_time": 1.0, "tasks": {}}
    body = raw(seq=1, delta=True, allocations={alloc_id: report})
    assert server.inline_heartbeat(body) is None
    assert server.store.get_alloc(alloc_id).client_status == AllocStatus.PENDING


def test_a_node_coming_back_takes_the_full_path(server):
    server.node_down("node-b")
    assert server.inline_heartbeat(raw("node-b", seq=1, delta=True)) is None
    server.heartbeat(json.loads(raw("node-b", seq=1, delta=True)))
    assert server.store.get_node("node-b").healthy
    assert server.inline_heartbeat(raw("node-b", seq=2, delta=True)) is not None


def test_a_write_in_progress_is_not_waited_for(server):
    with store_lock_held(server):
        assert server.inline_heartbeat(raw("node-b", seq=1, delta=True)) is None
    assert server.inline_heartbeat(raw("node-b", seq=1, delta=True)) is not None


def test_a_node_secret_is_checked(server):
    server.register({**copy.deepcopy(IDLE), "secret_id": "s" * 36})
    assert server.inline_heartbeat(raw("node-b", seq=1, delta=True)) is None
    good = raw("node-b", seq=1, delta=True, secret_id="s" * 36)
    assert server.inline_heartbeat(good) is not None


def _beat_handler(server):
    """The inline route's handler as waitress calls it: (headers, body) in."""
    route = inline_routes(server)[("POST", "/heartbeat")]
    return lambda headers, body: route(headers, body, "")


def test_the_inline_route_makes_the_routes_checks(server):
    handler = _beat_handler(server)
    body = raw("node-b", seq=1, delta=True)
    assert json.loads(handler({}, body)[0]) == {
        "message": "Heartbeat received",
        "ack": 1,
        "resync": True,
    }
    assert handler({"ORIGIN": "http://elsewhere"}, body) is None
    server.leadership.is_leader = lambda: False
    assert handler({}, body) is None


def test_the_inline_route_checks_the_token(tmp_path):
    srv = Server(ServerConfig(data_dir=str(tmp_path), token="t0ken"))
    try:
        srv.register(copy.deepcopy(IDLE))
        handler = _beat_handler(srv)
        body = raw("node-b")
        assert handler({}, body) is None
        assert handler({"AUTHORIZATION": "Bearer wrong"}, body) is None
        assert handler({"AUTHORIZATION": "Bearer t0ken"}, body) is not None
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "answer",
    [
        {"message": "Heartbeat received", "ack": 0, "resync": False},
        {"message": "Heartbeat received", "ack": 2**53 + 1, "resync": True},
        {"message": "Heartbeat received", "ack": 7, "resync": False},
        {"message": "Heartbeat received"},  # the seed's beat: no seq
        {"message": "Heartbeat received", "ack": True, "resync": False},
        {"message": "Heartbeat received", "resync": False, "ack": 3},
        {"message": "其他", "ack": 3, "resync": False},
    ],
)
def test_the_answer_bytes_are_the_encoders(answer):
    assert fastjson.dumps(answer) == dumps(answer).encode()  # the inline route's encoder
