"""Every other blocking read parked on the I/O loop (orch.server.parkedreads):
orch's job list and the /v1 face wait holding no worker thread and no
waiters' slot, as many as clients ask, each answered as its route answers."""

import copy
import json
import time

import pytest
from inline_pair import InlinePair, in_thread, placed_server, service_job

from orch.server.parkedreads import ParkedReads, split_blocking

from waiting import wait_for

HEADERS = ("Content-Type", "X-Orch-Index", "X-Nomad-Index", "Content-Length")


class Pair(InlinePair):
    def get(self, port: int, path: str):
        status, resp, body = self.request(port, "GET", path)
        return status, {h: resp.getheader(h) for h in HEADERS}, body

    def index(self, path: str, header: str) -> int:
        return int(self.get(self.inline_port, path)[1][header])


@pytest.fixture
def pair(tmp_path):
    p = Pair(placed_server(tmp_path), waiting=True, parked_reads=True)
    yield p
    p.stop()


def _other_job(pair, job_id="other"):
    other = copy.deepcopy(service_job(1))
    other["job_id"] = job_id
    pair.server.submit_job(other)


def _parked(pair) -> int:
    feed = pair.server.store.changes
    return len(feed._any_watchers) + sum(len(group) for group in feed._watchers.values())


def test_many_list_and_v1_queries_wait_without_threads_and_wake_on_a_change(pair):
    feed = pair.server.store.changes
    orch_at = pair.index("/jobs", "X-Orch-Index")
    nomad_at = pair.index("/v1/job/web", "X-Nomad-Index")
    count = 12  # of each: 24 in all, more than the API's worker threads (8)
    waiting = [
        in_thread(pair.get, pair.inline_port, f"/jobs?index={orch_at}&wait=60s")
        for _ in range(count)
    ] + [
        in_thread(pair.get, pair.inline_port, f"/v1/job/web?index={nomad_at}&wait=60s")
        for _ in range(count)
    ]
    assert wait_for(lambda: _parked(pair) == 2 * count, timeout=10)
    # None holds a waiters' slot or a worker: the routes still answer at once.
    assert feed.blocked == 0
    assert pair.get(pair.inline_port, "/v1/jobs")[0] == 200
    assert pair.get(pair.inline_port, "/jobs/web/versions")[0] == 200
    time.sleep(0.3)
    assert not any(out for _, out in waiting)
    pair.server.stop_job("web")
    for thread, out in waiting:
        thread.join(10)
        assert out and out[0][0] == 200
    lists = [out[0] for _, out in waiting[:count]]
    jobs = [out[0] for _, out in waiting[count:]]
    assert all(int(headers["X-Orch-Index"]) > orch_at for _, headers, _ in lists)
    assert all(b'"web"' in body for _, _, body in lists)
    assert all(int(headers["X-Nomad-Index"]) > nomad_at for _, headers, _ in jobs)
    assert all(json.loads(body)["Stop"] is True for _, _, body in jobs)
    assert all(headers["Content-Type"] == "application/json" for _, headers, _ in lists + jobs)
    assert _parked(pair) == 0  # every waiter unwatched


def _counting(monkeypatch) -> list[str]:
    """The paths ParkedReads computes, in order."""
    computed: list[str] = []
    compute = ParkedReads.compute

    def counted(self, environ):
        computed.append(environ["PATH_INFO"])
        return compute(self, environ)

    monkeypatch.setattr(ParkedReads, "compute", counted)
    return computed


