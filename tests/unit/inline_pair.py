"""Shared by the inline-route tests: one Server behind two waitress servers,
with its inline routes and without, and a writer holding the store's lock."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from orch.config import ServerConfig
from orch.server import wsgi
from orch.server.api import make_app
from orch.server.inline import inline_routes, server_routes
from orch.server.parkedreads import ParkedReads, job_of_route
from orch.server.server import Server

# The node the inline tests register (exec only, so a job places on it).
NODE = {
    "node_id": "node-a",
    "resources": {"cpu": 4000, "memory": 4000},
    "endpoint": "http://127.0.0.1:9001",
    "attributes": {"driver.exec": True, "driver.docker": False},
}


def service_job(count: int) -> dict:
    """A service job "web" of `count` sleeping allocations."""
    task = {"name": "t", "config": {"command": "sleep 60"}}
    return {
        "job_id": "web",
        "type": "service",
        "task_groups": [{"name": "g", "count": count, "tasks": [task]}],
    }


class InlinePair:
    """``calls`` records what each inline handler returned: (its route's
    path, True if it answered, False if it declined)."""

    def __init__(self, server: Server, waiting: bool = False, parked_reads: bool = False):
        self.server = server
        self.calls: list[tuple[str, bool]] = []
        routes = {key: self._recording(key[1], fn) for key, fn in inline_routes(server).items()}
        app = make_app(server)
        self.parked_reads = (
            ParkedReads(app, server.store.changes, job_of_route(server.store))
            if parked_reads
            else None
        )
        self._https = [
            wsgi.http_server(
                app,
                server.config,
                routes,
                waiting=server_routes(server)[1] if waiting else None,
                parked_reads=self.parked_reads,
            ),
            wsgi.http_server(app, server.config),
        ]
        self._threads = [threading.Thread(target=h.run, daemon=True) for h in self._https]
        for thread in self._threads:
            thread.start()
        self.inline_port, self.app_port = (h.effective_port for h in self._https)

    def _recording(self, path, handler):
        def call(headers, body, param):
            answer = handler(headers, body, param)
            self.calls.append((path, answer is not None))
            return answer

        return call

    def request(self, port: int, method: str, path: str, body: bytes | None = None, **headers):
        """(status, the response, its body) of one request on its own connection."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp, resp.read()
        finally:
            conn.close()

    def close(self):
        for h in self._https:
            h.close()
        for thread in self._threads:
            thread.join(5)
        if self.parked_reads is not None:
            self.parked_reads.close()

    def stop(self):
        """Both waitress servers, then the Server itself."""
        self.close()
        self.server.stop()


def placed_server(tmp_path) -> Server:
    """A Server with NODE registered and service job "web" of 2 allocations
    placed on it (nothing pushed to any agent)."""
    import copy

    from orch.server.worker import SchedulerWorker

    srv = server_at(tmp_path)
    srv.pusher.place = lambda allocs, job: None
    srv.pusher.stop = lambda allocs: None
    srv.register(copy.deepcopy(NODE))
    _, ev = srv.submit_job(copy.deepcopy(service_job(2)))
    SchedulerWorker(srv.broker, srv.store, srv.planner, 0, seed=1).process([ev])
    return srv


def in_thread(fn, *args) -> tuple[threading.Thread, list]:
    """Run ``fn(*args)`` in a daemon thread; its result lands in the list."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    return thread, out


def server_at(tmp_path, **config) -> Server:
    """A Server on a free loopback port with its data in ``tmp_path``."""
    return Server(ServerConfig(data_dir=str(tmp_path), bind="127.0.0.1", port=0, **config))


@contextmanager
def store_lock_held(server: Server) -> Iterator[threading.Event]:
    """Another thread holds the store's lock (a write in progress) meanwhile,
    or until the event given is set."""
    held, release = threading.Event(), threading.Event()

    def writer():
        with server.store._lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(10)
    try:
        yield release
    finally:
        release.set()
        thread.join(10)
