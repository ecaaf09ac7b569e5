"""Blocking queries on orch's own reads (GET /jobs/<id>?index=N&wait=...)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from orch.config import ServerConfig
from orch.server.api import make_app
from orch.server.changes import ChangeFeed
from orch.server.server import Server

from helpers import request
from waiting import wait_for

HEADER = "X-Orch-Index"


def job_body(job_id: str = "web", count: int = 1) -> dict:
    task = {
        "name": "t",
        "driver": "exec",
        "config": {"command": "sleep 300"},
        "resources": {"cpu": 10, "memory": 8},
    }
    return {"job_id": job_id, "task_groups": [{"name": "g", "count": count, "tasks": [task]}]}


@pytest.fixture
def server(tmp_path):
    server = Server(ServerConfig(data_dir=str(tmp_path)))
    yield server
    server.stop()


@pytest.fixture
def app(server):
    return make_app(server)


def call(app, method, path, body=None):
    raw = b"" if body is None else json.dumps(body).encode()
    status, headers, text = request(app, method, path, body=raw)
    return status, headers, json.loads(text)


def submit(app, job_id: str = "web", count: int = 1) -> None:
    status, _, out = call(app, "POST", "/jobs", job_body(job_id, count))
    assert status == 200, out


def timed(app, path):
    start = time.monotonic()
    status, headers, out = call(app, "GET", path)
    return status, headers, out, time.monotonic() - start


def test_without_index_the_answer_is_the_seeds_with_an_index_header(app):
    submit(app)
    status, headers, out = call(app, "GET", "/jobs/web")
    assert status == 200
    assert out["job_id"] == "web" and "allocations" in out and "status" in out
    assert int(headers[HEADER]) > 0
    # Without index, wait is not even read: the seed's read is unchanged.
    status, _, again = call(app, "GET", "/jobs/web?wait=nonsense")
    assert status == 200 and again == out


def test_an_older_index_is_answered_at_once(app):
    submit(app)
    index = int(call(app, "GET", "/jobs/web")[1][HEADER])
    status, headers, out, took = timed(app, f"/jobs/web?index={index - 1}&wait=20s")
    assert status == 200 and out["job_id"] == "web"
    assert int(headers[HEADER]) == index
    assert took < 5


def test_the_same_index_waits_out_the_wait_and_answers_unchanged(app):
    submit(app)
    _, headers, out = call(app, "GET", "/jobs/web")
    index = int(headers[HEADER])
    status, again, body, took = timed(app, f"/jobs/web?index={index}&wait=300ms")
    assert status == 200 and body == out
    assert int(again[HEADER]) == index
    assert took >= 0.29


def test_a_change_to_the_job_wakes_the_query(app):
    submit(app)
    index = int(call(app, "GET", "/jobs/web")[1][HEADER])

    def update():
        time.sleep(0.3)
        submit(app, count=3)

    writer = threading.Thread(target=update)
    writer.start()
    status, headers, out, took = timed(app, f"/jobs/web?index={index}&wait=60s")
    writer.join()
    assert status == 200 and out["task_groups"][0]["count"] == 3
    assert int(headers[HEADER]) > index
    assert 0.25 <= took < 30


def test_a_change_to_another_job_does_not_wake_it(app):
    submit(app)
    index = int(call(app, "GET", "/jobs/web")[1][HEADER])

    def other():
        time.sleep(0.1)
        submit(app, "other")

    writer = threading.Thread(target=other)
    writer.start()
    status, headers, _, took = timed(app, f"/jobs/web?index={index}&wait=800ms")
    writer.join()
    assert status == 200 and int(headers[HEADER]) == index
    assert took >= 0.79


def test_the_job_list_wakes_on_any_job(app):
    submit(app)
    _, headers, before = call(app, "GET", "/jobs")
    index = int(headers[HEADER])

    def other():
        time.sleep(0.2)
        submit(app, "other")

    writer = threading.Thread(target=other)
    writer.start()
    status, headers, out, took = timed(app, f"/jobs?index={index}&wait=60s")
    writer.join()
    assert status == 200 and out["count"] == before["count"] + 1
    assert int(headers[HEADER]) > index and took < 30


def test_an_index_from_the_future_is_answered_at_once(app):
    submit(app)
    index = int(call(app, "GET", "/jobs/web")[1][HEADER])
    status, headers, _, took = timed(app, f"/jobs/web?index={index * 2}&wait=20s")
    assert status == 200 and int(headers[HEADER]) == index and took < 5


@pytest.mark.parametrize(
    "query",
    ["index=-1", "index=abc", "index=1.5", "index=99999999999999999999", "index=1&wait=x",
     "index=1&wait=-5s", "index=%C3%A9"],
)  # fmt: skip
def test_bad_index_or_wait_is_a_400_json_error(app, query):
    submit(app)
    for path in ("/jobs/web", "/jobs"):
        status, headers, out = call(app, "GET", f"{path}?{query}")
        assert status == 400, (query, out)
        assert headers["Content-Type"].startswith("application/json")
        assert isinstance(out["error"], str)


def test_an_unknown_job_is_404_at_once(app):
    status, _, out, took = timed(app, "/jobs/nope?index=1&wait=20s")
    assert status == 404 and out == {"error": "作业不存在"} and took < 5


def test_an_allocation_waits_on_its_jobs_index(app, server):
    submit(app)
    status, _, out = call(app, "GET", "/jobs/web")
    # No node: the job has no allocation; the allocation route says 404.
    assert status == 200 and out["allocations"] == []
    assert call(app, "GET", "/allocations/nope?index=1")[0] == 404


def test_the_feed_tracks_jobs_and_forgets_the_oldest_under_a_floor():
    feed = ChangeFeed()
    feed.start_at(100)
    assert feed.job_index("a") == 100
    first = feed.bump(["a"])
    feed.bump(["b"])
    assert feed.job_index("a") == first and feed.job_index("b") == first + 1
    assert feed.bump([], seq=500) == 500  # a shared log's number wins when ahead
    feed.bump(all_jobs=True)
    assert feed.job_index("a") == feed.index == 501


def test_past_the_waiters_cap_a_query_is_answered_at_once():
    feed = ChangeFeed(max_blocking=1)
    feed.start_at(10)
    hold = threading.Thread(target=feed.block, args=(lambda: (None, feed.index), 10, 30.0))
    hold.start()
    # Asked only once the first holds the only slot: asked sooner, it could
    # take the slot, the first (answered at once) would leave, and every
    # later ask would wait its time out.
    assert wait_for(lambda: feed.blocked == 1, timeout=20)
    start = time.monotonic()
    feed.block(lambda: (None, feed.index), 10, 30.0)
    assert time.monotonic() - start < 10  # with the slot, it would wait 30 s
    feed.bump()
    hold.join(10)
    assert not hold.is_alive()


def test_a_query_on_a_job_reads_once_whatever_else_changes():
    feed = ChangeFeed()
    feed.start_at(10)
    reads = []

    def answer():
        reads.append(feed.index)
        return None, feed.job_index("web")

    def writes():
        for _ in range(50):
            feed.bump(["other"])
        time.sleep(0.2)
        feed.bump(["web"])

    writer = threading.Thread(target=writes)
    writer.start()
    _, index = feed.block_on(["web"], answer, 10, 30.0)
    writer.join()
    assert index == feed.index == 61 and len(reads) == 1


def test_a_parents_query_wakes_on_a_child():
    feed = ChangeFeed()
    feed.start_at(10)
    writer = threading.Timer(0.2, feed.bump, args=(["child"],))
    writer.start()
    start = time.monotonic()
    _, index = feed.block_on(["parent", "child"], lambda: (None, feed.index), 10, 30.0)
    writer.join()
    assert index == 11 and time.monotonic() - start < 20


def test_a_dispatched_child_moves_its_parents_index(app):
    body = job_body("param")
    body["parameterized"] = {}
    status, _, out = call(app, "POST", "/jobs", body)
    assert status == 200, out
    index = int(call(app, "GET", "/jobs/param")[1][HEADER])

    def dispatch():
        time.sleep(0.2)
        assert call(app, "POST", "/jobs/param/dispatch", {})[0] == 200

    writer = threading.Thread(target=dispatch)
    writer.start()
    status, headers, out, took = timed(app, f"/jobs/param?index={index}&wait=60s")
    writer.join()
    assert status == 200 and len(out["children"]) == 1
    assert int(headers[HEADER]) > index and took < 30


def test_a_waiters_slot_is_given_back_however_its_query_ends():
    feed = ChangeFeed(max_blocking=1)
    feed.start_at(10)
    assert feed.block(lambda: (None, 11), 10, 5.0) == (None, 11)  # answered at once
    assert feed.block_on(["j"], lambda: (None, None), 10, 0.01) == (None, None)  # timed out

    def broken():
        raise RuntimeError("the answer failed")

    with pytest.raises(RuntimeError):
        feed.block(broken, 10, 5.0)
    with pytest.raises(RuntimeError):
        feed.block_on(["j"], broken, 10, 0.01)
    assert feed.blocked == 0
    # The one slot is free: a query waits again rather than being answered at once.
    start = time.monotonic()
    feed.block(lambda: (None, feed.index), 10, 0.2)
    assert time.monotonic() - start >= 0.2