def test_another_jobs_change_does_not_wake_a_read_of_one_job(pair, monkeypatch):
    """/v1/job/web and its allocation wait on the job's changes only: other
    jobs' submits do not make them compute again; a list does."""
    computed = _counting(monkeypatch)
    alloc = pair.server.store.allocs_for_job("web")[0].allocation_id
    paths = ["/v1/job/web", "/v1/job/web/allocations", f"/v1/allocation/{alloc}", "/v1/jobs"]
    waiting = []
    for path in paths:
        at = pair.index(path, "X-Nomad-Index")
        waiting.append(in_thread(pair.get, pair.inline_port, f"{path}?index={at}&wait=60s"))
    assert wait_for(lambda: _parked(pair) == 4 and len(computed) == 4, timeout=10)
    _other_job(pair)
    waiting[3][0].join(10)  # the list: answered, its index moved
    assert waiting[3][1] and waiting[3][1][0][0] == 200
    time.sleep(0.3)
    assert computed.count("/v1/jobs") == 2
    assert len(computed) == 5  # the others were not computed again
    assert not any(out for _, out in waiting[:3])
    pair.server.stop_job("web")
    for thread, out in waiting[:3]:
        thread.join(10)
        assert out and out[0][0] == 200


def test_reads_of_one_shape_share_a_computation(pair, monkeypatch):
    """12 clients of the job list parked at one index cost one read of it,
    and one more when a change wakes them all; a client whose headers
    differ gets its own."""
    computed = _counting(monkeypatch)
    at = pair.index("/jobs", "X-Orch-Index")
    path = f"/jobs?index={at}&wait=60s"
    waiting = [in_thread(pair.get, pair.inline_port, path) for _ in range(12)]
    assert wait_for(lambda: _parked(pair) == 12, timeout=10)
    assert computed == ["/jobs"]
    other = in_thread(lambda: pair.request(pair.inline_port, "GET", path, **{"X-Other": "1"}))
    assert wait_for(lambda: _parked(pair) == 13, timeout=10)
    assert computed == ["/jobs"] * 2
    _other_job(pair)
    for thread, out in [*waiting, other]:
        thread.join(10)
        assert out and out[0][0] == 200
    assert computed == ["/jobs"] * 4
    bodies = {out[0][2] for _, out in waiting}
    assert len(bodies) == 1 and b'"other"' in bodies.pop()


def test_a_change_that_leaves_its_index_does_not_answer_it(pair):
    """Changes that leave /v1/job/web's index (other jobs') do not answer it:
    it stays parked until its wait runs out, unchanged."""
    path = "/v1/job/web"
    at = pair.index(path, "X-Nomad-Index")
    start = time.monotonic()
    thread, out = in_thread(pair.get, pair.inline_port, f"{path}?index={at}&wait=1500ms")
    assert wait_for(lambda: _parked(pair) == 1, timeout=10)
    _other_job(pair, "other-1")
    time.sleep(0.3)
    _other_job(pair, "other-2")
    time.sleep(0.3)
    assert not out
    thread.join(10)
    assert 1.4 < time.monotonic() - start < 6
    status, headers, body = out[0]
    assert (status, int(headers["X-Nomad-Index"])) == (200, at)
    assert body == pair.get(pair.app_port, path)[2]


def test_the_wait_runs_out_with_the_routes_answer(pair):
    at = pair.index("/jobs", "X-Orch-Index")
    start = time.monotonic()
    answer = pair.get(pair.inline_port, f"/jobs?index={at}&wait=300ms")
    assert 0.25 < time.monotonic() - start < 5
    assert answer == pair.get(pair.app_port, "/jobs")
    assert int(answer[1]["X-Orch-Index"]) == at


def test_other_parameters_reach_the_route(pair):
    _other_job(pair, "api")
    at = pair.index("/v1/jobs", "X-Nomad-Index")
    thread, out = in_thread(pair.get, pair.inline_port, f"/v1/jobs?prefix=we&index={at}&wait=30s")
    assert wait_for(lambda: _parked(pair) == 1, timeout=10)
    _other_job(pair, "api-2")
    thread.join(10)
    assert [stub["ID"] for stub in json.loads(out[0][2])] == ["web"]


