"""A new small batch job planned in its submit's transaction
(orch.server.submitplan; a service job: test_submit_plan_service): one
commit holds the job, its decided evaluation and its allocations, the broker
never sees it, the pushes follow; everything else takes the broker as before."""

from __future__ import annotations

import time

import pytest

from orch.server.broker import EvalBroker
from orch.server.planner import new_eval
from orch.server.state import StateStore
from orch.server.submitplan import MAX_PLACEMENTS, SubmitPlanner
from orch.structs import (
    AllocStatus,
    EvalStatus,
    Job,
    JobType,
    Node,
    Resources,
    Task,
    TaskGroup,
    TriggeredBy,
)

from waiting import wait_for


class Pushes:
    """In place of the Dispatch: records the placements that would be pushed."""

    def __init__(self):
        self.placed: list[tuple[str, str]] = []

    def __call__(self, allocs, job) -> None:
        self.placed += [(job.job_id, a.allocation_id) for a in allocs]


@pytest.fixture
def store(tmp_path):
    store = StateStore(str(tmp_path))
    for i in range(2):
        store.upsert_node(
            Node(
                node_id=f"n{i}",
                resources=Resources(1000, 1000),
                endpoint="http://127.0.0.1:9",
                attributes={"driver.exec": True},
            )
        )
    yield store
    store.close()


@pytest.fixture
def broker():
    broker = EvalBroker()
    yield broker
    broker.close()


def job(job_id="b", count=1, memory=100, job_type=JobType.BATCH) -> Job:
    task = Task("t", "exec", {"command": "true"}, Resources(100, memory))
    return Job(job_id=job_id, type=job_type, task_groups=(TaskGroup("g", count, (task,)),))


def submit(store, broker, spec, pushes=None):
    """Submit as Server.submit_job does, counting the transactions."""
    commits: list[str] = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    try:
        stored, ev, changed = store.submit_job(
            spec,
            lambda trigger: new_eval(spec.job_id, trigger, time.time()),
            on_commit=broker.enqueue,
            plan_now=SubmitPlanner(broker, store, seed=1),
            on_placed=pushes if pushes is not None else Pushes(),
        )
    finally:
        store._db.set_trace_callback(None)
    assert changed
    return ev, len(commits)


def test_a_new_batch_job_is_written_planned_in_one_transaction(store, broker, tmp_path):
    pushes = Pushes()
    ev, commits = submit(store, broker, job(count=2), pushes)
    allocs = store.allocs_for_job("b")
    assert commits == 1
    assert ev.status == EvalStatus.COMPLETE and ev.placed == 2 and ev.queued == 0
    assert ev.status_description == "all allocations placed"
    assert ev.groups == {"g": {"wanted": 2, "placed": 2, "failed": 0}}
    assert {a.client_status for a in allocs} == {AllocStatus.PENDING}
    assert {a.eval_id for a in allocs} == {ev.eval_id}
    assert sorted(pushes.placed) == sorted(("b", a.allocation_id) for a in allocs)
    assert broker.stats()["ready"] == 0  # no worker plans it again
    # The capacity index holds the placements: the next plan sees them.
    assert sum(store.cluster.room(f"n{i}").memory_used for i in range(2)) == 200
    # Committed: a store opened on the file has all of it.
    store.close()
    again = StateStore(str(tmp_path))
    try:
        assert again.get_job("b") is not None
        assert again.get_eval(ev.eval_id).status == EvalStatus.COMPLETE
        assert sorted(a.allocation_id for a in again.allocs_for_job("b")) == sorted(
            a.allocation_id for a in allocs
        )
        assert again.job_version("b", 0) is not None
    finally:
        again.close()


def _went_to_the_broker(store, broker, ev, commits) -> None:
    assert commits == 1
    assert ev.status == EvalStatus.PENDING
    assert store.get_eval(ev.eval_id).status == EvalStatus.PENDING
    assert store.allocs_for_job(ev.job_id) == []
    assert broker.stats()["ready"] >= 1


