"""The agent's HTTP API through waitress on port 0, with real tasks."""

import json
import os

import psutil
import pytest
import requests

from orch.agent.agent import Agent
from orch.agent.api import make_app, read_own
from orch.agent.inline import inline_routes
from orch.agent.main import HttpServer
from orch.config import AgentConfig
from orch.errors import OrchError

from waiting import live, reported, wait_for

TIMEOUT = 5


def body(alloc_id="a1", tasks=None, **extra):
    tasks = (
        tasks
        if tasks is not None
        else [
            {
                "name": "t",
                "config": {"command": "sleep 300"},
                "resources": {"cpu": 100, "memory": 64},
            }
        ]
    )
    return {
        "allocation_id": alloc_id,
        "job_id": "j1",
        "task_group": {"name": "g", "tasks": tasks},
        **extra,
    }


@pytest.fixture
def agent(tmp_path):
    config = AgentConfig(
        server="http://127.0.0.1:9", data_dir=str(tmp_path), kill_timeout=1.0, restart_delay=0.05
    )
    agent = Agent(config)
    yield agent
    agent.shutdown(stop_tasks=True)


def serve_app(app, inline=None):
    server = HttpServer(app, "127.0.0.1", 0, threads=4, inline=inline)
    server.start()
    return server


@pytest.fixture
def url(agent):
    # As `orch agent` serves it: the pushes answered inline where they can be.
    server = serve_app(make_app(agent), inline_routes(agent))
    yield server.url
    server.stop()


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def assert_json_error(resp, status, message=None):
    assert resp.status_code == status
    assert resp.headers["Content-Type"].startswith("application/json")
    data = resp.json()
    assert isinstance(data["error"], str) and data["error"]
    if message is not None:
        assert data["error"] == message
    return data


def test_post_accepts_and_runs(url, http, agent):
    resp = http.post(f"{url}/allocations", json=body(), timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.json() == {"message": "Allocation accepted", "allocation_id": "a1"}
    assert wait_for(
        lambda: http.get(f"{url}/allocations/a1", timeout=TIMEOUT).json()["status"] == "running"
    )
    data = http.get(f"{url}/allocations/a1", timeout=TIMEOUT).json()
    assert {
        "allocation_id",
        "job_id",
        "task_group",
        "status",
        "start_time",
        "end_time",
        "tasks",
    } <= set(data)
    assert data["task_group"] == "g" and data["job_id"] == "j1"
    task = data["tasks"]["t"]
    assert {"status", "start_time", "end_time", "exit_code", "error", "events", "restarts"} <= set(
        task
    )


def test_post_is_idempotent(url, http, agent):
    assert http.post(f"{url}/allocations", json=body(), timeout=TIMEOUT).status_code == 200
    assert wait_for(lambda: agent.get("a1").tasks["t"].handle_json is not None)
    runner = agent.get("a1")
    pid = runner.tasks["t"].handle_json["pid"]
    resp = http.post(f"{url}/allocations", json=body(), timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.json() == {"message": "Allocation accepted", "allocation_id": "a1"}
    # A second copy would need a second runner, made before the POST answers.
    assert agent.get("a1") is runner
    task = http.get(f"{url}/allocations/a1", timeout=TIMEOUT).json()["tasks"]["t"]
    assert [e["type"] for e in task["events"]].count("Started") == 1
    assert agent.get("a1").tasks["t"].handle_json["pid"] == pid


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"job_id": "j", "task_group": {"name": "g", "tasks": []}}, "allocation_id"),
        (body(tasks=[]), "task_group.tasks"),
        (body(tasks=[{"name": "t", "config": {}}]), "task_group.tasks[0].config"),
        (
            body(tasks=[{"name": "t", "config": {"command": "x"}, "resources": {"cpu": -1}}]),
            "task_group.tasks[0].resources.cpu",
        ),
        (body(tasks=[{"name": "a/b", "config": {"command": "x"}}]), "task_group.tasks[0].name"),
        (
            body(tasks=[{"name": "t", "driver": "qemu", "config": {"command": "x"}}]),
            "task_group.tasks[0].driver",
        ),
        (body(job_type="periodic"), "job_type"),
        (body(alloc_id=".."), "allocation_id"),
        ([1, 2], "body"),
        ({**body(), "task_group": "g"}, "task_group"),
    ],
)
def test_post_rejects_bad_bodies(url, http, bad, field):
    resp = http.post(f"{url}/allocations", json=bad, timeout=TIMEOUT)
    data = assert_json_error(resp, 400)
    assert data["error"].startswith(field)


