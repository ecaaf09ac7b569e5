"""POST /jobs answered on waitress's I/O thread (orch.server.inline): the
route's answer for a good submit, committed before it is sent; every bad
one, a cross-origin one or one that meets a write in progress left to the
route, which answers it as before."""

import copy
import json
import threading

import pytest
from inline_pair import InlinePair, server_at, store_lock_held

from orch.server.inline import inline_routes

from waiting import wait_for

JOB = {
    "job_id": "batch-1",
    "type": "batch",
    "task_groups": [
        {"name": "g", "count": 1, "tasks": [{"name": "t", "config": {"command": "true"}}]}
    ],
}


class Pair(InlinePair):
    """``answered``: what the inline submit did with each POST it saw."""

    @property
    def answered(self) -> list[bool]:
        return [ok for path, ok in self.calls if path == "/jobs"]

    def post(self, port: int, body: bytes, **headers):
        status, resp, out = self.request(port, "POST", "/jobs", body, **headers)
        return status, resp.getheader("Content-Type"), out


def _serve(tmp_path, **config) -> Pair:
    srv = server_at(tmp_path, **config)
    return Pair(srv)


@pytest.fixture
def pair(tmp_path):
    p = _serve(tmp_path)
    yield p
    p.stop()


def _job(job_id: str, **changes) -> bytes:
    body = copy.deepcopy(JOB)
    body["job_id"] = job_id
    body.update(changes)
    return json.dumps(body).encode()


def test_a_submit_is_committed_queued_and_answered_as_the_route_answers(pair):
    inline = pair.post(pair.inline_port, _job("a"))
    routed = pair.post(pair.app_port, _job("b"))
    assert pair.answered == [True]
    assert inline[:2] == routed[:2] == (200, "application/json")
    got, want = json.loads(inline[2]), json.loads(routed[2])
    assert got.keys() == want.keys()
    assert got["job_id"] == "a" and got["message"] == want["message"] == "作业评估已加入队列"
    store = pair.server.store
    assert store.get_job("a") is not None
    assert store.get_eval(got["evaluation_id"]).job_id == "a"
    # Committed, not only in memory: the row is in the file.
    rows = store.backend.execute(
        "SELECT job_id FROM evaluations WHERE eval_id = ?", (got["evaluation_id"],)
    )
    assert rows == [("a",)]
    assert pair.server.broker.stats()["ready"] == 2


def test_the_same_job_again_returns_its_evaluation_without_a_new_one(pair):
    first = json.loads(pair.post(pair.inline_port, _job("a"))[2])
    again = json.loads(pair.post(pair.inline_port, _job("a"))[2])
    assert pair.answered == [True, True]
    assert again["evaluation_id"] == first["evaluation_id"]
    assert pair.server.store.get_job("a").version == 0
    groups = copy.deepcopy(JOB["task_groups"])
    groups[0]["count"] = 2
    changed = json.loads(pair.post(pair.inline_port, _job("a", task_groups=groups))[2])
    assert changed["evaluation_id"] != first["evaluation_id"]
    assert pair.server.store.get_job("a").version == 1


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"job_id": "x"}',
        _job("bad id!"),
        _job("a", type="nope"),
        b'{"job_id": "a", "n": NaN}',
        b"\xff\xfe",
    ],
)
def test_bad_bodies_get_the_routes_400_and_nothing_is_stored(pair, body):
    inline, routed = pair.post(pair.inline_port, body), pair.post(pair.app_port, body)
    assert inline == routed
    assert inline[0] == 400 and "error" in json.loads(inline[2])
    assert pair.answered in ([], [False])  # an empty body may not reach the handler
    assert pair.server.store.list_jobs() == []


def test_a_cross_origin_submit_goes_to_the_route(pair):
    origin = {"Origin": "http://elsewhere.example"}
    inline = pair.post(pair.inline_port, _job("a"), **origin)
    routed = pair.post(pair.app_port, _job("a"), **origin)
    assert inline == routed and inline[0] == 403
    assert pair.answered == [False]
    assert pair.server.store.list_jobs() == []


def test_a_write_in_progress_sends_the_submit_to_the_route(pair):
    answer: list = []
    client = threading.Thread(target=lambda: answer.append(pair.post(pair.inline_port, _job("a"))))
    with store_lock_held(pair.server):
        client.start()
        # Declined at once; the route's worker waits for the lock.
        assert wait_for(lambda: pair.answered, timeout=10)
        assert pair.answered == [False]
        assert not answer and pair.server.store.get_job("a") is None
    client.join(10)
    assert answer and answer[0][0] == 200
    assert pair.server.store.get_job("a") is not None


def test_a_token_protected_server_refuses_without_the_token(tmp_path):
    p = _serve(tmp_path, token="t0ken")
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            inline, routed = (
                p.post(p.inline_port, _job("a"), **headers),
                p.post(p.app_port, _job("a"), **headers),
            )
            assert inline == routed and inline[0] == 401
        assert p.server.store.list_jobs() == []
        good = p.post(p.inline_port, _job("a"), Authorization="Bearer t0ken")
        assert good[0] == 200
        assert p.answered == [False, False, True]
    finally:
        p.stop()


def test_postgresql_submits_are_never_answered_inline(tmp_path, postgres_url):
    srv = server_at(tmp_path, database=postgres_url)
    try:
        routes = inline_routes(srv)
        assert ("POST", "/jobs") not in routes
        assert ("POST", "/heartbeat") in routes
    finally:
        srv.stop()


def test_settled_now_waits_for_a_write_only_as_long_as_it_is_told(pair):
    store = pair.server.store
    with store_lock_held(pair.server) as release:
        with store.settled_now() as free:
            assert not free
        with store.settled_now(0.05) as free:
            assert not free
        threading.Timer(0.1, release.set).start()
        with store.settled_now(10) as free:
            assert free and release.is_set()
    with store.settled_now() as free:
        assert free
