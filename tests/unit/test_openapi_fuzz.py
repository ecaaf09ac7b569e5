"""Schemathesis over the server's and the agent's WSGI apps: no 5xx, JSON errors.

Bounded (a few examples per operation) so it stays a test, not a soak. Each
operation is its own test item (its own timeout, its own line in --durations):
the schema is read from the spec the /openapi.json routes serve (checked equal
below), so the items exist at collection, before any server runs.

Where the time goes: an example costs the server milliseconds; drawing it costs
Hypothesis all the rest. A job body (task groups > tasks > services > checks)
takes ~0.3 s to draw on a quiet 2-core host and 4 s at load 40, and about half
the draws are discarded, so those operations get a smaller explicit budget and
a larger timeout; every other operation keeps the full budget.
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from orch.agent.agent import Agent
from orch.agent.api import make_app as make_agent_app
from orch.config import AgentConfig, ServerConfig
from orch.openapi import AGENT_SPEC, SERVER_SPEC
from orch.server.api import make_app as make_server_app
from orch.server.server import Server

from helpers import request as wsgi_request

# The job every PUT /jobs/{job_id} example updates: with a random job_id the
# server answers 404 before reading the body, and the fuzzed body tests nothing.
FUZZED_JOB = "fuzzed-job"


def _job_body_operations(spec: dict) -> list[str]:
    """The operations whose request body holds tasks: the costly ones to draw."""
    return [
        f"{method.upper()} {path}"
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if '"tasks"' in json.dumps(operation.get("requestBody", {}))
    ]


def _split(spec: dict):
    schema = schemathesis.openapi.from_dict(spec)
    heavy = _job_body_operations(spec)
    return schema.exclude(name=heavy), schema.include(name=heavy)


SERVER_LIGHT, SERVER_HEAVY = _split(SERVER_SPEC)
AGENT_LIGHT, AGENT_HEAVY = _split(AGENT_SPEC)

# No shrinking or explaining: on a failure the first falsifying example is
# reported at once instead of after minutes of minimising a job body; no
# example database: nothing replayed or written between runs, the same work
# every run.
_COMMON = dict(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
    database=None,
)
LIGHT = settings(max_examples=15, **_COMMON)
HEAVY = settings(max_examples=8, **_COMMON)


@pytest.fixture(scope="module")
def server_app(tmp_path_factory):
    server = Server(ServerConfig(data_dir=str(tmp_path_factory.mktemp("server"))))
    app = make_server_app(server)
    job = {
        "job_id": FUZZED_JOB,
        "task_groups": [
            {"name": "g", "tasks": [{"name": "t", "driver": "exec", "config": {"command": "true"}}]}
        ],
    }
    status, _, text = wsgi_request(app, "POST", "/jobs", body=json.dumps(job).encode())
    assert status == 200, f"could not seed the fuzzed job: {text}"
    yield app
    server.stop()


@pytest.fixture(scope="module")
def agent_app(tmp_path_factory):
    agent = Agent(AgentConfig(data_dir=str(tmp_path_factory.mktemp("agent"))))
    yield make_agent_app(agent)
    agent.shutdown(stop_tasks=True)


def _content_type(response) -> str:
    for key, value in response.headers.items():
        if key.lower() == "content-type":
            return value[0] if isinstance(value, list) else value
    return ""


def _check(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert _content_type(response).startswith("application/json"), response.text
        assert "error" in json.loads(response.text)


def _call_server(case, app) -> None:
    if case.method == "PUT" and case.path == "/jobs/{job_id}":
        case.path_parameters = {"job_id": FUZZED_JOB}
    _check(case.call(app=app))


def _call_agent(case, app) -> None:
    # Real allocations from fuzzed bodies would run fuzzed commands: the agent
    # is fuzzed with its POST body's commands replaced by a harmless one.
    if case.method == "POST" and isinstance(case.body, dict):
        group = case.body.get("task_group")
        if isinstance(group, dict) and isinstance(group.get("tasks"), list):
            for task in group["tasks"]:
                if isinstance(task, dict) and isinstance(task.get("config"), dict):
                    task["config"] = {"command": "true"}
                    task["driver"] = "exec"
    _check(case.call(app=app))


@pytest.mark.parametrize(("app", "spec"), [("server_app", SERVER_SPEC), ("agent_app", AGENT_SPEC)])
def test_fuzzed_schema_is_the_served_one(request, app, spec):
    status, _, text = wsgi_request(request.getfixturevalue(app), "GET", "/openapi.json")
    assert status == 200 and json.loads(text) == spec


def test_job_body_operations_are_found():
    # The budget split must not silently put everything in one bucket.
    assert {"POST /jobs", "PUT /jobs/{job_id}", "POST /jobs/plan"} <= set(
        _job_body_operations(SERVER_SPEC)
    )
    assert "POST /allocations" in _job_body_operations(AGENT_SPEC)


@SERVER_LIGHT.parametrize()
@LIGHT
def test_server_never_500s(case, server_app):
    _call_server(case, server_app)


@pytest.mark.timeout(300)
@SERVER_HEAVY.parametrize()
@HEAVY
def test_server_job_bodies_never_500(case, server_app):
    _call_server(case, server_app)


@AGENT_LIGHT.parametrize()
@LIGHT
def test_agent_never_500s(case, agent_app):
    _call_agent(case, agent_app)


@pytest.mark.timeout(300)
@AGENT_HEAVY.parametrize()
@HEAVY
def test_agent_job_bodies_never_500(case, agent_app):
    _call_agent(case, agent_app)
