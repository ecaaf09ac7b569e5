"""Inline routes (orch.wsgichannel): answered on the thread that parsed the
request, without the WSGI app, unless their handler declines."""

import http.client
import socket
import threading
import time

import bottle


def _app(seen):
    app = bottle.Bottle()

    @app.route("/beat", method="POST")
    def beat():
        seen.append(("app", bottle.request.body.read()))
        bottle.response.content_type = "application/json"
        return '{"by":"app"}'

    return app


def _inline(seen):
    def handler(headers, body, _param):
        seen.append(("inline", body))
        if body == b"boom":
            raise RuntimeError("handler bug")
        if body.startswith(b"app"):
            return None
        return b'{"by":"inline","ua":"%s"}' % headers.get("USER_AGENT", "").encode(), {}

    return {("POST", "/beat"): handler}


def _post(conn, body, **headers):
    conn.request("POST", "/beat", body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.getheader("Content-Type"), resp.read()


def test_the_handler_answers_without_the_app(serve):
    seen = []
    port = serve(_app(seen), _inline(seen))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(3):
        answer = _post(conn, b"x", **{"User-Agent": "t"})
        assert answer == (200, "application/json", b'{"by":"inline","ua":"t"}')
    conn.close()
    assert seen == [("inline", b"x")] * 3


def test_a_declined_request_goes_to_the_app_with_its_body(serve):
    seen = []
    port = serve(_app(seen), _inline(seen))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert _post(conn, b"app-1") == (200, "application/json", b'{"by":"app"}')
    # The same connection keeps working, inline again.
    assert _post(conn, b"x")[2].startswith(b'{"by":"inline"')
    conn.close()
    assert seen == [("inline", b"app-1"), ("app", b"app-1"), ("inline", b"x")]


def test_a_failing_handler_leaves_the_request_to_the_app(serve):
    seen = []
    port = serve(_app(seen), _inline(seen))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert _post(conn, b"boom")[2] == b'{"by":"app"}'
    conn.close()


def test_other_routes_and_a_query_are_not_inline(serve):
    seen = []
    port = serve(_app(seen), _inline(seen))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/beat?x=1", body=b"x")
    assert conn.getresponse().read() == b'{"by":"app"}'
    conn.request("GET", "/nothing")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 404
    conn.close()
    assert seen == [("app", b"x")]


def _exchange(port, raw: bytes) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(raw)
        got = b""
        while True:
            part = sock.recv(65536)
            if not part:
                return got
            got += part
    finally:
        sock.close()


def test_pipelined_requests_are_answered_in_order(serve):
    seen = []
    port = serve(_app(seen), _inline(seen))
    one = b"POST /beat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
    raw = one % (1, b"a") + one % (5, b"app-2") + one % (1, b"c")
    raw += b"POST /beat HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\n\r\nd"
    got = _exchange(port, raw)  # the last one closes the connection
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in got.split(b"HTTP/1.1 200 OK")[1:]]
    assert [b[:13] for b in bodies] == [
        b'{"by":"inline',
        b'{"by":"app"}',
        b'{"by":"inline',
        b'{"by":"inline',
    ]
    assert got.count(b"Connection: close") == 1


def test_an_answer_larger_than_the_socket_takes_is_sent_whole(serve):
    """What one send() leaves (a full socket buffer) goes through waitress's
    buffers, after which the connection serves the next request."""
    big = b'"' + b"x" * (8 << 20) + b'"'
    port = serve(_app([]), {("POST", "/beat"): lambda headers, body, param: (big, {})})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(2):
        assert _post(conn, b"x") == (200, "application/json", big)
    conn.close()


def test_a_prefix_route_gets_the_last_segment_and_sends_its_headers(serve):
    seen = []

    def item(headers, body, param):
        seen.append(param)
        return b'{"id":"%s"}' % param.encode(), {"X-Orch-Index": "7"}

    app = bottle.Bottle()

    @app.route("/items/<a>/<b>")
    def deeper(a, b):
        return "deeper"

    port = serve(app, {("GET", "/items/*"): item})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/items/a%2Db")
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("X-Orch-Index"), resp.read()) == (200, "7", b'{"id":"a-b"}')
    conn.request("GET", "/items/a/b")  # not the prefix's last segment: the app's
    assert conn.getresponse().read() == b"deeper"
    conn.close()
    assert seen == ["a-b"]


def _inline_tasks(server):
    from orch.wsgichannel import _InlineTasks

    tasks = [getattr(d, "add_task", None) for d in server._map.values()]
    (found,) = [t for t in tasks if isinstance(t, _InlineTasks)]
    return found


def _answer(sock) -> bytes:
    got = b""
    while not got.endswith(b"}"):
        part = sock.recv(4096)
        assert part, "closed by the server"
        got += part
    return got


def test_a_whole_request_is_answered_from_its_bytes(tmp_path):
    """One plain request in one read (as orch's transport sends it) is
    answered without a parser object; a declined one is asked once; one
    that arrives in parts takes waitress's reading, inline still."""
    from orch.config import ServerConfig
    from orch.server import wsgi

    seen = []
    config = ServerConfig(data_dir=str(tmp_path), port=0)
    server = wsgi.http_server(_app(seen), config, _inline(seen))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    one = b"POST /beat HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\nContent-Length: %d\r\n\r\n%s"
    try:
        tasks = _inline_tasks(server)
        sock = socket.create_connection(("127.0.0.1", server.effective_port), timeout=10)
        for _ in range(3):
            sock.sendall(one % (1, b"x"))
            assert _answer(sock).endswith(b'{"by":"inline","ua":"t"}')
        assert tasks.whole == 3
        sock.sendall(one % (5, b"app-1"))
        assert _answer(sock).endswith(b'{"by":"app"}')
        head, body = (one % (2, b"yz")).split(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        # The header read alone first: waitress's parser holds it.
        deadline = time.monotonic() + 20
        while not any(c.request is not None for c in list(server.active_channels.values())):
            assert time.monotonic() < deadline, "the header was not read"
            time.sleep(0.01)
        sock.sendall(body)
        assert _answer(sock).endswith(b'{"by":"inline","ua":"t"}')
        sock.close()
        assert tasks.whole == 3
        assert seen == [("inline", b"x")] * 3 + [
            ("inline", b"app-1"),
            ("app", b"app-1"),
            ("inline", b"yz"),
        ]
    finally:
        server.close()
        thread.join(5)
