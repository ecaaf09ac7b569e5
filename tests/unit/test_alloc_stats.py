"""Measured resource use: the agent's stats on real exec tasks, its route, the
server's relay to a real agent, and the allocation page showing the figures."""

import dataclasses
import json
import re
import sys

import pytest
import requests

from orch.agent import stats
from orch.agent.agent import Agent
from orch.agent.api import make_app as agent_app
from orch.agent.main import HttpServer
from orch.agent.spec import parse_alloc
from orch.config import AgentConfig, ServerConfig
from orch.server.api import make_app as server_app
from orch.server.server import Server
from orch.server.worker import SchedulerWorker
from orch.structs import AllocStatus, TaskState, TaskStatus

from helpers import request
from waiting import wait_for

# ~30 MB touched (bytearray zero-fills every page), then idle.
HOLD_30MB = "import time; b = bytearray(30 * 1024 * 1024); time.sleep(300)"
BUSY = "while True: pass"


def task(name, code, memory=256):
    return {
        "name": name,
        "config": {"command": [sys.executable, "-c", code]},
        "resources": {"cpu": 100, "memory": memory},
    }


def alloc_body(alloc_id, tasks):
    return {"allocation_id": alloc_id, "job_id": "j1", "task_group": {"name": "g", "tasks": tasks}}


@pytest.fixture
def agent(tmp_path):
    config = AgentConfig(
        server="http://127.0.0.1:9", data_dir=str(tmp_path / "agent"), kill_timeout=1.0
    )
    agent = Agent(config)
    yield agent
    agent.shutdown(stop_tasks=True)


@pytest.fixture
def agent_url(agent):
    server = HttpServer(agent_app(agent), "127.0.0.1", 0, threads=4)
    server.start()
    yield server.url
    server.stop()


def run(agent, alloc_id, tasks):
    """Submit the alloc to the agent; wait until every task's process runs."""
    agent.submit(parse_alloc(alloc_body(alloc_id, tasks)))
    runner = agent.get(alloc_id)
    assert wait_for(lambda: all(r.live_handle() for r in runner.tasks.values()), timeout=15)
    return runner


def test_exec_task_memory_and_cpu_are_measured(agent):
    runner = run(agent, "a-mem", [task("hold", HOLD_30MB), task("spin", BUSY)])
    figures = {}

    def measured():
        figures.update(stats.alloc_stats(runner))
        hold, spin = figures["tasks"]["hold"], figures["tasks"]["spin"]
        # The holder asleep (its 30 MB touched), the spinner busy.
        return hold["memory_rss_mb"] >= 25 and hold["cpu_percent"] < 10 and spin["cpu_percent"] > 20

    # Polled: the interpreter needs a moment to touch its 30 MB, and a loaded
    # machine may starve the busy loop for one 0.1 s sample.
    assert wait_for(measured, timeout=20, interval=0.2), figures
    hold, spin = figures["tasks"]["hold"], figures["tasks"]["spin"]
    assert hold["pids"] >= 1 and spin["pids"] >= 1
    total = figures["total"]
    assert total["memory_rss_mb"] >= hold["memory_rss_mb"] + spin["memory_rss_mb"] - 0.1
    assert total["pids"] == hold["pids"] + spin["pids"]


def test_a_task_that_ended_reports_zeros(agent):
    agent.submit(
        parse_alloc({**alloc_body("a-done", [task("quick", "pass")]), "job_type": "batch"})
    )
    runner = agent.get("a-done")
    assert wait_for(lambda: runner.finished, timeout=15)
    assert stats.alloc_stats(runner)["tasks"]["quick"] == stats.idle()


def test_docker_figures_from_the_engine_answer():
    raw = {
        "memory_stats": {"usage": 50 * 1024 * 1024},
        "cpu_stats": {
            "cpu_usage": {"total_usage": 300},
            "system_cpu_usage": 2000,
            "online_cpus": 2,
        },
        "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000},
        "pids_stats": {"current": 3},
    }
    assert stats.docker_figures(raw) == {"memory_rss_mb": 50.0, "cpu_percent": 40.0, "pids": 3}
    # A container not started yet: no precpu sample, no usage.
    assert stats.docker_figures({"memory_stats": {}, "cpu_stats": {}}) == stats.idle()
    assert stats.docker_figures({"cpu_stats": "garbage"}) == stats.idle()
    assert stats.docker_figures(None) == stats.idle()


