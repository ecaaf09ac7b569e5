"""The UI's SSE routes through a real waitress server on a free port.

The log relay reads from a tiny fake agent: a real HTTP server on loopback
that serves a growing log by offset, as the agent's log route does.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from waitress import create_server

from orch.config import ServerConfig
from orch.server.api import make_app
from orch.server.server import Server
from orch.structs import Allocation, AllocStatus, Node, Plan, Resources, replace
from orch.wsgiloop import stop_serving

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def spec(count=1) -> dict:
    task = {"name": "t", "driver": "exec", "config": {"command": "true"}}
    return {"job_id": "web", "task_groups": [{"name": "g", "count": count, "tasks": [task]}]}


class Served:
    """A Server's app on waitress, port 0, as `orch server` runs it."""

    def __init__(self, tmp_path, cap=32):
        config = ServerConfig(data_dir=str(tmp_path), token=TOKEN, ui_max_streams=cap)
        self.server = Server(config)
        self.http = create_server(
            make_app(self.server),
            host="127.0.0.1",
            port=0,
            threads=4 + cap,
            channel_request_lookahead=1,
        )
        self.port = self.http.effective_port
        self.thread = threading.Thread(target=self.http.run, daemon=True)
        self.thread.start()

    def open(
        self, path, headers=AUTH
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", path, headers=headers)
        return conn, conn.getresponse()

    def close(self):
        self.server.store.changes.close()
        assert self.server.ui_streams.wait_idle(10), "streams still open after shutdown"
        # Closed from its loop thread: closing its sockets from here, under
        # the loop's select(), failed that select with EBADF.
        assert stop_serving(self.http, self.thread, timeout=10)
        self.server.stop()


@pytest.fixture
def served(tmp_path):
    s = Served(tmp_path)
    yield s
    s.close()


def read_event(resp) -> tuple[str, dict | None]:
    """The next event (name, data); comments come back as (":", None)."""
    name, data = "", None
    while True:
        line = resp.readline().decode()
        if line == "":
            raise EOFError("stream ended")
        line = line.rstrip("\n")
        if line == "" and (name or data is not None):
            return name, data
        if line.startswith(":"):
            return ":", None
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: ") :])


def test_events_say_hello_then_a_change_woken_by_a_submit(served, monkeypatch):
    import orch.server.ui.streams as streams

    # Unwoken, the stream would look again only after WAKE: made long, so
    # the bound tells a wake-up from a timeout with room for a loaded host.
    monkeypatch.setattr(streams, "WAKE", 30.0)
    conn, resp = served.open("/ui/events")
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    name, data = read_event(resp)
    assert name == "hello"
    start = time.monotonic()
    served.server.submit_job(spec())
    name, changed = read_event(resp)
    assert name == "change"
    assert time.monotonic() - start < 10.0
    assert changed["index"] > data["index"]
    conn.close()


def test_events_need_the_token(served):
    conn, resp = served.open("/ui/events", headers={})
    assert resp.status == 401
    assert "error" in json.loads(resp.read())
    conn.close()


def test_streams_over_the_cap_get_a_503_and_a_closed_one_frees_its_slot(tmp_path):
    s = Served(tmp_path, cap=2)
    try:
        first = s.open("/ui/events")
        second = s.open("/ui/events")
        for _conn, resp in (first, second):
            assert read_event(resp)[0] == "hello"
        conn, resp = s.open("/ui/events")
        assert resp.status == 503
        assert "too many" in json.loads(resp.read())["error"]
        conn.close()
        first[1].close()  # the browser tab goes away: its socket closes
        first[0].close()

        def reopened():
            conn, resp = s.open("/ui/events")
            if resp.status == 200:
                return conn, resp
            resp.read()
            conn.close()
            return None

        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            got = reopened()
            time.sleep(0.1)
        assert got is not None, "the closed stream's slot was never freed"
        got[0].close()
        second[0].close()
    finally:
        s.close()


def test_shutdown_ends_open_streams(tmp_path):
    s = Served(tmp_path)
    conn, resp = s.open("/ui/events")
    assert read_event(resp)[0] == "hello"
    s.server.store.changes.close()
    with pytest.raises(EOFError):
        while True:
            read_event(resp)
    conn.close()
    s.close()


# ---- the log relay ------------------------------------------------------------


class FakeAgent:
    """Serves /allocations/<id>/logs/<task>?type=&offset= from an in-memory log."""

    def __init__(self):
        self.logs = {"stdout": b"", "stderr": b""}
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if not url.path.endswith("/logs/t"):
                    return self._send(404, b'{"error": "no such task"}', "application/json")
                offset = int(query.get("offset", "0"))
                data = agent.logs[query.get("type", "stdout")][offset:]
                self._send(200, data, "text/plain", offset + len(data))

            def _send(self, code, body, ctype, next_offset=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if next_offset is not None:
                    self.send_header("X-Orch-Next-Offset", str(next_offset))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def agent():
    a = FakeAgent()
    yield a
    a.close()


def place(server, endpoint) -> Allocation:
    """A job with one allocation on a node served by ``endpoint``."""
    store = server.store
    store.upsert_node(Node("n1", resources=Resources(cpu=1000, memory=1000), endpoint=endpoint))
    _job, ev = server.submit_job(spec())
    alloc = Allocation("a1", "web", "g", "n1", 0, create_time=time.time())
    placed, _, _ = store.commit_plan(Plan(ev.eval_id, "web", place=[alloc]), [])
    assert placed
    return placed[0]


def collect_log(resp, until: str, timeout=10.0) -> tuple[str, list[tuple[str, dict | None]]]:
    """Text of the log events read until ``until`` is in it (or an end/error)."""
    text, events = "", []
    deadline = time.monotonic() + timeout
    while until not in text and time.monotonic() < deadline:
        name, data = read_event(resp)
        events.append((name, data))
        if name == "log":
            text += data["text"]
        elif name in ("end", "error"):
            break
    return text, events


def test_log_stream_follows_the_agent_and_ends_when_the_alloc_is_terminal(served, agent):
    alloc = place(served.server, agent.url)
    agent.logs["stdout"] = b"hello <b>world</b>\n"
    conn, resp = served.open("/ui/logs/a1/t?type=stdout&follow=1")
    assert resp.status == 200
    text, _ = collect_log(resp, "world")
    assert text == "hello <b>world</b>\n"
    agent.logs["stdout"] += "später\n".encode()  # appears while following
    text, events = collect_log(resp, "später")
    assert text == "später\n"
    assert events[-1][1]["offset"] == len(agent.logs["stdout"])
    served.server.store.update_allocs([replace(alloc, client_status=AllocStatus.COMPLETE)])
    name, data = read_event(resp)
    assert name == "end"
    conn.close()


def test_log_stream_from_an_offset_without_follow_ends_when_drained(served, agent):
    place(served.server, agent.url)
    agent.logs["stderr"] = b"0123456789"
    conn, resp = served.open("/ui/logs/a1/t?type=stderr&offset=4&follow=0")
    assert read_event(resp) == ("log", {"offset": 10, "text": "456789"})
    assert read_event(resp) == ("end", {"offset": 10})
    conn.close()


def test_log_stream_errors(served, agent):
    place(served.server, agent.url)
    conn, resp = served.open("/ui/logs/a1/nosuch?follow=0")
    assert read_event(resp) == ("error", {"error": "no such task"})
    conn.close()
    for path, code in (
        ("/ui/logs/nope/t", 404),
        ("/ui/logs/a1/t?type=x", 400),
        ("/ui/logs/a1/t?offset=-1", 400),
        ("/ui/logs/a1/t?offset=" + "9" * 4301, 400),  # past int()'s digits: a 500 before
    ):
        conn, resp = served.open(path)
        assert resp.status == code, path
        assert "error" in json.loads(resp.read())
        conn.close()
