"""Schemathesis over the server's and the agent's WSGI apps: no 5xx, JSON errors.

Bounded (a few examples per operation) so it stays a test, not a soak.
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from orch.agent.agent import Agent
from orch.agent.api import make_app as make_agent_app
from orch.config import AgentConfig, ServerConfig
from orch.server.api import make_app as make_server_app
from orch.server.server import Server


@pytest.fixture(scope="module")
def server_app(tmp_path_factory):
    server = Server(ServerConfig(data_dir=str(tmp_path_factory.mktemp("server"))))
    app = make_server_app(server)
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


lazy_server = schemathesis.pytest.from_fixture("server_schema")
lazy_agent = schemathesis.pytest.from_fixture("agent_schema")


@pytest.fixture(scope="module")
def server_schema(server_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", server_app)


@pytest.fixture(scope="module")
def agent_schema(agent_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", agent_app)


FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))


@lazy_server.parametrize()
@FUZZ
def test_server_never_500s(case):
    _check(case.call())


@lazy_agent.parametrize()
@FUZZ
def test_agent_never_500s(case):
    # Real allocations from fuzzed bodies would run fuzzed commands: the agent
    # is fuzzed with its POST body's commands replaced by a harmless one.
    if case.method == "POST" and isinstance(case.body, dict):
        group = case.body.get("task_group")
        if isinstance(group, dict) and isinstance(group.get("tasks"), list):
            for task in group["tasks"]:
                if isinstance(task, dict) and isinstance(task.get("config"), dict):
                    task["config"] = {"command": "true"}
                    task["driver"] = "exec"
    _check(case.call())
