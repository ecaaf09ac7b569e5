"""A new service job planned in its submit's transaction (orch.server.submitplan)
ends as the worker would leave it: the same evaluation, the same allocations,
no deployment; its next version gets the same deployment and plan either way."""

from __future__ import annotations

import time

import pytest

from orch.server.broker import EvalBroker
from orch.server.planner import Dispatch, ServerPlanner, new_eval
from orch.server.state import StateStore
from orch.server.submitplan import SubmitPlanner
from orch.server.worker import SchedulerWorker
from orch.structs import (
    DeploymentStatus,
    EvalStatus,
    Job,
    JobType,
    Node,
    Resources,
    Task,
    TaskGroup,
    UpdateStrategy,
    replace,
)

from waiting import wait_for


class AgentCalls:
    """In place of the Pusher: records what would reach the agents."""

    def __init__(self):
        self.placed: list[str] = []
        self.stopped: list[str] = []

    def place(self, allocs, job) -> None:
        self.placed += [a.allocation_id for a in allocs]

    def stop(self, allocs) -> None:
        self.stopped += [a.allocation_id for a in allocs]

    def busy(self, alloc_id, node_id=None) -> bool:
        return False


class Side:
    """A store, broker, planner and worker built as the Server builds them."""

    def __init__(self, path: str):
        self.store = StateStore(path)
        self.broker = EvalBroker()
        self.calls = AgentCalls()
        self.dispatch = Dispatch(self.calls)
        self.planner = ServerPlanner(self.store, self.broker, self.dispatch)
        self.worker = SchedulerWorker(self.broker, self.store, self.planner, 0, seed=1)
        for i in range(3):
            self.store.upsert_node(
                Node(
                    node_id=f"n{i}",
                    resources=Resources(1000, 1000),
                    endpoint="http://127.0.0.1:9",
                    attributes={"driver.exec": True},
                )
            )

    def submit(self, spec: Job, *, at_submit: bool):
        """Server.submit_job's store call; with at_submit, the submit plans it."""
        commits: list[str] = []
        self.store._db.set_trace_callback(
            lambda sql: commits.append(sql) if sql == "COMMIT" else None
        )
        try:
            _stored, ev, _changed = self.store.submit_job(
                spec,
                lambda trigger: new_eval(spec.job_id, trigger, time.time()),
                on_commit=self.broker.enqueue,
                plan_now=SubmitPlanner(self.broker, self.store, seed=1) if at_submit else None,
                on_placed=self.dispatch.place,
            )
        finally:
            self.store._db.set_trace_callback(None)
        return ev, len(commits)

    def run_worker(self) -> None:
        """Plan what the broker holds, as the worker thread does."""
        while self.broker.stats()["ready"]:
            token, evals = self.broker.dequeue(timeout=1)
            self.worker.process(evals)
            self.broker.ack(token)

    def close(self) -> None:
        self.broker.close()
        self.store.close()


@pytest.fixture
def sides(tmp_path):
    made = [Side(str(tmp_path / "submit")), Side(str(tmp_path / "worker"))]
    for side in made:
        side.broker.set_enabled(True)
    yield made
    for side in made:
        side.close()


def service(command="sleep 60", count=2) -> Job:
    task = Task("t", "exec", {"command": command}, Resources(100, 100))
    strategy = UpdateStrategy(max_parallel=1, canary=1, health_check="task_states")
    return Job(
        job_id="web",
        type=JobType.SERVICE,
        task_groups=(TaskGroup("g", count, (task,)),),
        update=strategy,
    )


def alloc_shape(store: StateStore) -> list[tuple]:
    """What the plan decided of each allocation, less its id, node and times."""
    return sorted(
        (
            a.task_group,
            a.index,
            a.job_version,
            a.group_hash,
            a.resources,
            a.desired_status.value,
            a.client_status.value,
            a.previous_allocation is None,
            a.reschedule_count,
        )
        for a in store.allocs_for_job("web")
    )


def eval_shape(ev) -> tuple:
    return (ev.status, ev.placed, ev.queued, ev.failures, ev.groups, ev.status_description)


