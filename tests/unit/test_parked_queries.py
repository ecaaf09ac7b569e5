"""orch's blocking job and allocation reads parked on the I/O loop
(orch.server.inline, orch.wsgipark): as many as clients ask, none holding a
worker thread or a waiters' slot, each answered as the route answers it."""

import copy
import json
import time

import pytest
from inline_pair import InlinePair, in_thread, placed_server, service_job

from waiting import wait_for

HEADERS = ("Content-Type", "X-Orch-Index", "Content-Length")


class Pair(InlinePair):
    def get(self, port: int, path: str, timeout: float = 20):
        conn_status, resp, body = self.request(port, "GET", path)
        return conn_status, {h: resp.getheader(h) for h in HEADERS}, body

    def index(self) -> int:
        return int(self.get(self.inline_port, "/jobs/web")[1]["X-Orch-Index"])


@pytest.fixture
def pair(tmp_path):
    p = Pair(placed_server(tmp_path), waiting=True)
    yield p
    p.stop()


def test_many_queries_wait_without_threads_and_wake_on_the_jobs_change(pair):
    feed = pair.server.store.changes
    told = []
    feed.on_wait = told.append
    index = pair.index()
    count = 24  # more than the API's worker threads (8)
    waiting = [
        in_thread(pair.get, pair.inline_port, f"/jobs/web?index={index}&wait=60s")
        for _ in range(count)
    ]
    assert wait_for(lambda: len(told) == count, timeout=10)
    # None holds a waiters' slot or a worker: the server still answers a
    # route at once.
    assert feed.blocked == 0
    assert pair.get(pair.inline_port, "/jobs/web/versions", timeout=5)[0] == 200
    assert not any(out for _, out in waiting)
    pair.server.stop_job("web")
    for thread, out in waiting:
        thread.join(10)
        # Woken by the stop's first write: the job as it stood then.
        assert out and out[0][0] == 200
        assert int(out[0][1]["X-Orch-Index"]) > index
        assert json.loads(out[0][2])["stopped"] is True
    assert told == [["web"]] * count
    assert not feed._watchers  # every waiter unwatched


def test_a_query_nothing_wakes_is_answered_unchanged_when_its_wait_runs_out(pair):
    index = pair.index()
    start = time.monotonic()
    status, headers, body = pair.get(pair.inline_port, f"/jobs/web?index={index}&wait=300ms")
    assert 0.25 < time.monotonic() - start < 5
    assert (status, headers, body) == pair.get(pair.app_port, "/jobs/web")
    assert int(headers["X-Orch-Index"]) == index


def test_another_jobs_change_does_not_answer_it(pair):
    index = pair.index()
    thread, out = in_thread(pair.get, pair.inline_port, f"/jobs/web?index={index}&wait=60s")
    assert wait_for(lambda: pair.server.store.changes._watchers, timeout=10)
    other = copy.deepcopy(service_job(1))
    other["job_id"] = "other"
    pair.server.submit_job(other)
    time.sleep(0.2)
    assert not out
    pair.server.stop_job("web")
    thread.join(10)
    assert out and b'"status":"dead"' in out[0][2]


def test_an_allocation_waits_on_its_jobs_index(pair):
    alloc = pair.server.store.allocs_for_job("web")[0]
    path = f"/allocations/{alloc.allocation_id}"
    index = int(pair.get(pair.inline_port, path)[1]["X-Orch-Index"])
    thread, out = in_thread(pair.get, pair.inline_port, f"{path}?index={index}&wait=60s")
    assert wait_for(lambda: pair.server.store.changes._watchers, timeout=10)
    assert not out
    pair.server.stop_job("web")
    thread.join(10)
    assert out and out[0][0] == 200
    assert json.loads(out[0][2])["allocation_id"] == alloc.allocation_id
    assert int(out[0][1]["X-Orch-Index"]) > index


@pytest.mark.parametrize(
    "query",
    ["index=1", "index=0&wait=5s", "index=99999999999999&wait=5s", "index=&wait=1s"],
)
def test_an_older_a_zero_or_a_future_index_is_answered_at_once(pair, query):
    start = time.monotonic()
    answer = pair.get(pair.inline_port, f"/jobs/web?{query}")
    assert time.monotonic() - start < 5
    assert answer == pair.get(pair.app_port, "/jobs/web")


@pytest.mark.parametrize(
    "query", ["index=abc", "index=-1", "index=1e309", "index=5&wait=-5s", "index=5&wait=NaN"]
)
def test_bad_values_still_get_the_routes_400(pair, query):
    inline = pair.get(pair.inline_port, f"/jobs/web?{query}")
    routed = pair.get(pair.app_port, f"/jobs/web?{query}")
    assert inline[0] == 400 and inline[1]["Content-Type"] == "application/json"
    assert inline[2] == routed[2] and b'"error"' in inline[2]


def test_other_queries_and_unknown_ids_go_to_the_route(pair):
    index = pair.index()
    for path in (f"/jobs/nope?index={index}&wait=1s", "/jobs/web?index=1&index=2"):
        assert pair.get(pair.inline_port, path) == pair.get(pair.app_port, path)
    # An escaped value is read by the route, as bottle decodes it.
    escaped = f"/jobs/web?index={index - 1}&wait=1%73"
    assert pair.get(pair.inline_port, escaped)[0] == 200
