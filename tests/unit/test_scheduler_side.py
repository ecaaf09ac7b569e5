"""Workers, the heartbeat sync and the dry run on their narrow interfaces.

Each is built as the Server builds it, from a real StateStore on tmp_path, the
real EvalBroker, a ServerPlanner and a Dispatch, never from a Server. Only the
calls to agents are recorded instead of sent (there are no agents here).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from orch.server.broker import EvalBroker
from orch.server.planner import STORAGE_RETRY_S, Dispatch, ServerPlanner, new_eval
from orch.server.planning import dry_run
from orch.server.state import StateStore
from orch.server.sync import AllocSync
from orch.server.worker import SchedulerWorker
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
    replace,
)

from waiting import wait_for


class AgentCalls:
    """In place of the Pusher: records what would reach the agents."""

    def __init__(self):
        self.placed: list[str] = []
        self.stopped: list[str] = []
        self.in_flight: set[str] = set()

    def place(self, allocs, job) -> None:
        self.placed += [a.allocation_id for a in allocs]

    def stop(self, allocs) -> None:
        self.stopped += [a.allocation_id for a in allocs]

    def busy(self, alloc_id, node_id=None) -> bool:
        return alloc_id in self.in_flight


@pytest.fixture
def side(tmp_path):
    store = StateStore(str(tmp_path))
    broker = EvalBroker()
    calls = AgentCalls()
    dispatch = Dispatch(calls)
    planner = ServerPlanner(store, broker, dispatch)
    for i in range(2):
        store.upsert_node(
            Node(
                node_id=f"n{i}",
                resources=Resources(1000, 1000),
                endpoint="http://127.0.0.1:9",
                attributes={"driver.exec": True},
            )
        )
    yield SimpleNamespace(
        store=store,
        broker=broker,
        calls=calls,
        planner=planner,
        worker=SchedulerWorker(broker, store, planner, 0, seed=1),
        sync=AllocSync(store, planner, dispatch),
    )
    broker.close()
    store.close()


def job(job_id="web", count=2, memory=100, job_type=JobType.SERVICE):
    task = Task("t", "exec", {"command": "sleep 60"}, Resources(100, memory))
    return Job(job_id=job_id, type=job_type, task_groups=(TaskGroup("g", count, (task,)),))


def submit(side, spec):
    """Store the job and run its evaluation now, as a worker thread would."""
    ev = new_eval(spec.job_id, TriggeredBy.JOB_REGISTER, time.time())
    side.store.put_job(spec, ev)
    side.broker.enqueue(ev)
    token, evals = side.broker.dequeue(timeout=1)
    side.worker.process(evals)
    side.broker.ack(token)
    return side.store.get_eval(ev.eval_id)


def test_worker_commits_the_plan_and_the_dispatch_pushes_it(side):
    ev = submit(side, job(count=2))
    allocs = side.store.allocs_for_job("web")
    assert ev.status == EvalStatus.COMPLETE and ev.placed == 2
    assert ev.status_description == "all allocations placed"
    assert sorted(side.calls.placed) == sorted(a.allocation_id for a in allocs)
    assert side.calls.stopped == []


def test_a_blocked_evaluation_is_parked_and_names_the_nearest_nodes(side):
    ev = submit(side, job(count=3, memory=600))
    assert ev.status == EvalStatus.BLOCKED and ev.queued == 1
    assert ev.status_description == "1 allocation(s) not placed: memory exhausted on 2 nodes"
    assert [n["free"]["memory"] for n in ev.failed_nodes["g"]] == [400, 400]
    assert side.broker.stats()["blocked"] == 1
    assert len(side.calls.placed) == 2


def test_stops_are_dispatched_and_release_blocked_evaluations(side):
    submit(side, job(count=2, memory=600))
    blocked = submit(side, job(job_id="big", count=1, memory=600))
    assert blocked.status == EvalStatus.BLOCKED
    ev = submit(side, job(count=1, memory=600))
    assert ev.status == EvalStatus.COMPLETE
    [stopped] = [a for a in side.store.allocs_for_job("web") if a.desired_status.value == "stop"]
    assert side.calls.stopped == [stopped.allocation_id]
    stats = side.broker.stats()
    assert (stats["blocked"], stats["ready"]) == (0, 1)


def test_evaluations_of_a_job_that_is_gone_are_canceled(side):
    ev = new_eval("gone", TriggeredBy.NODE_UPDATE, time.time())
    side.store.put_evals([ev])
    side.worker.process([ev])
    # An evaluation of a job that does not exist is never stored at all.
    assert side.store.get_eval(ev.eval_id) is None
    assert side.calls.placed == []


def test_a_worker_keeps_evaluations_the_store_cannot_commit(side):
    spec = job(count=1)
    ev = new_eval(spec.job_id, TriggeredBy.JOB_REGISTER, time.time())
    side.store.put_job(spec, ev)
    side.store._db.close()  # every write now fails, as on a full disk
    side.worker.start()
    try:
        side.broker.enqueue(ev)
        assert wait_for(lambda: side.broker.stats()["delayed"] == 1, timeout=10)
    finally:
        side.worker.stop()
        side.worker.join(timeout=5)
    assert side.store.get_eval(ev.eval_id).status == EvalStatus.PENDING
    assert side.calls.placed == [] and STORAGE_RETRY_S > 0


def placed_long_ago(side, spec, count=1):
    """Allocations committed as if placed a minute ago (past the re-push grace)."""
    submit(side, spec)
    allocs = [
        replace(a, create_time=time.time() - 60) for a in side.store.allocs_for_job(spec.job_id)
    ][:count]
    side.store.update_allocs(allocs)
    side.calls.placed.clear()
    return allocs


def test_sync_records_reports_and_stops_what_the_server_does_not_want(side):
    [alloc] = placed_long_ago(side, job(count=1))
    side.sync.apply(
        alloc.node_id,
        {
            alloc.allocation_id: {"status": "running", "tasks": {}},
            "not-ours": {"status": "running", "job_id": "web"},
        },
    )
    assert side.store.get_alloc(alloc.allocation_id).client_status == AllocStatus.RUNNING
    assert side.calls.stopped == ["not-ours"]
    assert side.calls.placed == []


def test_a_failed_service_allocation_gets_an_evaluation(side):
    [alloc] = placed_long_ago(side, job(count=1))
    before = {e.eval_id for e in side.store.evals_for_job("web")}
    side.sync.apply(alloc.node_id, {alloc.allocation_id: {"status": "failed"}})
    [new] = [e for e in side.store.evals_for_job("web") if e.eval_id not in before]
    assert new.triggered_by == TriggeredBy.ALLOC_FAILURE
    assert side.broker.stats()["ready"] == 1


def test_placements_unknown_to_their_node_are_pushed_again(side):
    [alloc] = placed_long_ago(side, job(count=1))
    side.calls.in_flight.add(alloc.allocation_id)
    side.sync.apply(alloc.node_id, {})
    assert side.calls.placed == []  # a push is already under way
    side.calls.in_flight.clear()
    side.sync.apply(alloc.node_id, {})
    assert side.calls.placed == [alloc.allocation_id]


def test_dry_run_reads_the_state_and_writes_nothing(side):
    submit(side, job(count=2))
    before = (side.store.counts(), side.broker.stats(), list(side.calls.placed))
    body = {
        "job_id": "web",
        "type": "service",
        "task_groups": [
            {
                "name": "g",
                "count": 3,
                "tasks": [
                    {
                        "name": "t",
                        "config": {"command": "sleep 60"},
                        "resources": {"cpu": 100, "memory": 100},
                    }
                ],
            }
        ],
    }
    out = dry_run(side.store, body, max_count=10)
    assert (out["exists"], out["version"], out["current_version"]) == (True, 1, 0)
    assert out["diff"]["g"] == {"place": 1, "stop": 0, "keep": 2, "replace": 0, "scale": "+1"}
    assert (side.store.counts(), side.broker.stats(), side.calls.placed) == before