def deployment_shape(store: StateStore) -> list[tuple]:
    return [
        (d.job_version, d.status, {g: {**s, "progress_deadline": 0} for g, s in d.groups.items()})
        for d in store.deployments_for_job("web")
    ]


def test_a_new_service_job_is_planned_at_submit_as_the_worker_plans_it(sides):
    at_submit, by_worker = sides
    ev, commits = at_submit.submit(service(), at_submit=True)
    queued, _ = by_worker.submit(service(), at_submit=False)
    assert queued.status == EvalStatus.PENDING
    by_worker.run_worker()
    assert commits == 1 and at_submit.broker.stats()["ready"] == 0
    assert ev.status == EvalStatus.COMPLETE
    assert eval_shape(ev) == eval_shape(by_worker.store.get_eval(queued.eval_id))
    assert eval_shape(at_submit.store.get_eval(ev.eval_id)) == eval_shape(ev)
    assert alloc_shape(at_submit.store) == alloc_shape(by_worker.store)
    assert len(alloc_shape(at_submit.store)) == 2
    # A first version: no copies of an older spec to replace, no deployment.
    assert at_submit.store.deployments_for_job("web") == []
    assert by_worker.store.deployments_for_job("web") == []
    assert sorted(at_submit.calls.placed) == sorted(
        a.allocation_id for a in at_submit.store.allocs_for_job("web")
    )


def test_the_next_version_gets_the_same_deployment_either_way(sides):
    at_submit, by_worker = sides
    at_submit.submit(service(), at_submit=True)
    by_worker.submit(service(), at_submit=False)
    by_worker.run_worker()
    for side in sides:
        ev, _ = side.submit(service(command="sleep 61"), at_submit=True)
        assert ev.status == EvalStatus.PENDING  # an update: the broker's
        side.run_worker()
    shapes = [deployment_shape(side.store) for side in sides]
    assert shapes[0] == shapes[1]
    assert shapes[0][0][:2] == (1, DeploymentStatus.RUNNING)
    assert alloc_shape(at_submit.store) == alloc_shape(by_worker.store)
    # The canary: one copy of version 1 beside the two of version 0.
    assert sorted(s[2] for s in alloc_shape(at_submit.store)) == [0, 0, 1]


@pytest.mark.parametrize("job_type", [JobType.SYSTEM, JobType.SYSBATCH])
def test_system_jobs_still_go_to_the_broker(sides, job_type):
    at_submit, _ = sides
    spec = replace(service(count=1), type=job_type, update=None)
    ev, commits = at_submit.submit(spec, at_submit=True)
    assert commits == 1 and ev.status == EvalStatus.PENDING
    assert at_submit.store.allocs_for_job("web") == []
    assert at_submit.broker.stats()["ready"] == 1


def test_a_started_server_plans_a_service_submit_and_pushes_it(tmp_path):
    from orch.config import ServerConfig
    from orch.server.server import Server

    srv = Server(ServerConfig(data_dir=str(tmp_path / "srv"), bind="127.0.0.1", port=0))
    calls = AgentCalls()
    srv.pusher.place = calls.place  # type: ignore[method-assign]
    srv.store.upsert_node(
        Node(
            node_id="n0",
            resources=Resources(1000, 1000),
            endpoint="http://127.0.0.1:9",
            attributes={"driver.exec": True},
        )
    )
    body = {
        "job_id": "web",
        "type": "service",
        "update": {"max_parallel": 1},
        "task_groups": [
            {"name": "g", "count": 2, "tasks": [{"name": "t", "config": {"command": "sleep 60"}}]}
        ],
    }
    try:
        srv.start()
        assert wait_for(lambda: srv.broker.enabled)  # leading
        _stored, ev = srv.submit_job(body)
        assert ev.status == EvalStatus.COMPLETE and ev.placed == 2
        assert sorted(calls.placed) == sorted(
            a.allocation_id for a in srv.store.allocs_for_job("web")
        )
        assert srv.store.deployments_for_job("web") == []
    finally:
        srv.stop()
