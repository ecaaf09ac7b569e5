"""A stream (a log follow, the UI's events) learns that its client went,
on the server's own waitress (no lookahead): the connection's socket is
asked (``_Channel.check_client_disconnected``). Before, nothing told a quiet
follow: an abandoned one held its slot and a thread, polling its agent 4
times a second, until its allocation ended."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import bottle
import pytest

from orch.config import ServerConfig
from orch.server.api import make_app
from orch.server.server import Server
from tests.unit.test_ui_streams import TOKEN, FakeAgent, place

REQUEST = b"GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n"


def _watching_app(seen: list, ended: threading.Event):
    """A stream that sends one part, then stays quiet, asking whether its client went."""
    app = bottle.Bottle()

    @app.route("/stream")
    def stream():
        gone = bottle.request.environ["waitress.client_disconnected"]

        def body():
            yield b"first"
            try:
                while not ended.wait(0.05):
                    seen.append(gone())
                    if seen[-1]:
                        return
            finally:
                ended.set()

        return body()

    return app


def _open(port: int, path: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(REQUEST % path)
    return sock


@pytest.mark.parametrize("hang_up", ["close", "half-close"])
def test_a_quiet_stream_learns_its_client_went(serve, hang_up):
    seen: list[bool] = []
    ended = threading.Event()
    port = serve(_watching_app(seen, ended))
    sock = _open(port, b"/stream")
    assert b"first" in sock.recv(4096)
    time.sleep(0.3)
    assert seen and not any(seen), "a client still there is not gone"
    # A request pipelined behind the stream is data to read, not a hang-up.
    sock.sendall(REQUEST % b"/stream")
    time.sleep(0.3)
    assert not any(seen)
    if hang_up == "close":
        sock.close()
    else:
        sock.shutdown(socket.SHUT_WR)
    try:
        assert ended.wait(5), "the stream never learnt its client went"
        assert seen[-1] is True
    finally:
        ended.set()
        sock.close()


@pytest.fixture
def cluster(tmp_path, serve):
    """orch's app with 2 UI streams at most, on the server's waitress, and
    an allocation whose (fake) agent serves a quiet log."""
    agent = FakeAgent()
    server = Server(ServerConfig(data_dir=str(tmp_path / "s"), token=TOKEN, ui_max_streams=2))
    port = serve(make_app(server))
    place(server, agent.url)
    yield server, port
    server.store.changes.close()  # open streams end
    server.ui_streams.wait_idle(10)
    server.stop()
    agent.close()


def _status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        return conn.getresponse().status
    finally:
        conn.close()


def _frees_within(port: int, path: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _status(port, path) == 200:
            return True
        time.sleep(0.2)
    return False


def test_abandoned_ui_log_follows_give_their_slots_back(cluster):
    server, port = cluster
    follows = [_open(port, b"/ui/logs/a1/t") for _ in range(2)]
    time.sleep(0.5)  # both relays hold a slot, polling a log with nothing new
    assert _status(port, "/ui/logs/a1/t?follow=0") == 503
    for sock in follows:
        sock.close()
    assert _frees_within(port, "/ui/logs/a1/t?follow=0", 5), "the follows kept their slots"


def test_abandoned_plain_v1_log_follows_give_their_slots_back(cluster):
    from orch.nomad.logs import MAX_FOLLOWS

    server, port = cluster
    path = b"/v1/client/fs/logs/a1?task=t&type=stdout&follow=true&plain=true"
    follows = [_open(port, path) for _ in range(MAX_FOLLOWS)]
    time.sleep(0.5)
    json_follow = "/v1/client/fs/logs/a1?task=t&type=stdout&follow=true"
    assert _status(port, json_follow.replace("follow=true", "follow=false")) == 200
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", json_follow, headers={"X-Nomad-Token": TOKEN})
    assert conn.getresponse().status == 503  # every follow taken
    conn.close()
    for sock in follows:
        sock.close()
    deadline = time.monotonic() + 5
    while True:
        sock = _open(port, json_follow.encode())
        head = sock.recv(4096)  # a follow sends its heartbeat frame at once
        sock.close()
        if head.startswith(b"HTTP/1.1 200"):
            break
        assert time.monotonic() < deadline, f"the follows kept their slots: {head[:60]!r}"
        time.sleep(0.2)
