"""Fixtures that run the real dist/orch.pyz: server, agents, a dev cluster.

Every process runs in its own session; teardown sends SIGTERM, waits, then
SIGKILLs its process group, by the pid the fixture started and no other.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# harness.py sits beside this file; import it under any import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Cluster,
    GiveUp,
    Proc,
    ensure_pyz,
    free_port,
    http_get,
    nodes,
    wait_until,
)

SERVER_START_TIMEOUT = 20.0
AGENT_START_TIMEOUT = 20.0
AGENT_URL = re.compile(r"agent listening on (http://\S+)")
SERVER_URL = re.compile(r"server listening on (http://\S+)")


@pytest.fixture(scope="session")
def pyz() -> Path:
    """dist/orch.pyz, built once per session if missing or stale."""
    return ensure_pyz()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_database(request):
    """None (SQLite) or a fresh PostgreSQL database: for tests that run on both engines."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def cluster(tmp_path, pyz):
    """A server of a Cluster, no agents yet; a test file may define its own."""
    c = Cluster(tmp_path)
    c.start_server()
    yield c
    c.stop_all()


@pytest.fixture
def proc_factory(pyz, tmp_path):
    """``start(name, args, env=None)`` -> Proc; all stopped at teardown, newest first."""
    started: list[Proc] = []

    def start(name: str, args: list[str], env: dict | None = None, cwd=None) -> Proc:
        proc = Proc(
            args,
            tmp_path / f"{name}.stdout",
            env,
            cwd=cwd or tmp_path,
            pyz=pyz,
            stderr_path=tmp_path / f"{name}.stderr",
            name=name,
        )
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


@dataclass
class ServerHandle:
    proc: Proc
    url: str
    port: int
    data_dir: Path
    token: str | None
    args: list[str]
    start: object = field(repr=False)

    def restart(self) -> ServerHandle:
        """Stop (or find dead) and start again on the same port and data dir."""
        self.proc.stop()
        fresh = self.start(port=self.port, data_dir=self.data_dir, extra=self.args)
        self.proc = fresh.proc
        return self


@pytest.fixture
def server_factory(proc_factory, tmp_path):
    """``start(token=None, node_ttl=3.0, port=None, data_dir=None, extra=())``."""
    count = [0]

    def start(
        token: str | None = None,
        node_ttl: float = 3.0,
        port: int | None = None,
        data_dir: Path | None = None,
        extra=(),
    ) -> ServerHandle:
        count[0] += 1
        port = port or free_port()
        data_dir = data_dir or tmp_path / f"server-{count[0]}"
        args = [
            "server",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--node-ttl",
            f"{node_ttl:g}",
            *extra,
        ]
        proc = proc_factory(
            f"server-{count[0]}", args, env={"ORCH_TOKEN": token} if token else None
        )
        url = f"http://127.0.0.1:{port}"

        def healthy():
            if not proc.alive():
                raise GiveUp(f"server exited:\n{proc.stderr()[-3000:]}")
            return http_get(url + "/health", token, timeout=1.0).status_code == 200

        wait_until(healthy, SERVER_START_TIMEOUT, what="server GET /health")
        return ServerHandle(proc, url, port, data_dir, token, list(extra), start)

    return start


@pytest.fixture
def server(server_factory) -> ServerHandle:
    return server_factory()


@dataclass
class AgentHandle:
    proc: Proc
    url: str
    node_id: str
    data_dir: Path


@pytest.fixture
def agent_factory(server, proc_factory, tmp_path):
    """``start(region=None, meta=None, extra=(), wait=True)`` -> AgentHandle.

    Agents listen on port 0, heartbeat every 0.5 s, and are returned once the
    server lists their node as healthy.
    """
    count = [0]

    def start(
        region: str | None = None,
        meta: dict | None = None,
        extra=(),
        heartbeat_interval: float = 0.5,
        data_dir: Path | None = None,
        wait: bool = True,
    ) -> AgentHandle:
        count[0] += 1
        data_dir = data_dir or tmp_path / f"agent-{count[0]}"
        args = [
            "agent",
            "--server",
            server.url,
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--heartbeat-interval",
            f"{heartbeat_interval:g}",
        ]
        if region:
            args += ["--region", region]
        for key, value in (meta or {}).items():
            args += ["--meta", f"{key}={value}"]
        args += list(extra)
        proc = proc_factory(
            f"agent-{count[0]}", args, env={"ORCH_TOKEN": server.token} if server.token else None
        )
        url = proc.wait_for_output(AGENT_URL.pattern, AGENT_START_TIMEOUT).group(1)
        if not wait:
            return AgentHandle(proc, url, "", data_dir)

        def registered():
            for node in nodes(server.url, server.token):
                if node.get("endpoint") == url and node.get("healthy"):
                    return node["node_id"]
            return None

        node_id = wait_until(registered, AGENT_START_TIMEOUT, what=f"node {url} in GET /nodes")
        return AgentHandle(proc, url, node_id, data_dir)

    return start


@dataclass
class DevHandle:
    proc: Proc
    url: str
    agents: int


@pytest.fixture
def dev_cluster(proc_factory) -> DevHandle:
    """``orch dev --agents 3 --port <free>``, returned once all nodes are healthy."""
    port = free_port()
    proc = proc_factory("dev", ["dev", "--agents", "3", "--port", str(port)])
    proc.wait_for_output(r"orch dev: 3 nodes healthy in", SERVER_START_TIMEOUT, stream="stdout")
    return DevHandle(proc, f"http://127.0.0.1:{port}", 3)
