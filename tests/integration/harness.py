"""The one harness of the integration tests: ports, polling, the zipapp, processes.

Each process runs the built zipapp (dist/orch.pyz, rebuilt once per session
when older than the sources) in its own session, and is not reaped before it
is stopped: until then its pid cannot be reused, so signalling its process
group can only reach what it started. Task processes started by agents have
sessions of their own and are found through the PIDs tasks write.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from orch.agent.drivers.cgroups import Cgroups
from orch.agent.tasksup.client import data_dir_tag

ROOT = Path(__file__).resolve().parents[2]
PYZ = ROOT / "dist" / "orch.pyz"
MAKE_PYZ = ROOT / "build" / "make_pyz.py"
TIMEOUT = 5
START_TIMEOUT = 20.0
STOP_GRACE = 15.0


def agent_cgroups(data_dir: Path) -> dict[str, bool] | None:
    """The task cgroups named for an agent's data dir, by path: empty?
    (None where this host gives no cgroups.)"""
    cgroups = Cgroups()
    if cgroups.detect() is None:
        return None
    tag = data_dir_tag(str(data_dir))[:12] + "-"
    found = {}
    for parent in set(cgroups._parents.values()):
        for name in os.listdir(parent):
            if name.startswith(tag):
                path = os.path.join(parent, name)
                try:
                    found[path] = not Path(path, "cgroup.procs").read_text().strip()
                except OSError:  # removed meanwhile
                    continue
    return found


class GiveUp(AssertionError):
    """Raised by a polled condition that can never become true (its process died)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS may hand it out again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until(fn, timeout: float = 10.0, interval: float = 0.05, what: str | None = None):
    """Call ``fn`` until it returns something truthy, and return that.

    Exceptions count as "not yet" (the last one is in the timeout's message),
    except GiveUp, which fails at once.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except GiveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - polling: any failure means not yet
            last_exc = exc
        if time.monotonic() >= deadline:
            label = what or getattr(fn, "__name__", "condition")
            detail = f"; last error: {last_exc!r}" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {label}{detail}")
        time.sleep(interval)


def sources_mtime() -> float:
    paths = [
        *ROOT.joinpath("orch").rglob("*.py"),
        # The web UI's templates and static files ship in the zipapp too.
        *ROOT.joinpath("orch", "server", "ui").rglob("*.*"),
        ROOT / "setup.py",
        MAKE_PYZ,
        ROOT / "build" / "pyz_main.py",
        ROOT / "requirements-dev.txt",
    ]
    return max(p.stat().st_mtime for p in paths if p.exists())


@functools.cache
def ensure_pyz() -> Path:
    """dist/orch.pyz, rebuilt when missing or older than any source (once per session)."""
    if not PYZ.exists() or PYZ.stat().st_mtime < sources_mtime():
        subprocess.run([sys.executable, str(MAKE_PYZ)], check=True, cwd=ROOT, timeout=300)
    return PYZ


def clean_env(extra: dict | None = None) -> dict:
    """The test's environment without the developer's ORCH_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(extra or {})
    return env


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


def _exited(pid: int) -> bool:
    """Has the child exited? Leaves it a zombie, so its pid (and group id) stay ours."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid != 0


class Proc:
    """``[*prefix, python, pyz, *args]`` in its own session; output appended to files.

    stdout goes to ``log_path``; stderr too unless ``stderr_path`` is given.
    ``prefix`` runs the zipapp under another command (``ip netns exec NS``).
    """

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict | None = None,
        prefix: list[str] | None = None,
        *,
        stderr_path: Path | None = None,
        cwd: Path | None = None,
        pyz: Path | None = None,
        name: str | None = None,
    ):
        self.args, self.name = list(args), name or log_path.stem
        self.log_path = self.stdout_path = log_path
        self.stderr_path = stderr_path or log_path
        with open(log_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.popen = subprocess.Popen(
                [*(prefix or []), sys.executable, str(pyz or ensure_pyz()), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if stderr_path is None else err,
                env=clean_env(env),
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.returncode is None and not _exited(self.pid)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log(self) -> str:
        """Everything the process wrote (both streams, when they have files of their own)."""
        if self.stderr_path == self.stdout_path:
            return self.stdout()
        return self.stdout() + self.stderr()

    def wait_for_output(self, pattern: str, timeout: float = 10.0, stream: str = "stderr"):
        """The first match of ``pattern`` in the process's stdout or stderr."""
        regex = re.compile(pattern)

        def match():
            text = self.stdout() if stream == "stdout" else self.stderr()
            found = regex.search(text)
            if not found and not self.alive():
                raise GiveUp(f"{self.name} exited:\n{self.stderr()[-3000:]}")
            return found

        return wait_until(match, timeout, what=f"{pattern!r} from {self.name}")

    def signal(self, signum: int) -> None:
        """A signal to the process itself (not its group)."""
        if self.alive():
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int | None:
        """Wait for exit; its exit code, or None if still running."""
        try:
            wait_until(lambda: not self.alive(), timeout, what=f"{self.name} to exit")
        except AssertionError:
            return None
        return self.popen.wait()

    def stop(self, grace: float = STOP_GRACE) -> int:
        """SIGTERM, wait up to ``grace``, then SIGKILL the whole process group; exit code."""
        self.signal(signal.SIGTERM)
        if self.popen.returncode is None:
            try:
                wait_until(lambda: not self.alive(), grace, interval=0.05)
            except AssertionError:
                pass
        return self.kill()

    def kill(self) -> int:
        """SIGKILL the process group (``kill -9``), then reap."""
        if self.popen.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return self.popen.wait()

    def kill9(self) -> None:
        """kill -9 of the process itself (tasks in other sessions live on)."""
        if self.popen.returncode is None:
            kill_pid(self.pid)
        self.popen.wait(timeout=10)

    def terminate(self, timeout: float = STOP_GRACE) -> int:
        """SIGTERM and the exit code (the group is killed if it outlives ``timeout``)."""
        return self.stop(timeout)

    def cleanup(self) -> None:
        self.stop()


