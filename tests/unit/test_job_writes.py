"""Job writes on an in-process Server: concurrent submits, and evaluations of
stopped or purged jobs met by a worker driven by hand."""

import copy
import threading

import pytest

from orch.config import ServerConfig
from orch.server.server import Server
from orch.server.worker import SchedulerWorker
from orch.structs import EvalStatus


def job(command="sleep 60", job_id="web"):
    return {
        "job_id": job_id,
        "type": "service",
        "task_groups": [
            {
                "name": "g",
                "count": 2,
                "tasks": [
                    {
                        "name": "t",
                        "config": {"command": command},
                        "resources": {"cpu": 100, "memory": 64},
                    }
                ],
            }
        ],
    }


@pytest.fixture
def server(tmp_path):
    srv = Server(ServerConfig(data_dir=str(tmp_path)))
    # No agents and no worker threads: evaluations wait for the test.
    srv.pusher.place = srv.pusher.stop = lambda *args, **kwargs: None
    srv.register(
        {
            "node_id": "node-0",
            "resources": {"cpu": 4000, "memory": 4000},
            "endpoint": "http://127.0.0.1:9",
        }
    )
    yield srv
    srv.stop()


def test_concurrent_submits_of_one_new_job_make_one_version_each(server):
    barrier = threading.Barrier(20)
    answers = []

    def post(n):
        barrier.wait(timeout=10)
        answers.append(server.submit_job(job(f"sleep {60 + n}")))

    threads = [threading.Thread(target=post, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(j.version for j, _ in answers) == list(range(20))
    assert server.store.get_job("web").version == 19
    assert len({ev.eval_id for _, ev in answers}) == 20


def test_worker_cancels_the_evaluation_of_a_stopped_job(server):
    _, ev = server.submit_job(job())
    server.stop_job("web")
    SchedulerWorker(server.broker, server.store, server.planner, 0, seed=1).process([ev])
    done = server.store.get_eval(ev.eval_id)
    assert (done.status, done.status_description) == (EvalStatus.CANCELED, "job stopped")
    assert server.store.allocs_for_job("web") == []


def test_a_worker_finishing_after_a_purge_stores_nothing(server):
    _, ev = server.submit_job(job())
    worker = SchedulerWorker(server.broker, server.store, server.planner, 0, seed=1)
    real_commit = server.store.commit_plan

    def purge_first(plan, evals):
        # The purge lands while the worker holds its plan.
        server.delete_job("web")
        return real_commit(plan, evals)

    server.store.commit_plan = purge_first
    worker.process([ev])
    server.store.commit_plan = real_commit
    worker.process([ev])  # the job's evaluation met again later
    assert server.store.counts() == {"nodes": 1, "jobs": 0, "allocations": 0, "evaluations": 0}


def test_stop_after_submit_cancels_the_queued_evaluation(server):
    _, ev = server.submit_job(job())
    server.stop_job("web")
    assert server.store.get_eval(ev.eval_id).status == EvalStatus.CANCELED
    assert server.broker.dequeue(0.01) is None
    # Submitted again (a change: the job was stopped), it runs again.
    again, ev2 = server.submit_job(copy.deepcopy(job()))
    assert (again.version, again.stopped) == (1, False)
    _, evals = server.broker.dequeue(0.5)
    assert [e.eval_id for e in evals] == [ev2.eval_id]
