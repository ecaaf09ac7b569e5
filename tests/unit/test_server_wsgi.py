"""The server's waitress: an answer is one send(); streams still stream."""

import http.client
import socket
import threading

import bottle
from waitress.channel import HTTPChannel


def _app(first_seen: threading.Event | None = None):
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
            # The second part is written only once the client has the first:
            # a buffered stream would never deliver it (no race with a clock).
            if first_seen is not None:
                first_seen.wait(10)
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
    first_seen = threading.Event()
    port = serve(_app(first_seen))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"first\n" not in got:
            got += sock.recv(4096)
        # The first part arrives before the second is even written.
        assert b"second" not in got
        first_seen.set()
        while b"second\n" not in got:
            got += sock.recv(4096)
    finally:
        sock.close()


def test_the_io_thread_does_not_spin_while_workers_write(serve, monkeypatch):
    """With several connections busy, waitress's I/O thread used to call
    handle_write over and over while a worker held the output lock (165
    calls per answer measured at 3 connections): each call finds nothing to
    do. Now a connection whose worker holds the lock is not writable."""
    calls = []
    real = HTTPChannel.handle_write

    def counting(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(HTTPChannel, "handle_write", counting)
    port = serve(_app())
    answers = []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(200):
            conn.request("GET", "/small")
            resp = conn.getresponse()
            answers.append(resp.status == 200 and resp.read() != b"")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 800 and all(answers)
    assert len(calls) < len(answers) / 4, f"{len(calls)} handle_write calls for 800 answers"


def test_the_agent_serves_on_the_same_connections():
    from orch.agent.main import HttpServer
    from orch.wsgichannel import _Channel

    server = HttpServer(bottle.Bottle(), "127.0.0.1", 0)
    try:
        channels = {
            d.channel_class for d in server._server._map.values() if hasattr(d, "channel_class")
        }
        assert channels == {_Channel}
    finally:
        server._sock.close()
