"""The server's waitress: an answer is one send(); streams still stream."""

import http.client
import socket
import threading
import time

import bottle
import pytest
from waitress.channel import HTTPChannel

from orch.config import ServerConfig
from orch.server import wsgi


@pytest.fixture
def serve(tmp_path):
    """Run an app on the server's waitress (port 0); yields its port."""
    running = []

    def start(app):
        config = ServerConfig(data_dir=str(tmp_path), bind="127.0.0.1", port=0)
        server = wsgi.http_server(app, config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        return server.effective_port

    yield start
    for server, thread in running:
        server.close()
        thread.join(5)


def _app():
    app = bottle.Bottle()

    @app.route("/small")
    def small():
        bottle.response.content_type = "application/json"
        return '{"message": "Heartbeat received", "ack": 1}'

    @app.route("/empty", method="DELETE")
    def empty():
        bottle.response.status = 204
        return ""

    @app.route("/stream")
    def stream():
        def parts():
            yield b"first\n"
            time.sleep(1.0)
            yield b"second\n"

        return parts()

    return app


def test_a_small_answer_is_one_send(serve, monkeypatch):
    sends = []
    real = HTTPChannel.send

    def counting(self, data, **kw):
        sends.append(bytes(data))
        return real(self, data, **kw)

    monkeypatch.setattr(HTTPChannel, "send", counting)
    port = serve(_app())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(20):
        conn.request("GET", "/small")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b'{"message": "Heartbeat received", "ack": 1}'
    conn.request("DELETE", "/empty")
    resp = conn.getresponse()
    assert resp.status == 204 and resp.read() == b""
    conn.close()
    # waitress alone sends the header and the body apart: 41 sends.
    assert len(sends) == 21, [s[:40] for s in sends]
    assert all(s.startswith(b"HTTP/1.1 ") for s in sends)


def test_a_stream_is_sent_as_it_is_written(serve):
    port = serve(_app())
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        got = b""
        while b"first\n" not in got:
            got += sock.recv(4096)
        # The first part arrives before the second is even written.
        assert time.monotonic() - started < 0.9
        assert b"second" not in got
        while b"second\n" not in got:
            got += sock.recv(4096)
    finally:
        sock.close()
