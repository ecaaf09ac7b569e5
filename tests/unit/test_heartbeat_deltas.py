"""Numbered heartbeats and deltas (issue #17) on an in-process Server whose
pushes are recorded: what a delta applies, what waits for a full beat, and
when the server asks for one."""

import copy

import pytest

from orch.config import ServerConfig
from orch.errors import ValidationError
from orch.server.server import Server
from orch.server.worker import SchedulerWorker
from orch.structs import AllocStatus, DesiredStatus, replace

NODE = {
    "node_id": "node-a",
    "resources": {"cpu": 4000, "memory": 4000},
    "endpoint": "http://127.0.0.1:9001",
    "attributes": {"driver.exec": True, "driver.docker": False},
}
JOB = {
    "job_id": "web",
    "type": "service",
    "task_groups": [
        {"name": "g", "count": 1, "tasks": [{"name": "t", "config": {"command": "sleep 60"}}]}
    ],
}


def beat(seq=None, delta=False, **allocations):
    body = {"node_id": "node-a", "healthy": True, "allocations": allocations}
    if seq is not None:
        body["seq"] = seq
    if delta:
        body["delta"] = True
    return body


def report(status):
    return {"status": status, "start_time": 1.0, "end_time": None, "tasks": {}}


@pytest.fixture
def server(tmp_path):
    srv = Server(ServerConfig(data_dir=str(tmp_path)))
    srv.pushed = {"place": [], "stop": []}
    srv.pusher.place = lambda allocs, job: srv.pushed["place"].extend(allocs)
    srv.pusher.stop = lambda allocs: srv.pushed["stop"].extend(allocs)
    srv.register(copy.deepcopy(NODE))
    _, ev = srv.submit_job(copy.deepcopy(JOB))
    SchedulerWorker(srv.broker, srv.store, srv.planner, 0, seed=1).process([ev])
    (srv.alloc,) = srv.store.allocs_for_job("web")
    srv.pushed["place"].clear()
    yield srv
    srv.stop()


def test_the_seed_beat_gets_the_seed_answer(server):
    assert server.heartbeat(beat()) == {"message": "Heartbeat received"}


def test_a_delta_before_any_full_beat_asks_for_a_resync(server):
    alloc_id = server.alloc.allocation_id
    answer = server.heartbeat(beat(1, True, **{alloc_id: report("running")}))
    assert answer == {"message": "Heartbeat received", "ack": 1, "resync": True}
    # The report it carried is applied all the same.
    assert server.store.get_alloc(alloc_id).client_status == AllocStatus.RUNNING
    assert server.heartbeat(beat(2, **{alloc_id: report("running")}))["resync"] is False
    assert server.heartbeat(beat(3, True))["resync"] is False


def test_a_delta_without_the_allocation_does_not_push_it_again(server, monkeypatch):
    monkeypatch.setattr("orch.server.sync.REPUSH_AFTER_S", 0.0)
    server.heartbeat(beat(1))  # full and empty: the node lacks the allocation
    assert [a.allocation_id for a in server.pushed["place"]] == [server.alloc.allocation_id]
    server.pushed["place"].clear()
    server.heartbeat(beat(2, True))
    assert server.pushed["place"] == []


def test_an_unwanted_allocation_is_stopped_from_a_full_beat(server):
    alloc_id = server.alloc.allocation_id
    server.heartbeat(beat(1, **{alloc_id: report("running")}))
    running = server.store.get_alloc(alloc_id)
    server.store.update_allocs([replace(running, desired_status=DesiredStatus.STOP)])
    server.heartbeat(beat(2, True))  # unchanged and unreported: nothing to say
    assert server.pushed["stop"] == []
    server.heartbeat(beat(3, **{alloc_id: report("running")}))
    assert [a.allocation_id for a in server.pushed["stop"]] == [alloc_id]


def test_a_stopped_allocation_keeps_how_its_tasks_ended(server):
    """Reports of an allocation the server stopped were skipped: its tasks
    read `running` for good, without their exit code or kill events."""
    alloc_id = server.alloc.allocation_id
    running = {"t": {"status": "running", "start_time": 1.0, "restarts": 0}}
    server.heartbeat(beat(1, **{alloc_id: {**report("running"), "tasks": running}}))
    server.stop_job("web")
    stopped = server.store.get_alloc(alloc_id)
    assert stopped.client_status == AllocStatus.STOPPED
    assert stopped.tasks["t"].status.value == "running"
    ended = {"t": {"status": "failed", "start_time": 1.0, "end_time": 2.0, "exit_code": 143}}
    ended["t"]["events"] = [{"time": 2.0, "type": "Killed", "message": "stopped by the server"}]
    server.heartbeat(beat(2, **{alloc_id: {**report("stopped"), "tasks": ended}}))
    final = server.store.get_alloc(alloc_id)
    assert final.client_status == AllocStatus.STOPPED  # the server's word
    assert final.tasks["t"].status.value == "failed" and final.tasks["t"].exit_code == 143
    server.heartbeat(beat(3, **{alloc_id: {**report("stopped"), "tasks": ended}}))
    assert server.store.get_alloc(alloc_id) == final  # taken once: no write again


def test_node_down_and_register_ask_for_a_resync(server):
    server.heartbeat(beat(1))
    assert server.heartbeat(beat(2, True))["resync"] is False
    server.node_down("node-a")
    assert server.heartbeat(beat(3, True))["resync"] is True
    server.heartbeat(beat(4))
    server.register(copy.deepcopy(NODE))
    assert server.heartbeat(beat(5, True))["resync"] is True


@pytest.mark.parametrize(
    "extra",
    [{"seq": -1}, {"seq": "1"}, {"seq": 1.5}, {"delta": True}, {"seq": 1, "delta": "yes"}],
)
def test_bad_numbers_are_refused(server, extra):
    with pytest.raises(ValidationError):
        server.heartbeat({**beat(), **extra})
