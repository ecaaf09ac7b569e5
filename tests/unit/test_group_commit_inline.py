"""Group commit through waitress (orch.wsgichannel, orch.wsgiloop): the
inline submits of one epoll turn share one COMMIT, no answer of the turn
leaves before it, and a failed COMMIT turns every held answer into the
route's 503 while the server goes on."""

from __future__ import annotations

import http.client
import json
import resource
import select
import signal
import sqlite3
import threading
import time

import pytest
from inline_pair import server_at

from orch.server import wsgi
from orch.server.api import make_app
from orch.server.inline import inline_routes
from orch.server.state.group import TurnCommit
from orch.wsgiloop import HAVE_EPOLL, stop_serving

pytestmark = pytest.mark.skipif(not HAVE_EPOLL, reason="no epoll on this platform")


def _job(job_id: str) -> bytes:
    task = {"name": "t", "config": {"command": "true"}}
    return json.dumps(
        {
            "job_id": job_id,
            "type": "batch",
            "task_groups": [{"name": "g", "count": 1, "tasks": [task]}],
        }
    ).encode()


class GatedTurns(TurnCommit):
    """TurnCommit whose ``end`` can be held at a gate (the turn's writes
    done, not committed) and run under a file-size limit (a real EFBIG)."""

    def __init__(self, store):
        super().__init__(store)
        self.gate = threading.Event()
        self.gate.set()
        self.at_gate = threading.Event()
        self.size_limit: int | None = None

    def end(self):
        limit = self.size_limit  # as the turn's writes were made
        if self.pending() and not self.gate.is_set():
            self.at_gate.set()
            self.gate.wait(10)
        if limit is None or not self.pending():
            return super().end()
        # SIGXFSZ is ignored by the test (main thread): the write fails instead.
        old = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
        try:
            return super().end()
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)


@pytest.fixture
def served(tmp_path):
    server = server_at(tmp_path)
    turns = GatedTurns(server.store)
    https = [
        wsgi.http_server(make_app(server), server.config, inline_routes(server), turns),
        wsgi.http_server(make_app(server), server.config),  # the routes, no inline
    ]
    threads = [threading.Thread(target=h.run, daemon=True) for h in https]
    for thread in threads:
        thread.start()
    seen: list[str] = []
    server.store.backend.db.set_trace_callback(seen.append)
    yield server, turns, [h.effective_port for h in https], seen
    server.store.backend.db.set_trace_callback(None)
    for h, thread in zip(https, threads, strict=True):
        assert stop_serving(h, thread, timeout=10)
    server.stop()


def _on_disk(server) -> set[str]:
    other = sqlite3.connect(server.store.backend.path)
    try:
        return {row[0] for row in other.execute("SELECT job_id FROM jobs")}
    finally:
        other.close()


def _connection(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.connect()
    return conn


def _answered(conn: http.client.HTTPConnection, within: float) -> bool:
    return bool(select.select([conn.sock], [], [], within)[0])


def _control(seen: list[str]) -> list[str]:
    return [s.split()[0] for s in seen if s.split()[0] in ("BEGIN", "SAVEPOINT", "COMMIT")]


def _one_turn_of_two(turns: GatedTurns, port: int, ids: tuple[str, str, str]):
    """A first submit held at its turn's end while two more arrive; they
    are then handled together in the next turn. Returns the connections."""
    conns = [_connection(port) for _ in ids]
    time.sleep(0.1)  # accepted: the next turns are the requests'
    turns.gate.clear()
    conns[0].request("POST", "/jobs", _job(ids[0]))
    assert turns.at_gate.wait(10)
    for conn, job_id in zip(conns[1:], ids[1:], strict=True):
        conn.request("POST", "/jobs", _job(job_id))
    time.sleep(0.2)  # both in their sockets before the loop looks again
    return conns


def test_the_submits_of_one_turn_share_a_commit_and_are_answered_after_it(served):
    server, turns, (port, _), seen = served
    conns = _one_turn_of_two(turns, port, ("a", "b", "c"))
    # Held at its turn's end: committed nowhere, answered to nobody.
    assert _on_disk(server) == set()
    assert not _answered(conns[0], 0.2)
    seen.clear()
    turns.gate.set()
    for conn, job_id in zip(conns, "abc", strict=True):
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["job_id"] == job_id
        assert job_id in _on_disk(server)  # durable when its answer came
        conn.close()
    # a alone in its turn, b and c together: one transaction, c's savepoint.
    assert _control(seen) == ["COMMIT", "BEGIN", "SAVEPOINT", "COMMIT"]


def test_a_failed_commit_answers_every_held_request_503_and_the_server_goes_on(served, tmp_path):
    server, turns, (port, app_port), _seen = served
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        _failed_commit(server, turns, port, app_port, tmp_path)
    finally:
        signal.signal(signal.SIGXFSZ, handler)


def _failed_commit(server, turns: GatedTurns, port: int, app_port: int, tmp_path) -> None:
    conns = [_connection(port)]
    conns[0].request("POST", "/jobs", _job("kept"))
    assert conns[0].getresponse().read()
    conns = _one_turn_of_two(turns, port, ("a", "b", "c"))
    # The next turn's COMMIT cannot grow the WAL: a real write error.
    turns.size_limit = (tmp_path / "state.db-wal").stat().st_size
    try:
        turns.gate.set()
        assert conns[0].getresponse().status == 200  # its own turn, before the limit
        conns[0].close()
        for conn in conns[1:]:
            resp = conn.getresponse()
            assert resp.status == 503
            assert resp.getheader("Content-Type") == "application/json"
            assert "state store unavailable" in json.loads(resp.read())["error"]
            conn.close()
    finally:
        turns.size_limit = None
    routed = _connection(app_port)
    for job_id, status in (("kept", 200), ("a", 200), ("b", 404), ("c", 404)):
        routed.request("GET", f"/jobs/{job_id}")
        resp = routed.getresponse()
        resp.read()
        assert resp.status == status, job_id
    routed.close()
    assert _on_disk(server) == {"kept", "a"}
    again = _connection(port)
    again.request("POST", "/jobs", _job("d"))
    assert again.getresponse().status == 200
    again.close()
    assert _on_disk(server) == {"kept", "a", "d"}


def test_concurrent_submits_are_each_durable_when_answered(served):
    server, _turns, (port, _), seen = served
    late: list[str] = []

    def client(n: int) -> None:
        conn = _connection(port)
        try:
            for i in range(15):
                job_id = f"j{n}-{i}"
                conn.request("POST", "/jobs", _job(job_id))
                resp = conn.getresponse()
                assert resp.status == 200
                resp.read()
                if job_id not in _on_disk(server):
                    late.append(job_id)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert late == []
    assert len(_on_disk(server)) == 90
    print(
        "savepoints", _control(seen).count("SAVEPOINT"), "commits", _control(seen).count("COMMIT")
    )
