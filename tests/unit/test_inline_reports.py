"""Report beats answered on waitress's I/O thread (NodeOps.inline_heartbeat,
orch.server.inline): a delta beat whose reports change allocations is folded
in and committed before its answer, as the route does it; anything the route
must see (a full beat, a node coming back or suspect, a bad secret, a write
holding the store) is declined and left to it."""

import copy
import json
import time

import pytest
from inline_pair import NODE, InlinePair, server_at, service_job, store_lock_held

from orch.server.inline import SUBMIT_LOCK_WAIT, inline_routes
from orch.server.worker import SchedulerWorker
from orch.structs import AllocStatus, TriggeredBy

JOB = service_job(1)
ANSWER = {"message": "Heartbeat received", "ack": 2, "resync": False}


def _placed(srv):
    """The server with node-a registered, its first full beat taken, and
    the job's one allocation placed there (pushes go nowhere)."""
    srv.pusher.place = lambda allocs, job: None
    srv.pusher.stop = lambda allocs: None
    srv.register(copy.deepcopy(NODE))
    srv.heartbeat({"node_id": "node-a", "healthy": True, "resources": {"cpu": 1}, "seq": 1})
    _, ev = srv.submit_job(copy.deepcopy(JOB))
    SchedulerWorker(srv.broker, srv.store, srv.planner, 0, seed=1).process([ev])
    (srv.alloc,) = srv.store.allocs_for_job("web")
    return srv


@pytest.fixture
def server(tmp_path):
    srv = _placed(server_at(tmp_path))
    yield srv
    srv.stop()


def beat(alloc_id: str, status: str = "running", node="node-a", **fields) -> bytes:
    report = {"status": status, "start_time": 5.0, "tasks": {}}
    body = {
        "node_id": node,
        "healthy": True,
        "resources": {"cpu": 100},
        "seq": 2,
        "delta": True,
        "allocations": {alloc_id: report},
        **fields,
    }
    return json.dumps(body).encode()


def _stored_status(srv, alloc_id: str) -> str:
    """The allocation's status as committed to the file, not as in memory."""
    ((body,),) = srv.store.backend.execute(
        "SELECT body FROM allocations WHERE allocation_id = ?", (alloc_id,)
    )
    return json.loads(body)["client_status"]


def test_a_running_report_is_committed_before_the_routes_answer(server):
    alloc_id = server.alloc.allocation_id
    before = server.store.get_node("node-a").last_heartbeat
    deadline = server.monitor._deadlines["node-a"]
    assert server.inline_heartbeat(beat(alloc_id), SUBMIT_LOCK_WAIT) == ANSWER
    assert server.store.get_alloc(alloc_id).client_status == AllocStatus.RUNNING
    assert _stored_status(server, alloc_id) == "running"
    assert server.store.get_node("node-a").last_heartbeat > before
    assert server.monitor._deadlines["node-a"] >= deadline
    # The route answers the same beat again with the same body.
    assert server.heartbeat(json.loads(beat(alloc_id))) == ANSWER


def test_a_failed_service_is_rescheduled_as_the_route_does_it(server):
    alloc_id = server.alloc.allocation_id
    server.broker._ready.clear()
    server.broker._pending.clear()
    assert server.inline_heartbeat(beat(alloc_id, "failed"), SUBMIT_LOCK_WAIT) == ANSWER
    assert _stored_status(server, alloc_id) == "failed"
    evals = server.store.evals_for_job("web")
    assert any(e.triggered_by == TriggeredBy.ALLOC_FAILURE for e in evals)


def _declined_cases(srv):
    alloc_id = srv.alloc.allocation_id
    return {
        "full beat": beat(alloc_id, delta=False),
        "unknown node": beat(alloc_id, node="node-z"),
        "bad body": b'{"node_id": 1}',
        "not json": b"{",
    }


@pytest.mark.parametrize("case", ["full beat", "unknown node", "bad body", "not json"])
def test_declined(server, case):
    body = _declined_cases(server)[case]
    assert server.inline_heartbeat(body, SUBMIT_LOCK_WAIT) is None
    assert server.store.get_alloc(server.alloc.allocation_id).client_status == AllocStatus.PENDING


