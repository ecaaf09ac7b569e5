"""Real orch processes for integration tests: start, wait, kill by PID.

Each process runs the built zipapp (dist/orch.pyz) in its own session, so a
teardown can kill its whole process group; task processes started by agents
have sessions of their own and are found through the PIDs tasks write.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
PYZ = ROOT / "dist" / "orch.pyz"
TIMEOUT = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(fn, timeout: float = 10.0, interval: float = 0.05, what: str = ""):
    """Poll fn until it returns a truthy value; that value is returned."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except (requests.RequestException, KeyError, ValueError) as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for "
                         f"{what or fn.__name__} (last error: {last_exc})")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Proc:
    """One orch process (server, agent or dev) started from the zipapp."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None,
                 prefix: list[str] | None = None):
        """`prefix` runs the zipapp under another command (`ip netns exec NS`)."""
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")
        full_env = dict(os.environ, **(env or {}))
        self.popen = subprocess.Popen([*(prefix or []), sys.executable, str(PYZ),
                                       *args],
                                      stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=full_env,
                                      start_new_session=True)
        self.pid = self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        """kill -9 of the process itself (tasks in other sessions live on)."""
        kill_pid(self.pid)
        self.popen.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._killpg()
                self.popen.wait(timeout=5)
        return self.popen.returncode

    def _killpg(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def cleanup(self) -> None:
        self.terminate()
        self._killpg()
        self._log.close()


class Cluster:
    """A server and agents started one by one, all torn down together."""

    def __init__(self, tmp: Path, *, node_ttl: float = 2.0,
                 heartbeat_interval: float = 0.5, bind: str = "127.0.0.1",
                 token: str | None = None):
        self.tmp = tmp
        self.node_ttl = node_ttl
        self.heartbeat_interval = heartbeat_interval
        self.bind = bind
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.port = free_port()
        self.url = f"http://{bind}:{self.port}"
        self.server: Proc | None = None
        self.agents: dict[str, Proc] = {}
        self.task_pid_dir = tmp / "pids"
        self.task_pid_dir.mkdir(exist_ok=True)
        self._dead: list[Proc] = []

    # ---- processes ----------------------------------------------------

    def server_args(self, *extra: str) -> list[str]:
        args = ["server", "--port", str(self.port), "--data-dir",
                str(self.tmp / "server"), "--node-ttl", str(self.node_ttl)]
        if self.bind != "127.0.0.1":
            args += ["--bind", self.bind]
        if self.token:
            args += ["--token", self.token]
        return [*args, *extra]

    def start_server(self, *extra: str) -> Proc:
        self.server = Proc(self.server_args(*extra), self.tmp / "server.log")
        wait_until(lambda: requests.get(f"{self.url}/health", timeout=1).ok,
                   what="server /health")
        return self.server

    def start_agent(self, name: str, *extra: str, env: dict | None = None,
                    prefix: list[str] | None = None) -> str:
        """Start (or restart) agent `name`; returns its node id once registered.

        `extra` may carry its own --port (a later --port wins in argparse)."""
        data_dir = self.tmp / f"agent-{name}"
        token = ["--token", self.token] if self.token else []
        proc = Proc(["agent", "--server", self.url, "--port", "0", "--data-dir",
                     str(data_dir), "--heartbeat-interval",
                     str(self.heartbeat_interval), *token, *extra],
                    self.tmp / f"agent-{name}.log", env=env, prefix=prefix)
        if name in self.agents:
            self._dead.append(self.agents[name])
        self.agents[name] = proc
        node_id_file = data_dir / "node_id"
        node_id = wait_until(lambda: node_id_file.exists()
                             and node_id_file.read_text().strip(),
                             what=f"agent {name} node id")
        wait_until(lambda: self.node(node_id) and self.node(node_id)["healthy"],
                   what=f"agent {name} healthy")
        return node_id

    def stop_all(self) -> None:
        for proc in [*self.agents.values(), *self._dead]:
            proc.cleanup()
        if self.server is not None:
            self.server.cleanup()
        for pid in self.task_pids().values():
            kill_pid(pid)

    # ---- API --------------------------------------------------------------

    def get(self, path: str):
        return requests.get(self.url + path, timeout=TIMEOUT,
                            headers=self.headers)

    def post(self, path: str, body=None):
        return requests.post(self.url + path, json=body, timeout=TIMEOUT,
                             headers=self.headers)

    def put(self, path: str, body):
        return requests.put(self.url + path, json=body, timeout=TIMEOUT,
                            headers=self.headers)

    def delete(self, path: str):
        return requests.delete(self.url + path, timeout=TIMEOUT,
                               headers=self.headers)

    def job(self, job_id: str) -> dict:
        resp = self.get(f"/jobs/{job_id}")
        resp.raise_for_status()
        return resp.json()

    def node(self, node_id: str) -> dict | None:
        for node in self.get("/nodes").json()["nodes"]:
            if node["node_id"] == node_id:
                return node
        return None

    def wait_job(self, job_id: str, status: str, timeout: float = 15.0) -> dict:
        def reached():
            job = self.job(job_id)
            return job if job["status"] == status else None
        try:
            return wait_until(reached, timeout, what=f"job {job_id} {status}")
        except AssertionError:
            raise AssertionError(f"job {job_id} never {status}: "
                                 f"{json.dumps(self.job(job_id))[:2000]}")

    def live_allocs(self, job_id: str) -> list[dict]:
        return [a for a in self.job(job_id)["allocations"]
                if a["desired_status"] == "run"
                and a["status"] in ("pending", "running")]

    # ---- task processes -------------------------------------------------------

    def pid_command(self, tag: str, body: str = "exec sleep 300") -> str:
        """A shell command that records its PID under the test's pid dir first."""
        return f'echo $$ > {self.task_pid_dir}/{tag}.$ORCH_ALLOC_ID; {body}'

    def task_pids(self, tag: str = "") -> dict[str, int]:
        """alloc id -> PID for tasks started with pid_command(tag)."""
        out = {}
        for path in self.task_pid_dir.glob(f"{tag}*"):
            text = path.read_text().strip()
            if text:
                out[path.name.split(".", 1)[1]] = int(text)
        return out
