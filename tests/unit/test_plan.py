"""POST /jobs/plan (a dry run that changes nothing) and the evaluation's
``failed_nodes`` detail, on an in-process Server whose worker is driven by hand."""

import copy
import json

import pytest

from orch.config import ServerConfig
from orch.server.api import make_app
from orch.server.server import Server
from orch.server.worker import SchedulerWorker

from helpers import call

NODE_MEMORY = 1000


def job(count=2, memory=100, command="sleep 60", job_id="web", constraints=()):
    return {
        "job_id": job_id,
        "type": "service",
        "task_groups": [
            {
                "name": "g",
                "count": count,
                "constraints": list(constraints),
                "tasks": [
                    {
                        "name": "t",
                        "config": {"command": command},
                        "resources": {"cpu": 100, "memory": memory},
                    }
                ],
            }
        ],
    }


@pytest.fixture
def server(tmp_path):
    srv = Server(ServerConfig(data_dir=str(tmp_path)))
    # No agents: placements are committed but never pushed anywhere.
    srv.pusher.place = srv.pusher.stop = lambda *args, **kwargs: None
    for i, region in enumerate(("global", "global", "eu")):
        srv.register(
            {
                "node_id": f"node-{i}",
                "region": region,
                "resources": {"cpu": 4000, "memory": NODE_MEMORY},
                "endpoint": "http://127.0.0.1:9",
            }
        )
    yield srv
    srv.stop()


def submit(server, body):
    """Submit and run the evaluation now, as a worker would."""
    _, ev = server.submit_job(copy.deepcopy(body))
    SchedulerWorker(server.broker, server.store, server.planner, 0, seed=1).process([ev])
    return server.store.get_eval(ev.eval_id)


def snapshot(server, app, job_id):
    status, job_view = call(app, "GET", f"/jobs/{job_id}")
    usage = {n.node_id: server.store.cluster.free(n.node_id) for n in server.store.list_nodes()}
    return (
        status,
        json.dumps(job_view, sort_keys=True),
        server.store.counts(),
        usage,
        server.broker.stats() if hasattr(server.broker, "stats") else None,
    )


def test_plan_changes_nothing_and_diffs_against_the_stored_job(server):
    app = make_app(server)
    submit(server, job(count=2))
    before = snapshot(server, app, "web")
    for body in (
        job(count=4),
        job(count=2, command="sleep 61"),
        job(count=1),
        job(count=2, memory=5000),
        job(job_id="other"),
    ):
        status, plan = call(app, "POST", "/jobs/plan", body)
        assert status == 200, plan
        assert snapshot(server, app, "web") == before
    assert server.store.get_job("other") is None

    _, same = call(app, "POST", "/jobs/plan", job(count=2))
    # Unchanged: a resubmission would keep version 0 and place nothing.
    assert (same["exists"], same["changed"], same["current_version"], same["version"]) == (
        True,
        False,
        0,
        0,
    )
    assert same["diff"] == {"g": {"place": 0, "stop": 0, "keep": 2, "replace": 0, "scale": "0"}}
    _, up = call(app, "POST", "/jobs/plan", job(count=4))
    assert (up["changed"], up["version"]) == (True, 1)
    assert up["diff"]["g"] == {"place": 2, "stop": 0, "keep": 2, "replace": 0, "scale": "+2"}
    _, changed = call(app, "POST", "/jobs/plan", job(count=2, command="sleep 61"))
    assert changed["diff"]["g"] == {"place": 0, "stop": 0, "keep": 0, "replace": 2, "scale": "0"}
    _, down = call(app, "POST", "/jobs/plan", job(count=1))
    assert down["diff"]["g"] == {"place": 0, "stop": 1, "keep": 1, "replace": 0, "scale": "-1"}
    _, new = call(app, "POST", "/jobs/plan", job(job_id="other"))
    assert (new["exists"], new["version"], new["current_version"]) == (False, 0, None)
    assert new["diff"]["g"]["place"] == 2 and new["failures"] == {}


def test_plan_says_what_cannot_be_placed_and_why(server):
    app = make_app(server)
    eu = [{"attribute": "region", "operator": "=", "value": "eu"}]
    submit(server, job(count=1, memory=500, job_id="filler", constraints=eu))
    _, plan = call(app, "POST", "/jobs/plan", job(count=2, memory=400, constraints=eu))
    group = plan["failures"]["g"]
    assert plan["diff"]["g"]["place"] == 1
    assert group["wanted"] == 1
    assert group["failures"] == {"constraint region = eu": 2, "memory exhausted": 1}
    [node] = group["nodes"]
    # The filler holds 500 of the eu node's 1000 MB, the plan's first placement 400.
    assert node == {
        "node_id": "node-2",
        "reason": "memory exhausted",
        "needs": {"cpu": 100, "memory": 400},
        "free": {"cpu": 3800, "memory": 100},
    }


def test_plan_rejects_a_bad_job_with_the_field_path(server):
    status, body = call(
        make_app(server),
        "POST",
        "/jobs/plan",
        {
            "task_groups": [
                {
                    "name": "g",
                    "tasks": [
                        {"name": "t", "config": {"command": "true"}, "resources": {"memory": -1}}
                    ],
                }
            ]
        },
    )
    assert status == 400
    assert (
        body["error"] == "task_groups[0].tasks[0].resources.memory: must be a non-negative integer"
    )


def test_blocked_evaluation_names_the_nearest_nodes(server):
    ev = submit(server, job(count=4, memory=600))
    assert ev.status.value == "blocked" and ev.queued == 1
    near = ev.failed_nodes["g"]
    assert 1 <= len(near) <= 3
    assert all(
        n["reason"] == "memory exhausted"
        and n["free"]["memory"] == 400
        and n["needs"]["memory"] == 600
        for n in near
    )
    stored = server.store.get_eval(ev.eval_id).to_dict()
    assert stored["failed_nodes"] == ev.failed_nodes
    placed = submit(server, job(count=1, job_id="small"))
    assert placed.failed_nodes == {}