@pytest.mark.parametrize(
    "spec",
    [
        job(job_type=JobType.SYSTEM),  # the system scheduler: the worker's
        job(count=MAX_PLACEMENTS + 1, memory=1),  # too much for the submitting thread
        job(count=3, memory=600),  # does not fit: the worker blocks it
    ],
    ids=["system", "large", "no-room"],
)
def test_other_jobs_go_to_the_broker_as_before(store, broker, spec):
    pushes = Pushes()
    ev, commits = submit(store, broker, spec, pushes)
    _went_to_the_broker(store, broker, ev, commits)
    assert pushes.placed == []


def test_a_job_waiting_in_the_broker_keeps_its_turn(store, broker):
    waiting = new_eval("other", TriggeredBy.JOB_REGISTER, time.time())
    broker.enqueue(waiting)
    assert not broker.quiet()
    ev, commits = submit(store, broker, job())
    _went_to_the_broker(store, broker, ev, commits)


def test_a_follower_broker_plans_nothing(store, broker):
    broker.set_enabled(False)
    assert not broker.quiet()
    ev, _commits = submit(store, broker, job())
    assert ev.status == EvalStatus.PENDING and store.allocs_for_job("b") == []


def test_an_update_goes_to_the_broker(store, broker):
    submit(store, broker, job(count=1))
    ev, commits = submit(store, broker, job(count=2))
    assert commits == 1 and ev.status == EvalStatus.PENDING
    assert ev.triggered_by == TriggeredBy.JOB_UPDATE
    assert len(store.allocs_for_job("b")) == 1  # the new copy is the worker's
    assert broker.stats()["ready"] == 1


def test_a_placement_that_no_longer_fits_writes_the_job_the_old_way(store, broker):
    # A planner whose plan names a node the store does not know: the store's
    # check refuses it and the job is written with its pending evaluation.
    planner = SubmitPlanner(broker, store, seed=1)

    def stale(spec, ev):
        plan, decided = planner(spec, ev)
        for alloc in plan.place:
            alloc.node_id = "gone"
        return plan, decided

    pushes = Pushes()
    stored, ev, _changed = store.submit_job(
        job(),
        lambda trigger: new_eval("b", trigger, time.time()),
        on_commit=broker.enqueue,
        plan_now=stale,
        on_placed=pushes,
    )
    assert ev.status == EvalStatus.PENDING and store.allocs_for_job("b") == []
    assert pushes.placed == [] and broker.stats()["ready"] == 1
    assert store.get_job("b") is not None


def _server(tmp_path, **config):
    from orch.config import ServerConfig
    from orch.server.server import Server

    srv = Server(ServerConfig(data_dir=str(tmp_path / "srv"), bind="127.0.0.1", port=0, **config))
    srv.store.upsert_node(
        Node(
            node_id="n0",
            resources=Resources(1000, 1000),
            endpoint="http://127.0.0.1:9",
            attributes={"driver.exec": True},
        )
    )
    pushes = Pushes()
    srv.pusher.place = pushes  # type: ignore[method-assign]
    return srv, pushes


BODY = {
    "job_id": "b",
    "type": "batch",
    "task_groups": [
        {"name": "g", "count": 1, "tasks": [{"name": "t", "config": {"command": "true"}}]}
    ],
}


def test_the_server_plans_a_batch_submit_and_pushes_it(tmp_path):
    srv, pushes = _server(tmp_path)
    try:
        srv.start()
        assert wait_for(lambda: srv.broker.enabled)  # leading
        stored, ev = srv.submit_job(BODY)
        assert ev.status == EvalStatus.COMPLETE
        assert pushes.placed == [("b", a.allocation_id) for a in srv.store.allocs_for_job("b")]
        assert len(pushes.placed) == 1
    finally:
        srv.stop()


def test_a_server_without_workers_plans_nothing_at_submit(tmp_path):
    srv, pushes = _server(tmp_path, scheduler_workers=0)
    try:
        _stored, ev = srv.submit_job(BODY)
        assert ev.status == EvalStatus.PENDING and pushes.placed == []
    finally:
        srv.stop()


def test_a_server_not_started_plans_nothing_at_submit(tmp_path):
    """Its scheduler does not run: the evaluation waits, nothing is pushed."""
    srv, pushes = _server(tmp_path)
    try:
        _stored, ev = srv.submit_job(BODY)
        assert ev.status == EvalStatus.PENDING and pushes.placed == []
        assert srv.store.allocs_for_job("b") == []
    finally:
        srv.stop()