def test_a_beat_without_reports_is_answered_quietly_whatever_the_wait(server):
    quiet = beat(server.alloc.allocation_id, allocations={})
    assert server.inline_heartbeat(quiet, SUBMIT_LOCK_WAIT) == ANSWER
    with store_lock_held(server):  # the quiet path never waits for the lock
        assert server.inline_heartbeat(quiet, SUBMIT_LOCK_WAIT) is None
    assert server.store.get_alloc(server.alloc.allocation_id).client_status == AllocStatus.PENDING


def test_reports_are_left_to_the_route_without_a_wait(server):
    """PostgreSQL: no report_wait, the route commits the reports."""
    assert server.inline_heartbeat(beat(server.alloc.allocation_id)) is None
    assert server.store.get_alloc(server.alloc.allocation_id).client_status == AllocStatus.PENDING


def test_a_node_coming_back_takes_the_route(server):
    server.node_down("node-a")
    assert server.inline_heartbeat(beat(server.alloc.allocation_id), SUBMIT_LOCK_WAIT) is None
    assert not server.store.get_node("node-a").healthy


def test_a_suspect_node_takes_the_route_which_clears_it(server):
    """heartbeat_ok takes the pusher's verdict lock, then the store's: the
    I/O thread, holding the store's lock, must not; the route does it."""
    alloc_id = server.alloc.allocation_id
    server.pusher._suspect["node-a"] = time.monotonic() - 3600
    assert server.inline_heartbeat(beat(alloc_id), SUBMIT_LOCK_WAIT) is None
    assert server.store.get_alloc(alloc_id).client_status == AllocStatus.PENDING
    assert server.heartbeat(json.loads(beat(alloc_id))) == ANSWER
    assert not server.pusher.suspect("node-a")
    assert server.store.get_alloc(alloc_id).client_status == AllocStatus.RUNNING


def test_a_node_secret_is_checked(server):
    server.register({**copy.deepcopy(NODE), "secret_id": "s" * 36})
    alloc_id = server.alloc.allocation_id
    assert server.inline_heartbeat(beat(alloc_id), SUBMIT_LOCK_WAIT) is None
    good = beat(alloc_id, secret_id="s" * 36)
    # Registered again: a delta is answered with a resync, as by the route.
    assert server.inline_heartbeat(good, SUBMIT_LOCK_WAIT) == {**ANSWER, "resync": True}


def test_a_write_holding_the_store_is_waited_for_only_briefly(server):
    alloc_id = server.alloc.allocation_id
    with store_lock_held(server):
        started = time.monotonic()
        assert server.inline_heartbeat(beat(alloc_id), 0.05) is None
        assert time.monotonic() - started < 5
        assert server.store.get_alloc(alloc_id).client_status == AllocStatus.PENDING
    assert server.inline_heartbeat(beat(alloc_id), 0.05) == ANSWER


def test_over_http_the_inline_answer_is_the_routes(server):
    pair = InlinePair(server)
    try:
        alloc_id = server.alloc.allocation_id
        inline = pair.request(pair.inline_port, "POST", "/heartbeat", beat(alloc_id))
        assert pair.calls == [("/heartbeat", True)]
        assert server.store.get_alloc(alloc_id).client_status == AllocStatus.RUNNING
        routed = pair.request(pair.app_port, "POST", "/heartbeat", beat(alloc_id, "complete"))
        assert inline[0] == routed[0] == 200
        assert json.loads(inline[2]) == json.loads(routed[2]) == ANSWER
        assert _stored_status(server, alloc_id) == "complete"
        # A cross-origin beat goes to the route (which refuses it).
        pair.request(pair.inline_port, "POST", "/heartbeat", beat(alloc_id), Origin="http://x")
        assert pair.calls[-1] == ("/heartbeat", False)
    finally:
        pair.close()


def test_postgresql_reports_take_the_route(tmp_path, postgres_url):
    srv = _placed(server_at(tmp_path, database=postgres_url))
    try:
        handler = inline_routes(srv)[("POST", "/heartbeat")]
        assert handler({}, beat(srv.alloc.allocation_id), "") is None
        assert srv.store.get_alloc(srv.alloc.allocation_id).client_status == AllocStatus.PENDING
    finally:
        srv.stop()
