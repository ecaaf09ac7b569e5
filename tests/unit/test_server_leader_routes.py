"""Two Servers on one PostgreSQL, in process: a follower's routes, /health, /status/leader."""

import json
import time

import pytest

from orch.config import ServerConfig
from orch.server.api import make_app
from orch.server.server import Server
from orch.structs import EvalStatus

from helpers import call, request
from waiting import wait_for

JOB = {
    "job_id": "j1",
    "task_groups": [
        {
            "name": "g",
            "count": 1,
            "tasks": [{"name": "t", "driver": "exec", "config": {"command": "true"}}],
        }
    ],
}


@pytest.fixture
def two(tmp_path, postgres_url):
    servers = []
    for name in "ab":
        config = ServerConfig(data_dir=str(tmp_path / name), database=postgres_url, lease=1.0)
        server = Server(config)
        server.start(f"http://{name}.test:4646")
        servers.append(server)
    wait_for(lambda: any(s.leadership.is_leader() for s in servers), timeout=10)
    leader = next(s for s in servers if s.leadership.is_leader())
    follower = next(s for s in servers if s is not leader)
    wait_for(lambda: follower.leadership.leader().url == leader.url, timeout=10)
    yield leader, follower
    for server in servers:
        server.stop()


def test_a_follower_sends_agents_to_the_leader(two):
    leader, follower = two
    app = make_app(follower)
    for path in ("/register", "/heartbeat"):
        status, headers, text = request(app, "POST", path, body=b'{"node_id": "n1"}')
        assert status == 307
        assert headers["Location"] == f"{leader.url}{path}"
        assert json.loads(text) == {"error": "this server is not the leader", "leader": leader.url}
    # The leader itself answers (here: the body is incomplete).
    status, body = call(make_app(leader), "POST", "/register", {"node_id": "n1"})
    assert status == 400 and "error" in body


def test_health_and_status_say_who_leads(two):
    leader, follower = two
    for server in (leader, follower):
        status, health = call(make_app(server), "GET", "/health")
        assert status == 200 and health["status"] == "ok"
        assert health["leader"] is (server is leader)
        assert health["leader_url"] == leader.url
        status, who = call(make_app(server), "GET", "/status/leader")
        assert who["leader"] == leader.url and who["term"] >= 1
        assert who["leader_id"] == leader.leadership.server_id
        assert who["this_server"] == {
            "server_id": server.leadership.server_id,
            "url": server.url,
            "leader": server is leader,
        }


def test_metrics_say_who_leads(two):
    leader, follower = two
    for server, flag in ((leader, 1), (follower, 0)):
        status, _headers, text = request(make_app(server), "GET", "/metrics")
        assert status == 200
        assert f"orch_leader {flag}\n" in text
        assert f"orch_leader_term {leader.leadership.leader().term}\n" in text


def test_a_job_submitted_to_a_follower_is_evaluated_by_the_leader(two):
    leader, follower = two
    status, body = call(make_app(follower), "POST", "/jobs", JOB)
    assert status == 200
    eval_id = body["evaluation_id"]
    # No node: the leader's worker blocks the evaluation; the follower's
    # broker, disabled, never took it.
    wait_for(
        lambda: (follower.store.get_eval(eval_id) or _pending()).status != EvalStatus.PENDING,
        timeout=10,
    )
    assert follower.broker.stats() == {"ready": 0, "inflight": 0, "blocked": 0, "delayed": 0}
    assert leader.store.get_eval(eval_id).status == EvalStatus.BLOCKED


def test_the_follower_takes_over_when_the_leader_stops(two):
    leader, follower = two
    started = time.monotonic()
    leader.leadership.stop()  # steps down and releases the lease
    # Leading, then scheduling (the transition runs on its own thread).
    wait_for(lambda: follower.leadership.is_leader() and follower.broker.enabled, timeout=10)
    assert time.monotonic() - started < 3.0
    assert not leader.broker.enabled


class _pending:
    status = EvalStatus.PENDING


def test_the_nomad_face_names_the_one_leader_on_every_server(two):
    """Each server answered /v1/status/leader with itself and leader "true"."""
    leader, follower = two
    for server in (leader, follower):
        app = make_app(server)
        status, _headers, text = request(app, "GET", "/v1/status/leader")
        assert status == 200 and json.loads(text) == leader.url.split("//")[1]
        # The servers this one knows of: the leader and itself.
        peers = json.loads(request(app, "GET", "/v1/status/peers")[2])
        assert sorted(peers) == sorted({leader.url.split("//")[1], server.url.split("//")[1]})
        me = json.loads(request(app, "GET", "/v1/agent/self")[2])
        assert me["stats"]["nomad"]["leader"] == ("true" if server is leader else "false")
