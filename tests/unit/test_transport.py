"""orch.transport against real little HTTP servers on loopback."""

import socket
import ssl
import threading
import time

import pytest
from tiny_http import Mute, Recorder, closed_port_url, self_signed

from orch.transport import ERRORS, HttpClient, get_once


@pytest.fixture
def servers():
    started = []

    def start(*args, **kwargs):
        server = (kwargs.pop("cls", Recorder))(*args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def test_json_body_token_and_keep_alive(servers):
    server = servers()
    client = HttpClient(timeout=2.0, token="s3cret")
    first = client.post(server.url + "/register", {"a": 1})
    second = client.get(server.url + "/nodes", params={"x": "1 2"})
    client.close()
    assert first.status_code == 200 and first.json() == {"message": "ok"}
    assert second.status_code == 200 and second.json() == {"message": "ok"}
    assert first.headers.get("Content-Type") == "application/json"
    (m1, p1, b1, h1, port1), (m2, p2, b2, h2, port2) = server.calls
    assert (m1, p1, b1) == ("POST", "/register", {"a": 1})
    assert (m2, p2, b2) == ("GET", "/nodes?x=1+2", None)
    assert h1["Authorization"] == "Bearer s3cret"
    assert h1["Content-Type"] == "application/json"
    assert port1 == port2, "the second request reuses the kept connection"


def test_a_stale_kept_connection_is_redialed_once(servers):
    server = servers(close_silently=True)
    client = HttpClient(timeout=2.0)
    for _ in range(3):
        assert client.get(server.url + "/x").status_code == 200
    ports = [call[4] for call in server.calls]
    assert len(ports) == 3 and len(set(ports)) == 3


def test_read_timeout_on_a_host_that_never_answers(servers):
    mute = servers(cls=Mute)
    client = HttpClient(timeout=(1.0, 0.3))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.post(mute.url + "/allocations", {"a": 1})
    assert time.monotonic() - started < 2.0


def test_connection_refused_is_an_oserror():
    with pytest.raises(ConnectionRefusedError):
        HttpClient(timeout=1.0).get(closed_port_url() + "/")


def test_bytes_bodies_are_sent_as_they_are(servers):
    server = servers()
    HttpClient().post(
        server.url + "/heartbeat", b'{"raw": true}', headers={"Content-Type": "application/json"}
    )
    assert server.calls[0][2] == {"raw": True}


def test_https_checks_certificates_unless_told_not_to(servers, tmp_path):
    server = servers(tls=self_signed(tmp_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        HttpClient(timeout=2.0).get(server.url + "/health")
    resp = HttpClient(timeout=2.0, tls_skip_verify=True).get(server.url + "/health")
    assert resp.status_code == 200


def test_unix_socket(servers, tmp_path):
    path = str(tmp_path / "engine.sock")
    servers(unix_path=path)
    resp = HttpClient(timeout=2.0, unix_socket=path).get("http://localhost/_ping")
    assert resp.status_code == 200


def test_not_a_url_is_a_value_error():
    with pytest.raises(ValueError):
        HttpClient().get("ftp://example.com/")
    assert issubclass(ssl.SSLError, ERRORS)


def test_docker_engine_ping_over_a_unix_socket(servers, tmp_path):
    from orch.agent.drivers.docker_engine import ping_engine

    path = str(tmp_path / "docker.sock")
    engine = servers(unix_path=path)
    assert ping_engine({"DOCKER_HOST": f"unix://{path}"}, 1.0) == ""
    assert engine.paths("GET") == ["/_ping"]
    engine.answer = lambda method, p, body: (500, {"message": "sick"})
    with pytest.raises(OSError, match="500"):
        ping_engine({"DOCKER_HOST": f"unix://{path}"}, 1.0)
    with pytest.raises(ConnectionRefusedError):
        ping_engine({"DOCKER_HOST": closed_port_url().replace("http", "tcp")}, 1.0)


def test_a_lost_connection_then_a_refusal_is_not_a_clean_refusal():
    from orch.transport import PeerGone

    server = Recorder(close_silently=True)
    client = HttpClient(timeout=2.0)
    assert client.post(server.url + "/allocations", {"a": 1}).status_code == 200
    server.close()  # the agent is gone; the kept connection is stale
    with pytest.raises(PeerGone):
        client.post(server.url + "/allocations", {"a": 2})
    with pytest.raises(ConnectionRefusedError) as refused:
        client.post(server.url + "/allocations", {"a": 3})
    assert not isinstance(refused.value, PeerGone)


class Scripted:
    """Answers each connection with the given bytes (in pieces, `pause` apart), then closes."""

    def __init__(self, pieces: list[bytes], pause: float = 0.0):
        self.requests: list[bytes] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._pieces, self._pause = pieces, pause
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(conn.recv(65536))
                try:
                    for piece in self._pieces:
                        conn.sendall(piece)
                        time.sleep(self._pause)
                except OSError:
                    pass

    def close(self) -> None:
        self._sock.close()


def test_get_once_reads_status_and_the_body_up_to_the_limit(servers):
    body = b"x" * 5000
    head = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 5000\r\n\r\n"
    server = servers([head + body[:100], body[100:]], cls=Scripted)
    assert get_once("127.0.0.1", server.port, "/ready?x=1", 2.0, 1024) == (503, body[:1024])
    request = server.requests[0].decode()
    assert request.startswith("GET /ready?x=1 HTTP/1.0\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in request
    # No Content-Length: the body ends with the connection.
    server = servers([b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nhel", b"lo"], cls=Scripted)
    assert get_once("127.0.0.1", server.port, "/", 2.0, 1024) == (200, b"hello")


def test_get_once_fails_on_garbage_a_cut_answer_refusal_and_time(servers):
    bad = servers([b"SSH-2.0-OpenSSH\r\n\r\n"], cls=Scripted)
    cut = servers([b"HTTP/1.0 200 OK\r\nContent-"], cls=Scripted)
    for port in (bad.port, cut.port, int(closed_port_url().rsplit(":", 1)[1])):
        with pytest.raises(ERRORS):
            get_once("127.0.0.1", port, "/", 2.0, 1024)
    # A slow drip of bytes cannot stretch the exchange past its timeout.
    drip = servers([b"HTTP/1.0 200 OK\r\n"] + [b"X: y\r\n"] * 50, pause=0.05, cls=Scripted)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        get_once("127.0.0.1", drip.port, "/", 0.5, 1024)
    assert time.monotonic() - started < 1.5


def test_get_once_percent_encodes_a_path_that_is_not_ascii(servers):
    server = servers([b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"], cls=Scripted)
    assert get_once("127.0.0.1", server.port, "/état?q=é&x=%2F", 2.0, 1024) == (200, b"ok")
    request = server.requests[0].decode("ascii")
    assert request.startswith("GET /%C3%A9tat?q=%C3%A9&x=%2F HTTP/1.0\r\n")
