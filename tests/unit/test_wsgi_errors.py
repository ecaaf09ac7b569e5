"""Requests waitress cannot read (orch.wsgichannel._ErrorTask): a JSON
error with waitress's status, the Nomad face's in plain text; a bad request
line in front of an inline route is answered, not dropped."""

import json
import socket

import bottle


def _app():
    app = bottle.Bottle()

    @app.route("/health")
    def health():
        return {"status": "ok"}

    @app.route("/boom")
    def boom():
        raise bottle.HTTPError(599)  # never reached by these requests

    return app


def _inline():
    return {("GET", "/health"): lambda headers, body, param: (b'{"status":"inline"}', {})}


def _exchange(port, raw: bytes) -> tuple[bytes, dict[str, str], bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(raw)
        got = b""
        while True:
            part = sock.recv(65536)
            if not part:
                break
            got += part
    finally:
        sock.close()
    head, _, body = got.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = dict(line.decode().split(": ", 1) for line in lines)
    return status, headers, body


def _request(line: bytes, *headers: bytes) -> bytes:
    return line + b"\r\nHost: x\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def test_bytes_outside_ascii_in_the_request_line_get_a_json_400(serve):
    """On the inline routes' path too: before, the channel read the query of
    a request whose line was never parsed, and closed with no answer."""
    port = serve(_app(), _inline(), {("GET", "/health"): lambda *a: None})
    for line in (
        b"GET /health?x=\xff HTTP/1.1",
        b"GET /h\xc3\xa9alth HTTP/1.1",
        b"GET /jobs/\xed\xa0\x80 HTTP/1.1",
    ):
        status, headers, body = _exchange(port, _request(line))
        assert status == b"HTTP/1.1 400 Bad Request", line
        assert headers["Content-Type"] == "application/json"
        assert headers["Connection"] == "close"
        assert json.loads(body) == {"error": "Bad Request: Bad URI"}


def test_framing_errors_are_json_with_waitress_status(serve):
    port = serve(_app(), _inline())
    cases = [
        (_request(b"GET /health HTTP/1.1", b"Content-Length: x"), b"400 Bad Request"),
        (_request(b"GET /health HTTP/1.1", b"Transfer-Encoding: gzip"), b"501 Not Implemented"),
    ]
    for raw, expected in cases:
        status, headers, body = _exchange(port, raw)
        assert expected in status
        assert headers["Content-Type"] == "application/json"
        error = json.loads(body)["error"]
        assert isinstance(error, str) and error


def test_the_nomad_face_keeps_plain_text_errors(serve):
    port = serve(_app(), _inline())
    status, headers, body = _exchange(
        port, _request(b"GET /v1/jobs HTTP/1.1", b"Content-Length: x")
    )
    assert status == b"HTTP/1.1 400 Bad Request"
    assert headers["Content-Type"].startswith("text/plain")
    assert b"Content-Length is invalid" in body


def test_the_connection_after_an_error_is_closed_and_others_still_served(serve):
    port = serve(_app(), _inline())
    _exchange(port, _request(b"GET /health?x=\xff HTTP/1.1"))
    status, _, body = _exchange(port, _request(b"GET /health HTTP/1.1", b"Connection: close"))
    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(body) == {"status": "inline"}
