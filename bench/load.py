"""API load: concurrent clients mixing submits, reads and stops.

Starts a real `orch dev --agents 3` cluster from the zipapp (dist/orch.pyz;
build it first with `python build/make_pyz.py`), or uses one at `--url`, then
runs `--clients` threads for `--seconds`. Each client loops without pause,
picking a request kind at random:

    submit      POST /jobs             a batch job running `true` (it really runs)
    read_job    GET /jobs/<id>         one of the client's own jobs
    list_nodes  GET /nodes
    list_jobs   GET /jobs              every job with its allocations (rarer)
    stop        DELETE /jobs/<id>      one of the client's own running jobs

Every answer must be 200: a 5xx, any other status or a connection error /
timeout is counted as a failure. Afterwards it checks that every acknowledged
submit exists and every acknowledged stop left its job `dead`. Reported per
kind: count, p50, p99 and max latency (ms); overall requests/s.

    python bench/load.py                          # 60 s, 50 clients
    python bench/load.py --seconds 60 --clients 50 --json   # last line: JSON
    python bench/load.py --smoke --json           # 5 s, 10 clients

Exit code 0 when there were no failures and the checks passed, else 1.
The cluster runs in its own session; at the end it gets SIGTERM, then every
process of it still alive is killed by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests
from benchutil import host  # bench/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
PYZ = ROOT / "dist" / "orch.pyz"

KINDS = {"submit": 20, "read_job": 55, "list_nodes": 10, "list_jobs": 2, "stop": 13}
REQUEST_TIMEOUT = 30.0


# ---- the cluster ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevCluster:
    """`orch dev --agents N` in a session of its own; stop() kills it all."""

    def __init__(self, pyz: Path = PYZ, agents: int = 3, log_path: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.agents = agents
        self._tmp = tempfile.TemporaryDirectory(prefix="orch-load-")
        self.log_path = log_path or os.path.join(self._tmp.name, "dev.log")
        self._log = open(self.log_path, "wb")
        env = dict(
            os.environ,
            DOCKER_HOST="unix:///nonexistent.sock",
            SHIV_ROOT=os.environ.get(
                "SHIV_ROOT", os.path.join(tempfile.gettempdir(), "orch-load-shiv")
            ),
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(pyz),
                "dev",
                "--agents",
                str(agents),
                "--port",
                str(self.port),
                "--heartbeat-interval",
                "1",
                "--node-ttl",
                "10",
                "--log-level",
                "WARNING",
            ],
            cwd=self._tmp.name,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        self._members: set[int] = set()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"orch dev exited {self.proc.returncode}; see {self.log_path}")
            try:
                nodes = requests.get(f"{self.url}/nodes", timeout=2).json()["nodes"]
                if len(nodes) == self.agents and all(n["healthy"] for n in nodes):
                    self._remember_members()
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"dev cluster not healthy after {timeout}s")

    def _remember_members(self) -> None:
        try:
            self._members = {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.Error:
            self._members = set()

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
            for pid in [self.proc.pid]:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            for pid in self._members:  # server and agents, by PID
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(timeout=10)
        finally:
            self._log.close()
            self._tmp.cleanup()


# ---- the clients --------------------------------------------------------------


def job_body(job_id: str) -> dict:
    return {
        "job_id": job_id,
        "type": "batch",
        "task_groups": [
            {
                "name": "g",
                "count": 1,
                "tasks": [
                    {
                        "name": "t",
                        "driver": "exec",
                        "config": {"command": "true"},
                        "resources": {"cpu": 10, "memory": 8},
                    }
                ],
            }
        ],
    }


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {k: [] for k in KINDS}
        self.failures: list[str] = []
        self.server_errors = 0  # 5xx
        self.connection_errors = 0  # no answer: refused, reset, timeout
        self.other_status = 0  # any other non-200
        self.acked: set[str] = set()
        self.stopped: set[str] = set()

    def record(self, kind: str, seconds: float, status: int | None, detail: str = ""):
        with self.lock:
            if status == 200:
                self.latency[kind].append(seconds)
                return
            if status is None:
                self.connection_errors += 1
            elif status >= 500:
                self.server_errors += 1
            else:
                self.other_status += 1
            if len(self.failures) < 50:
                self.failures.append(f"{kind}: {status} {detail[:200]}")


class Client(threading.Thread):
    def __init__(
        self, index: int, url: str, deadline: float, rec: Recorder, seed: int, headers: dict
    ):
        super().__init__(name=f"load-{index}", daemon=True)
        self.index, self.url, self.deadline, self.rec = index, url, deadline, rec
        self.rng = random.Random(seed)
        self.session = requests.Session()
        self.session.headers.update(headers)
        self.mine: list[str] = []
        self.running: list[str] = []
        self.n = 0

    def run(self) -> None:
        kinds, weights = list(KINDS), list(KINDS.values())
        while time.monotonic() < self.deadline:
            kind = self.rng.choices(kinds, weights)[0]
            if kind in ("read_job", "stop") and not self.running:
                kind = "submit"
            getattr(self, kind)()

    def _call(self, kind: str, method: str, path: str, body=None):
        started = time.perf_counter()
        try:
            resp = self.session.request(method, self.url + path, json=body, timeout=REQUEST_TIMEOUT)
            _ = resp.content  # the whole body is part of the latency
        except requests.RequestException as exc:
            self.rec.record(
                kind, time.perf_counter() - started, None, f"{type(exc).__name__}: {exc}"
            )
            return None
        self.rec.record(kind, time.perf_counter() - started, resp.status_code, resp.text)
        return resp if resp.status_code == 200 else None

    def submit(self) -> None:
        self.n += 1
        job_id = f"load-{self.index}-{self.n}"
        if self._call("submit", "POST", "/jobs", job_body(job_id)) is not None:
            self.mine.append(job_id)
            self.running.append(job_id)
            with self.rec.lock:
                self.rec.acked.add(job_id)

    def read_job(self) -> None:
        self._call("read_job", "GET", f"/jobs/{self.rng.choice(self.mine)}")

    def list_nodes(self) -> None:
        self._call("list_nodes", "GET", "/nodes")

    def list_jobs(self) -> None:
        self._call("list_jobs", "GET", "/jobs")

    def stop(self) -> None:
        job_id = self.running.pop(self.rng.randrange(len(self.running)))
        if self._call("stop", "DELETE", f"/jobs/{job_id}") is not None:
            with self.rec.lock:
                self.rec.stopped.add(job_id)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def verify(url: str, rec: Recorder, headers: dict) -> list[str]:
    """Every acknowledged submit exists; every acknowledged stop is dead."""
    resp = requests.get(f"{url}/jobs", timeout=120, headers=headers)
    resp.raise_for_status()
    status = {j["job_id"]: j["status"] for j in resp.json()["jobs"]}
    problems = []
    missing = sorted(rec.acked - status.keys())
    if missing:
        problems.append(f"{len(missing)} acknowledged jobs missing: {missing[:5]}")
    alive = sorted(j for j in rec.stopped if status.get(j) != "dead")
    if alive:
        problems.append(
            f"{len(alive)} stopped jobs not dead: {[(j, status.get(j)) for j in alive[:5]]}"
        )
    return problems


def run_load(
    url: str, *, seconds: float, clients: int, seed: int = 1, token: str | None = None
) -> dict:
    """Drive the cluster at `url`; returns the summary (see module doc)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    rec = Recorder()
    deadline = time.monotonic() + seconds
    threads = [Client(i, url, deadline, rec, seed * 1000 + i, headers) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + REQUEST_TIMEOUT + 30)
    elapsed = time.monotonic() - started
    stuck = sum(t.is_alive() for t in threads)
    problems = verify(url, rec, headers)
    if stuck:
        problems.append(f"{stuck} clients still running after the deadline")
    kinds = {}
    total = 0
    for kind, values in rec.latency.items():
        total += len(values)
        kinds[kind] = {
            "count": len(values),
            "p50_ms": round(percentile(values, 0.50) * 1000, 2),
            "p99_ms": round(percentile(values, 0.99) * 1000, 2),
            "max_ms": round(max(values, default=0.0) * 1000, 2),
        }
    return {
        "seconds": round(elapsed, 2),
        "clients": clients,
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "kinds": kinds,
        "server_errors": rec.server_errors,
        "connection_errors": rec.connection_errors,
        "other_status": rec.other_status,
        "failures": rec.failures[:10],
        "jobs_submitted": len(rec.acked),
        "jobs_stopped": len(rec.stopped),
        "check_problems": problems,
        "ok": not (rec.server_errors or rec.connection_errors or rec.other_status or problems),
    }


