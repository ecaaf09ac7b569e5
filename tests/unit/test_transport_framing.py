"""orch.transport's own request writing and answer reading, byte for byte."""

import http.client
import socket
import threading

import pytest

from orch.transport import ERRORS, HttpClient


class KeptAlive:
    """Reads each request on a connection and answers it with the next scripted
    bytes; a None after an answer closes the connection once it is sent."""

    def __init__(self, answers: list):
        self.answers = list(answers)
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                self._answer(conn, self.connections)

    def _answer(self, conn: socket.socket, number: int) -> None:
        reader = conn.makefile("rb")
        while self.answers:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline()
                if not line:
                    return
                head += line
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            self.requests.append((number, head + reader.read(length)))
            conn.sendall(self.answers.pop(0) or b"")
            if self.answers and self.answers[0] is None:
                self.answers.pop(0)
                return

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def scripted():
    started = []

    def start(answers):
        server = KeptAlive(answers)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_request_bytes_are_what_http_client_sent(scripted):
    server = scripted([OK, OK])
    client = HttpClient(timeout=2.0, token="t0k")
    client.post(server.url + "/allocations?x=1", {"a": 1})
    client.request("POST", server.url + "/jobs/j/restart")  # no body: Content-Length 0
    (_, first), (_, second) = server.requests
    host = server.url.removeprefix("http://")
    assert first == (
        b"POST /allocations?x=1 HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Accept-Encoding: identity\r\nAccept: application/json\r\n"
        b"Authorization: Bearer t0k\r\nContent-Type: application/json\r\n"
        b'Content-Length: 7\r\n\r\n{"a":1}'
    )
    assert second.startswith(b"POST /jobs/j/restart HTTP/1.1\r\n")
    assert second.endswith(b"Content-Length: 0\r\n\r\n")


def test_chunked_answer_then_the_same_connection_again(scripted):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Orch-Index: 7\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    )
    server = scripted([chunked, OK])
    client = HttpClient(timeout=2.0)
    resp = client.get(server.url + "/a")
    assert (resp.status_code, resp.content) == (200, b"hello world")
    assert resp.headers.get("x-orch-index") == resp.headers["X-ORCH-INDEX"] == "7"
    assert "X-Orch-Index" in resp.headers and "Location" not in resp.headers
    assert client.get(server.url + "/b").content == b"ok"
    assert [number for number, _ in server.requests] == [1, 1]


def test_interim_answers_and_bodiless_answers_keep_the_connection(scripted):
    server = scripted(
        [
            b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",  # HEAD: no body follows
            OK,
        ]
    )
    client = HttpClient(timeout=2.0)
    assert client.post(server.url + "/a", b"x").content == b"ok"
    assert client.delete(server.url + "/b").status_code == 204
    head = client.request("HEAD", server.url + "/c")
    assert (head.status_code, head.content) == (200, b"")
    assert client.get(server.url + "/d").content == b"ok"
    assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_an_answer_that_ends_the_connection_is_not_kept(scripted, answer):
    server = scripted([answer, OK])
    client = HttpClient(timeout=2.0)
    assert client.get(server.url + "/a").content == b"ok"
    assert client.get(server.url + "/b").content == b"ok"
    assert [number for number, _ in server.requests] == [1, 2]


def test_a_body_without_length_runs_to_the_end_of_the_connection(scripted):
    server = scripted([b"HTTP/1.1 200 OK\r\n\r\nuntil the end", None])
    resp = HttpClient(timeout=2.0).get(server.url + "/a")
    assert resp.content == b"until the end"


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",  # not HTTP
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",  # cut short
        b"HTTP/1.1 200 OK\r\nContent-Length: x1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n",
    ],
)
def test_malformed_answers_raise_what_errors_lists(scripted, answer):
    server = scripted([answer, None])
    with pytest.raises(http.client.HTTPException) as raised:
        HttpClient(timeout=2.0).get(server.url + "/a")
    assert isinstance(raised.value, ERRORS)


def test_header_injection_and_control_characters_are_refused(scripted):
    server = scripted([OK])
    client = HttpClient(timeout=2.0)
    with pytest.raises(ValueError):
        client.get(server.url + "/a", headers={"X-A": "1\r\nX-B: 2"})
    with pytest.raises(http.client.InvalidURL):
        client.get(server.url + "/a b")
    assert client.get(server.url + "/ok").content == b"ok"
    assert len(server.requests) == 1
