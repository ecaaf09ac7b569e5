"""A blocking read about to wait on a batch job hurries its nodes (orch.server.hurry)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orch.server.changes import ChangeFeed
from orch.server.hurry import PATH, Hurrier
from orch.structs import Allocation, AllocStatus, DesiredStatus, Job, JobType


def test_on_wait_is_told_once_and_only_when_the_query_waits():
    feed = ChangeFeed()
    told: list[list[str]] = []
    feed.on_wait = told.append
    feed.bump(["web"])
    after = feed.index
    answer = lambda: ("body", feed.job_index("web"))  # noqa: E731
    # Past its index already: answered at once, no one told.
    assert feed.block_on(["web"], answer, after - 1, 30) == ("body", after)
    assert told == []
    # At its index: told once, then woken by the change.
    got = []
    reader = threading.Thread(target=lambda: got.append(feed.block_on(["web"], answer, after, 30)))
    reader.start()
    deadline = time.monotonic() + 10
    while not told and time.monotonic() < deadline:
        time.sleep(0.01)
    assert told == [["web"]]
    feed.bump(["web"])
    reader.join(10)
    assert got == [("body", after + 1)] and told == [["web"]]


def test_a_failing_on_wait_leaves_the_query_to_wait_and_answer():
    feed = ChangeFeed()

    def broken(jobs):
        raise RuntimeError("boom")

    feed.on_wait = broken
    feed.bump(["web"])
    started = time.monotonic()
    assert feed.block_on(["web"], lambda: ("body", 1), feed.index, 0.2) == ("body", 1)
    assert time.monotonic() - started >= 0.19


class Agents:
    """A real HTTP server standing in for the agents: records each hurry."""

    def __init__(self, status: int = 200):
        calls = self.calls = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                calls.append((self.path, json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def wait_calls(self, count: int) -> list:
        deadline = time.monotonic() + 10
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.calls


class Store:
    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self.allocs: dict[str, list[Allocation]] = {}

    def get_job(self, job_id):
        return self.jobs.get(job_id)

    def allocs_for_job(self, job_id):
        return self.allocs.get(job_id, [])


@pytest.fixture
def agents():
    made = []

    def make(status=200):
        made.append(Agents(status))
        return made[-1]

    yield make
    for agent in made:
        agent.http.shutdown()
        agent.http.server_close()


def _alloc(alloc_id, node, status=AllocStatus.PENDING, desired=DesiredStatus.RUN, job="b"):
    return Allocation(alloc_id, job, "g", node, 0, desired_status=desired, client_status=status)


def test_live_batch_allocations_nodes_are_hurried_once_per_status(agents):
    one, two = agents(), agents()
    store = Store()
    store.jobs["b"] = Job("b", (), type=JobType.BATCH)
    store.jobs["s"] = Job("s", (), type=JobType.SERVICE)
    store.allocs["b"] = [
        _alloc("a1", "n1"),
        _alloc("a2", "n2", AllocStatus.RUNNING),
        _alloc("a3", "n1", AllocStatus.COMPLETE),  # ended: nothing to wait for
        _alloc("a4", "n1", desired=DesiredStatus.STOP),  # being stopped
        _alloc("a5", "gone"),  # a node without an endpoint
    ]
    store.allocs["s"] = [_alloc("s1", "n1", job="s")]
    endpoints = {"n1": one.url, "n2": two.url}
    hurrier = Hurrier(store, endpoints.get)
    try:
        hurrier.waiting(["b", "s", "missing"])
        assert one.wait_calls(1) == [(PATH, {"allocations": ["a1"]})]
        assert two.wait_calls(1) == [(PATH, {"allocations": ["a2"]})]
        # Asked again, the same statuses: told already.
        hurrier.waiting(["b"])
        # a1 now runs: its end is the next thing waited for.
        store.allocs["b"][0] = replace(store.allocs["b"][0], client_status=AllocStatus.RUNNING)
        hurrier.waiting(["b"])
        assert one.wait_calls(2) == [
            (PATH, {"allocations": ["a1"]}),
            (PATH, {"allocations": ["a1"]}),
        ]
        time.sleep(0.2)
        assert len(one.calls) == 2 and len(two.calls) == 1
        assert hurrier.stats == {"sent": 3, "failed": 0}
    finally:
        hurrier.close()


def test_an_agent_without_the_route_is_counted_and_left_alone(agents):
    old = agents(status=404)
    store = Store()
    store.jobs["b"] = Job("b", (), type=JobType.BATCH)
    store.allocs["b"] = [_alloc("a1", "n1")]
    hurrier = Hurrier(store, {"n1": old.url}.get)
    try:
        hurrier.waiting(["b"])
        assert old.wait_calls(1)
        deadline = time.monotonic() + 10
        while hurrier.stats["failed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert hurrier.stats == {"sent": 0, "failed": 1}
    finally:
        hurrier.close()


def test_a_node_with_more_allocations_than_one_call_takes_gets_several(agents):
    node = agents()
    store = Store()
    store.jobs["b"] = Job("b", (), type=JobType.BATCH)
    store.allocs["b"] = [_alloc(f"a{i}", "n1") for i in range(300)]
    hurrier = Hurrier(store, {"n1": node.url}.get)
    try:
        hurrier.waiting(["b"])
        calls = node.wait_calls(2)
        assert [len(body["allocations"]) for _, body in calls] == [256, 44]
        assert [a for _, body in calls for a in body["allocations"]] == [
            f"a{i}" for i in range(300)
        ]
    finally:
        hurrier.close()
