"""Fixtures of the unit tests: a clean ORCH_* environment, a canned HTTP server.

The canned server is a tiny real HTTP server on port 0 that answers canned
JSON: tests of the client against it are unit tests of the client, not of
orch's server.
"""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest


@pytest.fixture
def clean_env(monkeypatch):
    """No ORCH_* variable of the caller's environment leaks into a test."""
    for name in list(os.environ):
        if name.startswith("ORCH_"):
            monkeypatch.delenv(name)


class Canned:
    """Routes (method, path) to (status, body, content type); records requests."""

    def __init__(self):
        self.routes = {}
        self.requests = []

    def add(self, method, path, status=200, body=None, ctype="application/json"):
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body if body is not None else {})
        self.routes[(method, path)] = (status, body, ctype)

    def add_log(self, path, data: bytes, page: int):
        """A log route as the server's: `page` bytes at most from ?offset=."""

        def answer(query):
            offset = int((query.get("offset") or ["0"])[0])
            return 200, data[offset : offset + page], "text/plain"

        self.routes[("GET", path)] = answer


@pytest.fixture
def canned():
    routes = Canned()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            routes.requests.append(
                {
                    "method": self.command,
                    "path": parts.path,
                    "query": parse_qs(parts.query),
                    "headers": dict(self.headers),
                    "body": json.loads(body) if body else None,
                }
            )
            route = routes.routes.get(
                (self.command, parts.path),
                (404, json.dumps({"error": "no route"}), "application/json"),
            )
            status, payload, ctype = route(parse_qs(parts.query)) if callable(route) else route
            data = payload.encode() if isinstance(payload, str) else payload
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    routes.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield routes
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def engine():
    """A docker client of a real engine with the test image; skips without an engine."""
    from tests.docker_image import ensure_test_image, require_engine

    client = require_engine()
    ensure_test_image(client)
    yield client
    client.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_database(request):
    """None (SQLite in the data dir) or a fresh PostgreSQL database: store tests run on both."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def open_store(tmp_path, state_database):
    """Open a StateStore on the test's database (each call the same one: a reopen)."""
    from orch.server.state import StateStore

    opened = []

    def open_(**kwargs):
        store = StateStore(str(tmp_path), database=state_database, **kwargs)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def serve(tmp_path):
    """Run an app (with optional inline routes) on the server's waitress at
    port 0; yields a function that starts one and returns its port."""
    from orch.config import ServerConfig
    from orch.server import wsgi

    running = []

    def start(app, inline=None, waiting=None):
        config = ServerConfig(data_dir=str(tmp_path), bind="127.0.0.1", port=0)
        server = wsgi.http_server(app, config, inline, waiting=waiting)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        return server.effective_port

    yield start
    for server, thread in running:
        server.close()
        thread.join(5)