@pytest.mark.parametrize(
    "path",
    [
        "/jobs?index=1&wait=30s",  # older: at once
        "/jobs?index=99999999999999999&wait=30s",  # orch's, from before a restart
        "/v1/job/web?index=1&wait=30s",
        "/v1/job/nope?index=5&wait=30s",  # the route's 404, in Nomad's text
        "/v1/job/web?index=5&wait=-1s",  # the route's 400
        "/jobs?index=5&index=6",  # read by the route
        "/v1/agent/self?index=5&wait=30s",  # a read without an index
    ],
)
def test_what_does_not_wait_is_answered_at_once_as_the_route_does(pair, path):
    start = time.monotonic()
    inline = pair.get(pair.inline_port, path)
    assert time.monotonic() - start < 5
    routed = pair.get(pair.app_port, path)
    assert inline[0] == routed[0]
    assert inline[1]["Content-Type"] == routed[1]["Content-Type"]
    if "agent" not in path:
        assert inline[2] == routed[2]


def test_a_client_gone_while_parked_is_forgotten(pair):
    import socket

    at = pair.index("/jobs", "X-Orch-Index")
    socks = []
    for _ in range(10):
        sock = socket.create_connection(("127.0.0.1", pair.inline_port))
        sock.sendall(b"GET /jobs?index=%d&wait=60s HTTP/1.1\r\nHost: x\r\n\r\n" % at)
        socks.append(sock)
    assert wait_for(lambda: _parked(pair) == 10, timeout=10)
    for sock in socks:
        sock.close()
    # Heard at once (the loop listens for a parked connection's hang-up),
    # with no change to find them gone.
    assert wait_for(lambda: _parked(pair) == 0, timeout=5)


def test_a_failing_computation_leaves_it_to_the_route(pair, monkeypatch):
    def broken(self, environ):
        raise RuntimeError("bug")

    monkeypatch.setattr(ParkedReads, "compute", broken)
    at = pair.index("/jobs", "X-Orch-Index")
    answer = pair.get(pair.inline_port, f"/jobs?index={at}&wait=300ms")
    assert answer[0] == 200 and int(answer[1]["X-Orch-Index"]) == at


@pytest.mark.parametrize(
    "query, expected",
    [
        ("index=5&wait=2s", (5, 2.0, "")),
        ("prefix=a&index=7", (7, 300.0, "prefix=a")),
        ("wait=1s&x=1&index=3&y=", (3, 1.0, "x=1&y=")),
        ("index=0&wait=1s", None),
        ("prefix=a", None),
        ("index=5&index=6", None),
        ("index=%35", None),
        ("index=5&wait=1%73", None),
        ("index=abc", None),
        ("index=5&wait=forever", None),
    ],
)
def test_split_blocking(query, expected):
    assert split_blocking(query) == expected


@pytest.mark.parametrize(
    "path, parked",
    [
        ("/jobs", True),
        ("/v1/jobs", True),
        ("/v1/job/web/allocations", True),
        ("/jobs/web/versions", False),  # not a blocking read: its route
        ("/ui/events", False),  # a stream never ends: never computed here
        ("/v1/client/fs/logs/abc", False),
        ("/v1/nothing/here", False),
        ("/nothing", False),
    ],
)
def test_only_blocking_routes_are_parked(pair, path, parked):
    reads = pair.parked_reads
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    assert (reads._blocking(environ) is not None) is parked


def test_a_stream_asked_with_an_index_streams_as_before(pair):
    """Its route answers it on a worker: it is never parked."""
    import socket

    sock = socket.create_connection(("127.0.0.1", pair.inline_port), timeout=10)
    try:
        sock.sendall(b"GET /ui/events?index=5&wait=30s HTTP/1.1\r\nHost: x\r\n\r\n")
        got = sock.recv(65536)
        assert got.startswith(b"HTTP/1.1 200 OK")
        assert b"text/event-stream" in got
        assert _parked(pair) == 0
    finally:
        sock.close()