def test_post_duplicate_task_names(url, http):
    tasks = [{"name": "t", "config": {"command": "true"}}] * 2
    resp = http.post(f"{url}/allocations", json=body(tasks=tasks), timeout=TIMEOUT)
    assert_json_error(resp, 400)


@pytest.mark.parametrize("raw", [b"{bad", b"", b"   ", b"\xff\xfe"])
def test_malformed_json_is_400(url, http, raw):
    resp = http.post(
        f"{url}/allocations",
        data=raw,
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert_json_error(resp, 400)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 10000 + b"]" * 10000,
        b'{"allocation_id": NaN}',
        b'{"x": 1e400}',
        b'{"allocation_id": "a1", "job_id": "\\ud800"}',
    ],
)
def test_hostile_json_is_400(url, http, raw):
    resp = http.post(
        f"{url}/allocations",
        data=raw,
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert_json_error(resp, 400)


def test_too_large_body_is_413(url, http):
    resp = http.post(f"{url}/allocations", data=b"x" * ((1 << 20) + 10), timeout=TIMEOUT)
    assert_json_error(resp, 413)


def test_unknown_allocation_is_404(url, http):
    assert_json_error(
        http.get(f"{url}/allocations/nope", timeout=TIMEOUT), 404, "Allocation not found"
    )
    assert_json_error(
        http.delete(f"{url}/allocations/nope", timeout=TIMEOUT), 404, "Allocation not found"
    )
    assert_json_error(
        http.get(f"{url}/allocations/nope/logs/t", timeout=TIMEOUT), 404, "Allocation not found"
    )


def test_unknown_route_and_method_are_json(url, http):
    assert_json_error(http.get(f"{url}/nope", timeout=TIMEOUT), 404)
    assert_json_error(http.put(f"{url}/allocations", timeout=TIMEOUT), 405)
    assert_json_error(http.post(f"{url}/allocations/a1", timeout=TIMEOUT), 405)


def test_delete_kills_and_removes(url, http, agent):
    http.post(
        f"{url}/allocations",
        json=body(
            tasks=[
                {"name": "t", "config": {"command": "sleep 300 & sleep 300; wait"}},
                {"name": "u", "config": {"command": ["sleep", "300"]}},
            ]
        ),
        timeout=TIMEOUT,
    )
    assert wait_for(lambda: all(r.handle_json for r in agent.get("a1").tasks.values()))
    leaders = [r.handle_json["pid"] for r in agent.get("a1").tasks.values()]

    def family() -> list[int]:  # the shell forks its sleeps after it starts
        return leaders + [c.pid for p in leaders for c in psutil.Process(p).children(True)]

    assert wait_for(lambda: len(family()) >= 4)  # two leaders, t's two sleeps
    pids = family()
    resp = http.delete(f"{url}/allocations/a1", timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.json() == {"message": "Allocation a1 stopped and removed"}
    assert not any(live(pid) for pid in pids)
    assert_json_error(
        http.get(f"{url}/allocations/a1", timeout=TIMEOUT), 404, "Allocation not found"
    )
    assert not os.path.exists(agent.store.alloc_dir("a1"))
    # The server hears that it stopped (it may not have asked), once: after
    # it acknowledges, nothing of the allocation is left.
    assert reported(agent)["a1"]["status"] == "stopped"
    agent.acknowledged({"a1"})
    assert "a1" not in reported(agent)


def test_delete_of_a_finished_allocation_reports_how_it_ended(url, http, agent):
    http.post(
        f"{url}/allocations",
        json=body(tasks=[{"name": "t", "config": {"command": "exit 3"}}]),
        timeout=TIMEOUT,
    )
    assert agent.get("a1").wait(5)
    assert http.delete(f"{url}/allocations/a1", timeout=TIMEOUT).status_code == 200
    entry = reported(agent)["a1"]
    assert entry["status"] == "failed" and entry["tasks"]["t"]["exit_code"] == 3
    # One the server had already taken (a purged job's) leaves nothing behind.
    http.post(
        f"{url}/allocations",
        json=body("a2", tasks=[{"name": "t", "config": {"command": "true"}}]),
        timeout=TIMEOUT,
    )
    assert agent.get("a2").wait(5)
    agent.acknowledged({"a2"})
    assert http.delete(f"{url}/allocations/a2", timeout=TIMEOUT).status_code == 200
    assert "a2" not in reported(agent) and "a2" not in agent.store._removed
    assert not os.path.exists(agent.store.alloc_dir("a2"))


def test_stop_after_reaches_the_agent_and_is_checked(url, http, agent):
    group = {
        "name": "g",
        "disconnect": {"stop_after": 2.5},
        "tasks": [{"name": "t", "config": {"command": "sleep 300"}}],
    }
    resp = http.post(f"{url}/allocations", json=body(task_group=group), timeout=TIMEOUT)
    assert resp.status_code == 200
    assert agent.get("a1").spec.stop_after == 2.5
    assert agent.get("a1").spec.to_dict()["task_group"]["disconnect"] == {"stop_after": 2.5}
    for bad in ("2s", -1, True):
        group = dict(group, disconnect={"stop_after": bad})
        assert_json_error(
            http.post(f"{url}/allocations", json=body("a2", task_group=group), timeout=TIMEOUT),
            400,
            "task_group.disconnect.stop_after: must be a non-negative number of seconds",
        )


def test_logs(url, http, agent):
    tasks = [{"name": "t", "config": {"command": "printf hello; printf oops >&2"}}]
    http.post(f"{url}/allocations", json=body(tasks=tasks), timeout=TIMEOUT)
    assert agent.get("a1").wait(5)
    resp = http.get(f"{url}/allocations/a1/logs/t", timeout=TIMEOUT)
    assert resp.status_code == 200 and resp.text == "hello"
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.headers["X-Orch-Next-Offset"] == "5"
    assert http.get(f"{url}/allocations/a1/logs/t?offset=2", timeout=TIMEOUT).text == "llo"
    assert http.get(f"{url}/allocations/a1/logs/t?offset=99", timeout=TIMEOUT).text == ""
    assert http.get(f"{url}/allocations/a1/logs/t?type=stderr", timeout=TIMEOUT).text == "oops"
    assert_json_error(http.get(f"{url}/allocations/a1/logs/t?type=x", timeout=TIMEOUT), 400)
    assert_json_error(http.get(f"{url}/allocations/a1/logs/t?offset=-1", timeout=TIMEOUT), 400)
    assert_json_error(http.get(f"{url}/allocations/a1/logs/t?offset=z", timeout=TIMEOUT), 400)
    for bad in (2**63, 2**53 + 1, "1_0", "%207", "9" * 5000):
        resp = http.get(f"{url}/allocations/a1/logs/t?offset={bad}", timeout=TIMEOUT)
        assert_json_error(resp, 400)
    assert http.get(f"{url}/allocations/a1/logs/t?offset={2**53}", timeout=TIMEOUT).text == ""
    assert_json_error(http.get(f"{url}/allocations/a1/logs/zz", timeout=TIMEOUT), 404)


def test_health(url, http, agent):
    data = http.get(f"{url}/health", timeout=TIMEOUT).json()
    assert data["status"] == "ok" and data["node_id"] == agent.node_id


class Broken:
    config = AgentConfig()

    def get(self, alloc_id):
        raise RuntimeError("boom")

    def stop_alloc(self, alloc_id):
        raise OrchError("driver exploded", detail="x")


def test_unexpected_errors_are_json_500():
    server = serve_app(make_app(Broken()))
    try:
        resp = requests.get(f"{server.url}/allocations/a1", timeout=TIMEOUT)
        assert_json_error(resp, 500, "internal error: RuntimeError")
        resp = requests.delete(f"{server.url}/allocations/a1", timeout=TIMEOUT)
        assert resp.status_code == 500
        assert json.loads(resp.text) == {"error": "driver exploded", "detail": "x"}
    finally:
        server.stop()


def test_batch_accepts_each_allocation_on_its_own(url, http, agent):
    items = [body("b1"), body("b2", tasks=[]), "not an allocation", body("b3")]
    resp = http.post(f"{url}/allocations/batch", json={"allocations": items}, timeout=TIMEOUT)
    assert resp.status_code == 200
    results = resp.json()["allocations"]
    assert results["b1"] == results["b3"] == "accepted"
    assert isinstance(results["b2"]["error"], str) and isinstance(results["#2"]["error"], str)
    assert wait_for(lambda: all(agent.get(a).status().value == "running" for a in ("b1", "b3")))
    # Repeated, the batch is taken idempotently: the same tasks keep running.
    pid = agent.get("b1").tasks["t"].handle_json["pid"]
    again = http.post(f"{url}/allocations/batch", json={"allocations": items[:1]}, timeout=TIMEOUT)
    assert again.json()["allocations"] == {"b1": "accepted"}
    assert agent.get("b1").tasks["t"].handle_json["pid"] == pid


@pytest.mark.parametrize(
    "bad", [[], {"allocations": []}, {"allocations": {}}, {"allocations": [{}] * 257}]
)
def test_batch_rejects_bad_bodies(url, http, bad):
    assert_json_error(http.post(f"{url}/allocations/batch", json=bad, timeout=TIMEOUT), 400)


def test_batch_stop_stops_each_side_by_side_and_says_how(url, http, agent):
    # Tasks that ignore SIGTERM: each stop takes the whole kill_timeout (1 s),
    # so four stopped one after another would take 4 s; side by side, ~1 s.
    stubborn = [{"name": "t", "config": {"command": "trap '' TERM; sleep 300 & wait"}}]
    ids = [f"s{i}" for i in range(4)]
    for alloc_id in ids:
        http.post(f"{url}/allocations", json=body(alloc_id, tasks=stubborn), timeout=TIMEOUT)
    assert wait_for(lambda: all(agent.get(a).tasks["t"].handle_json for a in ids))
    pids = [agent.get(a).tasks["t"].handle_json["pid"] for a in ids]
    resp = http.post(
        f"{url}/allocations/stop", json={"allocations": [*ids, "nope", "s0"]}, timeout=TIMEOUT
    )
    assert resp.status_code == 200
    assert resp.json()["allocations"] == {**dict.fromkeys(ids, "stopped"), "nope": "not_found"}
    assert not any(live(pid) for pid in pids)
    for alloc_id in ids:
        assert not os.path.exists(agent.store.alloc_dir(alloc_id))
        assert reported(agent)[alloc_id]["status"] == "stopped"
    # Side by side: the grace periods overlapped (this only says "not one
    # after another": 4 x 1 s would need over 3 s more).
    assert resp.elapsed.total_seconds() < 3.0


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"allocations": []},
        {"allocations": "s1"},
        {"allocations": [1]},
        {"allocations": [""]},
        {"allocations": ["x" * 129]},
        {"allocations": ["a"] * 257},
    ],
)
@pytest.mark.parametrize("route", ["stop", "hurry"])
def test_batch_stop_and_hurry_reject_bad_bodies(url, http, route, bad):
    assert_json_error(http.post(f"{url}/allocations/{route}", json=bad, timeout=TIMEOUT), 400)


def test_hurry_answers_how_many_allocations_are_ours(url, http):
    resp = http.post(f"{url}/allocations/hurry", json={"allocations": ["nope"]}, timeout=TIMEOUT)
    assert resp.status_code == 200 and resp.json() == {"hurried": 0}


def test_a_log_read_that_raced_its_dirs_reuse_gives_nothing(tmp_path):
    """A log left empty moves on with its dir to the next allocation (spare.py):
    a read that opened it before the move must not return the next task's output."""
    task_dir = tmp_path / "a1" / "t"
    task_dir.mkdir(parents=True)
    log = task_dir / "stdout.log"
    log.write_bytes(b"")
    with open(log, "rb") as f:  # opened while a1 is still there
        os.rename(tmp_path / "a1", tmp_path / "a2")  # collected, taken by a2
        (tmp_path / "a2" / "t" / "stdout.log").write_bytes(b"a2's output")
        assert read_own(f, str(log), 0) == b""
    with open(tmp_path / "a2" / "t" / "stdout.log", "rb") as f:  # a2's own read
        assert read_own(f, str(tmp_path / "a2" / "t" / "stdout.log"), 2) == b"'s output"