def http_get(url: str, token: str | None = None, timeout: float = 2.0) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(url, headers=headers, timeout=timeout)


def get_json(server, path: str) -> dict:
    """The JSON answer of GET ``path`` on ``server`` (anything with a ``url``); 200 or fail."""
    resp = requests.get(server.url + path, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp.json()


def orch_cli(
    pyz, server, *args: str, timeout: float = 60, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the zipapp's CLI with ``args`` against ``server`` (anything with a ``url``).

    ``env``: ORCH_* variables to set in the otherwise clean environment."""
    return subprocess.run(
        [sys.executable, str(pyz), *args, "--address", server.url],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=clean_env(env),
    )


def nodes(base_url: str, token: str | None = None) -> list[dict]:
    resp = http_get(base_url + "/nodes", token)
    resp.raise_for_status()
    return resp.json()["nodes"]


class Cluster:
    """A server and agents started one by one, all torn down together."""

    def __init__(
        self,
        tmp: Path,
        *,
        node_ttl: float = 2.0,
        heartbeat_interval: float = 0.5,
        bind: str = "127.0.0.1",
        token: str | None = None,
        database: str | None = None,
    ):
        self.tmp = tmp
        # postgresql://... for a server on PostgreSQL; None: SQLite in its data dir.
        self.database = database
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
        args = [
            "server",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.tmp / "server"),
            "--node-ttl",
            str(self.node_ttl),
        ]
        if self.bind != "127.0.0.1":
            args += ["--bind", self.bind]
        if self.token:
            args += ["--token", self.token]
        if self.database:
            args += ["--database", self.database]
        return [*args, *extra]

    def start_server(self, *extra: str) -> Proc:
        server = self.server = Proc(self.server_args(*extra), self.tmp / "server.log")

        def healthy():
            if not server.alive():
                raise GiveUp(f"server exited:\n{server.log()[-3000:]}")
            return requests.get(f"{self.url}/health", timeout=1).ok

        wait_until(healthy, START_TIMEOUT, what="server /health")
        return server

    def start_agent(
        self, name: str, *extra: str, env: dict | None = None, prefix: list[str] | None = None
    ) -> str:
        """Start (or restart) agent `name`; returns its node id once registered.

        `extra` may carry its own --port (a later --port wins in argparse)."""
        data_dir = self.tmp / f"agent-{name}"
        token = ["--token", self.token] if self.token else []
        proc = Proc(
            [
                "agent",
                "--server",
                self.url,
                "--port",
                "0",
                "--data-dir",
                str(data_dir),
                "--heartbeat-interval",
                str(self.heartbeat_interval),
                *token,
                *extra,
            ],
            self.tmp / f"agent-{name}.log",
            env=env,
            prefix=prefix,
        )
        if name in self.agents:
            self._dead.append(self.agents[name])
        self.agents[name] = proc
        node_id_file = data_dir / "node_id"

        def written():
            if not proc.alive():
                raise GiveUp(f"agent {name} exited:\n{proc.log()[-3000:]}")
            return node_id_file.exists() and node_id_file.read_text().strip()

        node_id = wait_until(written, START_TIMEOUT, what=f"agent {name} node id")
        wait_until(
            lambda: self.node(node_id) and self.node(node_id)["healthy"],
            START_TIMEOUT,
            what=f"agent {name} healthy",
        )
        return node_id

    def stop_all(self) -> None:
        for proc in [*self.agents.values(), *self._dead]:
            proc.cleanup()
        if self.server is not None:
            self.server.cleanup()
        for pid in self.task_pids().values():
            kill_pid(pid)
        # An agent stopped cleanly drained its idle cgroups; one killed left them.
        for name in self.agents:
            for path, empty in (agent_cgroups(self.tmp / f"agent-{name}") or {}).items():
                if empty:
                    try:
                        os.rmdir(path)
                    except OSError:  # a task's supervisor removing it too
                        pass

    # ---- API --------------------------------------------------------------

    def get(self, path: str):
        return requests.get(self.url + path, timeout=TIMEOUT, headers=self.headers)

    def post(self, path: str, body=None):
        return requests.post(self.url + path, json=body, timeout=TIMEOUT, headers=self.headers)

    def put(self, path: str, body):
        return requests.put(self.url + path, json=body, timeout=TIMEOUT, headers=self.headers)

    def delete(self, path: str):
        return requests.delete(self.url + path, timeout=TIMEOUT, headers=self.headers)

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
            raise AssertionError(
                f"job {job_id} never {status}: {json.dumps(self.job(job_id))[:2000]}"
            ) from None

    def live_allocs(self, job_id: str) -> list[dict]:
        return [
            a
            for a in self.job(job_id)["allocations"]
            if a["desired_status"] == "run" and a["status"] in ("pending", "running")
        ]

    # ---- task processes -------------------------------------------------------

    def pid_command(self, tag: str, body: str = "exec sleep 300") -> str:
        """A shell command that records its PID under the test's pid dir first."""
        return f"echo $$ > {self.task_pid_dir}/{tag}.$ORCH_ALLOC_ID; {body}"

    def task_pids(self, tag: str = "") -> dict[str, int]:
        """alloc id -> PID for tasks started with pid_command(tag)."""
        out = {}
        for path in self.task_pid_dir.glob(f"{tag}*"):
            text = path.read_text().strip()
            if text:
                out[path.name.split(".", 1)[1]] = int(text)
        return out
