"""Several servers on one PostgreSQL and agents knowing them all (the HA tests).

Real processes: each server is the zipapp with ``--database``, each agent has
``--server URL1,URL2,URL3``. Who leads is read from ``GET /status/leader``.
"""

from __future__ import annotations

import time
from pathlib import Path

import requests

from tests.jobspec import exec_job

from harness import START_TIMEOUT, GiveUp, Proc, free_port, kill_pid, wait_until

TIMEOUT = 5


def batch_job(job_id: str, command: str = "true", resources: dict | None = None) -> dict:
    return service_job(job_id, command, resources) | {"type": "batch"}


def service_job(job_id: str, command: str = "exec sleep 600", resources: dict | None = None):
    sizes = resources or {"cpu": 1, "memory": 1}
    return exec_job(job_id, command, type_="service", cpu=sizes["cpu"], memory=sizes["memory"])


class HaCluster:
    """N servers on ``database`` and agents given every server's URL."""

    def __init__(
        self,
        tmp: Path,
        database: str,
        *,
        servers: int = 3,
        node_ttl: float = 6.0,
        heartbeat_interval: float = 0.5,
        lease: float = 3.0,
    ):
        self.tmp, self.database = tmp, database
        self.node_ttl, self.heartbeat_interval, self.lease = node_ttl, heartbeat_interval, lease
        self.ports = [free_port() for _ in range(servers)]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.servers: dict[str, Proc] = {}
        self.agents: dict[str, Proc] = {}
        self.paused: set[str] = set()  # servers under SIGSTOP
        self.pid_dir = tmp / "pids"
        self.pid_dir.mkdir(exist_ok=True)

    def start_server(self, i: int) -> Proc:
        url = self.urls[i]
        args = ["server", "--port", str(self.ports[i]), "--data-dir", str(self.tmp / f"s{i}")]
        args += ["--database", self.database, "--node-ttl", str(self.node_ttl)]
        args += ["--lease", str(self.lease)]
        proc = self.servers[url] = Proc(args, self.tmp / f"server-{i}.log")

        def up():
            if not proc.alive():
                raise GiveUp(f"server {i} exited:\n{proc.log()[-3000:]}")
            return requests.get(f"{url}/health", timeout=1).ok

        wait_until(up, START_TIMEOUT, what=f"server {i} /health")
        return proc

    def start_servers(self) -> None:
        for i in range(len(self.urls)):
            self.start_server(i)
        self.wait_leader()

    def start_agent(self, name: str) -> str:
        """An agent knowing every server; its node id once it is healthy."""
        data_dir = self.tmp / f"agent-{name}"
        proc = Proc(
            ["agent", "--server", ",".join(self.urls), "--port", "0", "--data-dir", str(data_dir),
             "--heartbeat-interval", str(self.heartbeat_interval)],
            self.tmp / f"agent-{name}.log",
        )  # fmt: skip
        self.agents[name] = proc
        node_file = data_dir / "node_id"

        def registered():
            if not proc.alive():
                raise GiveUp(f"agent {name} exited:\n{proc.log()[-3000:]}")
            return node_file.exists() and node_file.read_text().strip()

        node_id = wait_until(registered, START_TIMEOUT, what=f"agent {name} node id")
        wait_until(lambda: self.healthy(node_id), START_TIMEOUT, what=f"node {name} healthy")
        return node_id

    def live(self) -> list[str]:
        return [u for u, p in self.servers.items() if p.alive() and u not in self.paused]

    def pause(self, url: str) -> None:
        self.paused.add(url)
        self.servers[url].signal(19)  # SIGSTOP

    def resume(self, url: str) -> None:
        self.servers[url].signal(18)  # SIGCONT
        self.paused.discard(url)

    def leader(self, via: str | None = None) -> str | None:
        """The leader's URL as ``via`` (else any live server) sees it."""
        for url in [via] if via else self.live():
            try:
                found = requests.get(f"{url}/status/leader", timeout=TIMEOUT).json()["leader"]
            except (requests.RequestException, ValueError, KeyError):
                continue
            if found:
                return found
        return None

    def wait_leader(self, other_than: str | None = None, timeout: float = 30.0) -> str:
        """The leader every live server agrees on (and that leads by its own account)."""

        def agreed():
            seen = {self.leader(u) for u in self.live()}
            if len(seen) != 1 or None in seen:
                return None
            url = seen.pop()
            if url == other_than or url not in self.live():
                return None
            status = requests.get(f"{url}/status/leader", timeout=TIMEOUT).json()
            return url if status["this_server"]["leader"] else None

        return wait_until(agreed, timeout, interval=0.1, what="one leader")

    def get(self, path: str, url: str | None = None):
        return requests.get((url or self.live()[0]) + path, timeout=TIMEOUT)

    def post(self, path: str, body, url: str | None = None):
        return requests.post((url or self.live()[0]) + path, json=body, timeout=TIMEOUT)

    def healthy(self, node_id: str) -> bool:
        nodes = self.get("/nodes").json()["nodes"]
        return any(n["node_id"] == node_id and n["healthy"] for n in nodes)

    def job(self, job_id: str, url: str | None = None) -> dict | None:
        resp = self.get(f"/jobs/{job_id}", url)
        return resp.json() if resp.status_code == 200 else None

    def task_pids(self) -> list[int]:
        """PIDs of the long-running (service) tasks, which tests name svc-*."""
        files = self.pid_dir.glob("svc*")
        return [int(line) for p in files for line in p.read_text().split()]

    def stop_all(self) -> None:
        for proc in self.agents.values():
            proc.cleanup()
        for proc in self.servers.values():
            if proc.popen.returncode is None:
                proc.signal(18)  # SIGCONT: a paused server cannot stop
            proc.cleanup()
        for pid in self.task_pids():
            kill_pid(pid)


def placed_more_than_once(cluster: HaCluster, job_ids) -> dict[str, str]:
    """Jobs whose task ran in more than one allocation, or more often than its
    one allocation's restarts explain; {} when each was placed once.

    Each test task appends its PID to ``<pid dir>/<job>.<allocation id>``: a
    second placement shows as a second file. A second line in one file is a
    restart by the agent (counted in the allocation's ``restarts``), not a
    placement."""
    files: dict[str, list] = {}
    for path in cluster.pid_dir.iterdir():
        job_id, _, alloc_id = path.name.partition(".")
        files.setdefault(job_id, []).append((alloc_id, path.read_text().split()))
    wrong = {}
    for job_id in job_ids:
        runs = files.get(job_id, [])
        allocs = {a["allocation_id"]: a for a in (cluster.job(job_id) or {}).get("allocations", [])}
        if len(runs) != 1 or len(allocs) != 1:
            wrong[job_id] = f"{len(runs)} allocation files, {len(allocs)} allocations"
            continue
        alloc_id, pids = runs[0]
        restarts = allocs.get(alloc_id, {}).get("tasks", {}).get("t", {}).get("restarts", 0)
        if len(pids) != 1 + restarts:
            wrong[job_id] = f"{len(pids)} runs in allocation {alloc_id}, {restarts} restarts"
    return wrong


def running_allocs(cluster: HaCluster, job_id: str) -> list[dict]:
    job = cluster.job(job_id) or {}
    return [
        a
        for a in job.get("allocations", [])
        if a.get("status") == "running" and a.get("desired_status") == "run"
    ]


def elapsed(since: float) -> float:
    return time.monotonic() - since
