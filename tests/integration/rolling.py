"""What the rolling-update tests share: the job, the catalog reads, the watchers, the CLI.

The exec and docker variants deploy the same job (`roll`, service `roll-svc`,
count 3, max_parallel 1, an http check on "/health") around different tasks
(`roll_job`); the other helpers only read the catalog and the job, so they
serve both.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading

import requests

from harness import clean_env

SERVICE = "roll-svc"
COUNT = 3
MAX_PARALLEL = 1


def roll_job(task: dict, to: int | None = None) -> dict:
    """The `roll` job around its one task; `to`: the container port the http port maps to."""
    check = {"type": "http", "path": "/health", "interval": "200ms", "timeout": "1s"}
    port: dict = {"label": "http"} if to is None else {"label": "http", "to": to}
    return {
        "job_id": "roll",
        "type": "service",
        "update": {
            "max_parallel": MAX_PARALLEL,
            "min_healthy_time": "1s",
            "healthy_deadline": "15s",
            "progress_deadline": "60s",
            "auto_revert": True,
        },
        "task_groups": [
            {
                "name": "web",
                "count": COUNT,
                # As Nomad users do: a stopped copy leaves the catalog, then waits
                # before its signal, so a client that resolved it just before is served.
                "shutdown_delay": "500ms",
                "network": {"ports": [port]},
                "services": [{"name": SERVICE, "port": "http", "checks": [check]}],
                "tasks": [task],
            }
        ],
    }


def get(server, path: str) -> dict:
    resp = requests.get(server.url + path, timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def healthy(server) -> list[dict]:
    return get(server, f"/services/{SERVICE}?healthy=true")["instances"]


def versions(server) -> list[str]:
    """What each healthy instance answers on "/"."""
    out = []
    for inst in healthy(server):
        url = f"http://{inst['address']}:{inst['port']}/"
        out.append(requests.get(url, timeout=2).text)
    return sorted(out)


class CatalogWatch(threading.Thread):
    """Reads the healthy instances every 50 ms; keeps the fewest seen."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.fewest, self.reads = server, COUNT, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            try:
                count = len(healthy(self.server))
            except requests.RequestException:
                continue  # the server stopping at teardown
            self.fewest = min(self.fewest, count)
            self.reads += 1

    def stop(self) -> int:
        self.done.set()
        self.join(10)
        return self.fewest


def run_cli(pyz, server, tmp_path, job: dict) -> subprocess.CompletedProcess:
    path = tmp_path / f"job-{random.randrange(1 << 30)}.json"
    path.write_text(json.dumps(job))
    return subprocess.run(
        [sys.executable, str(pyz), "job", "run", str(path), "--address", server.url],
        capture_output=True,
        text=True,
        timeout=170,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
    )


def cli(pyz, server, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(pyz), *args, "--address", server.url],
        capture_output=True,
        text=True,
        timeout=170,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
    )


def alloc_ids(server) -> set[str]:
    allocs = get(server, "/jobs/roll")["allocations"]
    return {a["allocation_id"] for a in allocs if a["desired_status"] == "run"}


class Client(threading.Thread):
    """A client of the service: resolves it through the catalog before every request."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.sent, self.failed, self.answers = server, 0, [], []
        self.done = threading.Event()

    def run(self) -> None:
        turn = 0
        while not self.done.wait(0.02):
            try:
                found = healthy(self.server)
            except requests.RequestException:
                continue  # the catalog, not the service: not a request to it
            if not found:
                self.failed.append("no healthy instance")
                continue
            inst = found[turn % len(found)]
            turn += 1
            self.sent += 1
            try:
                url = f"http://{inst['address']}:{inst['port']}/"
                resp = requests.get(url, timeout=2)
                resp.raise_for_status()
                self.answers.append(resp.text)
            except requests.RequestException as exc:
                self.failed.append(repr(exc))

    def stop(self) -> None:
        self.done.set()
        self.join(10)
