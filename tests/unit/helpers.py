"""Helpers shared by the unit tests: WSGI calls, clusters, task contexts, log reads."""

import io
import json
from wsgiref.util import setup_testing_defaults

from orch.agent.drivers.base import TaskContext
from orch.server.scheduler.cluster import Cluster
from orch.structs import Node, Resources


def request(app, method, path, *, body=b"", headers=None):
    """(status, headers, text) of one call to the WSGI app; ``path`` may hold ``?query``."""
    environ: dict = {}
    setup_testing_defaults(environ)
    path, _, query = path.partition("?")
    environ.update(
        {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": "application/json",
            "wsgi.input": io.BytesIO(body),
        }
    )
    for key, value in (headers or {}).items():
        environ["HTTP_" + key.upper().replace("-", "_")] = value
    captured = {}

    def start_response(status, response_headers, exc_info=None):
        captured["status"] = int(status.split()[0])
        captured["headers"] = dict(response_headers)

    out = b"".join(app(environ, start_response)).decode()
    return captured["status"], captured["headers"], out


def call(app, method, path, body=None, headers=None, query=""):
    """(status, JSON body) of one call; ``body`` is bytes as they are, else encoded as JSON."""
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    target = f"{path}?{query}" if query else path
    status, response_headers, out = request(app, method, target, body=raw, headers=headers)
    assert response_headers["Content-Type"].startswith("application/json"), out
    return status, json.loads(out)


def cluster_of(*specs) -> Cluster:
    """specs: (node_id, region, cpu, memory); every node runs exec tasks."""
    cluster = Cluster()
    for node_id, region, cpu, memory in specs:
        cluster.upsert_node(
            Node(
                node_id,
                region=region,
                resources=Resources(cpu, memory),
                attributes={"driver.exec": True},
            )
        )
    return cluster


def store_task_context(store, command: str = "sleep 300") -> TaskContext:
    """Task t of allocation a1 (job j1) running ``command``, in the agent store's dirs."""
    return TaskContext(
        "a1",
        "j1",
        "t",
        {"command": command},
        Resources(),
        store.task_dir("a1", "t"),
        store.log_path("a1", "t", "stdout"),
        store.log_path("a1", "t", "stderr"),
    )


def read_or_empty(path) -> str:
    """The file's text; "" while it does not exist yet."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


class TaskStarter:
    """Starts task ``t`` of one allocation on a driver, once per command; stops them all."""

    def __init__(self, driver, alloc_id: str, task_dir, *, config=None, env=None):
        self.driver, self.alloc_id, self.task_dir = driver, alloc_id, task_dir
        self.config, self.env = config or {}, env or {}
        self.handles: list = []

    def __call__(self, command):
        ctx = TaskContext(
            alloc_id=self.alloc_id,
            job_id="j1",
            task_name="t",
            config={**self.config, "command": command},
            resources=Resources(100, 64),
            task_dir=str(self.task_dir),
            stdout_path=str(self.task_dir / "stdout.log"),
            stderr_path=str(self.task_dir / "stderr.log"),
            env=self.env,
        )
        handle = self.driver.start(ctx)
        self.handles.append(handle)
        return ctx, handle

    def stop_all(self, timeout: float) -> None:
        for handle in self.handles:
            self.driver.stop(handle, timeout)
