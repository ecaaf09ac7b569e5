"""GET /jobs/<id> and GET /allocations/<id> answered inline (orch.server.inline):
the same status, body and headers that matter as the bottle route for the
same state, every other read left to the route."""

import copy
import threading

import pytest
from inline_pair import NODE, InlinePair, server_at, service_job, store_lock_held

from orch.server.worker import SchedulerWorker

from waiting import wait_for

JOB = service_job(2)
HEADERS = ("Content-Type", "X-Orch-Index", "Content-Length")


class Pair(InlinePair):
    """``answered``: what each inline handler did, (its route's path, True if
    it answered)."""

    @property
    def answered(self) -> list[tuple[str, bool]]:
        return self.calls

    def get(self, port: int, path: str, method: str = "GET", **headers):
        status, resp, body = self.request(port, method, path, **headers)
        return status, {h: resp.getheader(h) for h in HEADERS}, body

    def both(self, path: str, **headers):
        """(inline server's answer, app-only server's answer) for the same state."""
        return self.get(self.inline_port, path, **headers), self.get(self.app_port, path, **headers)


def _serve(tmp_path, **config) -> Pair:
    srv = server_at(tmp_path, **config)
    srv.pusher.place = lambda allocs, job: None
    srv.pusher.stop = lambda allocs: None
    srv.register(copy.deepcopy(NODE))
    _, ev = srv.submit_job(copy.deepcopy(JOB))
    SchedulerWorker(srv.broker, srv.store, srv.planner, 0, seed=1).process([ev])
    return Pair(srv)


@pytest.fixture
def pair(tmp_path):
    p = _serve(tmp_path)
    yield p
    p.stop()


def test_a_job_read_is_the_routes_answer_byte_for_byte(pair):
    inline, routed = pair.both("/jobs/web")
    assert inline[0] == 200
    assert inline == routed
    assert int(inline[1]["X-Orch-Index"]) > 0
    assert inline[1]["Content-Type"] == "application/json"
    assert b'"allocations":[{' in inline[2]
    assert pair.answered == [("/jobs/*", True)]


def test_an_allocation_read_is_the_routes_answer_byte_for_byte(pair):
    alloc = pair.server.store.allocs_for_job("web")[0]
    inline, routed = pair.both(f"/allocations/{alloc.allocation_id}")
    assert inline[0] == 200
    assert inline == routed
    assert alloc.allocation_id.encode() in inline[2]
    assert pair.answered == [("/allocations/*", True)]


def test_a_read_after_a_write_shows_it_with_the_new_index(pair):
    before = pair.get(pair.inline_port, "/jobs/web")
    pair.server.stop_job("web")
    inline, routed = pair.both("/jobs/web")
    assert inline == routed
    assert int(inline[1]["X-Orch-Index"]) > int(before[1]["X-Orch-Index"])
    assert b'"status":"dead"' in inline[2]


def test_unknown_ids_get_the_routes_404(pair):
    for path in ("/jobs/nope", "/allocations/nope", "/jobs/"):
        inline, routed = pair.both(path)
        assert inline[0] == 404
        assert inline[2] == routed[2]
    assert pair.answered == [("/jobs/*", False), ("/allocations/*", False), ("/jobs/*", False)]


def test_queries_head_and_cross_origin_reads_go_to_the_route(pair):
    status, headers, body = pair.get(pair.inline_port, "/jobs/web")
    index = headers["X-Orch-Index"]
    blocking = pair.get(pair.inline_port, f"/jobs/web?index={int(index) - 1}&wait=1s")
    assert blocking == (status, headers, body)
    head = pair.get(pair.inline_port, "/jobs/web", method="HEAD")
    assert head[0] == 200 and head[2] == b""
    origin = pair.get(pair.inline_port, "/jobs/web", Origin="http://elsewhere")
    assert origin == (status, headers, body)
    # Other routes under the same prefixes are never matched inline.
    versions = pair.get(pair.inline_port, "/jobs/web/versions")
    assert versions[0] == 200
    # Only the plain read and the cross-origin one reached the handler; the
    # latter was declined.
    assert pair.answered == [("/jobs/*", True), ("/jobs/*", False)]


def test_a_write_in_progress_sends_the_read_to_the_route(pair):
    answer: list = []
    reader = threading.Thread(target=lambda: answer.append(pair.get(pair.inline_port, "/jobs/web")))
    with store_lock_held(pair.server):
        reader.start()
        # The handler declined at once; the route waits (settle) for the write.
        assert wait_for(lambda: pair.answered, timeout=10)
        assert pair.answered == [("/jobs/*", False)]
        assert not answer
    reader.join(10)
    assert answer and answer[0][0] == 200


def test_a_token_protected_server_refuses_without_the_token(tmp_path):
    p = _serve(tmp_path, token="t0ken")
    try:
        for path in (
            "/jobs/web",
            f"/allocations/{p.server.store.allocs_for_job('web')[0].allocation_id}",
        ):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                inline, routed = p.both(path, **headers)
                assert inline[0] == 401
                assert inline == routed
            good = p.both(path, Authorization="Bearer t0ken")
            assert good[0][0] == 200
            assert good[0] == good[1]
        assert [ok for _path, ok in p.answered] == [False, False, True] * 2
    finally:
        p.stop()