def machine() -> dict:
    memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    return {**host(), "memory_gb": memory_gb}


def print_human(summary: dict) -> None:
    print(
        f"{summary['clients']} clients, {summary['seconds']} s, "
        f"{summary['requests']} requests ({summary['requests_per_s']}/s); "
        f"{summary['jobs_submitted']} jobs submitted, "
        f"{summary['jobs_stopped']} stopped"
    )
    print(f"{'kind':<12}{'count':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for kind, k in summary["kinds"].items():
        print(f"{kind:<12}{k['count']:>8}{k['p50_ms']:>10}{k['p99_ms']:>10}{k['max_ms']:>10}")
    print(
        f"5xx: {summary['server_errors']}  connection errors: "
        f"{summary['connection_errors']}  other non-200: {summary['other_status']}"
    )
    for line in summary["failures"]:
        print("  ", line)
    for line in summary["check_problems"]:
        print("  check:", line)
    print("OK" if summary["ok"] else "FAILED")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--url", help="use this cluster instead of starting one")
    parser.add_argument("--token", default=os.environ.get("ORCH_TOKEN"))
    parser.add_argument("--pyz", default=str(PYZ))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="5 s, 10 clients")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.clients = 5.0, 10
    cluster = None
    try:
        url = args.url
        if url is None:
            if not Path(args.pyz).exists():
                print(f"{args.pyz} missing: run python build/make_pyz.py", file=sys.stderr)
                return 2
            cluster = DevCluster(Path(args.pyz), args.agents)
            cluster.wait_healthy()
            url = cluster.url
        summary = run_load(
            url, seconds=args.seconds, clients=args.clients, seed=args.seed, token=args.token
        )
    finally:
        if cluster is not None:
            cluster.stop()
    summary["machine"] = machine()
    summary["calibration"] = summary["machine"]["calibration"]
    summary["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print_human(summary)
    if args.json:
        print(json.dumps(summary, separators=(",", ":")))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
