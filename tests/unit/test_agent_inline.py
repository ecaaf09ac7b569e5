"""The agent's pushes answered on waitress's I/O thread (orch.agent.inline)."""

import threading

import pytest
import requests

from orch.agent.agent import Agent
from orch.agent.api import make_app
from orch.agent.inline import inline_routes
from orch.agent.main import HttpServer
from orch.config import AgentConfig
from orch.errors import NotFound

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def alloc(alloc_id):
    return {
        "allocation_id": alloc_id,
        "job_id": "j1",
        "task_group": {"name": "g", "tasks": [{"name": "t", "config": {"command": "true"}}]},
    }


@pytest.fixture
def served(tmp_path):
    """(agent, url, the names of the threads that ran each submit)."""
    config = AgentConfig(
        server="http://127.0.0.1:9", data_dir=str(tmp_path), token=TOKEN, kill_timeout=1.0
    )
    agent = Agent(config)
    threads: list[str] = []
    submit = agent.submit

    def recording_submit(spec):
        threads.append(threading.current_thread().name)
        return submit(spec)

    agent.submit = recording_submit  # type: ignore[method-assign]
    server = HttpServer(make_app(agent), "127.0.0.1", 0, threads=2, inline=inline_routes(agent))
    server.start()
    yield agent, server.url, threads
    server.stop()
    agent.shutdown(stop_tasks=True)


def test_a_push_is_accepted_by_the_thread_that_parsed_it(served):
    agent, url, threads = served
    resp = requests.post(f"{url}/allocations", json=alloc("a1"), headers=AUTH, timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"message": "Allocation accepted", "allocation_id": "a1"}
    assert threads == ["http"]  # the I/O thread, not a waitress worker
    assert agent.get("a1").spec.allocation_id == "a1"
    again = requests.post(f"{url}/allocations", json=alloc("a1"), headers=AUTH, timeout=5)
    assert again.json() == resp.json()  # idempotent, as the route is


def test_a_batch_push_is_accepted_inline_each_allocation_on_its_own(served):
    agent, url, threads = served
    body = {"allocations": [alloc("b1"), {"allocation_id": "b2"}, alloc("b3")]}
    resp = requests.post(f"{url}/allocations/batch", json=body, headers=AUTH, timeout=5)
    assert resp.status_code == 200
    results = resp.json()["allocations"]
    assert results["b1"] == results["b3"] == "accepted"
    assert "error" in results["b2"]
    assert set(threads) == {"http"}


def test_a_batch_push_logs_one_info_line_not_one_per_allocation(served, caplog):
    agent, url, _ = served
    body = {"allocations": [alloc("c1"), alloc("c2"), {"allocation_id": "c3"}]}
    with caplog.at_level("INFO", logger="orch.agent"):
        resp = requests.post(f"{url}/allocations/batch", json=body, headers=AUTH, timeout=5)
        assert resp.status_code == 200
        requests.post(f"{url}/allocations", json=alloc("c4"), headers=AUTH, timeout=5)
    accepted = [r.getMessage() for r in caplog.records if "accept" in r.getMessage()]
    assert accepted == ["push accepted=2 refused=1"]


def test_a_batch_push_with_nothing_refused_says_so_at_debug_only(served, caplog):
    agent, url, _ = served
    body = {"allocations": [alloc("d1"), alloc("d2")]}
    with caplog.at_level("DEBUG", logger="orch.agent"):
        resp = requests.post(f"{url}/allocations/batch", json=body, headers=AUTH, timeout=5)
        assert resp.status_code == 200
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if "push" in r.getMessage()]
    assert lines == [("DEBUG", "push accepted=2 refused=0")]


@pytest.mark.parametrize(
    "path, body, headers, status",
    [
        ("/allocations", alloc("x"), {}, 401),  # no token
        ("/allocations", alloc("x"), {"Authorization": "Bearer nope"}, 401),
        ("/allocations", {"allocation_id": "x"}, AUTH, 400),  # not an allocation
        ("/allocations", [], AUTH, 400),
        ("/allocations/batch", {"allocations": []}, AUTH, 400),
        ("/allocations", alloc("x"), {**AUTH, "Origin": "http://evil.example"}, 403),
    ],
)
def test_what_the_route_refuses_is_left_to_the_route(served, path, body, headers, status):
    agent, url, threads = served
    resp = requests.post(f"{url}{path}", json=body, headers=headers, timeout=5)
    assert resp.status_code == status
    assert isinstance(resp.json()["error"], str)
    assert "http" not in threads  # declined inline, answered by a worker
    with pytest.raises(NotFound):
        agent.get("x")  # nothing was accepted