def test_agent_route_answers_json_and_404(agent, agent_url):
    run(agent, "a-route", [task("hold", HOLD_30MB)])
    resp = requests.get(f"{agent_url}/allocations/a-route/stats", timeout=10)
    assert resp.status_code == 200
    data = resp.json()
    assert set(data) == {"tasks", "total", "time"}
    assert set(data["tasks"]["hold"]) == {"memory_rss_mb", "cpu_percent", "pids"}
    assert data["tasks"]["hold"]["pids"] >= 1
    resp = requests.get(f"{agent_url}/allocations/nope/stats", timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]


# ---- the server: relay and allocation page ---------------------------------------


def make_server(tmp_path, endpoint):
    srv = Server(ServerConfig(data_dir=str(tmp_path / "server")))
    # No pushes: the test hands the placed alloc to the agent itself.
    srv.pusher.place = srv.pusher.stop = lambda *args, **kwargs: None
    srv.register(
        {"node_id": "node-0", "resources": {"cpu": 4000, "memory": 4000}, "endpoint": endpoint}
    )
    job = {
        "job_id": "web",
        "type": "service",
        "task_groups": [{"name": "g", "count": 1, "tasks": [task("hold", HOLD_30MB)]}],
    }
    _, ev = srv.submit_job(job)
    SchedulerWorker(srv.broker, srv.store, srv.planner, 0, seed=1).process([ev])
    return srv


def mark_running(srv):
    (alloc,) = srv.store.allocs_for_job("web")
    state = TaskState(status=TaskStatus.RUNNING)
    srv.store.update_allocs(
        [dataclasses.replace(alloc, client_status=AllocStatus.RUNNING, tasks={"hold": state})]
    )
    return alloc.allocation_id


@pytest.fixture
def server_with_agent(tmp_path, agent, agent_url):
    srv = make_server(tmp_path, agent_url)
    alloc_id = mark_running(srv)
    run(agent, alloc_id, [task("hold", HOLD_30MB)])
    yield srv, alloc_id
    srv.stop()


def test_server_relays_the_agents_stats(server_with_agent):
    srv, alloc_id = server_with_agent
    app = server_app(srv)
    answer = {}

    def measured():
        status, _, text = request(app, "GET", f"/allocations/{alloc_id}/stats")
        answer.update(status=status, body=json.loads(text))
        return status == 200 and answer["body"]["tasks"]["hold"]["memory_rss_mb"] >= 25

    assert wait_for(measured, timeout=20, interval=0.2), answer
    status, headers, text = request(app, "GET", "/allocations/nope/stats")
    assert status == 404 and json.loads(text) == {"error": "Allocation not found"}
    assert headers["Content-Type"].startswith("application/json")


def test_relay_to_an_unreachable_node_is_a_json_502(tmp_path):
    srv = make_server(tmp_path, "http://127.0.0.1:9")  # discard port: refused
    try:
        alloc_id = mark_running(srv)
        status, headers, text = request(server_app(srv), "GET", f"/allocations/{alloc_id}/stats")
        assert status == 502 and headers["Content-Type"].startswith("application/json")
        assert json.loads(text)["error"].startswith("node unreachable")
    finally:
        srv.stop()


def test_allocation_page_shows_reserved_and_measured(server_with_agent):
    srv, alloc_id = server_with_agent
    app = server_app(srv)
    page = {}

    def shown():
        _, _, page["text"] = request(app, "GET", f"/ui/allocations/{alloc_id}?fragment=1")
        used = re.search(r"</span> ([0-9.]+) MB of 256 MB", page["text"])
        return used is not None and float(used.group(1)) >= 25

    assert wait_for(shown, timeout=20, interval=0.2), page
    text = page["text"]
    assert (
        'data-stats="1"' in text
        and 'class="meter"' in text
        and "CPU " in text
        and "unavailable" not in text
    )


def test_allocation_page_says_unavailable_when_the_agent_is_not_there(tmp_path):
    srv = make_server(tmp_path, "http://127.0.0.1:9")
    try:
        alloc_id = mark_running(srv)
        status, _, text = request(server_app(srv), "GET", f"/ui/allocations/{alloc_id}?fragment=1")
        assert status == 200
        assert 'data-stats="0"' in text and "resource use unavailable" in text
    finally:
        srv.stop()
