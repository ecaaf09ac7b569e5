"""Several servers: the transport and the CLI client fail over and follow redirects."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orch.client import Client, ClientError, StorageError
from orch.transport import FailoverClient, HttpClient, Servers, server_list


class Peer:
    """A tiny server answering every request with one fixed status (and Location)."""

    def __init__(self, status=200, location=None):
        self.status, self.location = status, location
        self.seen: list[tuple[str, str, bytes]] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                peer.seen.append((self.command, self.path, self.rfile.read(length)))
                body = json.dumps(
                    {"ok": True} if peer.status < 300 else {"error": f"status {peer.status}"}
                ).encode()
                self.send_response(peer.status)
                if peer.location:
                    self.send_header("Location", peer.location + self.path)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def peers():
    made: list[Peer] = []

    def make(*args, **kw):
        made.append(Peer(*args, **kw))
        return made[-1]

    yield make
    for p in made:
        p.close()


def dead_url() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_server_list_parses_and_refuses():
    assert server_list(" http://a:1/ ,https://b:2") == ["http://a:1", "https://b:2"]
    with pytest.raises(ValueError, match="ftp://x"):
        server_list("http://a:1,ftp://x")
    with pytest.raises(ValueError):
        server_list(" , ")


def test_connection_error_and_503_go_to_the_next_server(peers):
    busy, good = peers(503), peers(200)
    client = FailoverClient(Servers([dead_url(), busy.url, good.url]), HttpClient(timeout=2.0))
    resp = client.post("/heartbeat", {"node_id": "n1"})
    assert resp.status_code == 200
    assert json.loads(good.seen[0][2]) == {"node_id": "n1"}
    assert len(busy.seen) == 1
    # The one that answered is asked first from now on.
    client.post("/heartbeat", {"node_id": "n1"})
    assert len(good.seen) == 2 and len(busy.seen) == 1
    client.close()


def test_a_followers_redirect_is_followed_with_the_body(peers):
    leader = peers(200)
    follower = peers(307, location=leader.url)
    client = FailoverClient(Servers([follower.url]), HttpClient(timeout=2.0))
    resp = client.post("/register", {"node_id": "n1"})
    assert resp.status_code == 200
    assert leader.seen == [("POST", "/register", b'{"node_id":"n1"}')]
    # The leader, not in the list, is asked first next time; the list stays.
    assert client.servers.order() == [leader.url, follower.url]
    client.post("/heartbeat", {"node_id": "n1"})
    assert len(follower.seen) == 1 and len(leader.seen) == 2
    client.close()


def test_every_server_503_returns_the_last_answer_and_none_raises(peers):
    a, b = peers(503), peers(503)
    client = FailoverClient(Servers([a.url, b.url]), HttpClient(timeout=2.0))
    assert client.get("/jobs").status_code == 503
    assert len(a.seen) == len(b.seen) == 1
    nobody = FailoverClient(Servers([dead_url(), dead_url()]), HttpClient(timeout=2.0))
    with pytest.raises(ConnectionRefusedError):
        nobody.get("/jobs")


def test_cli_client_fails_over_on_refusal_and_503(peers):
    busy, good = peers(503), peers(200)
    with Client(f"{dead_url()},{busy.url},{good.url}") as client:
        assert client.call("GET", "/jobs") == {"ok": True}
        assert client.servers.order()[0] == good.url
    with Client(f"{busy.url},{dead_url()}") as client, pytest.raises(StorageError):
        client.call("GET", "/jobs")  # the 503 answer, when nobody did better
    with Client(f"{dead_url()},{dead_url()}") as client, pytest.raises(ClientError) as err:
        client.call("GET", "/jobs")
    assert "connection refused" in err.value.message


def test_cli_client_follows_a_redirect(peers):
    leader = peers(200)
    follower = peers(307, location=leader.url)
    with Client(follower.url) as client:
        assert client.call("POST", "/jobs", json={"a": 1}) == {"ok": True}
    assert leader.seen == [("POST", "/jobs", b'{"a": 1}')]
