"""Every answer of the server's WSGI app is JSON, errors included."""

import json

import pytest

from orch.config import ServerConfig
from orch.server.api import make_app
from orch.server.server import Server

from helpers import call


@pytest.fixture
def app(tmp_path):
    server = Server(ServerConfig(data_dir=str(tmp_path)))
    yield make_app(server)
    server.stop()


JOB = {
    "task_groups": [
        {
            "name": "g",
            "count": 1,
            "tasks": [
                {
                    "name": "t",
                    "driver": "exec",
                    "config": {"command": "true"},
                    "resources": {"cpu": 100, "memory": 64},
                }
            ],
        }
    ]
}


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        ("POST", "/jobs", b"{not json", 400),
        ("POST", "/jobs", b"[1, 2]", 400),
        ("POST", "/jobs", b"", 400),
        ("POST", "/jobs", {"task_groups": []}, 400),
        ("POST", "/register", {"node_id": "x"}, 400),
        ("POST", "/heartbeat", {"node_id": "unknown-node"}, 404),
        ("GET", "/jobs/nope", None, 404),
        ("PUT", "/jobs/nope", JOB, 404),
        ("DELETE", "/jobs/nope", None, 404),
        ("POST", "/jobs/nope/restart", None, 404),
        ("POST", "/jobs/nope/delete", None, 404),
        ("GET", "/no/such/route", None, 404),
        ("PATCH", "/jobs", None, 405),
        ("GET", "/evaluations/nope", None, 404),
    ],
)
def test_errors_are_json_with_an_error_field(app, method, path, body, status):
    code, payload = call(app, method, path, body)
    assert code == status
    assert isinstance(payload["error"], str) and payload["error"]


DEEP = b"[" * 10000 + b"]" * 10000


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/jobs"),
        ("PUT", "/jobs/j1"),
        ("POST", "/jobs/plan"),
        ("POST", "/register"),
        ("POST", "/heartbeat"),
    ],
)
@pytest.mark.parametrize(
    "raw",
    [
        DEEP,
        b'{"node_id": "n", "x": NaN}',
        b'{"x": Infinity}',
        b'{"x": -1e400}',
        b'{"node_id": "\\udc00"}',
    ],
)
def test_hostile_json_is_400_on_every_body_route(app, method, path, raw):
    code, payload = call(app, method, path, raw)
    assert code == 400, payload
    assert payload["error"].startswith(("body", "node_id"))


def test_lone_surrogate_in_env_is_refused_and_reads_stay_json(app):
    bad = (
        json.dumps(dict(JOB, job_id="j1"))
        .replace('"command": "true"', '"command": "true", "env": {"X": "\\ud800"}')
        .encode()
    )
    code, payload = call(app, "POST", "/jobs", bad)
    assert (code, payload["error"]) == (
        400,
        "task_groups[0].tasks[0].config.env.X: must be valid Unicode (lone surrogate)",
    )
    assert call(app, "GET", "/jobs")[0] == 200


def test_unknown_job_message_is_the_seeds(app):
    assert call(app, "GET", "/jobs/nope") == (404, {"error": "作业不存在"})


def test_restart_only_from_dead(app):
    code, body = call(app, "POST", "/jobs", dict(JOB, job_id="j1"))
    assert code == 200 and body["message"] == "作业评估已加入队列"
    assert call(app, "POST", "/jobs/j1/restart") == (400, {"error": "只能重启已停止的作业"})
    assert call(app, "DELETE", "/jobs/j1") == (200, {"message": "作业 j1 已停止"})
    code, body = call(app, "POST", "/jobs/j1/restart")
    assert code == 200 and body["message"] == "作业重启评估已加入队列"
    assert call(app, "POST", "/jobs/j1/delete") == (200, {"message": "作业 j1 及其相关资源已删除"})


def test_post_of_an_existing_job_updates_it_and_unchanged_is_a_no_op(app):
    code, first = call(app, "POST", "/jobs", dict(JOB, job_id="j1"))
    assert code == 200
    bigger = json.loads(json.dumps(JOB))
    bigger["task_groups"][0]["count"] = 2
    code, second = call(app, "POST", "/jobs", dict(bigger, job_id="j1"))
    assert code == 200 and second["message"] == "作业评估已加入队列"
    assert second["evaluation_id"] != first["evaluation_id"]
    assert call(app, "GET", "/jobs/j1")[1]["version"] == 1
    # The same body again: no new version, no evaluation; the latest is named.
    code, again = call(app, "POST", "/jobs", dict(bigger, job_id="j1"))
    assert (code, again) == (200, second)
    code, put = call(app, "PUT", "/jobs/j1", bigger)
    assert code == 200 and put["evaluation_id"] == second["evaluation_id"]
    assert put["message"] == "作业更新评估已加入队列"
    assert call(app, "GET", "/jobs/j1")[1]["version"] == 1
    assert call(app, "GET", "/jobs/j1/evaluations")[1]["count"] == 2
    assert call(app, "PUT", "/jobs/nope", JOB) == (404, {"error": "作业不存在"})


def test_body_over_the_limit_is_413(app):
    code, payload = call(app, "POST", "/jobs", b"{" + b" " * (1 << 20) + b"}")
    assert code == 413 and "error" in payload


def test_a_node_beat_past_a_job_bodys_limit_is_taken(app):
    """A full beat carries every task of its node: past 1 MiB it was refused
    beat after beat, and the node declared down at its TTL."""
    node = {
        "node_id": "n-big",
        "region": "global",
        "resources": {"cpu": 4000, "memory": 4096},
        "endpoint": "http://127.0.0.1:9",
        "attributes": {f"a{i}": "x" * 200 for i in range(10_000)},  # 2 MB
    }
    assert call(app, "POST", "/register", node)[0] == 200
    beat = {"node_id": "n-big", "allocations": {}, "padding": " " * (2 << 20)}
    assert call(app, "POST", "/heartbeat", beat)[0] == 200
    job = {**JOB, "padding": " " * (2 << 20)}
    assert call(app, "POST", "/jobs", job)[0] == 413


def test_a_group_of_more_than_512_tasks_is_refused(app):
    tasks = [{**JOB["task_groups"][0]["tasks"][0], "name": f"t{i}"} for i in range(513)]
    job = {"task_groups": [{"name": "g", "tasks": tasks}]}
    code, payload = call(app, "POST", "/jobs", job)
    assert code == 400 and "task_groups[0].tasks: must have at most 512 tasks" in payload["error"]


def test_token_required_when_set(tmp_path):
    server = Server(ServerConfig(data_dir=str(tmp_path), token="s3cret"))
    app = make_app(server)
    try:
        assert call(app, "GET", "/jobs")[0] == 401
        assert call(app, "GET", "/health")[0] == 200
        assert call(app, "GET", "/jobs", headers={"Authorization": "Bearer s3cret"})[0] == 200
    finally:
        server.stop()


def test_service_routes_answer_json_and_refuse_a_bad_flag(app):
    assert call(app, "GET", "/services") == (200, {"services": [], "count": 0})
    status, body = call(app, "GET", "/services/web")
    assert (status, body) == (200, {"service": "web", "instances": [], "count": 0})
    status, body = call(app, "GET", "/services/web", query="healthy=maybe")
    assert status == 400 and body["error"] == "healthy: must be true or false"
    assert call(app, "GET", "/services/web", query="healthy=true")[0] == 200
